"""One agent's policy-gradient update on its batch of samples (paper §2.3-(III), eq. 4).

Steps: [5a] old and reference log-probs (and critic values, for PPO) on the exact sampled tokens
-> [5b] per-token KL and the advantage estimator -> [6] ``update_epochs`` shuffled passes, each
cut into mini-batches (one optimizer step each) of accumulated micro-batches. Loss denominators
are global counts over the mini-batch (``global_denominator``). Nothing here knows which agent
it is updating; :func:`optimizer_steps` is the loop, shared with the critic (``critic_update.py``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from waltzlit.agents.agent import Agent
from waltzlit.agents.critic import ValueModel
from waltzlit.algorithms.advantages import AdvantageInputs
from waltzlit.algorithms.kl import kl_penalty
from waltzlit.algorithms.masked_ops import masked_mean
from waltzlit.algorithms.policy_losses import aggregate_loss, loss_denominator
from waltzlit.algorithms.registry import ADVANTAGE_ESTIMATORS, POLICY_LOSSES
from waltzlit.config import AlgorithmConfig
from waltzlit.distributed import max_over_ranks
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
    extra: dict[str, float] = field(default_factory=dict)
    """Further scalars, logged under the same prefix (e.g. kl_loss, the critic's value_loss)."""


@torch.no_grad()
def prepare_batch(
    agent: Agent, batch: AgentBatch, algo: AlgorithmConfig, critic: ValueModel | None = None
) -> tuple[AgentBatch, torch.Tensor, torch.Tensor]:
    """Fill old/reference log-probs (and, with a critic, ``old_values`` and ``returns``); return
    (batch, advantages ``[B, T]``, per-token KL of pi_old vs pi_ref ``[B, T]``).

    The KL enters the advantage estimator only with ``kl_placement: reward``; with "loss" the
    reference log-probs are kept for the loss and the KL here is only logged.

    When :func:`old_logprobs_from_update` holds, no forward pass is made for pi_old: the batch's
    ``old_logprobs`` stay None and :func:`policy_update` fills them from its own forward (the KL
    returned here is then zero; the logged KL is computed after the update).
    """
    mask = batch.response_mask
    if old_logprobs_from_update(agent, len(batch), algo, critic):
        batch.old_logprobs = None
    elif algo.recompute_old_logprobs or batch.generation_logprobs is None:
        batch.old_logprobs = _in_micro_batches(batch, algo.micro_batch_size, lambda mb: agent.policy_logprobs(mb)[0])
    else:
        batch.old_logprobs = batch.generation_logprobs.clone()
    if algo.kl_coef > 0:
        batch.ref_logprobs = _in_micro_batches(batch, algo.micro_batch_size, agent.reference_logprobs)
        old = batch.old_logprobs
        kl = torch.zeros_like(mask) if old is None else kl_penalty(old, batch.ref_logprobs, algo.kl_estimator) * mask
    else:
        kl = torch.zeros_like(mask)
    if algo.uses_critic and critic is None:
        raise ValueError(f"advantage_estimator {algo.advantage_estimator!r} needs a critic")
    if critic is not None:
        batch.old_values = _in_micro_batches(batch, algo.micro_batch_size, critic.values)
    if batch.old_logprobs is None and _kl_in_reward(algo):
        return batch, None, kl  # the advantages wait for pi_old from the update's forward
    return batch, estimate_advantages(batch, algo, kl), kl


def estimate_advantages(batch: AgentBatch, algo: AlgorithmConfig, kl: torch.Tensor) -> torch.Tensor:
    """The advantage estimator on the batch's rewards and per-token KL ``[B, T]``; with a critic,
    also fills ``batch.returns``. Returns the advantages ``[B, T]``."""
    estimator = ADVANTAGE_ESTIMATORS[algo.advantage_estimator]
    out = estimator(
        AdvantageInputs(
            rewards=batch.rewards,
            kl=kl,
            response_mask=batch.response_mask,
            kl_coef=algo.kl_coef if algo.kl_placement == "reward" else 0.0,
            group_ids=batch.group_ids,
            values=batch.old_values,
            gamma=algo.gae_gamma,
            lam=algo.gae_lambda,
        )
    )
    if batch.old_values is not None:
        batch.returns = out.returns
    return out.advantages


def _kl_in_reward(algo: AlgorithmConfig) -> bool:
    return algo.kl_coef > 0 and algo.kl_placement == "reward"


def old_logprobs_from_update(agent: Agent, batch_size: int, algo: AlgorithmConfig, critic=None) -> bool:
    """Whether log pi_old can be read off the update's own forward pass instead of an extra one.

    With a single optimizer step over the whole batch (one epoch, one mini-batch) every row's loss
    forward runs before any weight changes, so its detached log-probs *are* pi_old, and the ratio
    is exactly 1 (TRL does the same at ``num_iterations=1``). With the KL in the reward, only when
    one micro-batch holds the whole batch: its forward runs first, the advantages are estimated
    from it, then the loss is taken (:func:`policy_update` with ``advantages=None``). Not with a
    critic, when the loss forward could differ from the eval-mode pi_old (dropout), or when
    ``recompute_old_logprobs: false`` asks for the generation log-probs.
    """
    single_step = algo.update_epochs == 1 and (algo.mini_batch_size is None or algo.mini_batch_size >= batch_size)
    # With the KL in the reward the advantages need pi_old first: then the whole batch must be one
    # micro-batch, whose forward gives pi_old, then the advantages, then the loss and its backward.
    advantages_can_wait = not _kl_in_reward(algo) or algo.micro_batch_size >= batch_size
    no_critic = critic is None and not algo.uses_critic
    return (algo.old_logprobs_from_update and algo.recompute_old_logprobs and single_step and advantages_can_wait
            and no_critic and _dropout_free(agent))


def _dropout_free(agent: Agent) -> bool:
    """No dropout anywhere in the policy: dropout modules (LoRA's included) and the functional
    dropouts that Hugging Face configs switch on (``attention_dropout`` ...). Unknown agents: False."""
    model = getattr(agent, "model", None)
    if not isinstance(model, nn.Module):
        return False
    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules()):
        return False
    config = getattr(model, "config", None)
    values = config.to_dict().items() if hasattr(config, "to_dict") else ()
    return not any("dropout" in key and isinstance(value, (int, float)) and value > 0 for key, value in values)


