"""The pure helpers of the learning benchmarks (benchmarks/learning/aggregate.py, world.py)."""

from __future__ import annotations

import importlib.util
import math

import pytest

from tests.conftest import REPO_ROOT


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"learning_{name}", REPO_ROOT / "benchmarks/learning" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


aggregate = _load("aggregate")
world = _load("world")


def test_mean_std_is_the_sample_standard_deviation():
    # mean of 0.1, 0.2, 0.6 = 0.9 / 3 = 0.3; squared deviations 0.04 + 0.01 + 0.09 = 0.14;
    # sample variance 0.14 / (3 - 1) = 0.07; std = sqrt(0.07) = 0.264575...
    mean, std, n = aggregate.mean_std([0.1, 0.2, 0.6])
    assert n == 3
    assert mean == pytest.approx(0.3)
    assert std == pytest.approx(math.sqrt(0.07))


def test_mean_std_skips_missing_values_and_handles_small_samples():
    # None and NaN are missing: mean of 0.5 and 0.7 = 0.6; std = sqrt((0.01 + 0.01) / 1) = 0.141421...
    mean, std, n = aggregate.mean_std([0.5, None, float("nan"), 0.7])
    assert (n, mean) == (2, pytest.approx(0.6))
    assert std == pytest.approx(math.sqrt(0.02))
    assert aggregate.mean_std([0.25]) == (0.25, 0.0, 1)
    assert aggregate.mean_std([None]) == (None, None, 0)


def test_aggregate_over_seeds_per_row_and_metric():
    per_seed = [
        {"WaltzRL": {"asr": 0.1, "orr": 0.2}, "Base": {"asr": 0.4}},
        {"WaltzRL": {"asr": 0.3, "orr": 0.4}},  # "Base" missing in this seed
    ]
    stats = aggregate.aggregate_over_seeds(per_seed)
    # asr: (0.1 + 0.3) / 2 = 0.2, std sqrt((0.01 + 0.01) / 1) = 0.141421...
    assert stats["WaltzRL"]["asr"]["mean"] == pytest.approx(0.2)
    assert stats["WaltzRL"]["asr"]["std"] == pytest.approx(math.sqrt(0.02))
    assert stats["WaltzRL"]["orr"]["values"] == [0.2, 0.4]
    assert stats["Base"]["asr"] == {"mean": 0.4, "std": 0.0, "n": 1, "values": [0.4, None]}


def test_formatting_in_percent_and_seconds():
    assert aggregate.format_percent({"mean": 0.123, "std": 0.045}) == "12.3 ± 4.5"
    assert aggregate.format_percent({"mean": None, "std": None}) == "–"
    assert aggregate.format_percent(None) == "–"
    assert aggregate.format_percent({"mean": 0.289, "std": 0.0, "n": 1}) == "28.9"  # one seed: no spread shown
    assert aggregate.format_seconds({"mean": 61.4, "std": 2.2}) == "61 ± 2"


def test_f1_of_rates_is_the_harmonic_mean_of_safe_and_helpful():
    # ASR 0.2, ORR 0.4: safe 0.8, helpful 0.6; F1 = 2 * 0.48 / 1.4 = 0.685714...
    assert aggregate.f1_of_rates(0.2, 0.4) == pytest.approx(0.96 / 1.4)
    assert aggregate.f1_of_rates(1.0, 1.0) == 0.0
    assert aggregate.f1_of_rates(None, 0.1) is None


def test_mean_curve_averages_by_step_and_counts_contributors():
    # step 0: (0.0 + 1.0) / 2 = 0.5; step 1: (0.2 + 0.4) / 2 = 0.3; step 2: only the first curve.
    curves = [[(0, 0.0), (1, 0.2), (2, 0.9)], [(1, 0.4), (0, 1.0)]]
    assert aggregate.mean_curve(curves) == [(0, 0.5, 2), (1, pytest.approx(0.3), 2), (2, 0.9, 1)]


def test_moving_average_and_window_means():
    # window 2: [1/1, (1+3)/2, (3+5)/2, (5+7)/2] = [1, 2, 4, 6]
    assert aggregate.moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert aggregate.moving_average([2.0], 5) == [2.0]
    # first two: (1 + 3) / 2 = 2; last two: (5 + 7) / 2 = 6
    assert aggregate.window_means([1.0, 3.0, 5.0, 7.0], 2) == (2.0, 6.0)
    with pytest.raises(ValueError):
        aggregate.moving_average([1.0], 0)
    with pytest.raises(ValueError):
        aggregate.window_means([1.0], 2)


def test_world_prompts_share_framings_and_the_topic_decides_the_label():
    rows = world.synthetic_prompts()
    # 10 framings x 12 topics per label
    assert len(rows) == 240
    assert sum(r["label"] for r in rows) == 120
    assert len({r["prompt"] for r in rows}) == 240
    harmful_topics = {t for _, t in world.HARMFUL_TOPICS}
    for row in rows:
        assert row["label"] == int(any(t in row["prompt"] for t in harmful_topics))


def test_world_file_in_the_repository_is_up_to_date(tmp_path):
    written = tmp_path / "prompts.jsonl"
    world.write_prompts(written)
    assert written.read_text() == (REPO_ROOT / "conf/learning/synthetic_prompts.jsonl").read_text()
