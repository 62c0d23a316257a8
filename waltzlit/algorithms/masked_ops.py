"""Reductions over the valid tokens of padded ``[B, T]`` tensors.

Every function selects with ``torch.where`` instead of multiplying by the mask, so a NaN or inf
sitting on a padded position (a garbage log-prob, say) can never leak into a result or a gradient.
A mask with no valid element gives 0, never NaN: an empty response must not poison a batch.

Notation for shapes: ``B`` rows (sequences), ``T`` response tokens. ``mask`` is 1 on valid tokens,
0 on padding, of any dtype, broadcastable to ``x``.
"""

from __future__ import annotations

import torch

LOG_RATIO_CLAMP = 20.0
"""log pi - log pi' is clamped to +-20 before any exp() (so exp cannot overflow), as the peers do."""


def clamped_log_ratio(logprobs: torch.Tensor, other_logprobs: torch.Tensor) -> torch.Tensor:
    """``log pi - log pi'`` ``[B, T]`` in float32 (bf16 loses the small differences that matter),
    clamped to +-``LOG_RATIO_CLAMP``. Shared by the PPO ratio and the KL estimators."""
    return (logprobs.float() - other_logprobs.float()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def _valid(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mask`` as a bool tensor of ``x``'s shape."""
    return mask.to(torch.bool).expand_as(x)


def _fill(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` with masked positions set to 0.

    Arithmetic on a NaN that is dropped later still poisons the backward pass (0 * NaN = NaN in the
    chain rule), so functions that compute on every position first replace the padding.
    """
    return torch.where(_valid(x, mask), x, torch.zeros_like(x))


def _count(x: torch.Tensor, mask: torch.Tensor, dim: int | None) -> torch.Tensor:
    """How many valid elements each reduction sees, in ``x``'s dtype."""
    valid = _valid(x, mask)
    return (valid.sum() if dim is None else valid.sum(dim)).to(x.dtype)


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` over the positions where ``mask`` is set.

    Args:
        x: values, e.g. ``[B, T]``.
        mask: ``[B, T]`` (or broadcastable), nonzero on valid positions.
        dim: dimension to reduce; None reduces everything to a scalar.

    Returns:
        A scalar when ``dim`` is None, else ``x`` with ``dim`` removed (e.g. ``[B]`` for ``dim=1``).
    """
    picked = _fill(x, mask)
    return picked.sum() if dim is None else picked.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is set; 0 where there are none.

    Args:
        x: values, e.g. ``[B, T]``.
        mask: ``[B, T]`` (or broadcastable), nonzero on valid positions.
        dim: dimension to reduce; None reduces everything to a scalar.

    Returns:
        A scalar when ``dim`` is None, else ``x`` with ``dim`` removed. Reductions with an empty
        mask are 0 (the sum is 0 and the count is clamped to 1).
    """
    return masked_sum(x, mask, dim) / _count(x, mask, dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Variance of all valid elements of ``x`` (one global scalar).

    Args:
        x: values, e.g. ``[B, T]``.
        mask: ``[B, T]`` (or broadcastable), nonzero on valid positions.
        unbiased: divide by ``n - 1`` (Bessel) instead of ``n``.

    Returns:
        A scalar. 0 when there are fewer valid elements than the estimator needs (0 for the
        population variance, 1 for the unbiased one), rather than NaN.
    """
    x = _fill(x, mask)
    mean = masked_mean(x, mask)
    squared = masked_sum((x - mean) ** 2, mask)
    n = _count(x, mask, None)
    denominator = n - 1 if unbiased else n
    return squared / denominator.clamp(min=1)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8, unbiased: bool = False
) -> torch.Tensor:
    """Normalise the valid elements of ``x`` to zero mean and unit variance, globally.

    The statistics pool every valid element of the whole tensor (all rows together), as the
    REINFORCE++ advantage needs: Â = (A - mean_B) / std_B over all tokens of the actor's batch
    (paper eq. 4). The variance is the population one, as in OpenRLHF.

    Args:
        x: values, e.g. ``[B, T]``.
        mask: ``[B, T]`` (or broadcastable), nonzero on valid positions.
        shift_mean: subtract the mean. False only rescales and keeps the mean, i.e.
            ``(x - mean) * rsqrt(var + eps) + mean`` (the convention of verl and TRL).
        eps: added to the variance before the reciprocal square root.
        unbiased: use the Bessel-corrected variance (verl's ``masked_whiten``) instead of the
            population one (OpenRLHF).

    Returns:
        Same shape as ``x``; ``(x - mean) * rsqrt(var + eps)`` on valid positions, 0 elsewhere.
        Constant inputs and empty masks give 0, not NaN.
    """
    x = _fill(x, mask)
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=unbiased)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(_valid(x, mask), whitened, torch.zeros_like(whitened))
