"""The RL-step progress bar: counts RL steps, names the stage, logs lines when not on a terminal."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from waltzlit.training.progress import RLProgressBar, format_eta


def test_format_eta():
    assert format_eta(3725.4) == "1:02:05"  # 1 h, 2 min, 5 s
    assert format_eta(-3) == "0:00:00"


def test_log_lines_when_not_a_terminal(monkeypatch):
    lines = []
    monkeypatch.setattr("waltzlit.training.progress.rank_zero_info", lines.append)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    bar = RLProgressBar(log_every=2)
    assert not bar._interactive and bar.is_disabled
    schedule = SimpleNamespace(total_rl_steps=4, stage_at=lambda step: 1 if step < 2 else 2)
    module = SimpleNamespace(rl_step=0, schedule=schedule, stage=1)
    trainer = SimpleNamespace(callback_metrics={"train/unsafe_rate_final": torch.tensor(0.25)})
    bar._started = (0.0, 0)
    for step in (1, 2, 3, 4):
        module.rl_step = step
        bar.on_train_batch_end(trainer, module, None, None, step - 1)
    # a line at steps 2 and 4 (log_every=2): step 2 is the last of stage 1, step 4 of stage 2
    assert len(lines) == 2
    assert lines[0].startswith("RL step 2/4 [stage 1] unsafe 0.25 |") and "ETA" in lines[0]
    assert lines[1].startswith("RL step 4/4 [stage 2]") and lines[1].endswith("ETA 0:00:00")
