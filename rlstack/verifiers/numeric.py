"""Numeric answer checking for maths word problems (GSM8K and similar).

The answer of a response is, in order of preference: the number after the last `####` (GSM8K's
format), the content of the last `\\boxed{...}`, or the last number in the text. Numbers may
carry thousands commas (`1,000`), a sign, decimals, a simple fraction (`3/4`, `\\frac{3}{4}`) and
surrounding units, `$` or `%` (which are ignored: `50%` reads as 50).

A non-empty box is final: when it holds no real number (`\\boxed{\\sqrt{-1}}`, `\\boxed{99!}`
beyond 1e30) the response has no answer, whatever numbers precede the box.

Plain regular expressions handle nearly every response. Only a boxed answer that is not a plain
number (`\\boxed{2\\frac{1}{2}}`, `\\boxed{2\\sqrt{2}}`) goes through math-verify, under a time
limit. That limit uses SIGALRM, so it works only in a process's main thread on a POSIX system;
elsewhere such boxed answers fall back to the last plain number inside the box. A caller's own
SIGALRM timer, if any, is cancelled by that step.
"""

import logging
import re
import signal
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction

logger = logging.getLogger(__name__)

# An integer with or without thousands commas ("1,000" but not "1,2,3").
_INT = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-+\u2212])?"  # a sign, not glued to a preceding word ("3-5" is 5)
    r"(?:\\[dt]?frac\{\s*(?P<num>\d+(?:\.\d+)?)\s*\}\{\s*(?P<den>\d+(?:\.\d+)?)\s*\}"
    rf"|(?P<plain>(?:{_INT}(?:\.\d+)?|\.\d+)(?:/{_INT}(?!\.\d))?))"
)
# Decorations removed from a boxed answer before reading it as a plain number.
_DECORATION = re.compile(
    r"\\(?:text|mbox|mathrm|textbf)\{[^{}]*\}|\\(?:left|right|q?quad)|\\[$%,!;: ]"
    r"|\^\{?\\circ\}?|[$%~\s]"
)
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
# Largest magnitude accepted from a symbolic (math-verify) answer, to keep arithmetic cheap.
_MAX_SYMBOLIC = 10**30
_MAX_SYMBOLIC_CHARS = 200
_TIME_LIMIT_S = 1


def _normalise(match: re.Match) -> str:
    """The matched number as a plain string: no commas, ASCII minus, no leading plus."""
    sign = "-" if match["sign"] in ("-", "\u2212") else ""
    if match["plain"] is not None:
        return sign + match["plain"].replace(",", "")
    return f"{sign}{match['num']}/{match['den']}"


def _last_number(text: str) -> str | None:
    last = deque(_NUMBER.finditer(text), maxlen=1)
    return _normalise(last[0]) if last else None


def _last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (braces balanced), or None if there is none."""
    starts = [m.end() for m in _BOX.finditer(text)]
    if not starts:
        return None

    depth = 1
    for i in range(starts[-1], len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[starts[-1] : i]
    return None  # unbalanced, e.g. a response cut off inside the box


def _can_time_limit() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


class _TimeLimitExceeded(Exception):
    pass


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise `_TimeLimitExceeded` in the main thread if the block runs longer than `seconds`."""

    def on_alarm(signum, frame):
        raise _TimeLimitExceeded

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _parse_latex(content: str) -> object | None:
    """math-verify's reading of a boxed answer (a sympy object), or None if it has none."""
    try:
        import sympy
        from math_verify import parse

        parsed = parse(f"\\boxed{{{content}}}", parsing_timeout=_TIME_LIMIT_S)
        expr = next((p for p in parsed if isinstance(p, sympy.Basic)), None)
        if isinstance(expr, sympy.Equality):  # "x = 5" answers 5
            expr = expr.rhs
        return expr
    except Exception:  # math-verify fails in many ways on odd input
        logger.debug("math-verify could not parse %r", content[:80], exc_info=True)
        return None


