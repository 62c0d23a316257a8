"""Reward functions of paper §4 (eq. 2-3, App. C) and the gated DIR cases of method spec §4.3."""

import pytest

from waltzlit.rewards.functions import (
    alignment_labels,
    conversation_reward,
    feedback_reward,
    format_reward,
    improvement_reward,
    label_reward,
)
from waltzlit.types import AlignmentLabels, ParsedFeedback

ALPHA, LAMBDA1, LAMBDA2, GAMMA = 0.65, 0.25, 0.0, 0.1


@pytest.mark.parametrize(
    "harmful, refusal, prompt_harmful, unsafe, overrefuse",
    [
        (True, False, True, True, False),  # harmful compliance with a harmful prompt
        (False, True, True, False, False),  # refusing a harmful (WildJailbreak) prompt is good
        (False, True, False, False, True),  # refusing a benign (OR-Bench) prompt is over-refusal
        (False, False, False, False, False),  # helpful answer to a benign prompt
        (True, True, False, True, True),  # both flags can hold at once
    ],
)
def test_alignment_labels(harmful, refusal, prompt_harmful, unsafe, overrefuse):
    assert alignment_labels(harmful, refusal, prompt_harmful) == AlignmentLabels(unsafe, overrefuse)


def test_conversation_reward_is_binary_satisfaction():
    assert conversation_reward(AlignmentLabels(unsafe=False, overrefuse=False)) == 1.0
    assert conversation_reward(AlignmentLabels(unsafe=True, overrefuse=False)) == 0.0
    assert conversation_reward(AlignmentLabels(unsafe=False, overrefuse=True)) == 0.0


def test_improvement_dir():
    # R_c(c1) - R_c(c0): 1 - 0 = 1; 0 - 1 = -1; 1 - 1 = 0; no revision -> 0
    assert improvement_reward(0.0, 1.0) == 1.0
    assert improvement_reward(1.0, 0.0) == -1.0
    assert improvement_reward(1.0, 1.0) == 0.0
    assert improvement_reward(0.0, None) == 0.0


def test_improvement_next_outcome_ablation():
    # R_c(c1) alone: 1 even when c0 was already good; no revision -> 0
    assert improvement_reward(1.0, 1.0, mode="next_outcome") == 1.0
    assert improvement_reward(0.0, 0.0, mode="next_outcome") == 0.0
    assert improvement_reward(1.0, None, mode="next_outcome") == 0.0


def test_improvement_unknown_mode_lists_allowed_names():
    with pytest.raises(ValueError, match="dir, next_outcome"):
        improvement_reward(0.0, 1.0, mode="delta")


def test_label_reward_needs_both_flags_right():
    labels = AlignmentLabels(unsafe=True, overrefuse=False)
    assert label_reward(ParsedFeedback(True, unsafe=True, overrefuse=False), labels) == 1.0
    assert label_reward(ParsedFeedback(True, unsafe=True, overrefuse=True), labels) == 0.0
    assert label_reward(ParsedFeedback(True, unsafe=False, overrefuse=False), labels) == 0.0
    assert label_reward(ParsedFeedback(False, error="no JSON"), labels) == 0.0


def test_format_reward():
    assert format_reward(ParsedFeedback(True, unsafe=False, overrefuse=False)) == 1.0
    assert format_reward(ParsedFeedback(False, error="bad")) == 0.0


def test_stage1_labels_right_c0_bad_c1_good():
    # 0.65 * DIR(1 - 0 = 1) * label 1 + 0.25 * 1 + 0.1 * 1 = 0.65 + 0.25 + 0.1 = 1.0
    out = feedback_reward(improvement_reward(0.0, 1.0), 1.0, 1.0, ALPHA, LAMBDA1, GAMMA)
    assert out.total == pytest.approx(1.0)
    assert (out.improvement, out.label, out.format) == (1.0, 1.0, 1.0)


def test_stage1_labels_wrong_gates_improvement_to_zero():
    # 0.65 * 1 * label 0 + 0.25 * 0 + 0.1 * 1 = 0.1 (the revision improved, but the labels were wrong)
    out = feedback_reward(improvement_reward(0.0, 1.0), 0.0, 1.0, ALPHA, LAMBDA1, GAMMA)
    assert out.total == pytest.approx(0.1)
    assert out.improvement == 1.0  # the breakdown keeps the ungated term for logging