def _in_micro_batches(batch: AgentBatch, size: int, fn: Callable[[AgentBatch], torch.Tensor]) -> torch.Tensor:
    parts = [fn(batch.select(torch.arange(s, min(s + size, len(batch))))).cpu() for s in range(0, len(batch), size)]
    return torch.cat(parts, dim=0)


def minibatch_schedule(
    num_samples: int, algo: AlgorithmConfig, generator: torch.Generator | None = None
) -> Iterator[list[torch.Tensor]]:
    """The update schedule: ``update_epochs`` shuffled passes, each cut into mini-batches.

    Yields one item per optimizer step: the mini-batch's micro-batches, as lists of row indices
    (``mini_batch_size`` rows, None = all; the last mini-batch of a pass may be smaller). The
    micro-batches' gradients accumulate before the step.
    """
    mini = algo.mini_batch_size or num_samples
    for _ in range(algo.update_epochs):
        order = torch.randperm(num_samples, generator=generator)
        for start in range(0, num_samples, mini):
            rows = order[start : start + mini]
            yield [rows[s : s + algo.micro_batch_size] for s in range(0, len(rows), algo.micro_batch_size)]


def global_denominator(
    mask: torch.Tensor, mode: str, max_tokens: int | None, reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None
) -> torch.Tensor:
    """``loss_denominator`` of a whole mini-batch, summed over data-parallel ranks by ``reduce_sum``.

    Every micro-batch loss divides by it, so their sum is the mini-batch loss whatever the
    micro-batching. Multiplying the loss by the world size then undoes the strategy's gradient
    averaging (verl's ``* dp_size``), which makes the gradient independent of the device count.
    """
    local = loss_denominator(mask, mode, max_tokens)
    return reduce_sum(local).cpu() if reduce_sum is not None else local


@dataclass
class StepTotals:
    """What :func:`optimizer_steps` did: summed per-step scalars, steps taken, last gradient norm."""

    sums: dict[str, float]
    steps: int
    grad_norm: float
    skipped: bool


MicroLoss = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor | None, dict[str, float]]]
"""``(row indices of a micro-batch, mini-batch denominator) -> (loss or None to skip, diagnostics)``."""


