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

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")

_LOG_RATIO_CLAMP = 20.0
_KL_CLAMP = 10.0


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
    # bf16 log-probs lose the small differences that matter here, so subtract in float32.
    delta = (logprobs.float() - ref_logprobs.float()).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    if estimator == "k1":
        kl = delta
    elif estimator == "k2":
        kl = 0.5 * delta.square()
    else:
        # expm1 keeps precision when delta ~ 0, where exp(-delta) - 1 cancels catastrophically.
        kl = torch.expm1(-delta) + delta
    return kl.clamp(-_KL_CLAMP, _KL_CLAMP)
