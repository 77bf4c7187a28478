"""Example verifiers for rlstack, one of each kind (docs/verifiers.md walks through them).

Use them from a config by file path:

    grpo:
      reward_source: verifier
      verifier:
        - {name: docs/examples/my_verifiers.py:boxed_answer, weight: 1.0}
        - {name: docs/examples/my_verifiers.py:concise, weight: 0.2, args: {max_chars: 64}}

or try one on a data set first:

    rlstack verify docs/examples/my_verifiers.py:boxed_answer data.jsonl --json
"""

import asyncio
import re

from rlstack.verifiers import batched, numeric_match

BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def boxed_answer(prompt, response, reference, **extras):
    """1.0 when the last \\boxed{...} holds the reference answer; details say what was found."""
    found = BOXED.findall(response)
    if not found:
        return 0.0, {"reason": "no \\boxed{} answer"}
    answer = found[-1].strip()
    return (1.0 if answer == reference.strip() else 0.0), {"answer": answer}


@batched
def concise(prompts, responses, references, max_chars=200, **extras):
    """1.0 for each response of at most `max_chars` characters (a batched verifier)."""
    return [1.0 if len(response) <= max_chars else 0.0 for response in responses]


async def numeric_async(prompt, response, reference, **extras):
    """The built-in numeric check, awaited: the shape of a verifier that waits on I/O."""
    # A real one would await a service here (a judge model, a test runner); blocking work
    # goes to a thread so that the worker's other samples keep going.
    return await asyncio.to_thread(numeric_match, prompt, response, reference)