def _format_number(expr: object) -> str | None:
    """A sympy number as a string; None if it is not real, not finite or too large."""
    try:
        with _time_limit(_TIME_LIMIT_S):
            value = expr.evalf(30)
            if not (value.is_real and value.is_finite) or abs(value) >= _MAX_SYMBOLIC:
                return None
            if expr.is_Rational:
                return str(expr.p) if expr.q == 1 else f"{expr.p}/{expr.q}"
            text = str(value)
            return text.rstrip("0").rstrip(".") if "." in text and "e" not in text else text
    except Exception:  # sympy evaluation can fail or run out of time on odd input
        logger.debug("could not evaluate a boxed answer", exc_info=True)  # no repr: it can hang
        return None


def _boxed_number(content: str) -> str | None:
    """The number a boxed answer holds, or None if it holds no real number."""
    cleaned = _DECORATION.sub("", content.replace("{,}", ",")).rstrip(".")
    match = _NUMBER.fullmatch(cleaned)
    if match is not None:
        return _normalise(match)

    if _can_time_limit() and len(content) <= _MAX_SYMBOLIC_CHARS:
        expr = _parse_latex(content)
        if expr is not None and expr.is_number:
            return _format_number(expr)
    return _last_number(content)  # e.g. "18 apples", or math-verify unavailable


def extract_number(text: str) -> str | None:
    """Find the numeric answer in a response or reference.

    Args:
        text: A response, or a reference such as `"1,000"` or a full GSM8K solution.

    Returns:
        The number as a plain string without commas or units (`"-3.5"`, `"3/4"`, `"1000"`), or
        None when the text holds no number (or is not a string).
    """
    if not isinstance(text, str):
        return None

    if "####" in text:
        match = _NUMBER.search(text.rsplit("####", 1)[1])
        if match is not None:
            return _normalise(match)

    boxed = _last_boxed(text)
    if boxed is not None and boxed.strip():
        return _boxed_number(boxed)

    return _last_number(text)


def _to_fraction(number: str | float) -> Fraction:
    if isinstance(number, str):
        number = re.sub(r"[,$%\s]", "", number).replace("\u2212", "-")
    return Fraction(number)


def numbers_equal(a: str | float, b: str | float, rel_tol: float = 1e-6) -> bool:
    """Whether two numbers are equal: exactly if both are whole, else within a relative tolerance.

    Whole numbers are compared exactly because a relative tolerance would accept large ones that
    are off by one (1,450,001 differs from 1,450,000 by only 7e-7); the tolerance is for decimals
    and fractions (`"0.333333"` against `"1/3"`, `"18.000000000000004"` against `"18"`).

    Args:
        a: A number, or a string such as `"1,000"`, `"-3.5"`, `"3/4"`, `"$18"`.
        b: The same.
        rel_tol: Largest accepted `|a - b| / max(|a|, |b|)` unless both are whole.

    Returns:
        True when equal; False when not, or when either is not a number.
    """
    try:
        x, y = _to_fraction(a), _to_fraction(b)
    except (ValueError, TypeError, ZeroDivisionError, OverflowError):
        return False
    if x == y:
        return True
    if x.denominator == 1 and y.denominator == 1:
        return False
    return abs(x - y) <= Fraction(rel_tol) * max(abs(x), abs(y))


def numeric_match(prompt: str, response: str, reference: str, **extras: object) -> float:
    """Verifier: 1.0 when the response's numeric answer equals the reference's, else 0.0.

    Args:
        prompt: The prompt (unused).
        response: The model's response.
        reference: The reference answer: a number (`"1,000"`) or a GSM8K solution ending in
            `#### N`.
        **extras: Other fields of the data row (unused).

    Returns:
        1.0 or 0.0; 0.0 also when either side holds no number.
    """
    expected = extract_number(reference)
    answer = extract_number(response)
    if expected is None or answer is None:
        return 0.0
    return 1.0 if numbers_equal(answer, expected) else 0.0
