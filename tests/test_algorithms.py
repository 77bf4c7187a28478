"""Every algorithm function against values worked out by hand (the arithmetic is in comments)."""

import math

import pytest
import torch

from rlstack.algorithms import (
    AdaptiveKLController,
    FixedKLController,
    aggregate,
    bradley_terry_loss,
    dpo_loss,
    entropy_from_logits,
    expand_to_tokens,
    gae,
    group_advantages,
    kl_estimate,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    policy_loss,
    reinforce_pp_advantages,
    rloo_advantages,
    token_rewards,
    value_loss,
    whiten,
)
from rlstack.errors import ConfigError

torch.set_num_threads(1)
NAN = float("nan")


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def assert_close(actual: torch.Tensor, expected) -> None:
    torch.testing.assert_close(actual, t(expected), rtol=1e-9, atol=1e-9)


# --- GAE -------------------------------------------------------------------------------------


def test_gae_matches_hand_recursion_and_zeroes_padding():
    # gamma = lam = 0.5, so gamma * lam = 0.25.
    # sample 0, all valid: rewards [0, 0, 1], values [0.5, 0.5, 0.5]
    #   t=2: delta = 1 + 0.5*0 - 0.5 = 0.5              A2 = 0.5
    #   t=1: delta = 0 + 0.5*0.5 - 0.5 = -0.25          A1 = -0.25 + 0.25*0.5 = -0.125
    #   t=0: delta = -0.25                              A0 = -0.25 + 0.25*(-0.125) = -0.28125
    #   returns = A + V = [0.21875, 0.375, 1.0]
    # sample 1, last position is padding holding garbage (9, 7) that must not leak in:
    #   t=1: delta = 2 + 0.5*0 - 1 = 1 (bootstrap 0)    A1 = 1
    #   t=0: delta = 0 + 0.5*1 - 1 = -0.5               A0 = -0.5 + 0.25*1 = -0.25
    #   returns = [0.75, 2.0, 0]
    rewards = t([[0, 0, 1], [0, 2, 9]])
    values = t([[0.5, 0.5, 0.5], [1, 1, 7]])
    mask = t([[1, 1, 1], [1, 1, 0]])

    advantages, returns = gae(rewards, values, mask, gamma=0.5, lam=0.5)

    assert_close(advantages, [[-0.28125, -0.125, 0.5], [-0.25, 1.0, 0.0]])
    assert_close(returns, [[0.21875, 0.375, 1.0], [0.75, 2.0, 0.0]])


def test_gae_of_length_one_response_is_reward_minus_value():
    # one valid token: A0 = r0 + gamma*0 - V0 = 1 - 0.25 = 0.75; return = 0.75 + 0.25 = 1.0
    advantages, returns = gae(t([[1, 5, 5]]), t([[0.25, 3, 3]]), t([[1, 0, 0]]), 0.9, 0.95)

    assert_close(advantages, [[0.75, 0, 0]])
    assert_close(returns, [[1.0, 0, 0]])


def test_gae_with_gamma_and_lambda_one_is_return_to_go_minus_value():
    # rewards [1, 2, 3] -> returns-to-go [6, 5, 3]; minus values [1, 1, 1] -> [5, 4, 2]
    advantages, returns = gae(t([[1, 2, 3]]), t([[1, 1, 1]]), t([[1, 1, 1]]), 1.0, 1.0)

    assert_close(advantages, [[5, 4, 2]])
    assert_close(returns, [[6, 5, 3]])


def test_gae_carries_value_and_advantage_across_a_masked_hole():
    # mask [1, 0, 1], gamma = lam = 0.5; the hole (reward 5, value 9) is skipped:
    #   t=2: delta = 1 - 0.5 = 0.5                       A2 = 0.5
    #   t=0: next value is V2 = 0.5, next advantage A2 = 0.5
    #        delta = 0 + 0.5*0.5 - 0.5 = -0.25           A0 = -0.25 + 0.25*0.5 = -0.125
    advantages, _ = gae(t([[0, 5, 1]]), t([[0.5, 9, 0.5]]), t([[1, 0, 1]]), 0.5, 0.5)

    assert_close(advantages, [[-0.125, 0, 0.5]])


