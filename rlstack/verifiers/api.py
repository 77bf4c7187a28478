"""The verifier API: what a verifier is, how it is marked as batched, and how its result is read.

A verifier scores one response (higher is better; checkers return 1.0 for correct, 0.0 for
wrong):

    def my_verifier(prompt, response, reference, **extras) -> float | tuple[float, dict]

- `prompt`, `response` and `reference` are strings; `extras` are the data row's other columns
  and the options a config binds to the verifier (`args:`), as keyword arguments. A verifier
  should accept and ignore extras it does not know.
- It returns a number, or `(number, details)` where `details` explains the score (any
  JSON-serialisable value; `rlstack verify --json` prints it).
- It may be `async def` (awaited, many samples at a time in one worker).
- Marked with `@batched`, it takes lists instead and returns a list of the same length:
  `fn(prompts, responses, references, **extras)` with each extra column as a list too (None where
  a row lacks it) and bound options as plain values.

A result that is not a finite number, a raised exception, or a call past its deadline scores the
configured `failure_score` and is counted by kind (`FAILURE_KINDS`); it never stops training.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

# Why a sample got `failure_score` instead of the verifier's value.
FAILURE_KINDS = {
    "raised": "the verifier raised an exception",
    "not_a_number": "the verifier returned something that is not a number",
    "nan": "the verifier returned NaN or an infinity",
    "timeout": "the call ran past its deadline (verifier_timeout_s)",
    "crashed": "the worker process died during the call",
    "bad_batch": "a batched verifier returned something other than one result per sample",
}

_BATCHED_ATTRIBUTE = "__rlstack_batched__"


def batched(fn: F) -> F:
    """Mark a verifier as batched: it takes lists and returns a list of scores (or tuples).

    Example:
        @batched
        def lengths(prompts, responses, references, **extras):
            return [float(len(r) <= 100) for r in responses]
    """
    setattr(fn, _BATCHED_ATTRIBUTE, True)
    return fn


def is_batched(fn: Callable[..., Any]) -> bool:
    """Whether `fn` was marked with `@batched`."""
    return bool(getattr(fn, _BATCHED_ATTRIBUTE, False))


def is_async(fn: Callable[..., Any]) -> bool:
    """Whether calling `fn` returns a coroutine (an `async def` function or `__call__`)."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - callable objects with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


class Outcome(NamedTuple):
    """What one verifier call gave for one sample.

    `score` is the verifier's value, or None when it failed; `failure` is then one of
    `FAILURE_KINDS` and `message` says what happened.
    """

    score: float | None
    failure: str | None = None
    details: Any = None
    message: str | None = None


def failed(kind: str, message: str) -> Outcome:
    return Outcome(None, kind, None, message)


def read_result(result: Any) -> Outcome:
    """Read a verifier's return value: a number, or `(number, details)`."""
    details = None
    if isinstance(result, tuple) and len(result) == 2:
        result, details = result
    if isinstance(result, bool):
        result = float(result)
    if isinstance(result, (str, bytes)):  # float() would read "1.0"; a score is a number
        return Outcome(None, "not_a_number", details, f"returned {_short(repr(result))}")
    try:
        value = float(result)
    except (TypeError, ValueError, OverflowError):
        return Outcome(None, "not_a_number", details, f"returned {_short(result)}")
    if not math.isfinite(value):
        return Outcome(None, "nan", details, f"returned {value}")
    return Outcome(value, None, details)


def describe(exc: BaseException) -> str:
    """One line naming an exception raised by a verifier."""
    return _short(f"{type(exc).__name__}: {exc}", 300)


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
