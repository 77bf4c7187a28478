"""The on-policy RL loop shared by PPO and GRPO.

One step: take the rollout generated for this step, score it (reward model or verifier), compute
reference and old logprobs (and critic values for GAE), compute advantages, update the policy
(and critic) in minibatches, and send the new weights to the running vLLM engines.

With `max_staleness: 1` the rollout for step t+1 is started *before* the update of step t, so
generation overlaps training; those samples come from weights one update old, and the policy
loss corrects for it with a truncated importance weight between the learner's logprobs and the
engine's (`is_cap`). With `max_staleness: 0` every rollout uses the latest weights.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import torch

from rlstack.algorithms import (
    expand_to_tokens,
    gae,
    group_advantages,
    kl_estimate,
    masked_mean,
    token_rewards,
    whiten,
)
from rlstack.config import RLConfig
from rlstack.errors import ConfigError
from rlstack.learner.worker import _split
from rlstack.rollout.group import RolloutGroup
from rlstack.scorers.verifier import VerifierScorer
from rlstack.stages.batches import prompt_ids, rollout_batch
from rlstack.stages.context import StageContext

logger = logging.getLogger(__name__)


class PromptSampler:
    """Shuffled passes over the training prompts; its position is part of the run state."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch, self.index = n, seed, 0, 0
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(self.n))
        random.Random(self.seed + self.epoch).shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.index == self.n:
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._shuffle()
            out.append(self._order[self.index])
            self.index += 1
        return out


