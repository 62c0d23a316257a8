"""Policy-gradient losses (paper eq. 4), loss aggregation and token entropy.

A policy loss is a pure function registered by name in ``POLICY_LOSSES``::

    fn(logprobs, old_logprobs, advantages, response_mask, clip_eps=..., aggregation=..., normalizer=...,
       dual_clip=...) -> LossOutput

Shapes: ``B`` sequences, ``T`` response tokens, ``V`` vocabulary. Losses are minimised, so they are
the negated objective J of eq. 4.
"""

from __future__ import annotations

import torch

from waltzlit.algorithms.masked_ops import clamped_log_ratio, masked_mean, masked_sum
from waltzlit.algorithms.registry import POLICY_LOSSES
from waltzlit.types import LossOutput

AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")



def loss_denominator(mask: torch.Tensor, mode: str, max_tokens: int | None = None) -> torch.Tensor:
    """The count that ``aggregate_loss`` divides by, for the rows of ``mask``.

    Sum it over micro-batches (and ranks) and pass the total as ``normalizer`` so that the
    micro-batch losses add up to the loss of the whole mini-batch.

    Args:
        mask: ``[B, T]``, nonzero on tokens that count.
        mode: one of ``AGGREGATIONS``.
        max_tokens: L of "seq-mean-token-sum-norm"; None takes the padded width ``T``.

    Returns:
        A scalar float tensor: valid tokens ("token-mean"), non-empty sequences (the "seq-" modes),
        or non-empty sequences times L ("seq-mean-token-sum-norm").

    Raises:
        ValueError: ``mode`` is not one of the allowed names.
    """
    valid = mask.to(torch.bool)
    if mode == "token-mean":
        return valid.sum().float()
    sequences = (valid.sum(dim=1) > 0).sum().float()
    if mode in ("seq-mean-token-mean", "seq-mean-token-sum"):
        return sequences
    if mode == "seq-mean-token-sum-norm":
        return sequences * float(max_tokens if max_tokens is not None else mask.shape[1])
    raise ValueError(f"unknown loss aggregation {mode!r}; allowed values: {', '.join(AGGREGATIONS)}")


