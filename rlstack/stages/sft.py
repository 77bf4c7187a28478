"""Supervised fine-tuning: next-token loss on response tokens of chat-formatted pairs."""

from __future__ import annotations

import random
import time

from rlstack.stages.batches import sft_batch
from rlstack.stages.context import StageContext
from rlstack.stages.evaluation import chunks, lm_val_loss, train_and_save
from rlstack.stages.state import random_state

STAGE = "sft"


def run(ctx: StageContext) -> str:
    c = ctx.cfg.sft
    train, held = ctx.load_data(STAGE)
    learner = ctx.learner(STAGE, "causal_lm", ctx.policy_path, c.optim, c.steps, c.batch_size)
    tokenizer = ctx.tokenizer()
    max_len = ctx.cfg.model.max_seq_len
    rng = random.Random(ctx.cfg.seed)
    eval_rows = held[: c.eval_batches * c.batch_size]

    def evaluate(step: int) -> None:
        batches = (sft_batch(tokenizer, rows, max_len) for rows in chunks(eval_rows, c.batch_size))
        ctx.log(STAGE, step, {"eval/val_loss": lm_val_loss(learner, batches)})

    order: list[int] = []

    def step(_: int) -> dict[str, float]:
        if len(order) < c.batch_size:
            fresh = list(range(len(train)))
            rng.shuffle(fresh)
            order.extend(fresh)
        rows = [train[i] for i in order[: c.batch_size]]
        del order[: c.batch_size]
        t0 = time.time()
        out = learner.train("lm_step", sft_batch(tokenizer, rows, max_len))
        out["tokens_per_s"] = out.pop("tokens") / (time.time() - t0)
        return out

    def load_data_state(saved: dict) -> None:
        rng.setstate(random_state(saved["rng"]))
        order[:] = saved["order"]

    return train_and_save(
        ctx,
        STAGE,
        learner,
        step,
        evaluate,
        lambda: {"rng": rng.getstate(), "order": order},
        load_data_state,
        len(train),
    )
