"""Losses and per-token helpers shared by every algorithm (PPO, GRPO, REINFORCE++, reward, DPO).

All per-token tensors are `[batch, T]` over response positions; `mask` is 1.0 on response
tokens and 0.0 on padding. Padding positions never reach a loss, a gradient or a metric, even when
they hold inf or NaN.
"""

import torch
import torch.nn.functional as F

from rlstack.errors import ConfigError

AGGREGATION_MODES = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`x * mask`, with padding set to exactly 0 even where `x` is inf or NaN."""
    mask = mask.to(x.dtype)
    return torch.where(mask != 0, x * mask, torch.zeros_like(x))


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `x` over the positions where `mask` is nonzero, weighted by `mask`.

    Args:
        x: Values, e.g. `[batch, T]`.
        mask: Same shape as `x`; 1.0 on response tokens, 0.0 on padding.
        dim: Dimension to reduce; None reduces everything to a scalar.

    Returns:
        A scalar, or `x` reduced over `dim`.
    """
    masked = _masked(x, mask)
    return masked.sum() if dim is None else masked.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over the positions where `mask` is nonzero; 0 where nothing is valid.

    Args:
        x: Values, e.g. `[batch, T]`.
        mask: Same shape as `x`; 1.0 on response tokens, 0.0 on padding.
        dim: Dimension to reduce; None reduces everything to a scalar.

    Returns:
        A scalar, or `x` averaged over `dim` (e.g. `[batch]` for `dim=-1`).
    """
    total = masked_sum(x, mask, dim)
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return total / torch.where(count == 0, torch.ones_like(count), count)


def aggregate(
    loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    norm_const: float | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss to a scalar.

    Modes:
        "token_mean": every valid token in the batch weighs the same.
        "seq_mean_token_mean": mean over each sample's tokens, then mean over samples.
        "seq_mean_token_sum_norm": each sample's token sum divided by `norm_const`, then mean over
            samples (Dr. GRPO); with a fixed `norm_const` no sample's length changes its weight.

    A sample with no valid tokens adds 0 to the sample mean (it still counts in the batch size).

    Args:
        loss: Per-token loss, `[batch, T]`.
        mask: `[batch, T]`, 1.0 on response tokens.
        mode: One of `AGGREGATION_MODES`.
        norm_const: Divisor for "seq_mean_token_sum_norm", typically the configured maximum
            response length; None uses `T`, the padded length of this batch.

    Returns:
        Scalar loss.

    Raises:
        ConfigError: `mode` is unknown or `norm_const` is not positive.
    """
    if mode == "token_mean":
        return masked_mean(loss, mask)

    if mode == "seq_mean_token_mean":
        return masked_mean(loss, mask, dim=-1).mean()

    if mode == "seq_mean_token_sum_norm":
        norm = loss.shape[-1] if norm_const is None else norm_const
        if norm <= 0:
            raise ConfigError(f"loss aggregation norm_const must be positive, got {norm_const}")
        return (masked_sum(loss, mask, dim=-1) / norm).mean()

    raise ConfigError(
        f"unknown loss aggregation mode {mode!r}; expected one of {', '.join(AGGREGATION_MODES)}"
    )


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    behaviour_logprobs: torch.Tensor | None = None,
    is_cap: float | None = None,
    agg: str = "token_mean",
    norm_const: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate loss with clip-higher, dual-clip and truncated importance weights.

    With `ratio = exp(logprobs - old_logprobs)` the per-token loss is
    `max(-A * ratio, -A * clamp(ratio, 1 - clip_low, 1 + clip_high))`. With `dual_clip = c`,
    tokens with negative advantage are further bounded above by `c * (-A)`, so a huge ratio on a
    bad token cannot blow up the loss (Ye et al., 2020). With `behaviour_logprobs` (the rollout
    engine's logprobs, possibly from stale weights or a different kernel), each token's loss is
    multiplied by the detached weight `min(exp(old_logprobs - behaviour_logprobs), is_cap)`,
    which corrects for the gap between the policy that sampled and the one being trained.

    Args:
        logprobs: Current policy logprobs of the response tokens, `[batch, T]`.
        old_logprobs: Logprobs under the policy at the start of this update, `[batch, T]`.
        advantages: Per-token advantages, `[batch, T]`.
        mask: `[batch, T]`, 1.0 on response tokens.
        clip_low: The ratio is clipped from below at `1 - clip_low`.
        clip_high: The ratio is clipped from above at `1 + clip_high` (clip-higher when larger
            than `clip_low`).
        dual_clip: Bound `c > 1` on the loss of negative-advantage tokens, or None for none.
        behaviour_logprobs: Rollout engine logprobs, `[batch, T]`, or None to skip the
            importance correction.
        is_cap: Upper bound on the importance weight; None leaves it untruncated.
        agg: Aggregation mode, see `aggregate`.
        norm_const: Passed to `aggregate`.

    Returns:
        The scalar loss and metrics (floats): clip_frac (share of valid tokens where the clipped
        term is the larger one), approx_kl (k3 estimate of KL(old || current)), ratio_mean,
        ratio_max, is_weight_mean (1.0 without `behaviour_logprobs`).

    Raises:
        ConfigError: A clip range is negative, `clip_low >= 1`, or `dual_clip <= 1`.
    """
    if not 0.0 <= clip_low < 1.0 or clip_high < 0.0:
        raise ConfigError(
            f"policy clip ranges need 0 <= clip_low < 1 and clip_high >= 0, "
            f"got clip_low={clip_low}, clip_high={clip_high}"
        )
    if dual_clip is not None and dual_clip <= 1.0:
        raise ConfigError(f"dual_clip must be greater than 1, got {dual_clip}")

    valid = mask != 0
    log_ratio = torch.where(valid, logprobs - old_logprobs, 0.0)
    advantages = torch.where(valid, advantages, 0.0)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)

    if dual_clip is not None:
        bound = -advantages * dual_clip
        loss = torch.where(advantages < 0, torch.minimum(loss, bound), loss)

    is_weight = torch.ones_like(ratio)
    if behaviour_logprobs is not None:
        is_weight = torch.exp(torch.where(valid, old_logprobs - behaviour_logprobs, 0.0)).detach()
        if is_cap is not None:
            is_weight = torch.clamp(is_weight, max=is_cap)
        loss = loss * is_weight

    with torch.no_grad():
        ratio_max = torch.where(valid, ratio, torch.full_like(ratio, -torch.inf)).max()
        ratio_max = torch.where(valid.any(), ratio_max, torch.zeros_like(ratio_max))
        approx_kl = ratio - 1.0 - log_ratio  # k3 estimate of KL(old || current), samples from old
        stats = torch.stack(
            [
                masked_mean((clipped > unclipped).to(ratio.dtype), mask),
                masked_mean(approx_kl, mask),
                masked_mean(ratio, mask),
                ratio_max,
                masked_mean(is_weight, mask),
            ]
        ).tolist()
    names = ("clip_frac", "approx_kl", "ratio_mean", "ratio_max", "is_weight_mean")
    return aggregate(loss, mask, agg, norm_const), dict(zip(names, stats, strict=True))


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None,
    agg: str = "token_mean",
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO value loss: `0.5 * max((V - R)^2, (V_clipped - R)^2)` per token.

    `V_clipped = old_values + clamp(values - old_values, -clip, clip)` keeps the new value
    prediction within `clip` of the one made at rollout time.

    Args:
        values: Current critic values, `[batch, T]`.
        old_values: Critic values at rollout time, `[batch, T]`.
        returns: Value targets, `[batch, T]`.
        mask: `[batch, T]`, 1.0 on response tokens.
        clip: Clip range in reward units, or None for the plain squared error.
        agg: Aggregation mode, see `aggregate`.

    Returns:
        The scalar loss and metrics (floats): vf_clip_frac (share of valid tokens where the
        clipped error is the larger one), value_mean (mean of `values` over valid tokens).
    """
    valid = mask != 0
    values = torch.where(valid, values, 0.0)
    old_values = torch.where(valid, old_values, 0.0)
    returns = torch.where(valid, returns, 0.0)
    error = (values - returns) ** 2
    if clip is None:
        loss = 0.5 * error
        clip_frac = torch.zeros((), dtype=values.dtype, device=values.device)
    else:
        clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
        clipped_error = (clipped_values - returns) ** 2
        loss = 0.5 * torch.maximum(error, clipped_error)
        clip_frac = masked_mean((clipped_error > error).to(values.dtype), mask)

    with torch.no_grad():
        clip_frac_value, value_mean = torch.stack([clip_frac, masked_mean(values, mask)]).tolist()
    metrics = {"vf_clip_frac": clip_frac_value, "value_mean": value_mean}
    return aggregate(loss, mask, agg), metrics


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at each position.

    Computed in float32 at least; tokens with `-inf` logits (masked out of the vocabulary)
    contribute 0.

    Args:
        logits: `[batch, T, vocab]`.

    Returns:
        Entropy in nats, `[batch, T]`.
    """
    logp = F.log_softmax(_at_least_float32(logits), dim=-1)
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of each given token, via log_softmax (in float32 at least) and gather.

    Args:
        logits: `[batch, T, vocab]`, position t predicting `tokens[:, t]`.
        tokens: Token ids, `[batch, T]`.

    Returns:
        Logprobs, `[batch, T]`, float32 at least.
    """
    logp = F.log_softmax(_at_least_float32(logits), dim=-1)
    return logp.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)


