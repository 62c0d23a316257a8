"""One agent's critic update for PPO (``advantage_estimator: gae``).

The critic trains after the policy, in the same loop (``update.optimizer_steps``), on the batch that :func:`prepare_batch` filled
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
from waltzlit.training.update import minibatch_schedule, optimizer_steps
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
        critic_grad_norm (of the last step), critic_skipped_nonfinite (1.0 when a step was dropped).
    """
    if batch.old_values is None or batch.returns is None:
        raise ValueError("value_update needs a batch prepared with a critic (old_values and returns)")
    mask = batch.response_mask

    def micro_loss(part: torch.Tensor, denominator: torch.Tensor):
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
        return algo.value_loss_coef * out.loss, {"clip": float(out.clip_fraction)}

    critic.train()
    try:
        totals = optimizer_steps(minibatch_schedule(len(batch), algo, generator), mask, CRITIC_AGGREGATION, None,
                                 micro_loss, optimizer, backward, clip_gradients, reduce_sum, world_size)
    finally:
        critic.eval()
    steps, grad_norm = totals.steps, totals.grad_norm
    return {
        "value_loss": totals.sums.get("loss", 0.0) / max(steps, 1),
        "value_clip_fraction": totals.sums.get("clip", 0.0) / max(steps, 1),
        "values_mean": float(masked_mean(batch.old_values, mask)),
        "returns_mean": float(masked_mean(batch.returns, mask)),
        "explained_variance": explained_variance(batch.old_values, batch.returns, mask),
        "critic_grad_norm": float(grad_norm),
        "critic_skipped_nonfinite": float(totals.skipped),
    }
