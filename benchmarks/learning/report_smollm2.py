"""The report of Track 1 (``benchmarks/learning/smollm2.py``): tables, curves, transcripts, summary.

Reads only finished evaluations (``results.json`` + transcripts of each system) and the training
runs' TensorBoard scalars, so it can be rewritten at any point of a long benchmark.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

from aggregate import aggregate_over_seeds, format_percent

ROW_ORDER = [
    ("alone", "Baseline response (mixed base)"),
    ("safeguard", "+ Safeguard"),
    ("single_rl", None),
    ("single_rl_2x", None),
    ("collaboration", "Inference-time collaboration (untrained)"),
    ("oracle", "Oracle label-converted feedback"),
    ("waltzrl", None),
    ("waltzrl_gate_gains", None),
    ("waltzrl/alone", None),
    ("waltzrl_gate_gains/alone", None),
]
"""Table 1 order; None takes the run's own label."""

CURVES = [
    ("train/label_accuracy", "feedback label accuracy"),
    ("train/trigger_rate", "feedback trigger rate"),
    ("train/false_alarm_rate", "false alarms (good c0 flagged)"),
    ("train/json_error_rate", "feedback JSON error rate"),
    ("train/conversation/reward_initial", "R_c of c0"),
    ("train/conversation/reward_final", "R_c of the final response"),
    ("train/unsafe_rate_final", "unsafe rate (final, training)"),
    ("train/overrefusal_rate_final", "over-refusal rate (final, training)"),
]
FEEDBACK_CURVES = {"train/label_accuracy", "train/trigger_rate", "train/false_alarm_rate", "train/json_error_rate"}


def _rows_of(out: Path, task) -> dict[str, dict]:
    """{row key: mode summary} of one finished evaluation."""
    system = task.name.removeprefix("eval_")
    results = json.loads((out / "eval" / system / "results.json").read_text())
    rows = {}
    for mode in results["modes"]:
        if system == "base":
            key = mode["key"]
        else:
            run = system.rsplit("_s", 1)[0]
            key = run if mode["key"].split("-")[0] != "alone" or run.startswith("single") else f"{run}/alone"
        rows[key] = mode
    return rows


def _metrics(mode: dict) -> dict:
    sets = {s["name"]: s for s in mode["sets"]}
    metrics = {"asr": mode["asr_avg"], "orr": mode["orr_avg"], "f1": mode["f1"], "trigger_rate": mode["trigger_rate"],
               "label_accuracy": mode["label_accuracy"], "json_error_rate": mode["json_error_rate"]}
    for name, s in sets.items():
        metrics[f"asr/{name}"], metrics[f"orr/{name}"] = s["asr"], s["orr"]
    return metrics


def _cell(mode: dict, key: str) -> str:
    value = mode.get({"asr": "asr_avg", "orr": "orr_avg"}.get(key, key))
    if value is None:
        return "–"
    interval = mode.get("intervals", {}).get({"asr": "asr_avg", "orr": "orr_avg"}.get(key, key))
    text = f"{100 * value:.1f}"
    return f"{text} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]" if interval else text


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def seed_table(seed: int | None, rows: dict[str, dict], labels: dict[str, str], set_names: list[str]) -> str:
    title = "base (no RL)" if seed is None else f"seed {seed}"
    lines = [f"### Held-out prompts, {title}", "",
             "ASR ↓ / ORR ↓ / F1 ↑ in %, [95 % bootstrap interval over prompts]; per-set ASR | ORR; FTR, label "
             "accuracy and JSON errors of the feedback agent.", "",
             "| Method | ASR | ORR | F1 | " + " | ".join(f"{n} ASR/ORR" for n in set_names) + " | FTR | Label acc | JSON err |",
             "|---|---|---|---|" + "---|" * len(set_names) + "---|---|---|"]
    for key, _ in ROW_ORDER:
        if key not in rows:
            continue
        mode = rows[key]
        sets = {s["name"]: s for s in mode["sets"]}
        per_set = [f"{_pct(sets[n]['asr'])} / {_pct(sets[n]['orr'])}" if n in sets else "–" for n in set_names]
        lines.append(f"| {labels[key]} | " + " | ".join([_cell(mode, "asr"), _cell(mode, "orr"), _cell(mode, "f1"), *per_set,
                                                          _pct(mode["trigger_rate"]), _pct(mode["label_accuracy"]),
                                                          _pct(mode["json_error_rate"])]) + " |")
    return "\n".join(lines) + "\n"


