"""Verifiers: plain callables `fn(prompt, response, reference, **extras) -> float` that score a
response (higher is better), and `load_verifier` to find the one a config names.
"""

from rlstack.verifiers.exact import exact_match
from rlstack.verifiers.loading import BUILTIN_VERIFIERS, Verifier, load_verifier
from rlstack.verifiers.numeric import extract_number, numbers_equal, numeric_match

__all__ = [
    "BUILTIN_VERIFIERS",
    "Verifier",
    "exact_match",
    "extract_number",
    "load_verifier",
    "numbers_equal",
    "numeric_match",
]