class RLStage:
    def __init__(self, ctx: StageContext, stage: str) -> None:
        self.ctx, self.stage = ctx, stage
        self.c: RLConfig = getattr(ctx.cfg, stage)
        c = self.c
        if ctx.policy_path is None:
            raise ConfigError(
                f"{stage}: needs a policy checkpoint; run pretrain/sft first or "
                "set model.init to a checkpoint"
            )
        if c.reward_source == "reward_model" and ctx.reward_model_path is None:
            raise ConfigError(
                f"{stage}: reward_source is reward_model but no reward model was "
                "trained; add the reward_model stage before it"
            )
        self.train_rows, self.held_rows = ctx.load_data(stage)
        self.tokenizer = ctx.tokenizer()
        self.max_prompt = ctx.cfg.model.max_seq_len - c.sampling.max_tokens
        self.sampler = PromptSampler(len(self.train_rows), ctx.cfg.seed)
        self.samples_per_step = c.prompts_per_step * c.samples_per_prompt
        updates = c.steps * c.epochs * c.minibatches
        minibatch = self.samples_per_step // c.minibatches

        self.verifier = None
        if c.reward_source == "verifier":
            self.verifier = VerifierScorer(c.verifier, c.failure_score, env_vars=ctx.env_vars)
        # Every role starts loading at once; `.start()` below waits for all of them.
        rollout_cfg = vars(ctx.cfg.rollout).copy()
        self.rollout = RolloutGroup(
            ctx.policy_path,
            rollout_cfg,
            ctx.cfg.model.max_seq_len,
            ctx.cfg.seed,
            env_vars=ctx.env_vars,
        )
        self.policy = ctx.learner(
            f"{stage}/policy",
            "causal_lm",
            ctx.policy_path,
            c.optim,
            updates,
            minibatch,
            start=False,
        )
        self.ref = None
        if c.kl_coef > 0:
            self.ref = ctx.learner(
                f"{stage}/reference",
                "causal_lm",
                ctx.policy_path,
                None,
                1,
                self.samples_per_step,
                start=False,
            )
        self.reward_model = None
        if c.reward_source == "reward_model":
            self.reward_model = ctx.learner(
                f"{stage}/reward_model",
                "scalar",
                ctx.reward_model_path,
                None,
                1,
                self.samples_per_step,
                start=False,
            )
        self.critic = None
        if c.advantage == "gae":
            # The critic starts from the reward model when there is one (its head knows rewards).
            critic_init = ctx.reward_model_path or ctx.policy_path
            self.critic = ctx.learner(
                f"{stage}/critic",
                "scalar",
                critic_init,
                c.critic_optim,
                updates,
                minibatch,
                start=False,
            )
        timeout = ctx.cfg.ray.start_timeout_s
        for part in (self.policy, self.ref, self.reward_model, self.critic, self.rollout):
            if part is not None:
                part.start(timeout)
        self.sampling = vars(c.sampling).copy()
        self.algo = {
            "temperature": max(c.sampling.temperature, 1e-6),
            "clip_low": c.clip_low,
            "clip_high": c.clip_high,
            "is_cap": c.is_cap,
            "kl_coef": c.kl_coef,
            "kl_estimator": c.kl_estimator,
            "kl_in_reward": c.kl_in_reward,
            "value_clip": c.value_clip,
        }

    # -------------------------------------------------------------- rollout
    def _start_rollout(self, step: int) -> tuple[list[int], list[list[int]], Any]:
        indices = self.sampler.take(self.c.prompts_per_step)
        ids = [
            prompt_ids(self.tokenizer, self.train_rows[i]["prompt"], self.max_prompt)
            for i in indices
        ]
        pending = self.rollout.generate_async(
            ids, self.c.samples_per_prompt, self.sampling, seed=self.ctx.cfg.seed * 100003 + step
        )
        return indices, ids, pending

    def _score(
        self, rows: list[dict], samples: list[dict], batch: dict
    ) -> tuple[torch.Tensor, dict]:
        if self.reward_model is not None:
            return self.reward_model.infer("scores", batch), {}
        items = []
        for s in samples:
            row = rows[s["prompt_index"]]
            extras = {k: v for k, v in row.items() if k not in ("prompt", "reference", "response")}
            items.append(
                {
                    "prompt": row["prompt"],
                    "response": self.tokenizer.decode(s["response_ids"], skip_special_tokens=True),
                    "reference": str(row.get("reference", "")),
                    "extras": extras,
                }
            )
        scores, failures = self.verifier.score(items)
        return torch.tensor(scores, dtype=torch.float32), failures

    # ----------------------------------------------------------- advantages
    def _advantages(self, batch: dict, scores: torch.Tensor, kl: torch.Tensor | None):
        c, mask = self.c, batch["mask"]
        stats: dict[str, float] = {}
        if c.advantage == "gae":
            values = self.critic.infer("values", batch)
            kl_pen = kl if (kl is not None and c.kl_in_reward) else None
            rewards = token_rewards(scores, mask, kl_pen, c.kl_coef)
            advantages, returns = gae(rewards, values, mask, c.gamma, c.lam)
            advantages = whiten(advantages, mask)
            batch["old_values"], batch["returns"] = values, returns
            stats["value_mean"] = masked_mean(values, mask).item()
        else:
            effective = scores
            if kl is not None and c.kl_in_reward:
                effective = scores - c.kl_coef * (kl * mask).sum(-1)
            adv = group_advantages(effective, c.samples_per_prompt, c.normalize_group_std)
            groups = scores.view(-1, c.samples_per_prompt)
            stats["zero_variance_groups"] = (groups.std(-1) == 0).float().mean().item()
            advantages = expand_to_tokens(adv, mask)
        batch["advantages"] = advantages
        stats["advantage_mean"] = masked_mean(advantages, mask).item()
        stats["advantage_std"] = masked_mean(advantages**2, mask).sqrt().item()
        return stats

    # --------------------------------------------------------------- update
    def _update(self, batch: dict) -> dict[str, float]:
        c = self.c
        keys = [
            "input_ids",
            "attention_mask",
            "mask",
            "advantages",
            "old_logprobs",
            "rollout_logprobs",
        ]
        if "ref_logprobs" in batch and not c.kl_in_reward:
            keys.append("ref_logprobs")
        critic_keys = ["input_ids", "attention_mask", "mask", "old_values", "returns"]
        sums: dict[str, float] = {}
        count = 0
        gen = torch.Generator().manual_seed(self.ctx.cfg.seed)
        n = batch["input_ids"].shape[0]
        for _ in range(c.epochs):
            perm = torch.randperm(n, generator=gen)
            shuffled = {k: v[perm] for k, v in batch.items() if k in set(keys + critic_keys)}
            for mb in _split(shuffled, c.minibatches):
                out = self.policy.train("policy_step", {k: mb[k] for k in keys}, self.algo)
                if self.critic is not None:
                    out.update(
                        self.critic.train("value_step", {k: mb[k] for k in critic_keys}, self.algo)
                    )
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
        return {k: v / count for k, v in sums.items()}

    # ----------------------------------------------------------------- eval
    def evaluate(self, step: int, label: str | None = None) -> None:
        rows = self.held_rows[: self.c.eval_prompts]
        if not rows:
            return
        ids = [prompt_ids(self.tokenizer, r["prompt"], self.max_prompt) for r in rows]
        sampling = dict(self.sampling, temperature=self.c.sampling.eval_temperature)
        result = self.rollout.generate(ids, 1, sampling, seed=0)
        samples = result["samples"]
        batch = rollout_batch(ids, samples, self.tokenizer.pad_token_id)
        scores, failures = self._score(rows, samples, batch)
        values: dict[str, Any] = {"eval/reward_mean": scores.mean().item()}
        if self.verifier is not None:
            values["eval/pass_rate"] = (scores >= 1.0).float().mean().item()
            values["eval/failures"] = sum(failures.values())
        values["eval/response_length"] = batch["mask"].sum(-1).mean().item()
        values["eval/prompts"] = len(rows)
        if label:
            values["eval/checkpoint"] = label
        self.ctx.log(self.stage, step, values)

    # ----------------------------------------------------------------- loop
    def run(self, start_label: str | None) -> str:
        c = self.c
        self.evaluate(0, start_label)
        pending = self._start_rollout(1)
        for step in range(1, c.steps + 1):
            t0 = time.time()
            indices, ids, handles = pending
            result = RolloutGroup.collect(handles)
            t_gen = time.time() - t0
            if c.max_staleness >= 1 and step < c.steps:
                pending = self._start_rollout(step + 1)  # overlaps with this step's update
            rows = [self.train_rows[i] for i in indices]
            samples = result["samples"]
            batch = rollout_batch(ids, samples, self.tokenizer.pad_token_id)
            mask = batch["mask"]

            t1 = time.time()
            scores, failures = self._score(rows, samples, batch)
            t_score = time.time() - t1
            batch["old_logprobs"] = self.policy.infer("logprobs", batch, self.algo["temperature"])
            kl = None
            stats: dict[str, Any] = {}
            if self.ref is not None:
                batch["ref_logprobs"] = self.ref.infer("logprobs", batch, self.algo["temperature"])
                kl = kl_estimate(batch["old_logprobs"], batch["ref_logprobs"], c.kl_estimator)
                kl = kl * mask
                k3 = kl_estimate(batch["old_logprobs"], batch["ref_logprobs"], "k3") * mask
                stats["kl"] = (kl.sum(-1)).mean().item()
                stats["kl_k3"] = (k3.sum(-1)).mean().item()
            stats.update(self._advantages(batch, scores, kl))
            diff = (batch["old_logprobs"] - batch["rollout_logprobs"]).abs() * mask
            stats["logprob_diff_mean"] = (diff.sum() / mask.sum().clamp(min=1)).item()
            stats["logprob_diff_max"] = diff.max().item()

            t2 = time.time()
            stats.update(self._update(batch))
            t_update = time.time() - t2

            t3 = time.time()
            blob = self.policy.weights_blob_ref()
            sync_refs = self.rollout.update_weights(blob, wait=c.max_staleness == 0)
            t_sync = time.time() - t3
            if c.max_staleness == 0 and step < c.steps:
                pending = self._start_rollout(step + 1)

            stats.update(
                {
                    "reward_mean": scores.mean().item(),
                    "reward_std": scores.std().item() if len(scores) > 1 else 0.0,
                    "response_length": mask.sum(-1).mean().item(),
                    "rollout_tokens_per_s": result["tokens"] / max(result["seconds"], 1e-6),
                    "policy_version_lag": self.rollout.version - 1 - result["version"],
                    "time/rollout_wait": t_gen,
                    "time/score": t_score,
                    "time/update": t_update,
                    "time/sync": t_sync,
                    "time/step": time.time() - t0,
                }
            )
            if failures:
                stats.update({f"verifier_failures/{k}": v for k, v in failures.items()})
            self.ctx.log(self.stage, step, stats)
            if (c.eval_every and step % c.eval_every == 0) or step == c.steps:
                self.evaluate(step)
        import ray

        ray.get(sync_refs)
        path = self.ctx.checkpoint_dir(self.stage)
        self.policy.save(path)
        if self.critic is not None:
            self.critic.save(path + "-critic")
        return path

    def shutdown(self) -> None:
        for part in (
            self.rollout,
            self.policy,
            self.ref,
            self.reward_model,
            self.critic,
            self.verifier,
        ):
            if part is not None:
                part.shutdown()


def run(ctx: StageContext, stage: str, start_label: str | None = None) -> str:
    rl = RLStage(ctx, stage)
    try:
        return rl.run(start_label)
    finally:
        rl.shutdown()
