"""Split rows into a training set and a held-out evaluation set."""

from __future__ import annotations

import random
from typing import TypeVar

from rlstack.errors import ConfigError

T = TypeVar("T")


def split_rows(rows: list[T], eval_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Shuffle a copy of `rows` with `seed`, then hold out `eval_fraction` of it.

    The same rows, fraction and seed always give the same split. When `eval_fraction` > 0 and
    there are at least 2 rows, the evaluation set has at least 1 row and the training set keeps
    at least 1.

    Returns:
        (train, eval), together a permutation of `rows`.

    Raises:
        ConfigError: `eval_fraction` is not in [0, 1).
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ConfigError(f"eval_fraction must be in [0, 1), got {eval_fraction}")

    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)

    n_eval = round(len(shuffled) * eval_fraction)
    if eval_fraction > 0 and len(shuffled) >= 2:
        n_eval = min(max(n_eval, 1), len(shuffled) - 1)
    n_train = len(shuffled) - n_eval
    return shuffled[:n_train], shuffled[n_train:]
