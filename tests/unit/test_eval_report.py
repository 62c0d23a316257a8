"""Hand-computed evaluation metrics (paper §9, Table 1) and the report layout."""

from __future__ import annotations

import pytest

from waltzlit.evaluation.config import AgentsSource, EvalConfig, ModeSpec, OracleConfig
from waltzlit.evaluation.modes import Outcome, oracle_message
from waltzlit.evaluation.plot import ParetoPoint, pareto_front, point_tags
from waltzlit.evaluation.report import (
    ExampleScore,
    attack_success_rate,
    f1_score,
    json_error_rate,
    label_accuracy,
    macro_average,
    over_refusal_rate,
    score_outcome,
    summarize,
    table1_markdown,
    trigger_rate,
)
from waltzlit.types import AlignmentLabels, JudgeVerdict, ParsedFeedback, PromptRecord


def row(eval_set="s", harmful_prompt=True, harmful=False, refusal=False, **kw) -> ExampleScore:
    return ExampleScore(eval_set, harmful_prompt, harmful, refusal, **kw)


def test_f1_matches_the_paper():
    # Table 5: ASR avg 3.7, ORR avg 7.6 -> F1 94.3.
    assert f1_score(0.037, 0.076) == pytest.approx(2 * 0.963 * 0.924 / (0.963 + 0.924))
    assert round(100 * f1_score(0.037, 0.076), 1) == 94.3
    assert f1_score(0.0, 0.0) == 1.0
    assert f1_score(1.0, 1.0) == 0.0
    assert f1_score(None, 0.1) is None


def test_macro_average_matches_table1_row1():
    # WJ 39.0, FH 40.4, SR 0.0 -> 26.5; OB 45.3, FB 6.0 -> 25.7 (rounded as in the paper).
    assert round(100 * macro_average([0.390, 0.404, 0.0]), 1) == 26.5
    assert round(100 * macro_average([0.453, 0.060]), 1) == 25.7
    assert macro_average([None, 0.2]) == pytest.approx(0.2)
    assert macro_average([]) is None


def test_asr_counts_harmful_prompts_and_orr_benign_ones():
    scores = [
        row(harmful_prompt=True, harmful=True),
        row(harmful_prompt=True, harmful=False, refusal=True),
        row(harmful_prompt=True, harmful=False),
        row(harmful_prompt=False, refusal=True),
        row(harmful_prompt=False, refusal=False, harmful=True),  # harm on a benign prompt is not ASR
    ]
    assert attack_success_rate(scores) == pytest.approx(1 / 3)
    assert over_refusal_rate(scores) == pytest.approx(1 / 2)
    assert attack_success_rate([row(harmful_prompt=False)]) is None
    assert over_refusal_rate([row(harmful_prompt=True)]) is None


def test_feedback_rates():
    scores = [
        row(intervened=True, feedback_turns=1, labels_correct=1),
        row(intervened=False, feedback_turns=1, labels_correct=0, json_errors=1),
        row(intervened=False, feedback_turns=1, labels_correct=1),
        row(intervened=True, feedback_turns=2, labels_correct=1),
    ]
    assert trigger_rate(scores) == pytest.approx(0.5)
    assert label_accuracy(scores) == pytest.approx(3 / 5)
    assert json_error_rate(scores) == pytest.approx(1 / 5)
    alone = [row(), row()]
    assert trigger_rate(alone) is None and label_accuracy(alone) is None and json_error_rate(alone) is None


def test_score_outcome_checks_labels_against_the_judge():
    record = PromptRecord("p", prompt_harmful=True)
    outcome = Outcome(
        record=record, responses=["c0", "c1"], final="c1", feedback_raw=["{...}"],
        parsed=[ParsedFeedback(valid=True, unsafe=True, overrefuse=False, feedback="fix")], intervened=True,
        verdicts=[JudgeVerdict(True, False), JudgeVerdict(False, True)],
    )
    score = score_outcome("WJ", outcome)
    assert (score.harmful, score.refusal) == (False, True)  # the final answer is judged
    assert (score.feedback_turns, score.labels_correct, score.json_errors) == (1, 1, 0)
    invalid = Outcome(record=record, responses=["c0"], final="c0", feedback_raw=["x"],
                      parsed=[ParsedFeedback(valid=False, error="no JSON")], intervened=False,
                      verdicts=[JudgeVerdict(True, False)])
    score = score_outcome("WJ", invalid)
    assert (score.harmful, score.labels_correct, score.json_errors) == (True, 0, 1)


def test_oracle_message_templates():
    cfg = OracleConfig(unsafe_message="U", overrefuse_message="O")
    assert oracle_message(AlignmentLabels(False, False), cfg) is None
    assert oracle_message(AlignmentLabels(True, False), cfg) == "U"
    assert oracle_message(AlignmentLabels(False, True), cfg) == "O"


def test_summary_and_table_layout():
    scores = [
        row("WJ", True, harmful=True), row("WJ", True),  # ASR 50
        row("OB", False, refusal=True), row("OB", False), row("OB", False), row("OB", False),  # ORR 25
    ]
    summary = summarize("alone", "Baseline response", "base", scores, ["WJ", "OB"])
    assert summary.asr_avg == pytest.approx(0.5) and summary.orr_avg == pytest.approx(0.25)
    assert summary.f1 == pytest.approx(2 * 0.5 * 0.75 / 1.25)
    assert summary.metrics("OB").asr is None and summary.metrics("OB").num_benign == 4
    table = table1_markdown([summary, summary])
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("| # |"))
    assert header == "| # | Method | WJ | ASR avg | OB | ORR avg | F1 |"
    assert "| 1 | Baseline response | 50.0 | **50.0** | 25.0 | **25.0** | 60.0 |" in lines
    assert "| 2 | Baseline response |" in table


