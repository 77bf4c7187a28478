"""Convert raw records into the normalised rows that the stages use.

    rows = load_rows("../shared/data/gsm8k/train.jsonl", "gsm8k_calc")
    rows = load_rows("synthetic:preferences", "pairs")

| format | row |
|---|---|
| text | str |
| prompt_response | {"prompt", "response"} |
| pairs | {"prompt", "chosen", "rejected"} |
| prompt_reference | {"prompt", "reference", **the record's other columns} |
| gsm8k_calc | {"prompt", "reference", "response"}, one per calculator annotation `<<48/2=24>>` |
| hh_rlhf | {"prompt", "chosen", "rejected"}, split at the last assistant turn |

Every converter takes `(records, where, **options)`: `where` names the source in error messages,
and a missing or non-string field raises `RowError` (a `DataError`) naming the source and the
1-based row, `where: row 3: ...`; `load_rows` names the line instead when the source is a JSONL or
CSV file, `path:7: ...` (blank lines make lines and rows differ). Field-name options let a data set
with other column names be read without editing it, e.g. `load_rows(path, "prompt_response",
prompt_field="question", response_field="answer")`.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import re
from collections import Counter
from collections.abc import Callable

from rlstack.data.sources import load_records_with_lines
from rlstack.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

CALC_ANNOTATION = re.compile(r"<<([^<>]*)>>")
PLAIN_NUMBER = re.compile(r"-?(\d+(\.\d+)?|\.\d+)")
OPERATOR = re.compile(r"(?<=[\d)])[-+*/]")  # binary operators (not a leading minus sign)
ASSISTANT_TURN = "\n\nAssistant:"
HUMAN_TURN = "\n\nHuman:"


class RowError(DataError):
    """A record a converter cannot use: `where: row N: problem`, N counting records from 1."""

    def __init__(self, where: str, row: int, problem: str) -> None:
        super().__init__(f"{where}: row {row}: {problem}")
        self.where, self.row, self.problem = where, row, problem


def _field(record: dict, name: str, where: str, row: int, numbers: bool = False) -> str:
    """The string value of `record[name]` (with `numbers`, a JSON number is taken as its text);
    RowError naming `where` and `row` otherwise."""
    if name not in record:
        fields = ", ".join(sorted(map(str, record))) or "none"
        raise RowError(where, row, f"missing field {name!r} (fields: {fields})")
    value = record[name]
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # as `rlstack verify` reads it
    if not isinstance(value, str):
        kind = type(value).__name__
        raise RowError(where, row, f"field {name!r} is {kind}, expected a string")
    return value


def text(records: list[dict], where: str, *, field: str = "text") -> list[str]:
    """One string per record, from `field`."""
    return [_field(r, field, where, i) for i, r in enumerate(records, start=1)]


def prompt_response(
    records: list[dict],
    where: str,
    *,
    prompt_field: str = "prompt",
    response_field: str = "response",
) -> list[dict]:
    """Rows `{"prompt", "response"}` for supervised fine-tuning."""
    return [
        {
            "prompt": _field(r, prompt_field, where, i),
            "response": _field(r, response_field, where, i),
        }
        for i, r in enumerate(records, start=1)
    ]


def pairs(
    records: list[dict],
    where: str,
    *,
    prompt_field: str = "prompt",
    chosen_field: str = "chosen",
    rejected_field: str = "rejected",
) -> list[dict]:
    """Rows `{"prompt", "chosen", "rejected"}` for reward models and preference losses."""
    return [
        {
            "prompt": _field(r, prompt_field, where, i),
            "chosen": _field(r, chosen_field, where, i),
            "rejected": _field(r, rejected_field, where, i),
        }
        for i, r in enumerate(records, start=1)
    ]


def prompt_reference(
    records: list[dict],
    where: str,
    *,
    prompt_field: str = "prompt",
    reference_field: str = "reference",
) -> list[dict]:
    """Rows `{"prompt", "reference", **extras}` for verifier-scored RL.

    The extras are the record's other columns, unchanged, so that a verifier can read them. A
    column that is itself called "prompt" or "reference" but is not the chosen field is dropped.
    A numeric reference (`"reference": 42`) is taken as its text, "42".
    """
    rows = []
    for i, r in enumerate(records, start=1):
        prompt = _field(r, prompt_field, where, i)
        reference = _field(r, reference_field, where, i, numbers=True)
        used = {prompt_field, reference_field, "prompt", "reference"}
        extras = {k: v for k, v in r.items() if k not in used}
        rows.append({"prompt": prompt, "reference": reference, **extras})
    return rows


def gsm8k_calc(
    records: list[dict],
    where: str,
    *,
    answer_field: str = "answer",
    max_operators: int | None = None,
    integer_results: bool = False,
    max_prompt_chars: int | None = None,
    scratchpad: float = 0.0,
) -> list[dict]:
    """Calculator rows from GSM8K worked answers.

    Each annotation `<<48/2=24>>` gives `{"prompt": "48/2", "reference": "24", "response": "24"}`
    (spaces inside the expression removed). Annotations with an empty expression or result, or a
    result that is not a plain number (`-12`, `0.5`, `.5`; not `1,000`), are skipped. A prompt seen
    before is skipped too, so the first occurrence wins; rows keep the source order.

    Options narrow the task, e.g. for a small model: `max_operators` keeps expressions with at
    most that many arithmetic operators (`48/2` has one), `integer_results` keeps whole-number
    results, `max_prompt_chars` keeps expressions up to that length.

    `scratchpad` is the share of rows whose response works the result out first: its digits
    from the ones digit up (the order in which carries propagate), then `=` and the result
    (`12*52` -> `426=624`). The verifier reads the last number, so both styles score alike.
    Which rows get one is a fixed function of the expression, so every run picks the same.
    """
    if not 0.0 <= scratchpad <= 1.0:
        raise ConfigError(f"gsm8k_calc: scratchpad must be a share in [0, 1], got {scratchpad!r}")
    rows = []
    seen: set[str] = set()
    skipped = narrowed = 0
    for i, r in enumerate(records, start=1):
        for annotation in CALC_ANNOTATION.findall(_field(r, answer_field, where, i)):
            expression, equals, result = annotation.rpartition("=")
            expression, result = re.sub(r"\s+", "", expression), result.strip()
            if not equals or not expression or not PLAIN_NUMBER.fullmatch(result):
                skipped += 1
                continue
            if expression in seen:
                continue
            seen.add(expression)
            if (
                (max_operators is not None and len(OPERATOR.findall(expression)) > max_operators)
                or (integer_results and not re.fullmatch(r"-?\d+", result))
                or (max_prompt_chars is not None and len(expression) > max_prompt_chars)
            ):
                narrowed += 1
                continue
            response = result
            if scratchpad and _share(expression) < scratchpad:
                response = f"{result[::-1]}={result}" if result.isdigit() else result
            rows.append({"prompt": expression, "reference": result, "response": response})

    logger.info(
        "gsm8k_calc: %d distinct calculations from %d records of %s (%d annotations unusable, "
        "%d left out by the options)",
        len(rows),
        len(records),
        where,
        skipped,
        narrowed,
    )
    return rows


def _share(text: str) -> float:
    """A number in [0, 1) fixed by `text` (the same in every process and run)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") / 2**64


