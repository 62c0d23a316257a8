"""What one RL step writes to the logger: scalars per agent and rollout transcripts as text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from lightning.pytorch import LightningModule

from waltzlit.rewards.scoring import EpisodeRewards
from waltzlit.training.update import UpdateStats
from waltzlit.types import Episode


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def step_scalars(
    rl_step: int,
    stage: int,
    rates: Mapping[str, float | torch.Tensor],
    episodes: Sequence[Episode],
    scores: Sequence[EpisodeRewards],
    stats: dict[str, UpdateStats],
    judge_parse_errors: int,
    timings: dict[str, float] | None = None,
) -> dict[str, float | torch.Tensor]:
    """The scalars of one RL step, named as they are logged: the step's safety ``rates`` (computed
    by the caller's torchmetrics), rewards, each trained agent's update stats and the seconds per
    stage (``timings``, already named ``time/<stage>``).

    Everything arrives as an argument (no module state is read), so what is logged is exactly what
    the step computed. Without a feedback agent (single-agent mode) the feedback metrics are left
    out and the feedback-based rates (trigger, JSON error, label accuracy) are 0.
    """
    values = {f"train/{k}": v for k, v in rates.items()}
    values.update(timings or {})
    values.update(
        {
            "train/rl_step": float(rl_step),
            "train/stage": float(stage),
            "train/judge_parse_errors": float(judge_parse_errors),
            "train/conversation/reward_initial": _mean([s.responses[0] for s in scores]),
            "train/conversation/reward_final": _mean([s.responses[-1] for s in scores]),
            "train/conversation/response_length": _mean([len(e.responses[0].response_ids) for e in episodes]),
            "train/conversation/truncated_rate": _mean([float(e.responses[0].truncated) for e in episodes]),
        }
    )
    if all(e.feedbacks for e in episodes):  # every two-agent episode has f0
        first_turns = [s.feedbacks[0] for s in scores]
        values.update(
            {
                "train/feedback/reward": _mean([b.total for b in first_turns]),
                "train/feedback/dir_mean": _mean([b.improvement for b in first_turns]),
                "train/feedback/label_reward": _mean([b.label for b in first_turns]),
                "train/feedback/format_reward": _mean([b.format for b in first_turns]),
                "train/feedback/response_length": _mean([len(e.feedbacks[0].response_ids) for e in episodes]),
            }
        )
    for role, s in stats.items():
        prefix = f"train/{role}/update"
        values.update(
            {
                f"{prefix}/loss": s.loss,
                f"{prefix}/reward": s.reward,
                f"{prefix}/kl": s.kl,
                f"{prefix}/advantage_abs": s.advantage_abs,
                f"{prefix}/clip_fraction": s.clip_fraction,
                f"{prefix}/approx_kl": s.approx_kl,
                f"{prefix}/entropy": s.entropy,
                f"{prefix}/grad_norm": s.grad_norm,
                f"{prefix}/sample_length": s.response_length,
                f"{prefix}/skipped_nonfinite": float(s.skipped_nonfinite),
            }
        )
        values.update({f"{prefix}/{key}": value for key, value in s.extra.items()})
        if s.logprob_mismatch == s.logprob_mismatch:  # not NaN: generation log-probs were recorded
            values[f"{prefix}/logprob_mismatch"] = s.logprob_mismatch
    return values


def write_step_scalars(module: LightningModule, values: Mapping[str, float | torch.Tensor], step: int) -> None:
    """Write one RL step's scalars to every logger at ``step`` (the RL step), and make them visible
    in ``trainer.callback_metrics`` (for checkpoint monitors, early stopping and the progress bar).

    Why not ``self.log``: Lightning moves a torchmetrics wrapper per key per call (``_ResultMetric.to``),
    ~0.4 ms each; with ~35 keys that was 8 % of an RL step on a tiny model (py-spy, benchmarks/README.md).
    Step scalars need none of its reductions: one value per key per RL step, from rank 0 as before
    (loggers write on rank 0 only). The step is the RL step itself, whatever Lightning's own batch
    counter says after a resume.
    """
    trainer = module.trainer
    scalars = {key: float(value) for key, value in values.items()}
    for logger in module.loggers:
        logger.log_metrics(scalars, step=step)
    trainer.callback_metrics.update({key: torch.tensor(value) for key, value in scalars.items()})


def format_transcript(episode: Episode, rewards: EpisodeRewards) -> str:
    """One episode as Markdown: prompt, each response with its labels, each feedback with its reward."""
    record = episode.record
    lines = [f"**prompt** ({'harmful' if record.prompt_harmful else 'benign'}, {record.source}): {record.prompt}", ""]
    for t, response in enumerate(episode.responses):
        labels = episode.labels[t] if t < len(episode.labels) else None
        verdict = f" — unsafe={labels.unsafe}, overrefuse={labels.overrefuse}" if labels else ""
        lines += [f"**c{t}**{verdict}: {response.text}", ""]
        if t < len(episode.feedbacks):
            parsed, reward = episode.parsed[t], rewards.feedbacks[t]
            flags = f"unsafe={parsed.unsafe}, overrefuse={parsed.overrefuse}" if parsed.valid else f"invalid ({parsed.error})"
            lines += [
                f"**f{t}** [{flags}; reward {reward.total:.3f} = DIR {reward.improvement:+.0f}, "
                f"label {reward.label:.0f}, format {reward.format:.0f}]: {episode.feedbacks[t].text}",
                "",
            ]
    lines.append(f"*stop: {episode.stop_reason}*")
    return "\n".join(lines)


def log_transcripts(
    module: LightningModule, episodes: Sequence[Episode], scores: Sequence[EpisodeRewards], tag: str
) -> None:
    """Write episodes as TensorBoard text (any logger whose experiment has ``add_text``)."""
    for logger in module.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_text"):
            text = "\n\n---\n\n".join(format_transcript(e, s) for e, s in zip(episodes, scores))
            experiment.add_text(tag, text, global_step=module.rl_step)
