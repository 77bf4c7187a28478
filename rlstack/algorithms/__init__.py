"""Pure tensor functions of the RL algorithms: advantages, KL penalties and losses.

Nothing here knows about Ray, models or data; every function can be checked by hand on small
tensors (see tests/test_algorithms.py).
"""

from rlstack.algorithms.advantages import (
    expand_to_tokens,
    gae,
    group_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
    token_rewards,
    whiten,
)
from rlstack.algorithms.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_estimate,
)
from rlstack.algorithms.losses import (
    AGGREGATION_MODES,
    aggregate,
    bradley_terry_loss,
    dpo_loss,
    entropy_from_logits,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    policy_loss,
    value_loss,
)

__all__ = [
    "AGGREGATION_MODES",
    "KL_ESTIMATORS",
    "AdaptiveKLController",
    "FixedKLController",
    "aggregate",
    "bradley_terry_loss",
    "dpo_loss",
    "entropy_from_logits",
    "expand_to_tokens",
    "gae",
    "group_advantages",
    "kl_estimate",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "policy_loss",
    "reinforce_pp_advantages",
    "rloo_advantages",
    "token_rewards",
    "value_loss",
    "whiten",
]
