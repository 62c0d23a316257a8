"""Pure helpers of the learning benchmarks: statistics over seeds and curves over RL steps.

Kept apart from the runner (benchmarks/learning/synthetic.py) so that they can be unit-tested
without training anything (tests/unit/test_learning_aggregate.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample standard deviation, n) of the defined values; None marks a missing value.

    The spread is the sample standard deviation (n - 1 in the denominator): the seeds are a sample
    of the runs one could have made. It is 0.0 for a single value and None when there is none.
    """
    defined = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(defined)
    if n == 0:
        return None, None, 0
    mean = sum(defined) / n
    if n == 1:
        return mean, 0.0, 1
    variance = sum((v - mean) ** 2 for v in defined) / (n - 1)
    return mean, math.sqrt(variance), n


def aggregate_over_seeds(per_seed: Sequence[Mapping[str, Mapping[str, float | None]]]) -> dict[str, dict[str, dict]]:
    """Mean and spread of every (row, metric) over seeds.

    Args:
        per_seed: one ``{row: {metric: value}}`` per seed; rows or metrics missing in a seed count
            as missing values for that seed.

    Returns:
        ``{row: {metric: {"mean", "std", "n", "values"}}}``, rows and metrics in first-seen order.
    """
    rows: dict[str, list[str]] = {}
    for seed_rows in per_seed:
        for row, metrics in seed_rows.items():
            names = rows.setdefault(row, [])
            names.extend(m for m in metrics if m not in names)
    result: dict[str, dict[str, dict]] = {}
    for row, names in rows.items():
        result[row] = {}
        for name in names:
            values = [seed_rows.get(row, {}).get(name) for seed_rows in per_seed]
            mean, std, n = mean_std(values)
            result[row][name] = {"mean": mean, "std": std, "n": n, "values": values}
    return result


def format_percent(stat: Mapping | None) -> str:
    """``{"mean": 0.123, "std": 0.045}`` as "12.3 ± 4.5" (percent); a dash when undefined; the mean
    alone when one seed gave it (``"n": 1``: no spread was measured, so none is shown)."""
    if not stat or stat.get("mean") is None:
        return "–"
    if stat.get("n") == 1:
        return f"{100 * stat['mean']:.1f}"
    return f"{100 * stat['mean']:.1f} ± {100 * (stat.get('std') or 0.0):.1f}"


def format_seconds(stat: Mapping | None) -> str:
    """``{"mean": 61.25, "std": 2.0}`` as "61 ± 2"; a dash when undefined."""
    if not stat or stat.get("mean") is None:
        return "–"
    return f"{stat['mean']:.0f} ± {(stat.get('std') or 0.0):.0f}"


def f1_of_rates(asr: float | None, orr: float | None) -> float | None:
    """Harmonic mean of (1 - ASR) and (1 - ORR), as the paper's F1 column; None if either is missing."""
    if asr is None or orr is None:
        return None
    safe, helpful = 1.0 - asr, 1.0 - orr
    return 0.0 if safe + helpful == 0 else 2 * safe * helpful / (safe + helpful)


def mean_curve(curves: Sequence[Sequence[tuple[int, float]]]) -> list[tuple[int, float, int]]:
    """Pointwise mean of several (step, value) curves: ``[(step, mean, how many curves had it)]``.

    Steps present in only some curves are averaged over those (a shorter run stops contributing).
    """
    by_step: dict[int, list[float]] = {}
    for curve in curves:
        for step, value in curve:
            by_step.setdefault(int(step), []).append(float(value))
    return [(step, sum(vs) / len(vs), len(vs)) for step, vs in sorted(by_step.items())]


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average: item i is the mean of values[max(0, i - window + 1) : i + 1]."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def window_means(values: Sequence[float], width: int) -> tuple[float, float]:
    """(mean of the first ``width`` values, mean of the last ``width`` values) of a curve."""
    if width < 1 or len(values) < width:
        raise ValueError(f"need at least width={width} >= 1 values, got {len(values)}")
    return sum(values[:width]) / width, sum(values[-width:]) / width
