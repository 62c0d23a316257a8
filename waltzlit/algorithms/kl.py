"""Per-token KL estimators between a policy and the reference (Schulman's k1 / k2 / k3).

With delta_t = log pi(y_t) - log pi_ref(y_t) for a token sampled from pi:

- k1 = delta: unbiased for KL(pi || pi_ref), high variance, can be negative. REINFORCE++ (paper
  eq. 4) folds exactly this, with pi = pi_old, into the reward: A = R - beta * sum_{t>=i} k1_t.
- k2 = delta^2 / 2: biased, always >= 0; its gradient is the right one for a KL term in the loss.
- k3 = exp(-delta) - 1 + delta: unbiased and always >= 0 ("low_var_kl"); the GRPO-style loss term.

The peers (OpenRLHF ``compute_approx_kl``, NeMo-RL ``calculate_kl``) compute delta in float32, clamp
it to [-20, 20] so that exp() cannot overflow, and clamp the result to [-10, 10] so that one
degenerate token cannot dominate a batch. This module does the same.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from waltzlit.algorithms.masked_ops import clamped_log_ratio

_KL_CLAMP = 10.0

ESTIMATORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "k1": lambda delta: delta,
    "k2": lambda delta: 0.5 * delta.square(),
    # expm1 keeps precision when delta ~ 0, where exp(-delta) - 1 cancels catastrophically.
    "k3": lambda delta: torch.expm1(-delta) + delta,
}
"""Each estimator as a function of delta = log pi - log pi_ref ``[B, T]``."""

KL_ESTIMATORS = tuple(ESTIMATORS)
"""Their names; ``AlgorithmConfig.kl_estimator`` takes its choices from here."""


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL estimate of the policy against the reference.

    Args:
        logprobs: ``[B, T]`` log pi(y_t) of the sampled tokens (pi_old for the REINFORCE++ reward).
        ref_logprobs: ``[B, T]`` log pi_ref(y_t) of the same tokens.
        estimator: one of "k1", "k2", "k3".

    Returns:
        ``[B, T]`` float32 estimates, clamped to [-10, 10]. Padded positions hold whatever their
        inputs give; callers mask them.

    Raises:
        ValueError: ``estimator`` is not one of the allowed names.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; allowed values: {', '.join(KL_ESTIMATORS)}")
    return ESTIMATORS[estimator](clamped_log_ratio(logprobs, ref_logprobs)).clamp(-_KL_CLAMP, _KL_CLAMP)