# --- group baselines -------------------------------------------------------------------------


def test_group_advantages_normalise_by_unbiased_group_std():
    # group 1 = [1, 0, 0, 0]: mean 0.25, deviations [0.75, -0.25, -0.25, -0.25]
    #   unbiased var = (0.5625 + 3*0.0625) / 3 = 0.25, std = 0.5 -> [1.5, -0.5, -0.5, -0.5]
    # group 2 = [2, 2, 2, 2]: all equal -> zeros
    scores = t([1, 0, 0, 0, 2, 2, 2, 2])

    assert_close(group_advantages(scores, 4, eps=0.0), [1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0])


def test_group_advantages_without_std_are_dr_grpo_mean_centred_scores():
    # [1, 0, 0, 0] - 0.25 = [0.75, -0.25, -0.25, -0.25]
    scores = t([1, 0, 0, 0, 2, 2, 2, 2])

    advantages = group_advantages(scores, 4, normalize_std=False)

    assert_close(advantages, [0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0])


def test_group_advantages_of_all_equal_group_are_exactly_zero():
    # 0.1 is not exact in binary: in float32 the mean of seven 0.1s is 0.1 - 7.45e-9, so plain
    # centring leaves -7.45e-9 everywhere; the result must still be exactly 0.
    scores = torch.full((7,), 0.1, dtype=torch.float32)

    assert torch.equal(group_advantages(scores, 7), torch.zeros(7))
    assert torch.equal(group_advantages(scores, 7, normalize_std=False), torch.zeros(7))


def test_group_advantages_of_single_sample_groups_are_zero():
    assert torch.equal(group_advantages(t([3.0, -1.0]), 1), t([0.0, 0.0]))


def test_group_advantages_reject_bad_group_sizes():
    with pytest.raises(ValueError, match="multiple of group_size 4"):
        group_advantages(t([1, 2, 3]), 4)
    with pytest.raises(ConfigError, match="group_size must be at least 1"):
        group_advantages(t([1, 2, 3]), 0)


def test_rloo_advantages_subtract_mean_of_the_other_samples():
    # group [1, 0, 0]: 1 - (0+0)/2 = 1;  0 - (1+0)/2 = -0.5 (twice)
    # group [3, 1, 2]: 3 - (1+2)/2 = 1.5;  1 - (3+2)/2 = -1.5;  2 - (3+1)/2 = 0
    advantages = rloo_advantages(t([1, 0, 0, 3, 1, 2]), 3)

    assert_close(advantages, [1, -0.5, -0.5, 1.5, -1.5, 0])


def test_rloo_advantages_of_single_sample_groups_are_zero():
    assert torch.equal(rloo_advantages(t([3.0, -1.0]), 1), t([0.0, 0.0]))


# --- REINFORCE++ -----------------------------------------------------------------------------


def test_reinforce_pp_discounted_return_to_go():
    # gamma 0.5; sample 0 rewards [0, -0.1, 1]:  G2 = 1, G1 = -0.1 + 0.5 = 0.4, G0 = 0 + 0.2 = 0.2
    # sample 1 rewards [0.5, 2, pad]:           G1 = 2, G0 = 0.5 + 1 = 1.5
    rewards = t([[0, -0.1, 1], [0.5, 2, 9]])
    mask = t([[1, 1, 1], [1, 1, 0]])

    assert_close(reinforce_pp_advantages(rewards, mask, gamma=0.5), [[0.2, 0.4, 1], [1.5, 2, 0]])


def test_reinforce_pp_undiscounted_return_to_go_by_default():
    # gamma 1: [0 - 0.1 + 1, -0.1 + 1, 1] = [0.9, 0.9, 1];  [0.5 + 2, 2, 0] = [2.5, 2, 0]
    rewards = t([[0, -0.1, 1], [0.5, 2, 9]])
    mask = t([[1, 1, 1], [1, 1, 0]])

    assert_close(reinforce_pp_advantages(rewards, mask), [[0.9, 0.9, 1], [2.5, 2, 0]])