def test_pareto_front_and_tags():
    points = [ParetoPoint("a", 0.3, 0.1), ParetoPoint("b", 0.1, 0.3), ParetoPoint("c", 0.4, 0.4),
              ParetoPoint("d", 0.1, 0.3)]
    assert [p.label for p in pareto_front(points)] == ["b", "d", "a"]
    assert point_tags(points) == ["1", "2,4", "3", "2,4"]


def test_config_checks():
    with pytest.raises(ValueError, match="trained"):
        EvalConfig(modes=[ModeSpec("waltzrl")], base=AgentsSource(config="x"))
    with pytest.raises(ValueError, match="twice"):
        EvalConfig(modes=[ModeSpec("alone"), ModeSpec("alone")], base=AgentsSource(config="x"))
    cfg = EvalConfig(modes=[ModeSpec("alone"), ModeSpec("alone", agents="trained")],
                     base=AgentsSource(config="x"), trained=AgentsSource(config="y"))
    assert [m.key for m in cfg.modes] == ["alone", "alone-trained"]
    with pytest.raises(ValueError, match="exported"):
        AgentsSource()


def test_safeguard_checks_prompt_and_response_when_the_guard_can():
    from types import SimpleNamespace

    from waltzlit.evaluation.config import SafeguardConfig
    from waltzlit.evaluation.modes import apply_safeguard

    class Guard:  # Llama Guard-like: flags responses containing "bomb", prompts containing "evil"
        def judge(self, records, responses):
            return [JudgeVerdict("bomb" in r, False) for r in responses]

        def classify_prompts(self, prompts):
            return [SimpleNamespace(unsafe="evil" in p) for p in prompts]

    alone = [Outcome(PromptRecord(p, True), [c], c) for p, c in
             [("evil plan", "fine text"), ("hello", "a bomb recipe"), ("hello", "fine text")]]
    cfg = SafeguardConfig(refusal_text="NO")
    assert [o.final for o in apply_safeguard(alone, Guard(), cfg)] == ["NO", "NO", "fine text"]
    replaced = apply_safeguard(alone, Guard(), SafeguardConfig(refusal_text="NO", check_prompt=False))
    assert [(o.final, o.intervened, o.replaced) for o in replaced] == [
        ("fine text", False, False), ("NO", True, True), ("fine text", False, False)]


def _scores(eval_set: str, harmful_flags: list[bool], refusal_flags: list[bool]) -> list[ExampleScore]:
    return ([ExampleScore(eval_set, True, harmful=h, refusal=not h) for h in harmful_flags]
            + [ExampleScore(eval_set, False, harmful=False, refusal=r) for r in refusal_flags])


def test_bootstrap_intervals_degenerate_strata_are_points():
    from waltzlit.evaluation.report import bootstrap_intervals

    # Every harmful prompt answered unsafely (ASR 1.0), no benign prompt refused (ORR 0.0): every
    # resample is the same, F1 = 2 * (1 - 1) * (1 - 0) / (0 + 1) = 0.
    intervals = bootstrap_intervals(_scores("A", [True] * 4, [False] * 3), ["A"], resamples=200)
    assert intervals == {"asr_avg": (1.0, 1.0), "orr_avg": (0.0, 0.0), "f1": (0.0, 0.0)}


def test_bootstrap_intervals_match_the_binomial_width():
    from waltzlit.evaluation.report import bootstrap_intervals

    # 100 harmful prompts, 50 unsafe: a resample's ASR is Binomial(100, 0.5)/100 with sd 0.05, so the
    # 95 % interval is about 0.5 -+ 1.96 * 0.05 = [0.40, 0.60]. Benign: 20 of 80 refused (ORR 0.25).
    scores = _scores("A", [True] * 50 + [False] * 50, [True] * 20 + [False] * 60)
    intervals = bootstrap_intervals(scores, ["A"], resamples=2000, seed=1)
    low, high = intervals["asr_avg"]
    assert 0.38 <= low <= 0.42 and 0.58 <= high <= 0.62
    low, high = intervals["orr_avg"]  # sd = sqrt(0.25 * 0.75 / 80) = 0.048 -> [0.155, 0.345]
    assert 0.14 <= low <= 0.17 and 0.33 <= high <= 0.36
    # macro average over two sets: the ORR of a set with only harmful prompts is undefined
    two = scores + _scores("B", [True] * 10, [])
    assert bootstrap_intervals(two, ["A", "B"], resamples=300)["orr_avg"] == bootstrap_intervals(scores, ["A"], resamples=300)["orr_avg"]


def test_summary_table_prints_intervals():
    scores = _scores("A", [True, False], [True, False])
    summary = summarize("alone", "Baseline response", "base", scores, ["A"], bootstrap_resamples=100)
    assert set(summary.intervals) == {"asr_avg", "orr_avg", "f1"}
    table = table1_markdown([summary])
    assert "bootstrap interval" in table and "**50.0 [" in table


def test_pillow_front_is_dashed():
    from waltzlit.evaluation.plot import dashes

    # a 22-pixel horizontal segment in 6-pixel dashes with 4-pixel gaps: [0,6], [10,16], [20,22]
    pieces = dashes((0.0, 0.0), (22.0, 0.0))
    assert [(a[0], b[0]) for a, b in pieces] == [(0.0, 6.0), (10.0, 16.0), (20.0, 22.0)]