def mean_table(per_seed: list[dict[str, dict]], labels: dict[str, str], seeds: list[int]) -> str:
    stats = aggregate_over_seeds([{k: _metrics(m) for k, m in rows.items()} for rows in per_seed])
    lines = [f"### Mean ± sample std over seeds {seeds} (held-out prompts, %; base rows need no seed)", "",
             "| Method | ASR | ORR | F1 | FTR | Label acc | seeds |", "|---|---|---|---|---|---|---|"]
    for key, _ in ROW_ORDER:
        if key in stats:
            s = stats[key]
            lines.append(f"| {labels[key]} | {format_percent(s['asr'])} | {format_percent(s['orr'])} | {format_percent(s['f1'])} | "
                         f"{format_percent(s.get('trigger_rate'))} | {format_percent(s.get('label_accuracy'))} | {s['asr']['n']} |")
    return "\n".join(lines) + "\n", stats


def plot_curves(series_by_run: dict[str, dict], path: Path, stage1: int, batch: int) -> bool:
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(18, 7.5))
    colours = {name: f"C{i}" for i, name in enumerate(series_by_run)}  # one colour per run in every panel
    for axis, (tag, title) in zip(axes.flat, CURVES):
        for name, series in series_by_run.items():
            points = series.get(tag, [])
            # single-model RL has no feedback agent: its feedback scalars are zeros, not measurements
            if points and not (name.startswith("single_rl") and tag in FEEDBACK_CURVES):
                steps = [s for s, _ in points]
                values = [v for _, v in points]
                window = 10
                smooth = [sum(values[max(0, i - window + 1): i + 1]) / len(values[max(0, i - window + 1): i + 1]) for i in range(len(values))]
                axis.plot(steps, smooth, label=name, color=colours[name])
        axis.axvline(stage1, color="grey", lw=0.8, ls="--")
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("RL step")
        axis.grid(alpha=0.3)
    handles, names = axes.flat[-1].get_legend_handles_labels()  # the last panels show every run
    fig.legend(handles, names, loc="lower center", ncol=4, fontsize=9)
    fig.suptitle(f"SmolLM2-135M-Instruct, Track 1 training curves (10-step means, {batch} prompts per step; stage 2 from step {stage1})")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def transcripts_markdown(out: Path, seed: int = 0, per_label: int = 3) -> str:
    """The same held-out prompts answered by the base, the untrained collaboration and seed ``seed``'s
    trained systems."""
    def rows(system: str, mode: str) -> list[dict]:
        file = out / "eval" / system / "transcripts" / f"{mode}.jsonl"
        return [json.loads(line) for line in file.read_text().splitlines()] if file.is_file() else []

    systems = [("Mixed base alone", rows("base", "alone")), ("Untrained collaboration", rows("base", "collaboration")),
               ("Single-model RL (equal updates)", rows(f"single_rl_s{seed}", "alone-single_rl")),
               ("WaltzRL", rows(f"waltzrl_s{seed}", "waltzrl")),
               ("WaltzRL, gate on gains only", rows(f"waltzrl_gate_gains_s{seed}", "waltzrl"))]
    base = systems[0][1]
    lines = ["# Transcripts: the same held-out prompts before and after training", "",
             f"Seed {seed}; the first {per_label} harmful and benign prompts of each evaluation set (T = 0.7, as in training).", ""]
    picked = []
    for name in dict.fromkeys(r["set"] for r in base):
        for harmful in (True, False):
            picked += [i for i, r in enumerate(base) if r["set"] == name and r["prompt_harmful"] == harmful][:per_label]
    for i in picked:
        lines += [f"## [{base[i]['set']}, {'harmful' if base[i]['prompt_harmful'] else 'benign'}] {base[i]['prompt']}", ""]
        for label, table in systems:
            if i < len(table):
                row = table[i]
                verdict = row["verdicts"]["final"]
                tag = "refusal" if verdict["refusal"] else ("harmful" if verdict["harmful"] else "complies")
                lines += [f"**{label}** (judge on the final answer: {tag}):", "", "> " + row["c0"].replace("\n", "\n> "), ""]
                if row.get("feedback") is not None:
                    lines += ["feedback: `" + row["feedback"].replace("`", "'").replace("\n", " ")[:400] + "`", ""]
                if row.get("c1"):
                    lines += ["revision:", "", "> " + row["c1"].replace("\n", "\n> "), ""]
    return "\n".join(lines) + "\n"


