"""DPO: the policy learns from preference pairs directly, against a frozen reference copy.

Held-out figures: `eval/margin` is the mean implicit-reward margin
`beta * ((logp(chosen) - ref(chosen)) - (logp(rejected) - ref(rejected)))` (0 at the start),
`eval/logratio` the policy's own `logp(chosen) - logp(rejected)` (it starts at the
reference's, `eval/ref_logratio`), and `eval/reward_accuracy` the share of pairs whose margin is
positive (a margin of exactly 0 counts half, so it is 0.5 at the start).
"""

from __future__ import annotations

import random
import time

import torch

from rlstack.errors import ConfigError
from rlstack.stages.batches import pair_batch
from rlstack.stages.context import StageContext
from rlstack.stages.evaluation import chunks, train_and_save
from rlstack.stages.state import random_state

STAGE = "dpo"


def run(ctx: StageContext) -> str:
    c = ctx.cfg.dpo
    if ctx.policy_path is None:
        raise ConfigError(
            "dpo: needs a policy checkpoint; run pretrain/sft first or set "
            "model.init to a checkpoint"
        )
    train, held = ctx.load_data(STAGE)
    policy = ctx.learner(
        STAGE, "causal_lm", ctx.policy_path, c.optim, c.steps, c.batch_size, start=False
    )
    reference = ctx.learner(
        f"{STAGE}/reference", "causal_lm", ctx.policy_path, None, 1, c.batch_size, start=False
    )
    policy.start(ctx.cfg.ray.start_timeout_s)
    reference.start(ctx.cfg.ray.start_timeout_s)
    tokenizer = ctx.tokenizer()
    max_len = ctx.cfg.model.max_seq_len
    rng = random.Random(ctx.cfg.seed)
    eval_batches = [
        pair_batch(tokenizer, rows, max_len)
        for rows in chunks(held[: c.eval_batches * c.batch_size], c.batch_size)
    ]
    eval_ref = [reference.infer("pair_logps", b) for b in eval_batches]

    def evaluate(step: int) -> None:
        policy_logps = torch.cat([policy.infer("pair_logps", b) for b in eval_batches])
        ref_logps = torch.cat(eval_ref)
        logratio = policy_logps[:, 0] - policy_logps[:, 1]
        ref_logratio = ref_logps[:, 0] - ref_logps[:, 1]
        margin = c.beta * (logratio - ref_logratio)
        ctx.log(
            STAGE,
            step,
            {
                "eval/margin": margin.mean().item(),
                "eval/logratio": logratio.mean().item(),
                "eval/ref_logratio": ref_logratio.mean().item(),
                # A tie (the policy still equals the reference) counts half, like a coin flip.
                "eval/reward_accuracy": ((margin > 0).float() + 0.5 * (margin == 0).float())
                .mean()
                .item(),
                "eval/pairs": len(margin),
            },
        )

    def step(_: int) -> dict[str, float]:
        rows = rng.sample(train, min(c.batch_size, len(train)))
        batch = pair_batch(tokenizer, rows, max_len)
        t0 = time.time()
        batch["ref_logps"] = reference.infer("pair_logps", batch)
        out = policy.train("dpo_step", batch, c.beta)
        out["pairs_per_s"] = len(rows) / (time.time() - t0)
        return out

    return train_and_save(
        ctx,
        STAGE,
        policy,
        step,
        evaluate,
        lambda: {"rng": rng.getstate()},
        lambda saved: rng.setstate(random_state(saved["rng"])),
        len(train),
        also_shut_down=(reference,),
    )
