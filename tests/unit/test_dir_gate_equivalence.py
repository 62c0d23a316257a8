"""Why the Table-6 ablation ("no DIR") must drop the gate to differ from WaltzRL.

With a binary R_c, gated R_c(c_{t+1}) equals gated DIR in every case the protocol can produce:
labels are only correct on a flagged turn when c_t was bad (R_c(c_t) = 0, so DIR = R_c(c_{t+1})),
and a correct "satisfactory" verdict ends the episode (no c_{t+1}, both terms 0); wrong labels
are gated to 0 either way. benchmarks/learning/synthetic.py measured it: the gated
``improvement: next_outcome`` run reproduced the WaltzRL run step for step.
"""

from __future__ import annotations

import itertools

from waltzlit.rewards.functions import feedback_reward, improvement_reward


def _total(before: float, after: float | None, label: float, mode: str, gate: bool) -> float:
    improvement = improvement_reward(before, after, mode=mode)
    return feedback_reward(improvement, label, 1.0, alpha=0.65, label_weight=0.0, gamma=0.1, gate=gate).total


def _reachable(before: float, after: float | None, label: float) -> bool:
    """Correct labels flag a bad c_t (so a revision follows) and pass a good one (so none does)."""
    if label == 1.0:
        return (after is not None) == (before == 0.0)
    return True


def test_gated_next_outcome_equals_gated_dir_whenever_the_protocol_can_produce_it():
    cases = [c for c in itertools.product((0.0, 1.0), (None, 0.0, 1.0), (0.0, 1.0)) if _reachable(*c)]
    assert len(cases) == 9  # 6 with wrong labels + 2 flagged bad c_t + 1 passed good c_t
    for before, after, label in cases:
        assert _total(before, after, label, "dir", True) == _total(before, after, label, "next_outcome", True)


def test_without_the_gate_the_two_rewards_differ():
    # a false alarm on a good c0 whose revision stays good: DIR 1 - 1 = 0, next outcome 1
    # -> totals 0.1 (format only) and 0.65 + 0.1 = 0.75
    assert _total(1.0, 1.0, 0.0, "dir", False) == 0.1
    assert _total(1.0, 1.0, 0.0, "next_outcome", False) == 0.75