def test_reinforce_pp_subtracts_per_sample_baseline_on_valid_tokens_only():
    # returns (gamma 0.5) [0.2, 0.4, 1] - 0.2 = [0, 0.2, 0.8];  [1.5, 2, 0] - 1 = [0.5, 1, 0]
    rewards = t([[0, -0.1, 1], [0.5, 2, 9]])
    mask = t([[1, 1, 1], [1, 1, 0]])

    advantages = reinforce_pp_advantages(rewards, mask, gamma=0.5, baseline=t([0.2, 1.0]))

    assert_close(advantages, [[0, 0.2, 0.8], [0.5, 1, 0]])


# --- whitening, token rewards, expansion ----------------------------------------------------


def test_whiten_uses_masked_mean_and_unbiased_std():
    # valid entries [0, 2, 4]: mean 2, squared deviations 4 + 0 + 4 = 8, var = 8/2 = 4, std 2
    # -> [-1, 0, 1]; padding (99) becomes 0
    x = t([[0, 2, 99], [4, 99, 99]])
    mask = t([[1, 1, 0], [1, 0, 0]])

    assert_close(whiten(x, mask, eps=0.0), [[-1, 0, 0], [1, 0, 0]])


def test_whiten_without_shift_keeps_the_mean():
    # [-1, 0, 1] + mean 2 = [1, 2, 3]
    x = t([[0, 2, 99], [4, 99, 99]])
    mask = t([[1, 1, 0], [1, 0, 0]])

    assert_close(whiten(x, mask, shift_mean=False, eps=0.0), [[1, 2, 0], [3, 0, 0]])


def test_whiten_of_a_single_valid_entry_is_zero():
    assert_close(whiten(t([[5.0, 7.0]]), t([[1, 0]])), [[0, 0]])


def test_token_rewards_put_score_on_last_valid_token_minus_kl_everywhere():
    # kl_coef 0.5; sample 0: -0.5*[0.1, 0.2, 0.3] = [-0.05, -0.1, -0.15], + score 1 at t=2
    # sample 1: -0.5*[0.4, 0.5] = [-0.2, -0.25], + score 2 at t=1 -> 1.75; padding 0
    scores = t([1.0, 2.0])
    mask = t([[1, 1, 1], [1, 1, 0]])
    kl = t([[0.1, 0.2, 0.3], [0.4, 0.5, 9]])

    rewards = token_rewards(scores, mask, kl, kl_coef=0.5)

    assert_close(rewards, [[-0.05, -0.1, 0.85], [-0.2, 1.75, 0]])


def test_token_rewards_handle_length_one_and_empty_responses():
    # length-1 response gets its score at t=0; an empty response gets nothing
    rewards = token_rewards(t([3.0, 4.0]), t([[1, 0, 0], [0, 0, 0]]), None, kl_coef=0.1)

    assert_close(rewards, [[3, 0, 0], [0, 0, 0]])


def test_expand_to_tokens_copies_sample_advantage_to_valid_tokens():
    expanded = expand_to_tokens(t([2.0, -1.0]), t([[1, 1, 0], [1, 0, 0]]))

    assert_close(expanded, [[2, 2, 0], [-1, 0, 0]])


# --- KL --------------------------------------------------------------------------------------


def test_kl_estimators_k1_k2_k3():
    # logp - ref = [1, -1];  ref - logp = [-1, 1]
    # k1 = [1, -1];  k2 = 0.5*[1, 1];  k3 = [e^-1 + 1 - 1, e^1 - 1 - 1] = [0.36788, 0.71828]
    logprobs = t([[-1.0, -2.0]])
    ref_logprobs = t([[-2.0, -1.0]])

    assert_close(kl_estimate(logprobs, ref_logprobs, "k1"), [[1, -1]])
    assert_close(kl_estimate(logprobs, ref_logprobs, "k2"), [[0.5, 0.5]])
    assert_close(kl_estimate(logprobs, ref_logprobs, "k3"), [[math.exp(-1), math.e - 2]])


