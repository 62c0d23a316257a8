"""The core learning signal of WaltzRL in the synthetic world (Track 2), checked cheaply.

One fixed seed (0) of conf/learning/synthetic.yaml with the gains-only gate
(``reward.gate_losses: false``), exactly as benchmarks/learning/synthetic.py trains its
"gate on gains only" row (30 + 30 RL steps, 32 prompts per step; no validation rollouts, which
draw from their own RNG stream and so change nothing). "Rises" compares means over 5-step
windows (160 episodes each), with margins well below the measured changes. What it checks:

* stage 1, feedback agent: its label accuracy rises, and so does the reward of the final
  response (feedback makes revisions better; paper Fig. 3 and 4);
* stage 1: the final response's reward stays above c0's on average (the paper's Fig. 4 gap);
* stage 2: the conversation agent's first answers c0 improve, the final responses improve too,
  and the feedback agent's false alarms (good c0 flagged anyway) stay rare.

Why not the paper's own stage-2 reward: with it nothing penalises a false alarm, and on this seed
the feedback agent drifts to flagging most good answers (false alarms 0.21 -> 0.71 from the first
to the last 5 steps, label accuracy 0.71 -> 0.36) while the final response's reward falls
(0.74 -> 0.64 over stage 2) although c0's rises; the benchmark's tables report it for every seed.
"""

from __future__ import annotations

import glob

import pytest

from tests.conftest import REPO_ROOT
from waltzlit.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.integration]

STAGE1_STEPS = 30
TOTAL_STEPS = 60
WINDOW = 5


def _scalars(log_dir, tag: str) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (event_file,) = glob.glob(f"{log_dir}/**/events.out.tfevents.*", recursive=True)
    accumulator = EventAccumulator(event_file, size_guidance={"scalars": 0})
    accumulator.Reload()
    return [e.value for e in sorted(accumulator.Scalars(tag), key=lambda e: e.step)]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_feedback_and_conversation_agents_learn_with_the_gains_only_gate(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # the recipe's prompt file is relative to the repository root
    cli = main(args=[
        "--config", str(REPO_ROOT / "conf/learning/synthetic.yaml"),
        "--model.reward.gate_losses=false",
        f"--model.schedule.stage1_steps={STAGE1_STEPS}",
        f"--model.schedule.total_rl_steps={TOTAL_STEPS}",
        "--trainer.val_check_interval=1000",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
    ], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)

    runs = tmp_path / "runs"
    label_accuracy = _scalars(runs, "train/label_accuracy")
    final = _scalars(runs, "train/conversation/reward_final")
    first = _scalars(runs, "train/conversation/reward_initial")
    false_alarms = _scalars(runs, "train/false_alarm_rate")
    assert len(label_accuracy) == len(final) == len(first) == len(false_alarms) == TOTAL_STEPS

    # stage 1, steps 0-4 vs 15-19 (measured on this seed: 0.69 -> 0.77 and 0.71 -> 0.84)
    start, end = slice(0, WINDOW), slice(20 - WINDOW, 20)
    assert _mean(label_accuracy[end]) >= _mean(label_accuracy[start]) + 0.04, label_accuracy[:20]
    assert _mean(final[end]) >= _mean(final[start]) + 0.06, final[:20]
    # the feedback helps on average over stage 1 (measured: +0.22)
    gap = [f - c for f, c in zip(final[:STAGE1_STEPS], first[:STAGE1_STEPS])]
    assert _mean(gap) >= 0.10, gap
    # stage 2, first vs last 5 steps (measured: c0 0.58 -> 0.82, final 0.80 -> 0.86, false alarms 0.25 at the end)
    c0_stage2, final_stage2 = first[STAGE1_STEPS:], final[STAGE1_STEPS:]
    assert _mean(c0_stage2[-WINDOW:]) >= _mean(c0_stage2[:WINDOW]) + 0.10, c0_stage2
    assert _mean(final_stage2[-WINDOW:]) >= _mean(final_stage2[:WINDOW]) + 0.02, final_stage2
    assert _mean(false_alarms[-WINDOW:]) <= 0.40, false_alarms[STAGE1_STEPS:]
