"""Advantage estimation for every on-policy algorithm, selected by name.

One entry point, `estimate_advantages`, maps an algorithm's name to the pure functions in
`advantages.py`; the RL loop calls it without knowing which algorithm runs:

| name           | baseline                                  | algorithm                     |
| -------------- | ----------------------------------------- | ----------------------------- |
| `gae`          | a learned critic, GAE(gamma, lambda)       | PPO                           |
| `group`        | group mean (and std unless Dr. GRPO)       | GRPO, Dr. GRPO                |
| `rloo`         | mean of the group's other samples          | RLOO                          |
| `reinforce_pp` | none, or the group mean (`baseline=True`)  | REINFORCE++ (-baseline)       |
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlstack.algorithms.advantages import (
    expand_to_tokens,
    gae,
    group_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
    token_rewards,
    whiten,
)

WHITEN_BY_DEFAULT = {"gae": True, "group": False, "rloo": False, "reinforce_pp": True}


@dataclass
class AdvantageSpec:
    name: str  # gae | group | rloo | reinforce_pp
    group_size: int = 1
    normalize_std: bool = True  # group: divide by the group's std
    baseline: bool = False  # reinforce_pp: subtract the group mean score
    whiten: bool | None = None  # None: WHITEN_BY_DEFAULT[name]
    gamma: float = 1.0
    lam: float = 0.95


def estimate_advantages(
    spec: AdvantageSpec,
    scores: torch.Tensor,
    mask: torch.Tensor,
    kl_penalty: torch.Tensor | None = None,
    values: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token advantages (and returns for the critic, with `gae`).

    Args:
        spec: Which estimator and its parameters.
        scores: One reward per sample, `[batch]`; samples of a group are adjacent.
        mask: `[batch, T]`, 1.0 on response tokens.
        kl_penalty: Per-token KL times its coefficient, `[batch, T]`, subtracted from the reward
            (None when the KL is a loss term or disabled).
        values: Critic values, `[batch, T]` (`gae` only).

    Returns:
        `(advantages [batch, T], returns [batch, T] or None)`.
    """
    returns = None
    if spec.name in ("gae", "reinforce_pp"):
        rewards = token_rewards(scores, mask, kl_penalty, 1.0 if kl_penalty is not None else 0.0)
        if spec.name == "gae":
            if values is None:
                raise ValueError("gae advantages need critic values")
            advantages, returns = gae(rewards, values, mask, spec.gamma, spec.lam)
        else:
            baseline = None
            if spec.baseline:
                groups = scores.view(-1, spec.group_size)
                baseline = groups.mean(-1, keepdim=True).expand_as(groups).reshape(-1)
            advantages = reinforce_pp_advantages(rewards, mask, spec.gamma, baseline)
    else:
        effective = scores
        if kl_penalty is not None:
            effective = scores - (kl_penalty * mask).sum(-1)
        if spec.name == "group":
            per_sample = group_advantages(effective, spec.group_size, spec.normalize_std)
        elif spec.name == "rloo":
            per_sample = rloo_advantages(effective, spec.group_size)
        else:
            raise ValueError(f"unknown advantage estimator {spec.name!r}")
        advantages = expand_to_tokens(per_sample, mask)
    do_whiten = WHITEN_BY_DEFAULT[spec.name] if spec.whiten is None else spec.whiten
    if do_whiten:
        advantages = whiten(advantages, mask)
    return advantages, returns
