"""Embedded default data: small synthetic sets that a tiny character-level model learns on CPU.

    synthetic_records("text")          # [{"text": corpus}], about 100 KB of printable ASCII
    synthetic_records("arithmetic")    # [{"prompt": "3+4", "reference": "7", "response": "7"}]
    synthetic_records("preferences")   # [{"prompt": "3+4", "chosen": "7", "rejected": "9"}]

Everything is built in memory from a seeded random generator: the same name, size and seed give
the same records on every machine, with no files and no network. The arithmetic uses operands
from 0 to 99 (half of them single digit), the operators + and -, and never a negative result, so
every character is printable ASCII and a model of a few layers learns the sums in a few hundred
steps. Use it through `load_records("synthetic:<name>")`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

from rlstack.errors import DataError

logger = logging.getLogger(__name__)

ADJECTIVES = ("red", "blue", "small", "big", "old", "new", "green", "quick", "slow", "happy")
NOUNS = ("cat", "dog", "fox", "bird", "fish", "frog", "cow", "hen", "bee", "owl")
VERBS = ("sees", "likes", "finds", "helps", "chases", "meets", "follows", "hears")
PLACES = ("the park", "the barn", "the pond", "the hill", "the house", "the field")

MAX_OPERAND = 99


def arithmetic_problem(rng: random.Random) -> tuple[str, int]:
    """Draw one problem such as ("34-5", 29): + or -, operands 0-99, result never negative."""
    a, b = _operand(rng), _operand(rng)
    if rng.random() < 0.5:
        return f"{a}+{b}", a + b
    a, b = max(a, b), min(a, b)
    return f"{a}-{b}", a - b


def _operand(rng: random.Random) -> int:
    """A single-digit number half of the time, a two-digit one otherwise."""
    return rng.randint(0, 9) if rng.random() < 0.5 else rng.randint(10, MAX_OPERAND)


def _unique_problems(rng: random.Random, n: int) -> list[tuple[str, int]]:
    """`n` arithmetic problems with distinct prompts, in the order drawn."""
    seen: dict[str, int] = {}
    attempts = 0
    while len(seen) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise DataError(f"synthetic: cannot draw {n} distinct arithmetic problems")
        prompt, result = arithmetic_problem(rng)
        seen.setdefault(prompt, result)
    return list(seen.items())


def _arithmetic(rng: random.Random, n: int) -> list[dict]:
    """Rows `{"prompt": "3+4", "reference": "7", "response": "7"}` with distinct prompts."""
    return [
        {"prompt": prompt, "reference": str(result), "response": str(result)}
        for prompt, result in _unique_problems(rng, n)
    ]


def _preferences(rng: random.Random, n: int) -> list[dict]:
    """Rows `{"prompt", "chosen", "rejected"}`: chosen is the right result, rejected a wrong one.

    Wrong results are mostly near misses (off by 1-3, or by 10), sometimes any number up to 198,
    so a reward model has to read the digits rather than the length.
    """
    rows = []
    for prompt, result in _unique_problems(rng, n):
        rows.append({"prompt": prompt, "chosen": str(result), "rejected": str(_wrong(rng, result))})
    return rows


def _wrong(rng: random.Random, result: int) -> int:
    """A non-negative number different from `result`."""
    while True:
        kind = rng.random()
        if kind < 0.5:
            wrong = result + rng.choice((-3, -2, -1, 1, 2, 3))
        elif kind < 0.75:
            wrong = result + rng.choice((-10, 10))
        else:
            wrong = rng.randint(0, 2 * MAX_OPERAND)
        if wrong >= 0 and wrong != result:
            return wrong


def _text(rng: random.Random, n: int) -> list[dict]:
    """One record `{"text": corpus}` of `n` lines mixing sums, counting and short sentences."""
    makers = (_sum_line, _count_line, _sentence_line, _compare_line, _letters_line)
    lines = [rng.choice(makers)(rng) for _ in range(n)]
    return [{"text": "\n".join(lines) + "\n"}]


def _sum_line(rng: random.Random) -> str:
    prompt, result = arithmetic_problem(rng)
    return f"{prompt}={result}."


def _count_line(rng: random.Random) -> str:
    start, length = rng.randint(0, 90), rng.randint(4, 8)
    numbers = range(start, start + length)
    if rng.random() < 0.3:
        return "count down " + " ".join(str(i) for i in reversed(numbers)) + "."
    return "count " + " ".join(str(i) for i in numbers) + "."


def _sentence_line(rng: random.Random) -> str:
    subject = f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    obj = f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
    return f"{subject} {rng.choice(VERBS)} {obj} at {rng.choice(PLACES)}."


def _compare_line(rng: random.Random) -> str:
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    relation = "more than" if a > b else "less than" if a < b else "equal to"
    return f"{a} is {relation} {b}."


def _letters_line(rng: random.Random) -> str:
    start, length = rng.randint(0, 20), rng.randint(3, 6)
    return " ".join(chr(ord("a") + i) for i in range(start, start + length)) + "."


# name -> (builder, default size); the size is rows for pair sets and lines for "text".
SYNTHETIC: dict[str, tuple[Callable[[random.Random, int], list[dict]], int]] = {
    "text": (_text, 4000),
    "arithmetic": (_arithmetic, 2000),
    "preferences": (_preferences, 2000),
}


def synthetic_records(name: str, n: int | None = None, seed: int = 0) -> list[dict]:
    """Build an embedded synthetic data set.

    Args:
        name: "text", "arithmetic" or "preferences" (see the module docstring).
        n: rows for "arithmetic" and "preferences" (default 2000; prompts are distinct and only
            15,050 exist), lines of the corpus for "text" (default 4000, about 100 KB).
        seed: the same name, n and seed always give the same records.

    Raises:
        DataError: the name is unknown or n is not positive.
    """
    if name not in SYNTHETIC:
        raise DataError(f"synthetic:{name}: unknown synthetic data set (known: {_known()})")
    build, default_n = SYNTHETIC[name]
    n = default_n if n is None else n
    if n < 1:
        raise DataError(f"synthetic:{name}: n must be >= 1, got {n}")

    rng = random.Random(f"{name}:{seed}")
    records = build(rng, n)
    logger.debug("built synthetic:%s with n=%d seed=%d", name, n, seed)
    return records


def _known() -> str:
    return ", ".join(sorted(SYNTHETIC))