def test_kl_estimators_are_zero_for_identical_policies():
    logprobs = t([[-0.3, -4.0]])
    for kind in ("k1", "k2", "k3"):
        assert_close(kl_estimate(logprobs, logprobs.clone(), kind), [[0, 0]])


def test_kl_estimate_rejects_unknown_kind():
    with pytest.raises(ConfigError, match="unknown KL estimator 'k4'"):
        kl_estimate(t([[0.0]]), t([[0.0]]), "k4")


def test_adaptive_kl_controller_moves_coefficient_proportionally_with_clipped_error():
    # target 6, horizon 10000
    # kl 9: error = 9/6 - 1 = 0.5 -> clipped to 0.2; value = 0.1 * (1 + 0.2*256/10000) = 0.100512
    # kl 5.4: error = 0.9 - 1 = -0.1; value = 0.100512 * (1 - 0.1*1000/10000) = 0.09950688
    controller = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10000)

    controller.update(current_kl=9.0, n_steps=256)
    assert controller.value == pytest.approx(0.100512)
    controller.update(current_kl=5.4, n_steps=1000)
    assert controller.value == pytest.approx(0.09950688)


def test_fixed_kl_controller_never_changes():
    controller = FixedKLController(0.05)

    controller.update(current_kl=100.0, n_steps=1000)

    assert controller.value == 0.05


# --- masked reductions and aggregation ------------------------------------------------------


def test_masked_mean_and_sum_ignore_padding_even_when_it_is_nan_or_inf():
    # valid entries 1, 2 | 4: sum 7, mean 7/3; per row sums [3, 4], means [1.5, 4]
    x = t([[1, 2, NAN], [4, NAN, float("inf")]])
    mask = t([[1, 1, 0], [1, 0, 0]])

    assert_close(masked_sum(x, mask), 7.0)
    assert_close(masked_mean(x, mask), 7.0 / 3)
    assert_close(masked_sum(x, mask, dim=-1), [3, 4])
    assert_close(masked_mean(x, mask, dim=-1), [1.5, 4])


def test_masked_mean_of_nothing_is_zero():
    assert_close(masked_mean(t([[1.0, 2.0]]), t([[0, 0]])), 0.0)


def test_aggregate_modes():
    # loss [[1, 2, 3], [4, pad, pad]]
    # token_mean: (1+2+3+4)/4 = 2.5
    # seq_mean_token_mean: (6/3 + 4/1)/2 = (2 + 4)/2 = 3
    # seq_mean_token_sum_norm, norm 4: (6/4 + 4/4)/2 = 1.25; default norm T=3: (2 + 4/3)/2 = 5/3
    loss = t([[1, 2, 3], [4, 7, 7]])
    mask = t([[1, 1, 1], [1, 0, 0]])

    assert_close(aggregate(loss, mask, "token_mean"), 2.5)
    assert_close(aggregate(loss, mask, "seq_mean_token_mean"), 3.0)
    assert_close(aggregate(loss, mask, "seq_mean_token_sum_norm", norm_const=4), 1.25)
    assert_close(aggregate(loss, mask, "seq_mean_token_sum_norm"), 5.0 / 3)


def test_aggregate_rejects_unknown_mode():
    with pytest.raises(ConfigError, match="unknown loss aggregation mode 'sum'"):
        aggregate(t([[1.0]]), t([[1.0]]), "sum")


# --- policy loss -----------------------------------------------------------------------------


def ratios(values) -> torch.Tensor:
    """Logprobs whose ratio to old_logprobs = 0 is exactly `values`."""
    return torch.log(t(values))


