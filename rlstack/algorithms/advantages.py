"""Advantage estimators: GAE (PPO), group baselines (GRPO, Dr. GRPO, RLOO), REINFORCE++.

Per-token tensors are `[batch, T]` over response positions with `mask` 1.0 on response tokens;
per-sample tensors are `[batch]`. Group estimators take the scores of `N = n_prompts * group_size`
samples laid out group after group (the samples of one prompt are contiguous).

Positions where `mask` is 0 are skipped by the backward recursions (GAE, return-to-go): the value
and advantage after a masked stretch carry over it, undiscounted, so a mask with holes (e.g.
tool output inside a response) works, and right padding bootstraps 0 after the last valid token.
"""

import torch

from rlstack.algorithms.losses import masked_mean, masked_sum
from rlstack.errors import ConfigError


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016).

    `delta_t = r_t + gamma * V_{t+1} - V_t` and `A_t = delta_t + gamma * lam * A_{t+1}`, with
    `V` and `A` taken as 0 after the last valid token.

    Args:
        rewards: Per-token rewards, `[batch, T]`.
        values: Critic values, `[batch, T]`.
        mask: `[batch, T]`, 1.0 on response tokens.
        gamma: Discount factor.
        lam: GAE lambda (0 gives one-step TD, 1 gives Monte Carlo returns minus values).

    Returns:
        `(advantages, returns)`, both `[batch, T]` and 0 on padding; returns = advantages + values.
    """
    valid = mask != 0
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    advantages = torch.zeros_like(values)

    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = torch.where(valid[:, t], advantage, 0.0)
        next_value = torch.where(valid[:, t], values[:, t], next_value)
        next_advantage = torch.where(valid[:, t], advantage, next_advantage)

    returns = torch.where(valid, advantages + values, 0.0)
    return advantages, returns


def _groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Reshape `[N]` scores to `[N / group_size, group_size]`, checking the sizes."""
    if group_size < 1:
        raise ConfigError(f"group_size must be at least 1, got {group_size}")
    if scores.dim() != 1 or scores.numel() % group_size != 0:
        raise ValueError(
            f"expected a 1-d tensor of scores whose length is a multiple of group_size "
            f"{group_size}, got shape {tuple(scores.shape)}"
        )
    return scores.view(-1, group_size)


def group_advantages(
    scores: torch.Tensor,
    group_size: int,
    normalize_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO advantages: each score minus its group's mean, optionally over the group's std.

    The std is the unbiased (n - 1) one. A group whose scores are all equal (including a group of
    one) gets exactly 0 advantages. `normalize_std=False` gives Dr. GRPO's unscaled advantages.

    Args:
        scores: One scalar score per sample, `[N]`, group after group.
        group_size: Samples per prompt.
        normalize_std: Divide by the group's std plus `eps` (GRPO) or not (Dr. GRPO).
        eps: Added to the std to avoid dividing by a tiny number.

    Returns:
        Advantages, `[N]`.

    Raises:
        ConfigError: `group_size` is below 1.
        ValueError: `N` is not a multiple of `group_size`.
    """
    groups = _groups(scores, group_size)
    if group_size == 1:
        return torch.zeros_like(scores)

    centered = groups - groups.mean(dim=1, keepdim=True)
    if normalize_std:
        centered = centered / (groups.std(dim=1, keepdim=True) + eps)

    all_equal = (groups == groups[:, :1]).all(dim=1, keepdim=True)
    return torch.where(all_equal, 0.0, centered).view(-1)


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out advantages: each score minus the mean of the others in its group.

    Args:
        scores: One scalar score per sample, `[N]`, group after group.
        group_size: Samples per prompt; a group of one has no baseline and gets 0.

    Returns:
        Advantages, `[N]`.

    Raises:
        ConfigError: `group_size` is below 1.
        ValueError: `N` is not a multiple of `group_size`.
    """
    groups = _groups(scores, group_size)
    if group_size == 1:
        return torch.zeros_like(scores)

    others_mean = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others_mean).view(-1)


def reinforce_pp_advantages(
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    baseline: torch.Tensor | None = None,
) -> torch.Tensor:
    """REINFORCE++ advantages: the discounted return-to-go of each token, minus a baseline.

    `G_t = r_t + gamma * G_{t+1}` over valid tokens. Without `baseline` this is REINFORCE++; with
    a per-sample baseline (e.g. the group mean of the scores) it is REINFORCE++-baseline. Whiten
    the result with `whiten` as a separate step.

    Args:
        token_rewards: Per-token rewards, `[batch, T]` (see `token_rewards`).
        mask: `[batch, T]`, 1.0 on response tokens.
        gamma: Discount factor.
        baseline: Per-sample value subtracted from every valid token's return, `[batch]`.

    Returns:
        Advantages, `[batch, T]`, 0 on padding.
    """
    valid = mask != 0
    running = torch.zeros_like(token_rewards[:, 0])
    returns = torch.zeros_like(token_rewards)

    for t in reversed(range(token_rewards.shape[1])):
        running = torch.where(valid[:, t], token_rewards[:, t] + gamma * running, running)
        returns[:, t] = torch.where(valid[:, t], running, 0.0)

    if baseline is not None:
        returns = torch.where(valid, returns - baseline.unsqueeze(-1), 0.0)
    return returns


def whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Scale `x` to unit variance (and zero mean) over its valid entries.

    Mean and unbiased variance are taken over every valid entry of the batch together. With one
    valid entry the variance is taken as 0.

    Args:
        x: Values, e.g. advantages, `[batch, T]`.
        mask: Same shape, 1.0 on valid entries.
        shift_mean: Subtract the mean; if False the mean is kept and only the scale changes.
        eps: Added to the variance before the square root.

    Returns:
        Whitened values, same shape, 0 on padding.
    """
    valid = mask != 0
    mean = masked_mean(x, mask)
    count = mask.to(x.dtype).sum()
    squares = masked_sum((x - mean) ** 2, mask)
    variance = torch.where(count > 1, squares / (count - 1).clamp(min=1), 0.0)

    whitened = (x - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(valid, whitened, 0.0)


def token_rewards(
    scores: torch.Tensor,
    mask: torch.Tensor,
    kl: torch.Tensor | None,
    kl_coef: float,
) -> torch.Tensor:
    """Per-token rewards: the sample's score on its last valid token, minus the KL penalty.

    Args:
        scores: One scalar score per sample, `[batch]`.
        mask: `[batch, T]`, 1.0 on response tokens. A sample with no valid token gets no reward.
        kl: Per-token KL estimate against the reference, `[batch, T]`, or None for no penalty.
        kl_coef: Coefficient of the KL penalty.

    Returns:
        Rewards, `[batch, T]`, 0 on padding.
    """
    valid = mask != 0
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(valid, positions, -1).max(dim=1).values.clamp(min=0)

    rewards = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device)
    if kl is not None:
        rewards = rewards - kl_coef * kl.to(scores.dtype)
    rewards = rewards.scatter_add(1, last.unsqueeze(1), scores.unsqueeze(1))
    return torch.where(valid, rewards, 0.0)


def expand_to_tokens(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Give every valid token of a sample that sample's advantage.

    Args:
        advantages: One value per sample, `[batch]`.
        mask: `[batch, T]`, 1.0 on response tokens.

    Returns:
        `[batch, T]`, 0 on padding.
    """
    return torch.where(mask != 0, advantages.unsqueeze(-1).expand(mask.shape), 0.0)
