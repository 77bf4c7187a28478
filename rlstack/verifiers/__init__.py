"""Verifiers: callables `fn(prompt, response, reference, **extras)` that score a response (higher
is better), and what loads, marks and combines them.

The contract (plain, `async def` or `@batched`; a number or `(number, details)`) is in
`rlstack.verifiers.api`; docs/verifiers.md has a worked example.

    from rlstack.verifiers import batched

    def starts_with_answer(prompt, response, reference, **extras):
        return 1.0 if response.strip().startswith(reference) else 0.0

    @batched
    def short_enough(prompts, responses, references, max_chars=200, **extras):
        return [float(len(r) <= max_chars) for r in responses]
"""

from rlstack.verifiers.api import FAILURE_KINDS, Outcome, batched, is_async, is_batched
from rlstack.verifiers.combine import VerifierEntry, combine, parse_verifier_entries
from rlstack.verifiers.exact import exact_match
from rlstack.verifiers.loading import (
    BUILTIN_VERIFIERS,
    ENTRY_POINT_GROUP,
    Verifier,
    available_verifiers,
    check_options,
    load_verifier,
)
from rlstack.verifiers.numeric import extract_number, numbers_equal, numeric_match

__all__ = [
    "BUILTIN_VERIFIERS",
    "ENTRY_POINT_GROUP",
    "FAILURE_KINDS",
    "Outcome",
    "Verifier",
    "VerifierEntry",
    "available_verifiers",
    "batched",
    "check_options",
    "combine",
    "exact_match",
    "extract_number",
    "is_async",
    "is_batched",
    "load_verifier",
    "numbers_equal",
    "numeric_match",
    "parse_verifier_entries",
]