def optimizer_steps(
    schedule: Iterator[list[torch.Tensor]],
    mask: torch.Tensor,
    aggregation: str,
    max_tokens: int | None,
    micro_loss: MicroLoss,
    optimizer,
    backward: Callable[[torch.Tensor], None],
    clip_gradients: Callable[[], float],
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
    world_size: int = 1,
) -> StepTotals:
    """The one update loop, for policies and critics: per mini-batch of ``schedule``, accumulate the
    micro-batch losses (each divided by the mini-batch's global ``denominator``), then clip and step.

    ``loss * world_size`` undoes the strategy's gradient averaging (:func:`global_denominator`).
    A micro-batch whose loss is None or non-finite on *any* rank drops that optimizer step's
    gradients on every rank (decided together: a rank skipping its backward alone would stall the
    collectives of the others). Diagnostics are token-weighted means over the mini-batch; the
    returned sums add them up over the steps taken.
    """
    sums: dict[str, float] = defaultdict(float)
    grad_norm, steps, skipped = 0.0, 0, False
    for micro_batches in schedule:
        rows = torch.cat(micro_batches)
        denominator = global_denominator(mask[rows], aggregation, max_tokens, reduce_sum)
        tokens = mask[rows].sum().clamp(min=1)
        optimizer.zero_grad(set_to_none=True)
        step_sums: dict[str, float] = defaultdict(float)
        finite = True
        for part in micro_batches:
            loss, diagnostics = micro_loss(part, denominator)
            if max_over_ranks(int(loss is None or not torch.isfinite(loss))):
                finite = False
                break
            backward(loss * world_size)
            step_sums["loss"] += float(loss.detach()) * world_size
            weight = float(mask[part].sum() / tokens)
            for key, value in diagnostics.items():
                step_sums[key] += value * weight
        if not finite:
            optimizer.zero_grad(set_to_none=True)  # a non-finite loss never reaches the weights
            skipped = True
            continue
        grad_norm = clip_gradients()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps += 1
        for key, value in step_sums.items():
            sums[key] += value
    return StepTotals(dict(sums), steps, float(grad_norm), skipped)


def _micro_loss(
    agent: Agent,
    micro: AgentBatch,
    advantages: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    algo: AlgorithmConfig,
    denominator: torch.Tensor,
) -> tuple[torch.Tensor | None, dict[str, float]]:
    """Policy loss + beta * KL loss (when in the loss) - entropy_coef * entropy of one micro-batch.

    Every term is aggregated with the same mode and the mini-batch ``denominator`` (verl's
    ``dp_actor``). Returns the loss and detached diagnostics (token means over the micro-batch).
    ``advantages`` may be a function of this forward's log-probs (pi_old, when the advantages
    wait for it); it returns None to skip the step (non-finite advantages), and so does this.
    """
    logprobs, entropy = agent.policy_logprobs(micro, with_entropy=True, entropy_grad=algo.entropy_coef > 0)
    if micro.old_logprobs is None:  # an on-policy step (old_logprobs_from_update): this forward is pi_old
        micro.old_logprobs = logprobs.detach()
    if callable(advantages):
        advantages = advantages(micro.old_logprobs)
        if advantages is None:
            return None, {}
    device = logprobs.device
    mask = micro.response_mask.to(device)
    out = POLICY_LOSSES[algo.policy_loss](
        logprobs,
        micro.old_logprobs.to(device),
        advantages.to(device),
        mask,
        clip_eps=algo.clip_eps,
        aggregation=algo.loss_aggregation,
        normalizer=denominator,
        dual_clip=algo.dual_clip,
    )
    loss = out.loss
    diagnostics = {
        "clip": float(out.clip_fraction),
        "approx_kl": float(out.approx_kl),
        "entropy": float(masked_mean(entropy.detach(), mask)),
    }
    if algo.kl_placement == "loss" and algo.kl_coef > 0:
        # KL(pi_theta || pi_ref) with gradient, on the current policy's log-probs.
        kl = kl_penalty(logprobs, micro.ref_logprobs.to(device), algo.kl_estimator)
        loss = loss + algo.kl_coef * aggregate_loss(kl, mask, algo.loss_aggregation, denominator)
        diagnostics["kl_loss"] = float(masked_mean(kl.detach(), mask))
    if algo.entropy_coef > 0:
        loss = loss - algo.entropy_coef * aggregate_loss(entropy, mask, algo.loss_aggregation, denominator)
    return loss, diagnostics


