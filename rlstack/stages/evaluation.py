"""Held-out evaluation shared by the stages."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from rlstack.learner.group import LearnerGroup
from rlstack.stages.context import StageContext
from rlstack.stages.state import StageState


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


def train_steps(
    ctx: StageContext,
    stage: str,
    steps: int,
    eval_every: int,
    step_fn: Callable[[int], dict[str, float]],
    evaluate: Callable[[int], None],
    state: StageState,
) -> None:
    """The step loop of a supervised stage: evaluate at step 0, every `eval_every` steps and
    after the last step; log `step_fn`'s metrics every 10 steps and at the last; save the
    resumable `state` every `state.save_every` steps. A resumed run continues after the step
    of the restored state (its step-0 evaluation is not repeated)."""
    start = state.restore()
    if start == 0:
        evaluate(0)
    for step in range(start + 1, steps + 1):
        ctx.step = step
        out = step_fn(step)
        if step % 10 == 0 or step == steps:
            ctx.log(stage, step, out)
        if eval_every and step % eval_every == 0 and step != steps:
            evaluate(step)
        if state.due(step, steps):
            state.save(step)
    evaluate(steps)


def train_and_save(
    ctx: StageContext,
    stage: str,
    learner: LearnerGroup,
    step_fn: Callable[[int], dict[str, float]],
    evaluate: Callable[[int], None],
    data_state: Callable[[], dict[str, Any]],
    load_data_state: Callable[[dict[str, Any]], None],
    train_rows: int,
    also_shut_down: tuple[LearnerGroup, ...] = (),
) -> str:
    """The rest of a supervised stage: its steps with resumable state (`data_state` says what
    picks the next batches), then its checkpoint; the learners are shut down either way."""
    c = getattr(ctx.cfg, stage)
    state = StageState(
        ctx, stage, c.save_every, {"policy": learner}, data_state, load_data_state, train_rows
    )
    try:
        train_steps(ctx, stage, c.steps, c.eval_every, step_fn, evaluate, state)
        path = ctx.checkpoint_dir(stage)
        learner.save(path)
        return path
    finally:
        learner.shutdown()
        for other in also_shut_down:
            other.shutdown()