def write_report(out: Path, finished_evals, fits: dict, scalars, run_dir, stage1: int, batch: int) -> None:
    labels = {key: label for key, label in ROW_ORDER if label}
    for run, (label, _, _) in fits.items():
        labels[run] = label
        labels[f"{run}/alone"] = f"{label}: conversation agent alone"
    base_rows: dict[str, dict] = {}
    per_seed: dict[int, dict[str, dict]] = {}
    set_names: list[str] = []
    for task in finished_evals:
        rows = _rows_of(out, task)
        if task.name == "eval_base":
            base_rows = rows
        else:
            seed = int(task.name.rsplit("_s", 1)[1])
            per_seed.setdefault(seed, {}).update(rows)
        for mode in rows.values():
            set_names += [s["name"] for s in mode["sets"] if s["name"] not in set_names]
    seeds = sorted(per_seed)
    parts = ["# Track 1: SmolLM2-135M-Instruct, held-out evaluation", "",
             f"Command: `OMP_NUM_THREADS=1 python benchmarks/learning/smollm2.py --seeds {' '.join(map(str, seeds)) or '0 1'}`. "
             f"Machine: {platform.machine()}, CPU only. Rows appear as their evaluations finish.", ""]
    if base_rows:
        parts.append(seed_table(None, base_rows, labels, set_names))
    for seed in seeds:
        parts.append(seed_table(seed, {**base_rows, **per_seed[seed]}, labels, set_names))
    summary: dict = {"seeds": seeds, "base": base_rows, "per_seed": per_seed}
    if seeds:
        table, stats = mean_table([{**base_rows, **per_seed[s]} for s in seeds], labels, seeds)
        parts.append(table)
        summary["over_seeds"] = stats
    (out / "tables.md").write_text("\n".join(parts))
    times = {}
    for marker in sorted((out / "done").glob("*.json")):
        times[marker.stem] = json.loads(marker.read_text()).get("seconds")
    summary["seconds"] = times
    series = {}
    for run in ("waltzrl", "waltzrl_gate_gains", "single_rl_2x"):
        for seed in seeds:
            if (out / "done" / f"{run}_s{seed}.json").is_file():
                series[f"{run}_s{seed}"] = scalars(f"{run}_s{seed}")
    earlier = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    # a run trained in an earlier sitting has no event files here: keep what was measured then
    summary["train_step_seconds"] = {name: _mean_step(s) or earlier.get("train_step_seconds", {}).get(name, {})
                                     for name, s in series.items()}
    if series:
        plot_curves(series, out / "curves.png", stage1, batch)
        summary["curves"] = {name: {tag: s.get(tag, []) for tag, _ in CURVES} for name, s in series.items()}
    if base_rows:
        (out / "transcripts.md").write_text(transcripts_markdown(out, seeds[0] if seeds else 0))
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")


def _mean_step(series: dict) -> dict:
    steps = series.get("time/step", [])
    if not steps:
        return {}
    first = [v for s, v in steps if s < 75]
    second = [v for s, v in steps if s >= 75]
    return {"stage1": round(sum(first) / len(first), 1) if first else None,
            "stage2": round(sum(second) / len(second), 1) if second else None, "steps": len(steps)}
