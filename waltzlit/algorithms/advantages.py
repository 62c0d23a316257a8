"""Critic-free advantage estimators: REINFORCE++ (paper eq. 4) and its group-baseline relatives.

Each estimator is a pure function ``fn(inputs: AdvantageInputs) -> AdvantageOutput`` registered by
name in ``ADVANTAGE_ESTIMATORS``, so ``algorithm.advantage_estimator`` can select it from YAML.
One call sees one agent's batch: each actor is normalised on its own (method spec §5).

Shapes: ``B`` samples, ``T`` response tokens. Every output is 0 on positions where
``response_mask`` is 0, and rows with an empty mask come out as all zeros, never NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from waltzlit.algorithms.masked_ops import masked_whiten
from waltzlit.algorithms.registry import ADVANTAGE_ESTIMATORS

GRPO_STD_EPS = 1e-6


@dataclass(frozen=True)
class AdvantageInputs:
    """What an advantage estimator may use, for one agent's batch.

    Attributes:
        rewards: ``[B]`` scalar sequence rewards R_a(x, y).
        kl: ``[B, T]`` per-token KL of pi_old against pi_ref, already through ``kl_penalty``.
        response_mask: ``[B, T]``, 1 on the agent's own generated tokens.
        kl_coef: beta, the weight of the KL penalty folded into the reward (REINFORCE++ only).
        group_ids: ``[B]`` long, the prompt each sample came from (group baselines).
    """

    rewards: torch.Tensor
    kl: torch.Tensor
    response_mask: torch.Tensor
    kl_coef: float
    group_ids: torch.Tensor

    def __post_init__(self) -> None:
        # A shape slip here would silently broadcast into wrong advantages, so fail loudly.
        if self.response_mask.dim() != 2:
            raise ValueError(f"response_mask must be [B, T], got shape {tuple(self.response_mask.shape)}")
        batch = self.response_mask.shape[0]
        if self.kl.shape != self.response_mask.shape:
            raise ValueError(
                f"kl shape {tuple(self.kl.shape)} != response_mask shape {tuple(self.response_mask.shape)}"
            )
        for name in ("rewards", "group_ids"):
            shape = tuple(getattr(self, name).shape)
            if shape != (batch,):
                raise ValueError(f"{name} must have shape ({batch},), got {shape}")


@dataclass(frozen=True)
class AdvantageOutput:
    """Per-token advantages and returns, both ``[B, T]`` float32 and 0 on masked positions."""

    advantages: torch.Tensor
    returns: torch.Tensor


def _group_stats(values: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sum, size and mean of each sample's group, gathered back to the samples.

    Args:
        values: ``[B]`` float.
        group_ids: ``[B]`` arbitrary integer ids (not necessarily 0..G-1).

    Returns:
        ``(group_sum, group_size, group_mean)``, each ``[B]`` float.
    """
    _, slot = torch.unique(group_ids, return_inverse=True)
    num_groups = int(slot.max()) + 1 if slot.numel() else 0
    sums = values.new_zeros(num_groups).index_add_(0, slot, values)
    sizes = torch.bincount(slot, minlength=num_groups).to(values.dtype)
    group_sum, group_size = sums[slot], sizes[slot]
    return group_sum, group_size, group_sum / group_size


