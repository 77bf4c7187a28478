"""The actors an RL stage needs, started together.

- policy: a trainable learner group (DeepSpeed), the model being optimised;
- reference: a frozen copy of the starting policy, when the KL coefficient is nonzero;
- reward_model: a frozen scalar-head model scoring whole sequences (reward_source reward_model,
  or reward_model_weight with a verifier), or the client of a reward-model server when the
  config names a URL (`rlstack serve-rm`);
- critic: a trainable scalar-head group (GAE only), started from the reward model, or from the
  policy when the reward model is remote (its weights are not here);
- verifier: a pool of verifier actors (reward_source verifier);
- rollout: the vLLM engines, started from the policy checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from rlstack.config import RLConfig
from rlstack.errors import ConfigError
from rlstack.learner.group import LearnerGroup
from rlstack.rollout.group import RolloutGroup
from rlstack.scorers.reward_http import RemoteRewardModel, is_reward_url
from rlstack.scorers.verifier import VerifierScorer
from rlstack.stages.context import StageContext

logger = logging.getLogger(__name__)


@dataclass
class RLRoles:
    policy: LearnerGroup
    rollout: RolloutGroup
    reference: LearnerGroup | None = None
    reward_model: LearnerGroup | RemoteRewardModel | None = None
    critic: LearnerGroup | None = None
    verifier: VerifierScorer | None = None

    def shutdown(self) -> None:
        for part in (
            self.rollout,
            self.policy,
            self.reference,
            self.reward_model,
            self.critic,
            self.verifier,
        ):
            if part is not None:
                part.shutdown()


def start_roles(ctx: StageContext, stage: str, c: RLConfig, longest_prompt: int | None) -> RLRoles:
    """Start every role at once (actors load in parallel), then wait for all of them.
    `longest_prompt` (tokens) is what the rollout engines' prefix-caching choice depends on."""
    if ctx.policy_path is None:
        raise ConfigError(
            f"{stage}: needs a policy checkpoint; run pretrain/sft first or set "
            "model.init to a checkpoint"
        )
    reward_model_path = c.reward_model or ctx.reward_model_path
    uses_reward_model = c.reward_source == "reward_model" or c.reward_model_weight != 0
    if uses_reward_model and reward_model_path is None:
        raise ConfigError(
            f"{stage}: reward_source is reward_model (or reward_model_weight is set) but no "
            "reward model was trained; add the reward_model stage before it"
        )
    remote_rm = None
    if uses_reward_model and is_reward_url(reward_model_path):
        remote_rm = RemoteRewardModel(
            reward_model_path, c.reward_timeout_s, c.reward_retries, key=f"{stage}.reward_model"
        )
        remote_rm.check()  # before any actor starts
    samples = c.prompts_per_step * c.samples_per_prompt
    updates = c.steps * c.epochs * c.minibatches
    minibatch = samples // c.minibatches

    verifier = None
    if c.reward_source == "verifier":
        verifier = VerifierScorer(
            c.verifier,
            c.failure_score,
            num_workers=c.verifier_workers,
            cpus_per_worker=c.verifier_cpus_per_worker,
            timeout_s=c.verifier_timeout_s,
            env_vars=ctx.env_vars,
            start_timeout_s=ctx.cfg.ray.start_timeout_s,
            resources=c.verifier_resources,
        )
        where = f"a pool of {c.verifier_workers} actor(s)" if c.verifier_workers else "the driver"
        logger.info("%s: verifiers run in %s", stage, where)
    rollout = RolloutGroup(
        ctx.policy_path,
        vars(ctx.cfg.rollout).copy(),
        ctx.cfg.model.max_seq_len,
        ctx.cfg.seed,
        env_vars=ctx.env_vars,
        longest_prompt=longest_prompt,
    )
    roles = RLRoles(
        policy=ctx.learner(
            f"{stage}/policy",
            "causal_lm",
            ctx.policy_path,
            c.optim,
            updates,
            minibatch,
            start=False,
        ),
        rollout=rollout,
        verifier=verifier,
    )
    if c.kl_coef > 0:
        roles.reference = ctx.learner(
            f"{stage}/reference", "causal_lm", ctx.policy_path, None, 1, samples, start=False
        )
    if remote_rm is not None:
        roles.reward_model = remote_rm
    elif uses_reward_model:
        roles.reward_model = ctx.learner(
            f"{stage}/reward_model", "scalar", reward_model_path, None, 1, samples, start=False
        )
    if c.advantage == "gae":
        # The critic starts from the reward model when there is one: its head knows rewards.
        # A remote reward model's weights are not here: the critic then starts from the policy
        # (its head at zero).
        local_rm = None if is_reward_url(reward_model_path) else reward_model_path
        critic_init = local_rm or ctx.policy_path
        roles.critic = ctx.learner(
            f"{stage}/critic",
            "scalar",
            critic_init,
            c.critic_optim,
            updates,
            minibatch,
            start=False,
        )
    timeout = ctx.cfg.ray.start_timeout_s
    try:
        parts = (roles.policy, roles.reference, roles.reward_model, roles.critic, rollout, verifier)
        for part in parts:
            if part is not None:
                part.start(timeout)
    except BaseException:
        roles.shutdown()
        raise
    return roles
