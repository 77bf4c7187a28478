"""Per-token KL estimators against the reference policy, and the controllers of the KL coefficient.

The estimators follow Schulman's "Approximating KL divergence" note, with samples drawn from the
current policy and `log_ratio = ref_logprobs - logprobs`:
k1 = -log_ratio (unbiased, can be negative), k2 = 0.5 * log_ratio^2 (biased, low variance),
k3 = exp(log_ratio) - log_ratio - 1 (unbiased, never negative). k3 grows exponentially where the
reference is far more likely than the policy; nothing here clamps it.
"""

import torch

from rlstack.errors import ConfigError

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference).

    Args:
        logprobs: Policy logprobs of the sampled response tokens, `[batch, T]`.
        ref_logprobs: Reference-model logprobs of the same tokens, `[batch, T]`.
        kind: "k1", "k2" or "k3".

    Returns:
        Per-token KL estimate, `[batch, T]` (padding positions are not masked).

    Raises:
        ConfigError: `kind` is not one of `KL_ESTIMATORS`.
    """
    log_ratio = ref_logprobs - logprobs
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.exp(log_ratio) - log_ratio - 1.0
    raise ConfigError(f"unknown KL estimator {kind!r}; expected one of {', '.join(KL_ESTIMATORS)}")


class FixedKLController:
    """A KL coefficient that never changes.

    Args:
        coef: The coefficient of the KL penalty.
    """

    def __init__(self, coef: float) -> None:
        self.value = coef

    def update(self, current_kl: float, n_steps: int) -> None:
        """Does nothing; present so both controllers can be used the same way."""


class AdaptiveKLController:
    """Proportional controller that steers the measured KL towards a target (Ziegler et al., 2019).

    After each batch, `value *= 1 + clip(current_kl / target - 1, -0.2, 0.2) * n_steps / horizon`:
    the coefficient grows when the KL is above the target and shrinks when below, by at most 20%
    per `horizon` samples.

    Args:
        init_coef: Starting coefficient.
        target: KL (nats per sample, as measured by the caller) to steer towards; must be > 0.
        horizon: Number of samples over which a full 20% correction is applied; must be > 0.

    Raises:
        ConfigError: `target` or `horizon` is not positive.
    """

    def __init__(self, init_coef: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ConfigError(
                f"adaptive KL needs target > 0 and horizon > 0, got target={target}, "
                f"horizon={horizon}"
            )
        self.value = init_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Adjust the coefficient after a batch.

        Args:
            current_kl: KL measured on the batch just collected.
            n_steps: Number of samples in that batch.
        """
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
