"""StageTimer: per-stage seconds that accumulate, and the time/<stage> scalars a step logs."""

from __future__ import annotations

import time

from waltzlit.timing import StageTimer, timed


def test_stages_accumulate_and_become_scalars():
    timer = StageTimer("cpu")
    for _ in range(2):
        with timer("rollout/feedback"):
            time.sleep(0.01)
    with timed(timer, "judge"):
        pass
    with timed(None, "ignored"):  # no timer outside training: a no-op
        pass
    assert timer.durations["rollout/feedback"] >= 0.02 and set(timer.durations) == {"rollout/feedback", "judge"}
    scalars = timer.scalars()
    assert set(scalars) == {"time/rollout/feedback", "time/judge", "time/step"}
    assert scalars["time/step"] >= scalars["time/rollout/feedback"] + scalars["time/judge"]


def test_a_stage_that_raises_is_still_timed():
    timer = StageTimer()
    try:
        with timer("update/conversation"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert "update/conversation" in timer.durations and not timer.sync
