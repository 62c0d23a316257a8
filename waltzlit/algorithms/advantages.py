"""Advantage estimators: REINFORCE++ (paper eq. 4), its group-baseline relatives, and GAE for PPO.

Which peer each one matches exactly (formulas in ``shared/docs/peers.md`` §2.3-2.7):

- ``reinforce_plus_plus``: OpenRLHF ``reinforce``; ``reinforce_plus_plus_baseline``: OpenRLHF
  ``reinforce_baseline`` (token KL in the reward, return-to-go, batch whitening).
- ``grpo``: verl ``compute_grpo_outcome_advantage``; ``dr_grpo``: the same without the std
  (verl ``norm_adv_by_std_in_grpo=False``, OpenRLHF ``dr_grpo``); ``rloo``: OpenRLHF / verl ``rloo``.
  A KL in the reward enters these as a sequence sum, s_i = R_i - beta * sum_t k_t (verl).
- ``gae``: verl ``compute_gae_advantage_return`` (needs critic values).

Each estimator is a pure function ``fn(inputs: AdvantageInputs) -> AdvantageOutput`` registered by
name in ``ADVANTAGE_ESTIMATORS``, so ``algorithm.advantage_estimator`` can select it from YAML.
One call sees one agent's batch: each actor is normalised on its own (method spec §5).

Shapes: ``B`` samples, ``T`` response tokens. Every output is 0 on positions where
``response_mask`` is 0, and rows with an empty mask come out as all zeros, never NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from waltzlit.algorithms.masked_ops import masked_sum, masked_whiten
from waltzlit.algorithms.registry import ADVANTAGE_ESTIMATORS

GRPO_STD_EPS = 1e-6

GROUP_ESTIMATORS = frozenset({"reinforce_plus_plus_baseline", "grpo", "dr_grpo", "rloo"})
"""Estimators whose baseline is the other samples of a group: they need ``samples_per_prompt`` > 1."""


@dataclass(frozen=True)
class AdvantageInputs:
    """What an advantage estimator may use, for one agent's batch.

    Attributes:
        rewards: ``[B]`` scalar sequence rewards R_a(x, y).
        kl: ``[B, T]`` per-token KL of pi_old against pi_ref, already through ``kl_penalty``.
        response_mask: ``[B, T]``, 1 on the agent's own generated tokens.
        kl_coef: beta, the weight of the KL penalty folded into the reward (0 when the KL is in
            the loss instead).
        group_ids: ``[B]`` long, the group each sample belongs to (group baselines).
        values: ``[B, T]`` critic values V(s_t) of pi_old's states, for ``gae``; else None.
        gamma: discount of ``gae``.
        lam: lambda of ``gae``.
    """

    rewards: torch.Tensor
    kl: torch.Tensor
    response_mask: torch.Tensor
    kl_coef: float
    group_ids: torch.Tensor
    values: torch.Tensor | None = None
    gamma: float = 1.0
    lam: float = 1.0

    def __post_init__(self) -> None:
        # A shape slip here would silently broadcast into wrong advantages, so fail loudly.
        if self.response_mask.dim() != 2:
            raise ValueError(f"response_mask must be [B, T], got shape {tuple(self.response_mask.shape)}")
        batch = self.response_mask.shape[0]
        if self.kl.shape != self.response_mask.shape:
            raise ValueError(
                f"kl shape {tuple(self.kl.shape)} != response_mask shape {tuple(self.response_mask.shape)}"
            )
        if self.values is not None and self.values.shape != self.response_mask.shape:
            raise ValueError(
                f"values shape {tuple(self.values.shape)} != response_mask shape {tuple(self.response_mask.shape)}"
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


def _token_rewards(rewards: torch.Tensor, inputs: AdvantageInputs) -> torch.Tensor:
    """``[B, T]`` r_t = -beta * kl_t on valid tokens, plus the sequence reward ``[B]`` on the last one
    (OpenRLHF ``compute_reward``, verl ``apply_kl_penalty``, without OpenRLHF's clip of R to ±10)."""
    mask = inputs.response_mask.to(torch.bool)
    # where() keeps padding garbage out.
    kl = inputs.kl.float()
    token_rewards = torch.where(mask, -inputs.kl_coef * kl, torch.zeros_like(kl))
    last = _last_token_index(mask)
    has_tokens = last >= 0
    # The outcome reward lands on the last valid token; an empty row has nowhere to put it.
    token_rewards[has_tokens, last[has_tokens]] += rewards[has_tokens]
    return token_rewards


def _sequence_scores(inputs: AdvantageInputs) -> torch.Tensor:
    """``[B]`` s_i = sum_t r_t = R_i - beta * sum_t kl_t over valid tokens (verl's GRPO/RLOO score).

    An empty response keeps its R (it has no token to carry it, but it is still in its group).
    """
    return inputs.rewards.float() - inputs.kl_coef * masked_sum(inputs.kl.float(), inputs.response_mask, dim=1)


def _reinforce_pp(rewards: torch.Tensor, inputs: AdvantageInputs) -> AdvantageOutput:
    """Shared body of REINFORCE++ given the (possibly baselined) sequence rewards ``[B]``."""
    mask = inputs.response_mask.to(torch.bool)
    token_rewards = _token_rewards(rewards, inputs)
    # No reset at masked positions (verl #7278): they add 0, so the return flows across them.
    returns = torch.where(mask, _reverse_cumsum(token_rewards), torch.zeros_like(token_rewards))
    # Whitening pools all tokens of the batch, not each row (eq. 4: mean/std over x, i in B_a).
    advantages = masked_whiten(returns, mask)
    return AdvantageOutput(advantages=advantages, returns=returns)


@ADVANTAGE_ESTIMATORS.register("reinforce_plus_plus")
def reinforce_plus_plus(inputs: AdvantageInputs) -> AdvantageOutput:
    """REINFORCE++ (paper eq. 4, Hu et al. 2025): KL-shaped return-to-go, whitened over the batch.

    Matches OpenRLHF's ``reinforce`` estimator (gamma = 1), except that the variance gets ``+ 1e-8``
    where OpenRLHF takes ``max(var, 1e-8)``.

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

    Matches OpenRLHF's ``reinforce_baseline`` (the baseline acts on R; the KL stays per token).

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


def _group_normalised(inputs: AdvantageInputs, scale_by_std: bool) -> AdvantageOutput:
    """Shared body of GRPO and Dr.GRPO on the KL-shaped sequence scores."""
    scores = _sequence_scores(inputs)
    _, size, mean = _group_stats(scores, inputs.group_ids)
    advantages = scores - mean
    if scale_by_std:
        squares, _, _ = _group_stats(advantages.square(), inputs.group_ids)
        # n - 1 clamped to 1: a singleton has centered = 0 and squares = 0, so its advantage is 0.
        std = (squares / (size - 1).clamp(min=1)).sqrt()
        advantages = advantages / (std + GRPO_STD_EPS)
    mask = inputs.response_mask
    return AdvantageOutput(_broadcast(advantages, mask), _broadcast(scores, mask))


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo(inputs: AdvantageInputs) -> AdvantageOutput:
    """GRPO outcome advantage: A_i = (s_i - mean_g) / (std_g + 1e-6), the same for every token.

    Matches verl's ``compute_grpo_outcome_advantage``: s_i = R_i - beta * sum_t kl_t (beta = 0
    when the KL is in the loss), ``std_g`` the unbiased (n - 1) standard deviation of the group's
    scores, as ``torch.std``. One difference: a group of one gets advantage 0 (verl gives it s_i).

    Args:
        inputs: one agent's batch.

    Returns:
        ``advantages`` = A_i broadcast over the response, ``returns`` = s_i broadcast; ``[B, T]``.
    """
    return _group_normalised(inputs, scale_by_std=True)


@ADVANTAGE_ESTIMATORS.register("dr_grpo")
def dr_grpo(inputs: AdvantageInputs) -> AdvantageOutput:
    """Dr.GRPO outcome advantage: A_i = s_i - mean_g, no division by the group's std.

    Matches OpenRLHF's ``dr_grpo`` and verl's GRPO with ``norm_adv_by_std_in_grpo=False``
    (Liu et al. 2025, "Understanding R1-Zero-like training"). Pair it with the
    "seq-mean-token-sum-norm" aggregation for the paper's length-unbiased loss.

    Args:
        inputs: one agent's batch; s_i as for ``grpo``.

    Returns:
        ``advantages`` = A_i broadcast over the response, ``returns`` = s_i broadcast; ``[B, T]``.
    """
    return _group_normalised(inputs, scale_by_std=False)


@ADVANTAGE_ESTIMATORS.register("rloo")
def rloo(inputs: AdvantageInputs) -> AdvantageOutput:
    """RLOO: A_i = s_i - mean of the other samples of its group, the same for every token.

    Matches OpenRLHF's ``rloo`` (R - (sum_g - R) / (n - 1)), which equals verl's
    n / (n - 1) * (s_i - mean_g); s_i as for ``grpo``. A group of one has no other sample and gets 0.

    Args:
        inputs: one agent's batch.

    Returns:
        ``advantages`` = A_i broadcast over the response, ``returns`` = s_i broadcast; ``[B, T]``.
    """
    scores = _sequence_scores(inputs)
    total, size, _ = _group_stats(scores, inputs.group_ids)
    others_mean = (total - scores) / (size - 1).clamp(min=1)
    advantages = torch.where(size > 1, scores - others_mean, torch.zeros_like(scores))
    mask = inputs.response_mask
    return AdvantageOutput(_broadcast(advantages, mask), _broadcast(scores, mask))


@ADVANTAGE_ESTIMATORS.register("gae")
def gae(inputs: AdvantageInputs) -> AdvantageOutput:
    """Generalised advantage estimation for PPO with a critic (Schulman et al. 2016).

    Matches verl's ``compute_gae_advantage_return``: on the token rewards r_t (-beta * kl_t, plus R
    on the last token), delta_t = r_t + gamma * V_{t+1} - V_t and A_t = delta_t + gamma * lam *
    A_{t+1}, where "t+1" is the next *valid* token (the recursion carries across masked positions,
    so a gap never cuts it; after the last token V = 0). Returns G_t = A_t + V_t are the critic's
    targets; the advantages are then whitened over the batch with the Bessel-corrected variance.
    For right-padded responses this is also OpenRLHF's ``gae``.

    Args:
        inputs: one agent's batch with ``values`` ``[B, T]`` (V of pi_old's states, no grad).

    Returns:
        ``advantages`` = whitened A, ``returns`` = A + V, both ``[B, T]`` and 0 on masked positions.

    Raises:
        ValueError: ``inputs.values`` is None.
    """
    if inputs.values is None:
        raise ValueError("advantage estimator 'gae' needs critic values (AdvantageInputs.values)")
    mask = inputs.response_mask.to(torch.bool)
    rewards = _token_rewards(inputs.rewards.float(), inputs)
    values = torch.where(mask, inputs.values.float(), torch.zeros_like(rewards))
    next_value = torch.zeros_like(rewards[:, 0])
    running = torch.zeros_like(rewards[:, 0])
    advantages = torch.zeros_like(rewards)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + inputs.gamma * next_value - values[:, t]
        # Masked positions keep the carry unchanged, as if they were not there.
        running = torch.where(mask[:, t], delta + inputs.gamma * inputs.lam * running, running)
        next_value = torch.where(mask[:, t], values[:, t], next_value)
        advantages[:, t] = running
    returns = torch.where(mask, advantages + values, torch.zeros_like(rewards))
    return AdvantageOutput(masked_whiten(advantages, mask, unbiased=True), returns)