def aggregate_loss(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    normalizer: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss to a scalar (verl's ``agg_loss`` modes, with global denominators).

    Modes:
        "seq-mean-token-mean": each sequence's mean over its tokens, then the mean over sequences
            that have at least one token. This is eq. 4's (1/|y|) sum_i inside the expectation.
        "token-mean": sum over all valid tokens / number of valid tokens (long answers weigh more).
        "seq-mean-token-sum": each sequence's token sum, then the mean over non-empty sequences.
        "seq-mean-token-sum-norm": sum over all valid tokens / (non-empty sequences * L) with a
            constant L (Dr.GRPO). Matches TRL's ``loss_type="dr_grpo"`` (L = max completion length);
            verl's mode of this name divides by the padded width alone.

    Args:
        per_token: ``[B, T]`` loss of each token.
        mask: ``[B, T]``, nonzero on tokens that count.
        mode: one of ``AGGREGATIONS``.
        normalizer: the denominator, overriding ``loss_denominator(mask, mode)``. Pass the total
            over the whole mini-batch (and all ranks) when it is split into micro-batches whose
            gradients are summed, so that the sum equals the full-batch loss. Without it,
            "seq-mean-token-sum-norm" uses L = the padded width ``T``.

    Returns:
        A scalar tensor, still attached to the graph of ``per_token``. 0 if nothing is valid.

    Raises:
        ValueError: ``mode`` is not one of the allowed names.
    """
    valid = mask.to(torch.bool)
    count = loss_denominator(valid, mode)  # validates mode
    if mode == "seq-mean-token-mean":
        tokens_per_seq = valid.sum(dim=1)
        # Empty sequences add 0 to the sum (masked_sum): 0 / max(0, 1).
        numerator = (masked_sum(per_token, valid, dim=1) / tokens_per_seq.clamp(min=1)).sum()
    else:
        numerator = masked_sum(per_token, valid)
    if normalizer is not None:
        count = torch.as_tensor(normalizer)
    denominator = count.to(device=per_token.device, dtype=per_token.dtype)
    return numerator / denominator.clamp(min=1)


def _log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """log s_i = log pi - log pi_old in float32, clamped to ±20, 0 on padding.

    Zeroing padding before exp() keeps inf/NaN from padded log-probs out of the graph entirely:
    ``where`` routes a zero gradient there instead of multiplying 0 by a non-finite value.
    """
    log_ratio = clamped_log_ratio(logprobs, old_logprobs)
    return torch.where(valid, log_ratio, torch.zeros_like(log_ratio))


def _approx_kl(ratio: torch.Tensor, log_ratio: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Masked mean of k3 between pi_old and pi: (s - 1) - log s, with s = pi / pi_old (>= 0)."""
    return masked_mean((ratio - 1) - log_ratio, valid).detach()


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_eps: float = 0.2,
    aggregation: str = "seq-mean-token-mean",
    normalizer: float | torch.Tensor | None = None,
    dual_clip: float | None = None,
) -> LossOutput:
    """PPO clipped surrogate, the per-actor objective of paper eq. 4 (negated).

    s_i = exp(log pi(y_i) - log pi_old(y_i)) and
    L_i = -min(s_i * Â_i, clip(s_i, 1 - eps, 1 + eps) * Â_i), aggregated by ``aggregation``.
    With ``dual_clip`` = c, tokens with Â_i < 0 get L_i = -max(min(...), c * Â_i), which caps the
    loss of a huge ratio at -c * Â_i. Matches OpenRLHF's ``PolicyLoss`` (and verl's
    ``compute_policy_loss_vanilla`` with ``clip_ratio_c`` = c).

    Args:
        logprobs: ``[B, T]`` log pi_theta of the sampled tokens (with grad).
        old_logprobs: ``[B, T]`` log pi_old of the same tokens (no grad).
        advantages: ``[B, T]`` Â (no grad), e.g. from an ``ADVANTAGE_ESTIMATORS`` entry.
        response_mask: ``[B, T]``, 1 on the agent's own tokens.
        clip_eps: epsilon of the ratio band (paper App. B.2: 0.2).
        aggregation: one of ``AGGREGATIONS``; eq. 4 is "seq-mean-token-mean".
        normalizer: denominator override for micro-batching, see ``aggregate_loss``.
        dual_clip: c > 1, or None for plain PPO clipping.

    Returns:
        ``LossOutput`` with the scalar ``loss``; ``clip_fraction``, the share of valid tokens
        where a clipped term (the ratio band, or the dual clip) was chosen (no gradient flows there);
        and ``approx_kl``, the masked mean k3 estimate of KL(pi_old || pi).
    """
    valid = response_mask.to(torch.bool)
    log_ratio = _log_ratio(logprobs, old_logprobs, valid)
    ratio = log_ratio.exp()
    adv = torch.where(valid, advantages.float(), torch.zeros_like(ratio))
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv
    surrogate = torch.minimum(unclipped, clipped)
    was_clipped = clipped < unclipped
    if dual_clip is not None:
        capped = torch.where(adv < 0, torch.maximum(surrogate, dual_clip * adv), surrogate)
        was_clipped = was_clipped | (capped > surrogate)
        surrogate = capped
    per_token = -surrogate
    clip_fraction = masked_mean(was_clipped.float(), valid).detach()
    return LossOutput(
        loss=aggregate_loss(per_token, valid, aggregation, normalizer),
        clip_fraction=clip_fraction,
        approx_kl=_approx_kl(ratio, log_ratio, valid),
    )


@POLICY_LOSSES.register("reinforce")
def reinforce_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_eps: float = 0.2,
    aggregation: str = "seq-mean-token-mean",
    normalizer: float | torch.Tensor | None = None,
    dual_clip: float | None = None,
) -> LossOutput:
    """Unclipped importance-weighted policy gradient: L_i = -s_i * Â_i.

    On-policy (pi = pi_old) s_i = 1 and grad L_i = -Â_i * grad log pi(y_i): plain REINFORCE.

    Args:
        logprobs, old_logprobs, advantages, response_mask, aggregation, normalizer: as for
            ``ppo_clip_loss``.
        clip_eps, dual_clip: ignored; kept so that every registered loss takes the same arguments.

    Returns:
        ``LossOutput``; ``clip_fraction`` is always 0.
    """
    del clip_eps, dual_clip  # same signature as ppo_clip, nothing is clipped
    valid = response_mask.to(torch.bool)
    log_ratio = _log_ratio(logprobs, old_logprobs, valid)
    ratio = log_ratio.exp()
    adv = torch.where(valid, advantages.float(), torch.zeros_like(ratio))
    per_token = -ratio * adv
    return LossOutput(
        loss=aggregate_loss(per_token, valid, aggregation, normalizer),
        clip_fraction=torch.zeros((), device=ratio.device),
        approx_kl=_approx_kl(ratio, log_ratio, valid),
    )


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the next-token distribution at every position, for logging.

    H = -sum_v p_v log p_v, computed from ``log_softmax`` in float32 so that large logits do not
    overflow. Tokens with p = 0 (e.g. logits of -inf) contribute 0, not NaN, in value and gradient.
    The float32 copy is ``[B, T, V]``: chunk over ``T`` for very large vocabularies.

    Args:
        logits: ``[B, T, V]`` unnormalised scores.

    Returns:
        ``[B, T]`` float32 entropies in nats.
    """
    return entropy_from_logprobs(torch.log_softmax(logits.float(), dim=-1))


def entropy_from_logprobs(log_probs: torch.Tensor) -> torch.Tensor:
    """``-sum_v p_v log p_v`` over the last dim of normalised log-probs ``[..., V]`` -> ``[...]``.

    The training forward (``agents/logprobs.py``) has the log-probs already and calls this; the
    p = 0 guard is the one :func:`token_entropy` documents.
    """
    p = log_probs.exp()
    # 0 * (-inf) is NaN; p is exactly 0 there, so replacing log p by 0 is the correct limit.
    return -(p * log_probs.masked_fill(p == 0, 0.0)).sum(dim=-1)