def test_stage1_no_revision_earns_no_improvement():
    # labels right, c0 good -> rollout stops -> DIR 0: 0.65 * 0 * 1 + 0.25 * 1 + 0.1 * 1 = 0.35
    out = feedback_reward(improvement_reward(1.0, None), 1.0, 1.0, ALPHA, LAMBDA1, GAMMA)
    assert out.total == pytest.approx(0.35)


def test_stage2_drops_label_term_but_keeps_gate():
    # lambda = 0: labels right, c0 bad, c1 good -> 0.65 * 1 * 1 + 0 + 0.1 = 0.75
    assert feedback_reward(1.0, 1.0, 1.0, ALPHA, LAMBDA2, GAMMA).total == pytest.approx(0.75)
    # labels wrong -> 0.65 * 1 * 0 + 0 + 0.1 = 0.1
    assert feedback_reward(1.0, 0.0, 1.0, ALPHA, LAMBDA2, GAMMA).total == pytest.approx(0.1)
    # false alarm on a good c0 that stays good: DIR = 1 - 1 = 0 -> only 0.1 * format
    assert feedback_reward(improvement_reward(1.0, 1.0), 0.0, 1.0, ALPHA, LAMBDA2, GAMMA).total == pytest.approx(0.1)


def test_ungated_variant_pays_improvement_with_wrong_labels():
    # gate off (Fig. 2 variant C): 0.65 * 1 + 0.25 * 0 + 0.1 * 1 = 0.75
    assert feedback_reward(1.0, 0.0, 1.0, ALPHA, LAMBDA1, GAMMA, gate=False).total == pytest.approx(0.75)


def test_invalid_json_earns_nothing():
    # invalid feedback ends the episode: DIR 0, label 0, format 0 -> 0
    parsed = ParsedFeedback(False, error="not JSON")
    labels = alignment_labels(response_harmful=True, response_refusal=False, prompt_harmful=True)
    out = feedback_reward(improvement_reward(0.0, None), label_reward(parsed, labels), format_reward(parsed),
                          ALPHA, LAMBDA1, GAMMA)
    assert out.total == 0.0


def test_end_to_end_from_judge_verdicts():
    # benign prompt, c0 refuses (overrefuse -> R_c = 0), feedback flags overrefuse correctly,
    # c1 complies safely (R_c = 1): stage 1 total = 0.65 * (1 - 0) * 1 + 0.25 + 0.1 = 1.0
    c0 = alignment_labels(response_harmful=False, response_refusal=True, prompt_harmful=False)
    c1 = alignment_labels(response_harmful=False, response_refusal=False, prompt_harmful=False)
    parsed = ParsedFeedback(True, unsafe=False, overrefuse=True, feedback="answer it")
    assert parsed.triggers_revision
    dir_ = improvement_reward(conversation_reward(c0), conversation_reward(c1))
    out = feedback_reward(dir_, label_reward(parsed, c0), format_reward(parsed), ALPHA, LAMBDA1, GAMMA)
    assert out.total == pytest.approx(1.0)


def test_gating_gains_only_charges_a_false_alarm_that_broke_a_good_response():
    # Stage 2 (lambda = 0). A false alarm on a good c0 whose revision is bad: DIR = 0 - 1 = -1, labels wrong.
    # paper gate:      0.65 * (-1 * 0) + 0.1 * 1 = 0.1   (the same as a correct pass)
    # gains-only gate: 0.65 * (-1)     + 0.1 * 1 = -0.55
    assert feedback_reward(-1.0, 0.0, 1.0, ALPHA, 0.0, GAMMA).total == pytest.approx(0.1)
    assert feedback_reward(-1.0, 0.0, 1.0, ALPHA, 0.0, GAMMA, gate_losses=False).total == pytest.approx(-0.55)
    # A gain with wrong labels (an unsafe c0 flagged as an over-refusal, revision good): still gated,
    # 0.65 * (1 * 0) + 0.1 * 1 = 0.1; ungated it would be 0.65 + 0.1 = 0.75.
    assert feedback_reward(1.0, 0.0, 1.0, ALPHA, 0.0, GAMMA, gate_losses=False).total == pytest.approx(0.1)
    # A gain with correct labels: 0.65 * 1 * 1 + 0.1 * 1 = 0.75, with either gate.
    assert feedback_reward(1.0, 1.0, 1.0, ALPHA, 0.0, GAMMA, gate_losses=False).total == pytest.approx(0.75)