def test_policy_loss_clips_ratio_and_reports_metrics():
    # clip 0.2: ratio clamped to [0.8, 1.2]; per-token loss = max(-A*r, -A*clamp(r))
    #   r=1.5, A=+1: max(-1.5, -1.2) = -1.2  (clipped term larger)
    #   r=0.5, A=-1: max( 0.5,  0.8) =  0.8  (clipped term larger)
    #   r=1.1, A=+1: max(-1.1, -1.1) = -1.1
    #   r=0.9, A=-1: max( 0.9,  0.9) =  0.9
    #   5th position is padding holding NaN
    # token_mean = (-1.2 + 0.8 - 1.1 + 0.9)/4 = -0.15; clip_frac 2/4; ratio_mean 4/4 = 1
    # approx_kl = mean(r - 1 - ln r) = (0.0945349 + 0.1931472 + 0.0046898 + 0.0053605)/4
    logprobs = torch.cat([ratios([[1.5, 0.5, 1.1, 0.9]]), t([[NAN]])], dim=1)
    old_logprobs = t([[0, 0, 0, 0, NAN]])
    advantages = t([[1, -1, 1, -1, NAN]])
    mask = t([[1, 1, 1, 1, 0]])

    loss, metrics = policy_loss(logprobs, old_logprobs, advantages, mask)

    assert_close(loss, -0.15)
    assert metrics["clip_frac"] == pytest.approx(0.5)
    assert metrics["ratio_mean"] == pytest.approx(1.0)
    assert metrics["ratio_max"] == pytest.approx(1.5)
    assert metrics["approx_kl"] == pytest.approx(0.07443310207632059)
    assert metrics["is_weight_mean"] == 1.0


def test_policy_loss_gradient_ignores_nan_padding():
    # valid token: r = 1, A = 2 -> loss -2, d/dlogp = -A*r = -2; padding holds NaN everywhere
    logprobs = t([[0.0, NAN]]).requires_grad_()
    nan_pair = t([[0.0, NAN]])

    loss, _ = policy_loss(
        logprobs, nan_pair, t([[2.0, NAN]]), t([[1, 0]]), behaviour_logprobs=nan_pair, dual_clip=3
    )
    loss.backward()

    assert_close(loss, -2.0)
    assert_close(logprobs.grad, [[-2.0, 0.0]])


def test_policy_loss_clip_higher_lets_positive_tokens_rise_further():
    # r=1.25, A=+1: symmetric 0.2 -> max(-1.25, -1.2) = -1.2 (clipped, no gradient)
    #               clip_high 0.28 -> 1.25 < 1.28, max(-1.25, -1.25) = -1.25 (gradient flows)
    # r=0.75, A=-1: both use clip_low 0.2 -> max(0.75, 0.8) = 0.8
    # symmetric: (-1.2 + 0.8)/2 = -0.2;  clip-higher: (-1.25 + 0.8)/2 = -0.225
    advantages = t([[1, -1]])
    mask = t([[1, 1]])
    old_logprobs = t([[0, 0]])

    symmetric = ratios([[1.25, 0.75]]).requires_grad_()
    loss_sym, _ = policy_loss(symmetric, old_logprobs, advantages, mask)
    loss_sym.backward()
    asymmetric = ratios([[1.25, 0.75]]).requires_grad_()
    loss_high, metrics = policy_loss(asymmetric, old_logprobs, advantages, mask, clip_high=0.28)
    loss_high.backward()

    assert_close(loss_sym, -0.2)
    assert_close(loss_high, -0.225)
    assert metrics["clip_frac"] == pytest.approx(0.5)  # only the r=0.75 token
    # d/dlogp of -A*r/2 = -A*r/2: token 0 gets -1.25/2 only with clip-higher; token 1 is clipped
    assert_close(symmetric.grad, [[0, 0]])
    assert_close(asymmetric.grad, [[-0.625, 0]])


def test_policy_loss_dual_clip_bounds_loss_of_negative_advantages():
    # r=5, A=-1: max(5, 1.2) = 5; dual-clip 3 bounds it at 3*(-A) = 3
    # r=5, A=+1: max(-5, -1.2) = -1.2, untouched by dual-clip
    # with dual-clip: (3 - 1.2)/2 = 0.9;  without: (5 - 1.2)/2 = 1.9
    advantages = t([[-1, 1]])
    mask = t([[1, 1]])
    old_logprobs = t([[0, 0]])

    logprobs = ratios([[5.0, 5.0]]).requires_grad_()
    loss_dual, _ = policy_loss(logprobs, old_logprobs, advantages, mask, dual_clip=3.0)
    loss_dual.backward()
    loss_plain, _ = policy_loss(ratios([[5.0, 5.0]]), old_logprobs, advantages, mask)

    assert_close(loss_dual, 0.9)
    assert_close(loss_plain, 1.9)
    assert_close(logprobs.grad, [[0, 0]])  # both tokens are on a constant bound


