"""Held-out evaluation shared by the stages."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from rlstack.learner.group import LearnerGroup


def lm_val_loss(learner: LearnerGroup, batches: Iterable[dict[str, torch.Tensor]]) -> float:
    """Mean next-token loss (nats per counted token) over held-out batches."""
    loss, tokens = 0.0, 0.0
    for batch in batches:
        out = learner.evaluate("lm_eval", batch)
        loss += out["loss_sum"]
        tokens += out["tokens"]
    return loss / tokens if tokens else math.nan


def chunks(rows: list, size: int) -> Iterable[list]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]
