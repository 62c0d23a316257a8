"""SafetyRates (the torchmetrics behind every train/val rate) on hand-built episodes."""

from __future__ import annotations

import pytest
import torch

from waltzlit.metrics.safety import SafetyRates
from waltzlit.types import AlignmentLabels, Episode, Generation, ParsedFeedback, PromptRecord

GOOD, UNSAFE, REFUSED = AlignmentLabels(False, False), AlignmentLabels(True, False), AlignmentLabels(False, True)


def _turn() -> Generation:
    return Generation(torch.tensor([1]), torch.tensor([2]), None, "text", False)


def _verdict(unsafe: bool | None, overrefuse: bool | None) -> ParsedFeedback:
    if unsafe is None:
        return ParsedFeedback(valid=False, unsafe=None, overrefuse=None, feedback="", reasoning="", error="invalid JSON")
    return ParsedFeedback(valid=True, unsafe=unsafe, overrefuse=overrefuse, feedback="f", reasoning="r", error="")


def _episode(harmful: bool, labels: list[AlignmentLabels], verdict: ParsedFeedback | None) -> Episode:
    return Episode(
        record=PromptRecord("p", harmful),
        responses=[_turn() for _ in labels],
        feedbacks=[] if verdict is None else [_turn()],
        parsed=[] if verdict is None else [verdict],
        labels=labels,
    )


def test_rates_on_six_hand_built_episodes():
    episodes = [
        # harmful, unsafe c0, correctly flagged, revision refuses (good): improved
        _episode(True, [UNSAFE, GOOD], _verdict(True, False)),
        # harmful, good c0 (a refusal), false alarm "overrefuse", revision complies (unsafe): worsened
        _episode(True, [GOOD, UNSAFE], _verdict(False, True)),
        # harmful, unsafe c0, missed ("satisfactory"): no revision
        _episode(True, [UNSAFE], _verdict(False, False)),
        # benign, over-refusal c0, correctly flagged, revision still refuses
        _episode(False, [REFUSED, REFUSED], _verdict(False, True)),
        # benign, good c0, correct pass
        _episode(False, [GOOD], _verdict(False, False)),
        # benign, over-refusal c0, invalid JSON: a miss, and an error
        _episode(False, [REFUSED], _verdict(None, None)),
    ]
    metric = SafetyRates()
    metric.update(episodes)
    rates = {k: float(v) for k, v in metric.compute().items()}
    expected = {
        "unsafe_rate_initial": 2 / 3,  # harmful c0 unsafe: episodes 1, 3 of 3 harmful
        "unsafe_rate_final": 2 / 3,  # final unsafe: episodes 2, 3
        "overrefusal_rate_initial": 2 / 3,  # benign c0 refused: episodes 4, 6 of 3 benign
        "overrefusal_rate_final": 2 / 3,  # episodes 4, 6
        "trigger_rate": 3 / 6,  # episodes 1, 2, 4 revised
        "label_accuracy": 3 / 6,  # correct verdicts: 1, 4, 5 (2 wrong, 3 wrong, 6 invalid)
        "json_error_rate": 1 / 6,
        "improved_rate": 1 / 3,  # of the 3 revised: episode 1
        "worsened_rate": 1 / 3,  # episode 2
        "false_alarm_rate": 1 / 2,  # good c0: episodes 2, 5; flagged: 2
        "miss_rate": 2 / 4,  # bad c0: 1, 3, 4, 6; not flagged: 3, 6
    }
    assert rates == pytest.approx(expected, abs=1e-6)


def test_single_agent_episodes_count_no_false_alarms_or_misses():
    metric = SafetyRates()
    metric.update([_episode(True, [UNSAFE], None), _episode(False, [GOOD], None)])
    rates = metric.compute()
    assert float(rates["false_alarm_rate"]) == 0.0 and float(rates["miss_rate"]) == 0.0
    assert float(rates["unsafe_rate_initial"]) == 1.0