def bradley_terry_loss(
    chosen_scores: torch.Tensor, rejected_scores: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """Reward-model loss `-log sigmoid(chosen - rejected)`, averaged over pairs.

    Args:
        chosen_scores: Scalar reward of each preferred response, `[batch]`.
        rejected_scores: Scalar reward of each rejected response, `[batch]`.

    Returns:
        The scalar loss and the share of pairs where the chosen score is strictly higher.
    """
    loss = -F.logsigmoid(chosen_scores - rejected_scores).mean()
    accuracy = (chosen_scores > rejected_scores).float().mean().item()
    return loss, accuracy


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Direct preference optimisation loss (Rafailov et al., 2023).

    The implicit reward of a response is `beta * (policy_logp - ref_logp)`; the loss is
    `-log sigmoid(chosen_reward - rejected_reward)`, averaged over pairs.

    Args:
        policy_chosen_logps: Summed policy logprobs of each chosen response, `[batch]`.
        policy_rejected_logps: Summed policy logprobs of each rejected response, `[batch]`.
        ref_chosen_logps: Summed reference logprobs of each chosen response, `[batch]`.
        ref_rejected_logps: Summed reference logprobs of each rejected response, `[batch]`.
        beta: Strength of the implicit KL penalty.

    Returns:
        The scalar loss and metrics (floats): margin (mean of chosen minus rejected implicit
        reward), reward_accuracy (share of pairs where the chosen implicit reward is higher).
    """
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    margins = chosen_rewards - rejected_rewards
    loss = -F.logsigmoid(margins).mean()

    with torch.no_grad():
        margin, accuracy = torch.stack([margins.mean(), (margins > 0).float().mean()]).tolist()
    return loss, {"margin": margin, "reward_accuracy": accuracy}
