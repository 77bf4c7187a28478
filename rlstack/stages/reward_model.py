"""Reward model: a scalar head on the policy backbone, trained with the Bradley-Terry loss.

Held-out pair accuracy (chosen scored above rejected) is logged as `eval/pair_accuracy`.
"""

from __future__ import annotations

import random
import time

from rlstack.stages.batches import pair_batch
from rlstack.stages.context import StageContext
from rlstack.stages.evaluation import chunks, train_and_save
from rlstack.stages.state import random_state

STAGE = "reward_model"


def run(ctx: StageContext) -> str:
    c = ctx.cfg.reward_model
    if ctx.policy_path is None:
        from rlstack.errors import ConfigError

        raise ConfigError(
            "reward_model: needs a base model; run pretrain/sft first or set "
            "model.init to a checkpoint"
        )
    train, held = ctx.load_data(STAGE)
    learner = ctx.learner(STAGE, "scalar", ctx.policy_path, c.optim, c.steps, c.batch_size)
    tokenizer = ctx.tokenizer()
    max_len = ctx.cfg.model.max_seq_len
    rng = random.Random(ctx.cfg.seed)
    eval_rows = held[: c.eval_batches * c.batch_size]

    def evaluate(step: int) -> None:
        stats = {"loss_sum": 0.0, "correct": 0.0, "pairs": 0.0}
        for rows in chunks(eval_rows, c.batch_size):
            out = learner.evaluate("pair_eval", pair_batch(tokenizer, rows, max_len))
            for k in stats:
                stats[k] += out[k]
        n = max(1.0, stats["pairs"])
        ctx.log(
            STAGE,
            step,
            {
                "eval/loss": stats["loss_sum"] / n,
                "eval/pair_accuracy": stats["correct"] / n,
                "eval/pairs": int(stats["pairs"]),
            },
        )

    def step(_: int) -> dict[str, float]:
        rows = rng.sample(train, min(c.batch_size, len(train)))
        t0 = time.time()
        out = learner.train("pair_step", pair_batch(tokenizer, rows, max_len))
        out["pairs_per_s"] = len(rows) / (time.time() - t0)
        return out

    return train_and_save(
        ctx,
        STAGE,
        learner,
        step,
        evaluate,
        lambda: {"rng": rng.getstate()},
        lambda saved: rng.setstate(random_state(saved["rng"])),
        len(train),
    )