def test_policy_loss_rejects_dual_clip_not_above_one():
    with pytest.raises(ConfigError, match="dual_clip must be greater than 1"):
        policy_loss(t([[0.0]]), t([[0.0]]), t([[1.0]]), t([[1.0]]), dual_clip=1.0)


def test_policy_loss_truncated_importance_weight_from_behaviour_logprobs():
    # ratio 1, A = +1 -> per-token loss -1 before weighting
    # weights exp(old - behaviour) = exp(0 + ln 3) = 3 -> capped at 2;  exp(0 - ln 2) = 0.5
    # capped:   (-2 - 0.5)/2 = -1.25, is_weight_mean (2 + 0.5)/2 = 1.25
    # uncapped: (-3 - 0.5)/2 = -1.75
    # gradient wrt logprobs: -A * r * w / 2 = [-1, -0.25]; none flows into behaviour_logprobs
    old_logprobs = t([[0, 0]])
    behaviour = t([[-math.log(3), math.log(2)]]).requires_grad_()
    advantages = t([[1, 1]])
    mask = t([[1, 1]])

    logprobs = t([[0, 0]]).requires_grad_()
    loss, metrics = policy_loss(
        logprobs, old_logprobs, advantages, mask, behaviour_logprobs=behaviour, is_cap=2.0
    )
    loss.backward()
    uncapped, _ = policy_loss(
        t([[0, 0]]), old_logprobs, advantages, mask, behaviour_logprobs=behaviour
    )

    assert_close(loss, -1.25)
    assert metrics["is_weight_mean"] == pytest.approx(1.25)
    assert_close(uncapped, -1.75)
    assert_close(logprobs.grad, [[-1, -0.25]])
    assert behaviour.grad is None


def test_policy_loss_uses_requested_aggregation():
    # per-token losses (ratio 1, loss = -A): [[-1, -1], [-4, pad]]
    # seq_mean_token_mean: (-1 + -4)/2 = -2.5  (token_mean would be -6/3 = -2)
    loss, _ = policy_loss(
        t([[0, 0], [0, 0]]),
        t([[0, 0], [0, 0]]),
        t([[1, 1], [4, 4]]),
        t([[1, 1], [1, 0]]),
        agg="seq_mean_token_mean",
    )

    assert_close(loss, -2.5)


# --- value loss ------------------------------------------------------------------------------


def test_value_loss_clips_around_old_values():
    # clip 0.2
    # t0: V=1, old 0.5, R=2: err (1-2)^2 = 1; clipped V = 0.5 + 0.2 = 0.7, err 1.3^2 = 1.69
    #     0.5*max = 0.845 (clipped larger)
    # t1: V=2, old 2.1, R=2: err 0; clipped V = 2.1 - 0.1 = 2.0, err 0 -> 0
    # t2: padding
    # token_mean = (0.845 + 0)/2 = 0.4225; vf_clip_frac 1/2; value_mean (1 + 2)/2 = 1.5
    values = t([[1.0, 2.0, NAN]])
    old_values = t([[0.5, 2.1, 0]])
    returns = t([[2.0, 2.0, 0]])
    mask = t([[1, 1, 0]])

    loss, metrics = value_loss(values, old_values, returns, mask, clip=0.2)

    assert_close(loss, 0.4225)
    assert metrics == pytest.approx({"vf_clip_frac": 0.5, "value_mean": 1.5})


