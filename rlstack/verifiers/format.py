"""Format verifier: a reasoning block followed by an answer block (`<think>…</think>` then
`<answer>…</answer>` by default), as reasoning fine-tuning asks of a response.
"""

import re

from rlstack.errors import PluginError

_TAG_NAME = re.compile(r"[A-Za-z][\w.-]*")


def think_answer(
    prompt: str,
    response: str,
    reference: str,
    *,
    think_tag: str = "think",
    answer_tag: str = "answer",
    allow_outside: bool = False,
    nonempty: bool = True,
    **extras: object,
) -> tuple[float, dict]:
    """Verifier: 1.0 when the response is one reasoning block, then one answer block.

    With the defaults the response must be `<think>...</think>` followed by
    `<answer>...</answer>`, with nothing but whitespace before, between and after them. Each tag
    must occur exactly once (a block may not hold another block's tags).

    Args:
        prompt: The prompt (unused).
        response: The model's response.
        reference: The reference (unused).
        think_tag: Name of the reasoning tag.
        answer_tag: Name of the answer tag.
        allow_outside: Accept text before, between and after the two blocks.
        nonempty: Both blocks must hold something other than whitespace.
        **extras: Other fields of the data row (unused).

    Returns:
        `(score, details)`: score 1.0 or 0.0; details hold `answer` (the answer block's text)
        on success or `reason` on failure.

    Raises:
        PluginError: A tag name that is not a plain name, or both tags the same.
    """
    for tag in (think_tag, answer_tag):
        if not isinstance(tag, str) or not _TAG_NAME.fullmatch(tag):
            raise PluginError(f"think_answer: tag names must be plain names, got {tag!r}")
    if think_tag == answer_tag:
        raise PluginError("think_answer: think_tag and answer_tag must differ")
    if not isinstance(response, str):
        return 0.0, {"reason": f"the response is {type(response).__name__}, not text"}

    tags = [f"<{think_tag}>", f"</{think_tag}>", f"<{answer_tag}>", f"</{answer_tag}>"]
    for tag in tags:
        count = response.count(tag)
        if count != 1:
            return 0.0, {"reason": f"{tag} occurs {count} times, expected once"}

    starts = [response.index(tag) for tag in tags]
    if starts != sorted(starts):
        return 0.0, {"reason": f"expected {' '.join(tags)} in that order"}

    ends = [start + len(tag) for start, tag in zip(starts, tags)]
    think, answer = response[ends[0] : starts[1]], response[ends[2] : starts[3]]
    if nonempty and not (think.strip() and answer.strip()):
        return 0.0, {"reason": "an empty block"}

    outside = (response[: starts[0]], response[ends[1] : starts[2]], response[ends[3] :])
    if not allow_outside and any(part.strip() for part in outside):
        return 0.0, {"reason": "text outside the blocks"}
    return 1.0, {"answer": answer.strip()}