def hh_rlhf(
    records: list[dict],
    where: str,
    *,
    chosen_field: str = "chosen",
    rejected_field: str = "rejected",
    max_prompt_chars: int | None = None,
) -> list[dict]:
    """Preference rows from Anthropic HH-RLHF dialogues.

    `chosen` and `rejected` are whole dialogues (`\\n\\nHuman: ...\\n\\nAssistant: ...`) that
    differ in the last assistant reply. The prompt is the dialogue up to and including the last
    "\\n\\nAssistant:"; chosen and rejected are the two last replies, stripped. A row is skipped
    when a dialogue has no assistant turn, the two prompts differ, a reply is empty, or the replies
    are equal.

    Args:
        max_prompt_chars: keep only the last this many characters of a longer prompt, starting at
            the first "\\n\\nHuman:" turn inside them when there is one (else mid-turn).
    """
    if max_prompt_chars is not None and max_prompt_chars <= len(ASSISTANT_TURN):
        raise ConfigError(
            f"hh_rlhf: max_prompt_chars must be > {len(ASSISTANT_TURN)}, got {max_prompt_chars}"
        )

    rows = []
    skipped: Counter[str] = Counter()
    for i, r in enumerate(records, start=1):
        chosen = _split_last_reply(_field(r, chosen_field, where, i))
        rejected = _split_last_reply(_field(r, rejected_field, where, i))
        reason = _skip_reason(chosen, rejected)
        if reason:
            skipped[reason] += 1
            continue
        prompt = chosen[0]
        if max_prompt_chars is not None and len(prompt) > max_prompt_chars:
            prompt = _prompt_tail(prompt, max_prompt_chars)
        rows.append({"prompt": prompt, "chosen": chosen[1], "rejected": rejected[1]})

    details = ", ".join(f"{reason}: {count}" for reason, count in sorted(skipped.items()))
    logger.info(
        "hh_rlhf: kept %d of %d pairs from %s (skipped %s)",
        len(rows),
        len(records),
        where,
        details or "none",
    )
    return rows