def test_value_loss_gradient_ignores_nan_padding():
    # valid token: 0.5*(1 - 3)^2 = 2, d/dV = V - R = -2
    values = t([[1.0, NAN]]).requires_grad_()

    loss, _ = value_loss(values, t([[1.0, NAN]]), t([[3.0, NAN]]), t([[1, 0]]), clip=0.5)
    loss.backward()

    assert_close(loss, 2.0)
    assert_close(values.grad, [[-2.0, 0.0]])


def test_value_loss_without_clip_is_half_squared_error():
    # 0.5 * ((1-2)^2 + 0)/2 = 0.25
    values = t([[1.0, 2.0]])
    loss, metrics = value_loss(values, t([[0.5, 2.1]]), t([[2.0, 2.0]]), t([[1, 1]]), clip=None)

    assert_close(loss, 0.25)
    assert metrics["vf_clip_frac"] == 0.0


# --- logits ----------------------------------------------------------------------------------


def test_entropy_from_logits():
    # uniform over 4 -> ln 4; probs [0.5, 0.25, 0.25] -> 0.5 ln 2 + 2 * 0.25 ln 4 = 1.5 ln 2
    # one-hot via -inf logits -> 0 (no NaN); a shift of +1000 changes nothing
    inf = float("inf")
    logits = t(
        [
            [[0, 0, 0, 0], [0, -inf, -inf, -inf]],
            [[1000 + math.log(0.5), 1000 + math.log(0.25), 1000 + math.log(0.25), -inf], [0] * 4],
        ]
    )

    entropy = entropy_from_logits(logits)

    assert_close(entropy, [[math.log(4), 0], [1.5 * math.log(2), math.log(4)]])


def test_logprobs_from_logits_are_stable_for_large_logits():
    # logits [1000, 0]: log p(0) = -ln(1 + e^-1000) ~ 0, log p(1) = -1000 - ln(1 + e^-1000) ~ -1000
    # logits ln[0.5, 0.25, 0.25] + 7: log p(2) = ln 0.25
    logits = torch.tensor(
        [[[1000.0, 0.0, -1e9], [7 + math.log(0.5), 7 + math.log(0.25), 7 + math.log(0.25)]]]
    )
    tokens = torch.tensor([[1, 2]])

    logprobs = logprobs_from_logits(logits, tokens)
    torch.testing.assert_close(logprobs, torch.tensor([[-1000.0, math.log(0.25)]]))
    assert logprobs_from_logits(logits, torch.tensor([[0, 0]]))[0, 0].item() == 0.0


def test_logprobs_from_bf16_logits_are_computed_in_float32():
    logits = torch.tensor([[[2.0, 1.0, 0.5]]], dtype=torch.bfloat16)

    logprobs = logprobs_from_logits(logits, torch.tensor([[0]]))

    assert logprobs.dtype == torch.float32


# --- preference losses -----------------------------------------------------------------------


def test_bradley_terry_loss_and_accuracy():
    # pairs (2, 0) and (0, 0): (-ln sigmoid(2) - ln sigmoid(0))/2 = (0.1269280 + 0.6931472)/2
    # accuracy: 2 > 0 yes, 0 > 0 no -> 0.5
    loss, accuracy = bradley_terry_loss(t([2.0, 0.0]), t([0.0, 0.0]))

    assert_close(loss, 0.41003759580145893)
    assert accuracy == 0.5


def test_dpo_loss_from_implicit_rewards():
    # beta 0.1
    # pair 1: chosen 0.1*(-1 + 2) = 0.1, rejected 0.1*(-3 + 2) = -0.1, margin 0.2
    #         loss ln(1 + e^-0.2) = 0.5981389
    # pair 2: chosen 0.1*(-2 + 2) = 0, rejected 0.1*(-1 + 2) = 0.1, margin -0.1
    #         loss ln(1 + e^0.1) = 0.7443967
    # mean loss 0.6712678; mean margin 0.05; accuracy 1/2
    loss, metrics = dpo_loss(
        t([-1.0, -2.0]), t([-3.0, -1.0]), t([-2.0, -2.0]), t([-2.0, -2.0]), 0.1
    )

    assert_close(loss, 0.6712677647275813)
    assert metrics == pytest.approx({"margin": 0.05, "reward_accuracy": 0.5})