def policy_update(
    agent: Agent,
    batch: AgentBatch,
    advantages: torch.Tensor | None,
    kl: torch.Tensor,
    algo: AlgorithmConfig,
    optimizer,
    backward: Callable[[torch.Tensor], None],
    clip_gradients: Callable[[], float],
    generator: torch.Generator | None = None,
    max_response_tokens: int | None = None,
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
    world_size: int = 1,
) -> UpdateStats:
    """Policy-gradient steps over ``batch`` (prepared by :func:`prepare_batch`), per ``minibatch_schedule``.

    Args:
        advantages: ``[B, T]``, or None when :func:`prepare_batch` left them to be estimated from
            pi_old read off this update's forward (the KL in the reward, one micro-batch).
        backward: the LightningModule's ``manual_backward``.
        clip_gradients: clips this agent's gradients and returns their norm before clipping.
        generator: shuffles samples across passes.
        max_response_tokens: L of "seq-mean-token-sum-norm" when ``algo.loss_scale_tokens`` is None
            (the agent's ``max_new_tokens``); None falls back to the padded width.
        reduce_sum: sums a count over data-parallel ranks (the strategy's all-reduce); None on one.
        world_size: number of data-parallel ranks whose gradients the strategy averages.
    """
    mask = batch.response_mask
    max_tokens = algo.loss_scale_tokens or max_response_tokens
    deferred = advantages is None  # estimated from pi_old, which the one micro-batch's forward gives
    if deferred:
        advantages, skipped = torch.zeros_like(mask), False
    else:
        # A non-finite advantage (a NaN/inf reward, a diverged KL) would poison every pass: skip
        # this agent's whole update; the skip is reported like a non-finite loss.
        skipped = bool(max_over_ranks(int(not torch.isfinite(advantages).all())))
    schedule = [] if skipped else minibatch_schedule(len(batch), algo, generator)
    # pi_old read off this update's forward (see old_logprobs_from_update), filled row by row
    observed_old = torch.zeros_like(mask) if batch.old_logprobs is None else None
    observed_rows = torch.zeros(len(batch), dtype=torch.bool)

    def micro_loss(part: torch.Tensor, denominator: torch.Tensor):
        nonlocal advantages, kl
        micro = batch.select(part)
        if deferred:
            def advantages_from(old: torch.Tensor) -> torch.Tensor | None:
                nonlocal advantages, kl
                observed = torch.zeros_like(mask)
                observed[part] = old.cpu().to(mask.dtype)  # part holds every row (one micro-batch)
                kl = kl_penalty(observed, batch.ref_logprobs, algo.kl_estimator) * mask
                advantages = estimate_advantages(batch, algo, kl)
                if max_over_ranks(int(not torch.isfinite(advantages).all())):
                    return None
                return advantages[part]

            loss, diagnostics = _micro_loss(agent, micro, advantages_from, algo, denominator)
        else:
            loss, diagnostics = _micro_loss(agent, micro, advantages[part], algo, denominator)
        if observed_old is not None:
            observed_old[part], observed_rows[part] = micro.old_logprobs.cpu().to(mask.dtype), True
        return loss, diagnostics

    with agent.training_mode(True):
        totals = optimizer_steps(schedule, mask, algo.loss_aggregation, max_tokens, micro_loss, optimizer, backward,
                                 clip_gradients, reduce_sum, world_size)
    sums, steps, grad_norm = totals.sums, totals.steps, totals.grad_norm
    skipped = skipped or totals.skipped
    per_step = {key: value / max(steps, 1) for key, value in sums.items()}
    if observed_old is not None and bool(observed_rows.all()):
        batch.old_logprobs = observed_old
        if batch.ref_logprobs is not None:  # the KL of pi_old to the reference, logged as before
            kl = kl_penalty(observed_old, batch.ref_logprobs, algo.kl_estimator) * mask
    mismatch = float("nan")
    if batch.generation_logprobs is not None and batch.old_logprobs is not None:
        mismatch = float(masked_mean((batch.generation_logprobs - batch.old_logprobs).abs(), mask))
    extra = {"optimizer_steps": float(steps)}
    if "kl_loss" in per_step:
        extra["kl_loss"] = per_step["kl_loss"]
    return UpdateStats(
        loss=per_step.get("loss", 0.0),
        reward=float(batch.rewards.mean()),
        kl=float(masked_mean(kl, mask)),
        advantage_abs=float(masked_mean(advantages.abs(), mask)),
        clip_fraction=per_step.get("clip", 0.0),
        approx_kl=per_step.get("approx_kl", 0.0),
        entropy=per_step.get("entropy", 0.0),
        grad_norm=float(grad_norm),
        response_length=float(mask.sum(1).mean()),
        logprob_mismatch=mismatch,
        skipped_nonfinite=skipped,
        extra=extra,
    )
