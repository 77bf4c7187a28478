"""The on-policy RL loop shared by PPO, GRPO, Dr. GRPO, RLOO and REINFORCE++.

One step: take the rollout generated for this step, score it (reward model or verifier), compute
old and reference logprobs (and critic values for GAE), estimate advantages with the configured
estimator, update the policy (and critic) in minibatches, and send the new weights to the
running vLLM engines. Algorithms differ only in config keys (`advantage`, clip ranges, KL
placement, loss aggregation), which select pure functions in `rlstack.algorithms`.

With `max_staleness: 1` the rollout for step t+1 starts *before* the update of step t, so
generation overlaps training; those samples come from weights one update old, and the policy
loss corrects for it with a truncated importance weight between the learner's logprobs and the
engine's (`is_cap`). With `max_staleness: 0` every rollout uses the latest weights.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import torch

from rlstack.algorithms import AdaptiveKLController, FixedKLController, kl_estimate, masked_mean
from rlstack.algorithms.estimators import AdvantageSpec, estimate_advantages
from rlstack.config import RLConfig
from rlstack.learner.group import combine_metrics
from rlstack.learner.microbatch import split_batch
from rlstack.rollout.engine import CPU_KV_BLOCK
from rlstack.rollout.group import RolloutGroup
from rlstack.stages.batches import prompt_ids
from rlstack.stages.context import StageContext
from rlstack.stages.rl_roles import start_roles
from rlstack.stages.rl_samples import PendingRollout, PromptSampler, Rollout
from rlstack.stages.rl_scoring import score_rollout
from rlstack.stages.state import StageState

logger = logging.getLogger(__name__)


class RLStage:
    def __init__(self, ctx: StageContext, stage: str) -> None:
        self.ctx, self.stage = ctx, stage
        self.c: RLConfig = getattr(ctx.cfg, stage)
        c = self.c
        self.train_rows, self.held_rows = ctx.load_data(stage)
        self.tokenizer = ctx.tokenizer()
        self.max_prompt = ctx.cfg.model.max_seq_len - c.sampling.max_tokens
        self.sampler = PromptSampler(len(self.train_rows), ctx.cfg.seed)
        self._next_prompts: list[int] | None = None  # the prompts of a saved next rollout
        self._score_lock = threading.Lock()
        self.roles = start_roles(ctx, stage, c, self._longest_prompt())
        self.sampling = vars(c.sampling).copy()
        self.adv_spec = AdvantageSpec(
            name=c.advantage,
            group_size=c.samples_per_prompt,
            normalize_std=c.normalize_group_std,
            baseline=c.reinforce_baseline,
            whiten=c.whiten_advantages,
            gamma=c.gamma,
            lam=c.lam,
        )
        self.kl_ctl = (
            AdaptiveKLController(c.kl_coef, c.kl_target, c.kl_horizon)
            if c.kl_target
            else FixedKLController(c.kl_coef)
        )
        self.algo = {
            "temperature": max(c.sampling.temperature, 1e-6),
            "clip_low": c.clip_low,
            "clip_high": c.clip_high,
            "dual_clip": c.dual_clip,
            "is_cap": c.is_cap,
            "entropy_coef": c.entropy_coef,
            "loss_agg": c.loss_agg,
            "norm_const": c.loss_norm_const or float(c.sampling.max_tokens),
            "kl_coef": c.kl_coef,
            "kl_estimator": c.kl_estimator,
            "kl_in_reward": c.kl_in_reward,
            "value_clip": c.value_clip,
        }

    def _longest_prompt(self) -> int | None:
        """The longest prompt in tokens, as far as the engines' prefix-caching choice needs it:
        None when that choice does not depend on it, the first length reaching one CPU KV block
        otherwise (no need to read further)."""
        rollout = self.ctx.cfg.rollout
        if rollout.prefix_caching is not None or rollout.gpus_per_engine > 0:
            return None
        longest = 0
        for row in self.train_rows + self.held_rows:
            longest = max(longest, len(prompt_ids(self.tokenizer, row["prompt"], self.max_prompt)))
            if longest >= CPU_KV_BLOCK:
                break
        return longest

    # -------------------------------------------------------------- rollout
    def _start_rollout(self, step: int, indices: list[int] | None = None) -> PendingRollout:
        """Queue a rollout on the engines; a driver thread collects and scores it."""
        if indices is None:
            indices = self.sampler.take(self.c.prompts_per_step)
        ids = [
            prompt_ids(self.tokenizer, self.train_rows[i]["prompt"], self.max_prompt)
            for i in indices
        ]
        handles = self.roles.rollout.generate_async(
            ids, self.c.samples_per_prompt, self.sampling, seed=self.ctx.cfg.seed * 100003 + step
        )
        # In-process verifiers (verifier_workers 0) score in the main thread, where a built-in
        # can time-limit itself with SIGALRM; a pool scores in the collecting thread.
        in_main = self.roles.verifier is not None and self.roles.verifier.in_process
        return PendingRollout(
            indices,
            lambda: self._finish_rollout(indices, ids, handles, score=not in_main),
            then=self._add_scores if in_main else None,
        )

    def _finish_rollout(
        self, indices: list[int], ids: list[list[int]], handles, score: bool = True
    ) -> Rollout:
        result = RolloutGroup.collect(handles)
        rollout = Rollout(
            prompt_ids=ids,
            rows=[self.train_rows[i] for i in indices],
            samples=result["samples"],
            tokens=result["tokens"],
            seconds=result["seconds"],
            version=result["version"],
        )
        if self.roles.reference is not None and not self.c.dynamic_sampling:
            # The reference is frozen, so its logprobs of these samples can be computed here,
            # while the learner updates, instead of in the next step's critical path.
            # (Dynamic sampling regroups samples, so it computes them in `_experience`.)
            batch = rollout.learner_batch(self.tokenizer.pad_token_id)
            batch["ref_logprobs"] = self.roles.reference.infer(
                "logprobs", batch, self.algo["temperature"]
            )
        return self._add_scores(rollout) if score else rollout

    def _add_scores(self, rollout: Rollout) -> Rollout:
        scores, rollout.failures, rollout.components = self._score(rollout)
        rollout.scores = scores.tolist()
        return rollout

    def _score(
        self, rollout: Rollout
    ) -> tuple[torch.Tensor, dict[str, int], dict[str, list[float]]]:
        """`score_rollout` for this stage; called from the rollout thread and from evaluation,
        one call at a time."""
        with self._score_lock:
            return score_rollout(
                rollout, self.roles, self.tokenizer, self.max_prompt, self.c.reward_model_weight
            )

    def _refill(self, rollout: Rollout, step: int) -> tuple[Rollout, dict[str, float]]:
        """Dynamic sampling: keep groups whose rewards differ; sample more prompts if short."""
        n, target = self.c.samples_per_prompt, self.c.prompts_per_step
        pool, tries = rollout, 1

        def informative(r: Rollout) -> list[list[int]]:
            return [g for g in r.groups(n) if len({r.scores[i] for i in g}) > 1]

        kept = informative(pool)
        while len(kept) < target and tries < self.c.max_sampling_tries:
            extra = self._start_rollout(10**6 * tries + step).result()
            pool.extend(extra)
            tries += 1
            kept = informative(pool)
        stats = {"dynamic_sampling/tries": tries, "dynamic_sampling/kept_groups": len(kept)}
        if not kept:
            return rollout, stats  # nothing informative: every advantage is zero anyway
        return pool.select(kept[:target]), stats

    # ----------------------------------------------------------- experience
    def _experience(self, rollout: Rollout) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        c, roles = self.c, self.roles
        batch = rollout.learner_batch(self.tokenizer.pad_token_id)
        mask = batch["mask"]
        scores = torch.tensor(rollout.scores, dtype=torch.float32)
        temperature = self.algo["temperature"]
        stats: dict[str, Any] = {}
        # With a single pass over the batch, the update's own first forward gives the old
        # logprobs (and the mismatch metric, and the KL to the reference when the KL is a loss
        # term); they are computed here only for several passes or a KL reward penalty.
        if self._needs_old_logprobs():
            batch["old_logprobs"] = roles.policy.infer("logprobs", batch, temperature)
            diff = (batch["old_logprobs"] - batch["rollout_logprobs"]).abs() * mask
            stats["logprob_diff_mean"] = (diff.sum() / mask.sum().clamp(min=1)).item()
            stats["logprob_diff_max"] = diff.max().item()

        kl_penalty = None
        if roles.reference is not None:
            if "ref_logprobs" not in batch:
                batch["ref_logprobs"] = roles.reference.infer("logprobs", batch, temperature)
            stats["kl_coef"] = self.kl_ctl.value
            if "old_logprobs" in batch:
                old, ref = batch["old_logprobs"], batch["ref_logprobs"]
                kl = kl_estimate(old, ref, c.kl_estimator) * mask
                stats["kl"] = kl.sum(-1).mean().item()
                stats["kl_k3"] = (kl_estimate(old, ref, "k3") * mask).sum(-1).mean().item()
                if c.kl_in_reward:
                    kl_penalty = self.kl_ctl.value * kl

        values = None
        if roles.critic is not None:
            values = roles.critic.infer("values", batch)
            stats["value_mean"] = masked_mean(values, mask).item()
        advantages, returns = estimate_advantages(self.adv_spec, scores, mask, kl_penalty, values)
        batch["advantages"] = advantages
        if returns is not None:
            batch["old_values"], batch["returns"] = values, returns

        n = c.samples_per_prompt
        if n > 1:
            groups = scores.view(-1, n)
            stats["zero_variance_groups"] = (
                (groups.max(-1).values == groups.min(-1).values).float().mean().item()
            )
        stats.update(
            {
                "reward_mean": scores.mean().item(),
                "reward_std": scores.std().item() if len(scores) > 1 else 0.0,
                "advantage_mean": masked_mean(advantages, mask).item(),
                "advantage_std": masked_mean(
                    (advantages - masked_mean(advantages, mask)) ** 2, mask
                )
                .sqrt()
                .item(),
                "response_length": mask.sum(-1).mean().item(),
            }
        )
        return batch, stats

    def _needs_old_logprobs(self) -> bool:
        c = self.c
        kl_penalty = self.roles.reference is not None and c.kl_in_reward
        return kl_penalty or c.epochs > 1 or c.minibatches > 1

    def _update_kl_coef(self, stats: dict[str, Any], samples: int) -> None:
        """Feed the measured KL (from the experience pass or the update's first forward) to
        the KL controller; the new coefficient applies from the next step."""
        if self.roles.reference is not None and "kl" in stats:
            self.kl_ctl.update(stats["kl"], samples)
            self.algo["kl_coef"] = self.kl_ctl.value

    # --------------------------------------------------------------- update
    def _update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        c = self.c
        keys = ["input_ids", "attention_mask", "mask", "advantages", "rollout_logprobs"]
        if "old_logprobs" in batch:
            keys.append("old_logprobs")
        if "ref_logprobs" in batch and not c.kl_in_reward:
            keys.append("ref_logprobs")
        critic_keys = ["input_ids", "attention_mask", "mask", "old_values", "returns"]
        results: list[dict[str, float]] = []
        gen = torch.Generator().manual_seed(self.ctx.cfg.seed)
        n = batch["input_ids"].shape[0]
        for _ in range(c.epochs):
            perm = torch.randperm(n, generator=gen)
            shuffled = {k: v[perm] for k, v in batch.items()}
            for mb in split_batch(shuffled, c.minibatches):
                out = self.roles.policy.train("policy_step", {k: mb[k] for k in keys}, self.algo)
                if self.roles.critic is not None:
                    out.update(
                        self.roles.critic.train(
                            "value_step", {k: mb[k] for k in critic_keys}, self.algo
                        )
                    )
                results.append(out)
        return combine_metrics(results)

    # ----------------------------------------------------------------- eval
    def evaluate(self, step: int, label: str | None = None) -> None:
        """Greedy responses to held-out prompts, scored like training samples."""
        rows = self.held_rows[: self.c.eval_prompts]
        if not rows:
            return
        ids = [prompt_ids(self.tokenizer, r["prompt"], self.max_prompt) for r in rows]
        sampling = dict(self.sampling, temperature=self.c.sampling.eval_temperature)
        result = self.roles.rollout.generate(ids, 1, sampling, seed=0)
        rollout = Rollout(prompt_ids=ids, rows=rows, samples=result["samples"])
        scores, failures, components = self._score(rollout)
        lengths = [len(s["response_ids"]) for s in rollout.samples]
        values: dict[str, Any] = {
            "eval/reward_mean": scores.mean().item(),
            "eval/response_length": sum(lengths) / len(lengths),
            "eval/prompts": len(rows),
        }
        if self.roles.verifier is not None:
            values["eval/pass_rate"] = (scores >= 1.0).float().mean().item()
            values["eval/failures"] = sum(failures.values())
            values.update({f"eval/reward/{k}": sum(v) / len(v) for k, v in components.items()})
        if label:
            values["eval/checkpoint"] = label
        self.ctx.log(self.stage, step, values)

    # ---------------------------------------------------------------- state
    def _state(self) -> StageState:
        """The resumable state: learners, the sampler's position, the prompts of the rollout
        already started for the next step, and the (adaptive) KL coefficient."""
        learners = {"policy": self.roles.policy}
        if self.roles.critic is not None:
            learners["critic"] = self.roles.critic

        def data_state() -> dict[str, Any]:
            return {
                "sampler": self.sampler.state(),
                "next_prompts": self._next_prompts,
                "kl_coef": self.kl_ctl.value,
            }

        def load_data_state(saved: dict[str, Any]) -> None:
            self.sampler.load_state(saved["sampler"])
            self._next_prompts = saved["next_prompts"]
            self.kl_ctl.value = self.algo["kl_coef"] = saved["kl_coef"]

        return StageState(
            self.ctx,
            self.stage,
            self.c.save_every,
            learners,
            data_state,
            load_data_state,
            len(self.train_rows),
        )

    # ----------------------------------------------------------------- loop
    def run(self, start_label: str | None) -> str:
        c, rollout_group = self.c, self.roles.rollout
        state = self._state()
        start = state.restore()
        if start == 0:
            self.evaluate(0, start_label)
            pending = self._start_rollout(1)
        else:
            # The engines loaded the stage's starting checkpoint: give them the restored weights.
            rollout_group.update_weights(self.roles.policy.weights_blob_ref())
            pending = self._start_rollout(start + 1, self._next_prompts)
        sync_refs: list = []
        # With max_staleness 1 the next step's rollout overlaps this step's update. It is queued
        # on the engines before this step's rollout is collected and scored, behind the weights
        # of the previous update, so the engines never wait for the scoring. (Dynamic sampling
        # queues it after scoring instead, so that refills are not queued behind it.)
        overlap = c.max_staleness >= 1
        queue_early = overlap and not c.dynamic_sampling
        for step in range(start + 1, c.steps + 1):
            self.ctx.step = step
            t0 = time.time()
            current = pending
            if queue_early and step < c.steps:
                pending = self._start_rollout(step + 1)
            rollout = current.result()
            t_rollout = time.time() - t0
            if overlap and not queue_early and step < c.steps:
                pending = self._start_rollout(step + 1)
            stats: dict[str, Any] = {}
            if c.dynamic_sampling:
                rollout, refill = self._refill(rollout, step)
                stats.update(refill)

            t1 = time.time()
            batch, experience = self._experience(rollout)
            stats.update(experience)
            stats.update(self._update(batch))
            self._update_kl_coef(stats, len(rollout.scores))
            t_update = time.time() - t1

            t2 = time.time()
            sync_refs = rollout_group.update_weights(
                self.roles.policy.weights_blob_ref(), wait=c.max_staleness == 0
            )
            t_sync = time.time() - t2
            if c.max_staleness == 0 and step < c.steps:
                pending = self._start_rollout(step + 1)

            stats.update(
                {
                    "rollout_tokens_per_s": rollout.tokens / max(rollout.seconds, 1e-6),
                    "policy_version_lag": rollout_group.version - 1 - rollout.version,
                    "time/rollout_and_score": t_rollout,
                    "time/experience_and_update": t_update,
                    "time/sync": t_sync,
                    "time/step": time.time() - t0,
                }
            )
            stats.update({f"reward/{k}": sum(v) / len(v) for k, v in rollout.components.items()})
            stats.update({f"verifier_failures/{k}": v for k, v in rollout.failures.items()})
            self.ctx.log(self.stage, step, stats)
            if (c.eval_every and step % c.eval_every == 0) or step == c.steps:
                self.evaluate(step)
            if state.due(step, c.steps):
                self._next_prompts = pending.indices  # the rollout of step + 1, already started
                state.save(step)
        rollout_group.wait(sync_refs)
        path = self.ctx.checkpoint_dir(self.stage)
        self.roles.policy.save(path)
        if self.roles.critic is not None:
            self.roles.critic.save(path + "-critic")
        return path


def run(ctx: StageContext, stage: str, start_label: str | None = None) -> str:
    rl = RLStage(ctx, stage)
    try:
        return rl.run(start_label)
    finally:
        rl.roles.shutdown()
