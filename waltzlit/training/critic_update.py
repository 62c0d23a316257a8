"""One agent's critic update for PPO (``advantage_estimator: gae``).

The critic trains in its own loop after the policy, on the batch that :func:`prepare_batch` filled
with ``old_values`` and GAE ``returns``, over the same schedule (``update_epochs`` passes of
``mini_batch_size`` mini-batches of ``micro_batch_size`` micro-batches) with its own optimizer,
as verl and OpenRLHF train their critics. The loss is ``value_loss_coef`` times verl's clipped
value loss, token-mean (verl's critic default) over global token counts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from waltzlit.agents.critic import ValueModel
from waltzlit.algorithms.masked_ops import masked_mean, masked_var
from waltzlit.algorithms.value_loss import clipped_value_loss
from waltzlit.config import AlgorithmConfig
from waltzlit.training.update import global_denominator, minibatch_schedule
from waltzlit.types import AgentBatch

CRITIC_AGGREGATION = "token-mean"


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(G - V) / Var(G) over valid tokens: 1 is a perfect critic, <= 0 no better than a constant."""
    variance = masked_var(returns, mask)
    if variance <= 0:
        return float("nan")
    return float(1.0 - masked_var(returns - values, mask) / variance)


def value_update(
    critic: ValueModel,
    batch: AgentBatch,
    algo: AlgorithmConfig,
    optimizer,
    backward: Callable[[torch.Tensor], None],
    clip_gradients: Callable[[], float],
    generator: torch.Generator | None = None,
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
    world_size: int = 1,
) -> dict[str, float]:
    """Clipped value-regression steps of ``critic`` towards ``batch.returns``.

    Args:
        critic: the agent's value model.
        batch: prepared by ``prepare_batch`` with a critic (``old_values`` and ``returns`` set).
        backward, clip_gradients, generator, reduce_sum, world_size: as for ``policy_update``.

    Returns:
        Scalars for logging: value_loss, value_clip_fraction (means over optimizer steps),
        values_mean, returns_mean, explained_variance (of the values the advantages used) and
        critic_grad_norm (of the last step).
    """
    if batch.old_values is None or batch.returns is None:
        raise ValueError("value_update needs a batch prepared with a critic (old_values and returns)")
    mask = batch.response_mask
    totals = {"loss": 0.0, "clip": 0.0}
    grad_norm, steps = 0.0, 0
    critic.train()
    try:
        for micro_batches in minibatch_schedule(len(batch), algo, generator):
            rows = torch.cat(micro_batches)
            denominator = global_denominator(mask[rows], CRITIC_AGGREGATION, None, reduce_sum)
            tokens = mask[rows].sum().clamp(min=1)
            optimizer.zero_grad(set_to_none=True)
            step_loss, step_clip, finite = 0.0, 0.0, True
            for part in micro_batches:
                micro = batch.select(part)
                values = critic.values(micro)
                device = values.device
                out = clipped_value_loss(
                    values,
                    micro.old_values.to(device),
                    micro.returns.to(device),
                    micro.response_mask.to(device),
                    value_clip=algo.value_clip,
                    aggregation=CRITIC_AGGREGATION,
                    normalizer=denominator,
                )
                loss = algo.value_loss_coef * out.loss * world_size
                if not torch.isfinite(loss):
                    finite = False
                    break
                backward(loss)
                step_loss += float(loss.detach())
                step_clip += float(out.clip_fraction) * float(micro.response_mask.sum() / tokens)
            if not finite:
                optimizer.zero_grad(set_to_none=True)
                continue
            grad_norm = clip_gradients()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            totals["loss"] += step_loss
            totals["clip"] += step_clip
    finally:
        critic.eval()
    return {
        "value_loss": totals["loss"] / max(steps, 1),
        "value_clip_fraction": totals["clip"] / max(steps, 1),
        "values_mean": float(masked_mean(batch.old_values, mask)),
        "returns_mean": float(masked_mean(batch.returns, mask)),
        "explained_variance": explained_variance(batch.old_values, batch.returns, mask),
        "critic_grad_norm": float(grad_norm),
    }
