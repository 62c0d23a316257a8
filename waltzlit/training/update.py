"""One agent's policy-gradient update on its batch of samples (paper §2.3-(III), eq. 4).

Steps: [5a] old and reference log-probs on the exact sampled tokens -> [5b] per-token KL and the
advantage estimator -> [6] ``update_epochs`` passes of micro-batched clipped-loss backward passes,
one optimizer step per pass. Nothing here knows which agent it is updating.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from waltzlit.agents.agent import Agent
from waltzlit.algorithms.advantages import AdvantageInputs
from waltzlit.algorithms.kl import kl_penalty
from waltzlit.algorithms.masked_ops import masked_mean
from waltzlit.algorithms.registry import ADVANTAGE_ESTIMATORS, POLICY_LOSSES
from waltzlit.config import AlgorithmConfig
from waltzlit.types import AgentBatch


@dataclass(frozen=True)
class UpdateStats:
    """Diagnostics of one agent's update (means over the batch's response tokens or rows)."""

    loss: float
    reward: float
    kl: float
    advantage_abs: float
    clip_fraction: float
    approx_kl: float
    entropy: float
    grad_norm: float
    response_length: float
    logprob_mismatch: float
    skipped_nonfinite: bool


@torch.no_grad()
def prepare_batch(agent: Agent, batch: AgentBatch, algo: AlgorithmConfig) -> tuple[AgentBatch, torch.Tensor, torch.Tensor]:
    """Fill old/reference log-probs; return (batch, advantages ``[B, T]``, per-token KL ``[B, T]``)."""
    mask = batch.response_mask
    if algo.recompute_old_logprobs or batch.generation_logprobs is None:
        batch.old_logprobs = _in_micro_batches(batch, algo.micro_batch_size, lambda mb: agent.policy_logprobs(mb)[0])
    else:
        batch.old_logprobs = batch.generation_logprobs.clone()
    if algo.kl_coef > 0:
        batch.ref_logprobs = _in_micro_batches(batch, algo.micro_batch_size, agent.reference_logprobs)
        kl = kl_penalty(batch.old_logprobs, batch.ref_logprobs, algo.kl_estimator) * mask
    else:
        kl = torch.zeros_like(mask)
    estimator = ADVANTAGE_ESTIMATORS[algo.advantage_estimator]
    advantages = estimator(
        AdvantageInputs(
            rewards=batch.rewards, kl=kl, response_mask=mask, kl_coef=algo.kl_coef, group_ids=batch.group_ids
        )
    ).advantages
    return batch, advantages, kl


def _in_micro_batches(batch: AgentBatch, size: int, fn: Callable[[AgentBatch], torch.Tensor]) -> torch.Tensor:
    parts = [fn(batch.select(torch.arange(s, min(s + size, len(batch))))).cpu() for s in range(0, len(batch), size)]
    return torch.cat(parts, dim=0)


def _micro_batch_weight(mask: torch.Tensor, rows: torch.Tensor, aggregation: str) -> float:
    """Share of the full-batch loss that a micro-batch's locally aggregated loss stands for, so that
    accumulating micro-batches reproduces the full-batch aggregation."""
    if aggregation == "token-mean":
        return float(mask[rows].sum() / mask.sum().clamp(min=1))
    return len(rows) / mask.shape[0]


def policy_update(
    agent: Agent,
    batch: AgentBatch,
    advantages: torch.Tensor,
    kl: torch.Tensor,
    algo: AlgorithmConfig,
    optimizer,
    backward: Callable[[torch.Tensor], None],
    clip_gradients: Callable[[], float],
    generator: torch.Generator | None = None,
) -> UpdateStats:
    """Clipped policy-gradient passes over ``batch`` (prepared by :func:`prepare_batch`).

    Args:
        backward: the LightningModule's ``manual_backward``.
        clip_gradients: clips this agent's gradients and returns their norm before clipping.
        generator: shuffles micro-batches across passes.
    """
    mask = batch.response_mask
    loss_fn = POLICY_LOSSES[algo.policy_loss]
    totals = {"loss": 0.0, "clip": 0.0, "approx_kl": 0.0, "entropy": 0.0}
    grad_norm, passes, skipped = 0.0, 0, False
    with agent.training_mode(True):
        for _ in range(algo.update_epochs):
            order = torch.randperm(len(batch), generator=generator)
            optimizer.zero_grad(set_to_none=True)
            finite = True
            for start in range(0, len(batch), algo.micro_batch_size):
                rows = order[start : start + algo.micro_batch_size]
                micro = batch.select(rows)
                logprobs, entropy = agent.policy_logprobs(micro, with_entropy=True)
                device = logprobs.device
                out = loss_fn(
                    logprobs,
                    micro.old_logprobs.to(device),
                    advantages[rows].to(device),
                    micro.response_mask.to(device),
                    clip_eps=algo.clip_eps,
                    aggregation=algo.loss_aggregation,
                )
                if not torch.isfinite(out.loss):
                    finite = False
                    break
                weight = _micro_batch_weight(mask, rows, algo.loss_aggregation)
                backward(out.loss * weight)
                totals["loss"] += float(out.loss.detach()) * weight
                totals["clip"] += float(out.clip_fraction) * weight
                totals["approx_kl"] += float(out.approx_kl) * weight
                totals["entropy"] += float(masked_mean(entropy, micro.response_mask.to(device))) * weight
            if not finite:
                # A non-finite loss never reaches the weights: drop this pass's gradients.
                optimizer.zero_grad(set_to_none=True)
                skipped = True
                continue
            grad_norm = clip_gradients()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            passes += 1
    per_pass = max(passes, 1)
    mismatch = float("nan")
    if batch.generation_logprobs is not None and batch.old_logprobs is not None:
        mismatch = float(masked_mean((batch.generation_logprobs - batch.old_logprobs).abs(), mask))
    return UpdateStats(
        loss=totals["loss"] / per_pass,
        reward=float(batch.rewards.mean()),
        kl=float(masked_mean(kl, mask)),
        advantage_abs=float(masked_mean(advantages.abs(), mask)),
        clip_fraction=totals["clip"] / per_pass,
        approx_kl=totals["approx_kl"] / per_pass,
        entropy=totals["entropy"] / per_pass,
        grad_norm=float(grad_norm),
        response_length=float(mask.sum(1).mean()),
        logprob_mismatch=mismatch,
        skipped_nonfinite=skipped,
    )