def _last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` column of each row's last valid token, -1 for an empty row."""
    columns = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask, columns, torch.full_like(columns, -1)).max(dim=1).values


def _reverse_cumsum(x: torch.Tensor) -> torch.Tensor:
    """G_t = sum_{s >= t} x_s along dim 1 (gamma = 1)."""
    return x.flip(1).cumsum(1).flip(1)


def _reinforce_pp(rewards: torch.Tensor, inputs: AdvantageInputs) -> AdvantageOutput:
    """Shared body of REINFORCE++ given the (possibly baselined) sequence rewards ``[B]``."""
    mask = inputs.response_mask.to(torch.bool)
    # r_t = -beta * kl_t on the agent's tokens only; where() keeps padding garbage out.
    kl = inputs.kl.float()
    token_rewards = torch.where(mask, -inputs.kl_coef * kl, torch.zeros_like(kl))
    last = _last_token_index(mask)
    has_tokens = last >= 0
    # The outcome reward lands on the last valid token; an empty row has nowhere to put it.
    token_rewards[has_tokens, last[has_tokens]] += rewards[has_tokens]
    # No reset at masked positions (verl #7278): they add 0, so the return flows across them.
    returns = torch.where(mask, _reverse_cumsum(token_rewards), torch.zeros_like(token_rewards))
    # Whitening pools all tokens of the batch, not each row (eq. 4: mean/std over x, i in B_a).
    advantages = masked_whiten(returns, mask)
    return AdvantageOutput(advantages=advantages, returns=returns)


@ADVANTAGE_ESTIMATORS.register("reinforce_plus_plus")
def reinforce_plus_plus(inputs: AdvantageInputs) -> AdvantageOutput:
    """REINFORCE++ (paper eq. 4, Hu et al. 2025): KL-shaped return-to-go, whitened over the batch.

    A_{x,i} = R - beta * sum_{t>=i} kl_t (only valid t), then
    Â_{x,i} = (A_{x,i} - mean_B A) / std_B A over every valid token of the batch.

    Args:
        inputs: one agent's batch; ``kl`` is k1 of pi_old vs pi_ref in the paper.

    Returns:
        ``returns`` = A (the un-normalised return-to-go), ``advantages`` = Â, both ``[B, T]``.
    """
    return _reinforce_pp(inputs.rewards.float(), inputs)


@ADVANTAGE_ESTIMATORS.register("reinforce_plus_plus_baseline")
def reinforce_plus_plus_baseline(inputs: AdvantageInputs) -> AdvantageOutput:
    """REINFORCE++-baseline: R minus its group mean, then exactly as ``reinforce_plus_plus``.

    R_i <- R_i - mean{R_j : group_j = group_i}; a group of one gets R = 0 (only the KL term is left).

    Args:
        inputs: one agent's batch; samples of the same prompt share a ``group_ids`` value.

    Returns:
        ``[B, T]`` advantages and returns, as for ``reinforce_plus_plus``.
    """
    rewards = inputs.rewards.float()
    _, _, group_mean = _group_stats(rewards, inputs.group_ids)
    return _reinforce_pp(rewards - group_mean, inputs)


def _broadcast(per_sample: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` -> ``[B, T]`` on valid tokens, 0 elsewhere."""
    mask = mask.to(torch.bool)
    return torch.where(mask, per_sample[:, None].expand(mask.shape), torch.zeros(mask.shape, device=mask.device))


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo(inputs: AdvantageInputs) -> AdvantageOutput:
    """GRPO outcome advantage: A_i = (R_i - mean_g) / (std_g + 1e-6), the same for every token.

    ``std_g`` is the unbiased (n - 1) standard deviation of the group's rewards, as ``torch.std``.
    A group of one has no spread to compare against and gets advantage 0. The KL is not in the
    reward here (``inputs.kl`` and ``kl_coef`` are ignored); a GRPO-style KL belongs in the loss.

    Args:
        inputs: one agent's batch.

    Returns:
        ``advantages`` = A_i broadcast over the response, ``returns`` = R_i broadcast; ``[B, T]``.
    """
    rewards = inputs.rewards.float()
    _, size, mean = _group_stats(rewards, inputs.group_ids)
    centered = rewards - mean
    squares, _, _ = _group_stats(centered.square(), inputs.group_ids)
    # n - 1 clamped to 1: a singleton has centered = 0 and squares = 0, so its advantage is 0.
    std = (squares / (size - 1).clamp(min=1)).sqrt()
    advantages = centered / (std + GRPO_STD_EPS)
    return AdvantageOutput(_broadcast(advantages, inputs.response_mask), _broadcast(rewards, inputs.response_mask))


@ADVANTAGE_ESTIMATORS.register("rloo")
def rloo(inputs: AdvantageInputs) -> AdvantageOutput:
    """RLOO: A_i = R_i - mean of the other samples of its group, the same for every token.

    A_i = R_i - (sum_g - R_i) / (n - 1); a group of one has no other sample and gets 0. The KL is
    not in the reward here (``inputs.kl`` and ``kl_coef`` are ignored).

    Args:
        inputs: one agent's batch.

    Returns:
        ``advantages`` = A_i broadcast over the response, ``returns`` = R_i broadcast; ``[B, T]``.
    """
    rewards = inputs.rewards.float()
    total, size, _ = _group_stats(rewards, inputs.group_ids)
    others_mean = (total - rewards) / (size - 1).clamp(min=1)
    advantages = torch.where(size > 1, rewards - others_mean, torch.zeros_like(rewards))
    return AdvantageOutput(_broadcast(advantages, inputs.response_mask), _broadcast(rewards, inputs.response_mask))
