"""The critic's clipped value loss for PPO (peers §2.7).

Shapes: ``B`` sequences, ``T`` response tokens; values are those of the states from which each
response token was sampled, aligned with ``response_mask``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from waltzlit.algorithms.masked_ops import masked_mean
from waltzlit.algorithms.policy_losses import aggregate_loss


@dataclass(frozen=True)
class ValueLossOutput:
    """The value loss (attached to the graph) and the share of tokens where the clipped error won."""

    loss: torch.Tensor
    clip_fraction: torch.Tensor


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    value_clip: float | None = 0.5,
    aggregation: str = "token-mean",
    normalizer: float | torch.Tensor | None = None,
) -> ValueLossOutput:
    """0.5 * agg(max((V - G)^2, (V_clip - G)^2)), V_clip = V_old + clip(V - V_old, -c, c).

    Matches verl's ``compute_value_loss`` (and OpenRLHF's ``ValueLoss``): the pessimistic maximum
    of the two squared errors, halved, aggregated like a policy loss.

    Args:
        values: ``[B, T]`` V_phi(s_t) of the critic being trained (with grad).
        old_values: ``[B, T]`` the values the advantages were computed with (no grad).
        returns: ``[B, T]`` targets G_t = A_t + V_old(s_t) from GAE (no grad).
        response_mask: ``[B, T]``, 1 on the agent's own tokens.
        value_clip: c (verl, OpenRLHF: 0.5); None disables clipping (plain squared error).
        aggregation: an ``AGGREGATIONS`` mode (verl's critic default: "token-mean").
        normalizer: denominator override for micro-batching, see ``aggregate_loss``.

    Returns:
        ``ValueLossOutput``; ``clip_fraction`` is the share of valid tokens where the clipped error
        was strictly larger (so the gradient is zero there).
    """
    valid = response_mask.to(torch.bool)
    zeros = torch.zeros_like(values, dtype=torch.float32)
    values = torch.where(valid, values.float(), zeros)
    old_values = torch.where(valid, old_values.float(), zeros)
    returns = torch.where(valid, returns.float(), zeros)
    unclipped = (values - returns).square()
    if value_clip is None:
        per_token, clip_fraction = unclipped, torch.zeros((), device=values.device)
    else:
        clipped_values = old_values + (values - old_values).clamp(-value_clip, value_clip)
        clipped = (clipped_values - returns).square()
        per_token = torch.maximum(unclipped, clipped)
        clip_fraction = masked_mean((clipped > unclipped).float(), valid).detach()
    return ValueLossOutput(0.5 * aggregate_loss(per_token, valid, aggregation, normalizer), clip_fraction)
