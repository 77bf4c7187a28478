"""Splitting a batch of tensors into contiguous parts (ranks, minibatches, micro-batches)."""

from __future__ import annotations

import torch


def split_batch(batch: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    """At most `parts` contiguous slices of every tensor along the first dimension, sizes
    differing by at most one."""
    size = next(iter(batch.values())).shape[0]
    parts = max(1, min(parts, size))
    bounds = [round(i * size / parts) for i in range(parts + 1)]
    return [{k: v[a:b] for k, v in batch.items()} for a, b in zip(bounds, bounds[1:])]