def _split_last_reply(dialogue: str) -> tuple[str, str] | None:
    """(prompt up to and including the last assistant turn, stripped last reply), or None."""
    cut = dialogue.rfind(ASSISTANT_TURN)
    if cut < 0:
        return None
    cut += len(ASSISTANT_TURN)
    return dialogue[:cut], dialogue[cut:].strip()


def _skip_reason(chosen: tuple[str, str] | None, rejected: tuple[str, str] | None) -> str:
    """Why a pair cannot be used, or "" when it can."""
    if chosen is None or rejected is None:
        return "no assistant turn"
    if chosen[0] != rejected[0]:
        return "prompts differ"
    if not chosen[1] or not rejected[1]:
        return "empty reply"
    if chosen[1] == rejected[1]:
        return "equal replies"
    return ""


def _prompt_tail(prompt: str, max_chars: int) -> str:
    """The last `max_chars` characters of `prompt`, cut at a human turn when possible."""
    tail = prompt[-max_chars:]
    start = tail.find(HUMAN_TURN)
    return tail[start:] if start >= 0 else tail


FORMATS: dict[str, Callable[..., list]] = {
    "text": text,
    "prompt_response": prompt_response,
    "pairs": pairs,
    "prompt_reference": prompt_reference,
    "gsm8k_calc": gsm8k_calc,
    "hh_rlhf": hh_rlhf,
}


def load_rows(
    source: str,
    format: str,
    *,
    split: str = "train",
    max_rows: int | None = None,
    subset: str | None = None,
    **options: object,
) -> list:
    """Load `source` with `load_records` and convert it with the converter named `format`.

    Args:
        source: see `load_records`.
        format: a key of `FORMATS`.
        split: the split of a directory or hub dataset.
        subset: the configuration of a directory or hub dataset (see `load_records`).
        max_rows: read at most this many records (before conversion; a GSM8K record gives
            several gsm8k_calc rows).
        options: the converter's keyword options, e.g. `prompt_field="question"`.

    Raises:
        ConfigError: the format is unknown or an option is not one of the format's options.
        DataError: the source cannot be read, a row is malformed (named by its line in a JSONL
            or CSV file, `path:7: ...`, else by its row), or no usable row is left.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown data format {format!r} (known: {', '.join(FORMATS)})")
    convert = FORMATS[format]
    allowed = [
        p.name
        for p in inspect.signature(convert).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"data format {format!r} has no option {', '.join(unknown)} "
            f"(options: {', '.join(allowed) or 'none'})"
        )

    records, lines = load_records_with_lines(source, split=split, max_rows=max_rows, subset=subset)
    try:
        rows = convert(records, source, **options)
    except RowError as err:
        if lines is None:
            raise
        raise DataError(f"{lines.file}:{lines.numbers[err.row - 1]}: {err.problem}") from None
    if not rows:
        raise DataError(
            f"{source}: no usable rows for format {format!r} ({len(records)} records read)"
        )
    return rows
