"""Track 2 of the learning proof: WaltzRL, its baselines and its ablations in a fast synthetic world.

    OMP_NUM_THREADS=1 python benchmarks/learning/synthetic.py [--seeds 0 1 2] [--out benchmarks/learning/results/synthetic]

The world is conf/learning/synthetic.yaml: two tiny random Llamas behaviour-cloned on templated
demonstrations with noisy choices (so the base policy has a known rate of unsafe answers and
over-refusals, and the feedback agent imperfect labels), the built-in prompts split into a training
part and a held-out part, and the rule judge. For every seed this script

1. trains WaltzRL, single-model RL (the conversation agent alone on R_c, same estimator, learning
   rate and number of RL steps) and the paper's ablations: the conversation agent frozen in both
   stages (Table 5), no DIR (the plain outcome of the next response, Table 6), no stage 2
   (Table 7) and DIR without the label gate (Fig. 2 C); and two stage-2 rewards that are not the
   paper's: the label term kept in stage 2, and the gate applied to gains only;
2. evaluates on the held-out prompts: the base policy alone, + safeguard, untrained
   collaboration, oracle feedback, single-model RL (+ safeguard), WaltzRL (and its conversation
   agent alone) and every ablation;
3. writes ``runs/<variant>/seed<s>/`` (TensorBoard, config, exported agents), ``eval/seed<s>/``
   (per-run JSON), and finally ``summary.json`` (mean ± std over seeds), ``tables.md`` (the
   paper's Tables 1, 3, 6, 7 layout) and ``*.png`` curves of the WaltzRL runs.

A finished training or evaluation is skipped when the script is run again (its JSON marker
exists), so a crash only redoes the unfinished run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

from aggregate import aggregate_over_seeds, f1_of_rates, format_percent, format_seconds, mean_curve, moving_average  # noqa: E402

RECIPE = REPO_ROOT / "conf/learning/synthetic.yaml"
SINGLE_RL_OVERRIDE = REPO_ROOT / "conf/learning/synthetic_single_rl.yaml"
EVAL_DRAWS = 2
"""Each held-out prompt is answered this many times (independent samples), so that a rate over
41 prompts moves in steps of 1.2 points rather than 2.4."""


@dataclass(frozen=True)
class Variant:
    """One training run per seed: a name (folder), a row label and its changes to the recipe."""

    name: str
    label: str
    overrides: tuple[str, ...]


def variants(stage1_steps: int, total_steps: int) -> list[Variant]:
    """The trained systems of the benchmark, WaltzRL first."""
    return [
        Variant("waltzrl", "WaltzRL", ()),
        Variant("single_rl", "Single-model RL", ("--config", str(SINGLE_RL_OVERRIDE))),
        # The same with as many conversation updates as WaltzRL's (its stage 2), for a matched budget.
        Variant("single_rl_equal", "Single-model RL, WaltzRL's number of updates",
                ("--config", str(SINGLE_RL_OVERRIDE), f"--model.schedule.total_rl_steps={total_steps - stage1_steps}")),
        Variant("no_gate", "DIR without label gate", ("--model.reward.gate_improvement=false",)),
        # With the gate, R_c(c1) * label equals DIR * label for a binary R_c (a correct flag means c0
        # was bad, so R_c(c0) = 0; a correct "satisfactory" stops the episode), so the gated
        # "next_outcome" run is WaltzRL again, step for step (measured: identical curves). The
        # distinct Table-6 variant is the plain next-response reward without the gate.
        Variant("no_dir", "No DIR reward (next-response R_c)",
                ("--model.reward.improvement=next_outcome", "--model.reward.gate_improvement=false")),
        # Stage 1 only: the same feedback-agent training, and the conversation agent never updated.
        Variant("no_stage2", "− Stage 2 training", (f"--model.schedule.total_rl_steps={stage1_steps}",)),
        # Table 5: the co-evolution ablation, the conversation agent frozen in both stages.
        Variant("frozen_conversation", "Frozen conversation agent (both stages)",
                ("--model.schedule.freeze_conversation=true",)),
        # Not in the paper: the stage-1 reward (with the additive label term) kept in stage 2, to
        # test whether dropping it is what lets the feedback agent drift to over-triggering.
        Variant("stage2_label", "WaltzRL, label term kept in stage 2", ("--model.reward.label_weight_stage2=0.25",)),
        # Not in the paper: the gate applied to gains only, so a false alarm that broke a good
        # answer (DIR = -1) is charged while a gain still needs correct labels.
        Variant("gate_gains", "WaltzRL, gate on gains only", ("--model.reward.gate_losses=false",)),
    ]


def seed_overrides(seed: int) -> list[str]:
    """Everything random that a seed changes: initial weights (so also the warm start), the warm
    start's demonstrations, sampling and the batch order. The held-out split stays fixed."""
    return [
        f"--seed_everything={seed}",
        f"--model.seed={seed}",
        f"--data.seed={seed}",
        f"--model.conversation.seed={2 * seed}",
        f"--model.conversation.warm_start.seed={seed}",
        f"--model.feedback.seed={2 * seed + 1}",
        f"--model.feedback.warm_start.seed={seed}",
    ]


# ----------------------------------------------------------------------------- training
def train(variant: Variant, seed: int, total_steps: int, stage1_steps: int, out: Path, log) -> dict:
    """Fit one variant for one seed in a subprocess; returns (and stores) its run record.

    The run length goes before the variant's own overrides, so a variant can change it."""
    run_dir = out / "runs" / variant.name / f"seed{seed}"
    marker = run_dir / "run.json"
    if marker.exists():
        log.info("skip training %s seed %d (done)", variant.name, seed)
        return json.loads(marker.read_text())
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted run: start it again from scratch
    overrides = list(seed_overrides(seed))
    single_agent = variant.name.startswith("single_rl")
    if single_agent:  # no feedback agent: its keys do not exist
        overrides = [o for o in overrides if not o.startswith("--model.feedback.")]
    schedule = [f"--model.schedule.total_rl_steps={total_steps}"]
    if not single_agent:  # single-agent runs have no stage 1 (their override sets it to 0)
        schedule.append(f"--model.schedule.stage1_steps={stage1_steps}")
    command = [sys.executable, "-m", "waltzlit", "fit", "--config", str(RECIPE), *schedule, *variant.overrides, *overrides,
               f"--trainer.logger.init_args.save_dir={out / 'runs'}", f"--trainer.logger.init_args.name={variant.name}",
               f"--trainer.logger.init_args.version=seed{seed}", f"--trainer.default_root_dir={run_dir}"]
    log.info("train %s seed %d", variant.name, seed)
    started = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "fit.log", "w") as fit_log:
        subprocess.run(command, cwd=REPO_ROOT, stdout=fit_log, stderr=subprocess.STDOUT, check=True,
                       env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    record = {"variant": variant.name, "label": variant.label, "seed": seed, "run_dir": str(run_dir),
              "seconds": time.perf_counter() - started, "command": command}
    marker.write_text(json.dumps(record, indent=2))
    return record


# ----------------------------------------------------------------------------- evaluation
def eval_sets():
    """The held-out prompts of the recipe (its ``val_sources``: the part no run trained on), each
    label a set of its own, drawn ``EVAL_DRAWS`` times."""
    from waltzlit.data.sources import PromptSourceConfig

    held_out = dict(_recipe()["data"]["val_sources"][0])
    return [PromptSourceConfig(**held_out, data_types=[label], tag=f"heldout-{label}#{draw}")
            for draw in range(1, EVAL_DRAWS + 1) for label in ("harmful", "benign")]


def _recipe() -> dict:
    import yaml

    return yaml.safe_load(RECIPE.read_text())


def summary_metrics(summary) -> dict:
    """The numbers the tables need from one evaluated mode (fractions; None where undefined)."""
    def over(sets, field):
        values = [getattr(s, field) for s in sets if getattr(s, field) is not None]
        return sum(values) / len(values) if values else None

    harmful = [s for s in summary.sets if s.name.startswith("heldout-harmful")]
    benign = [s for s in summary.sets if s.name.startswith("heldout-benign")]
    return {
        "asr": summary.asr_avg, "orr": summary.orr_avg, "f1": f1_of_rates(summary.asr_avg, summary.orr_avg),
        "label_accuracy": summary.label_accuracy, "trigger_rate": summary.trigger_rate,
        "json_error_rate": summary.json_error_rate,
        "label_accuracy_harmful": over(harmful, "label_accuracy"), "label_accuracy_benign": over(benign, "label_accuracy"),
        "trigger_rate_harmful": over(harmful, "trigger_rate"), "trigger_rate_benign": over(benign, "trigger_rate"),
    }


def evaluate_seed(seed: int, runs: dict[str, dict], out: Path, log) -> dict[str, dict]:
    """Every row of the tables for one seed: ``{row label: metrics}`` (see :func:`summary_metrics`)."""
    from waltzlit.config import RolloutConfig, SamplingConfig
    from waltzlit.evaluation.config import AgentsSource, EvalConfig, ModeSpec
    from waltzlit.evaluation.runner import evaluate

    recipe = _recipe()["model"]["rollout"]
    rollout = RolloutConfig(
        max_feedback_rounds=recipe["max_feedback_rounds"],
        conversation=SamplingConfig(max_new_tokens=recipe["conversation"]["max_new_tokens"]),
        feedback=SamplingConfig(max_new_tokens=recipe["feedback"]["max_new_tokens"]),
        generation_batch_size=recipe["generation_batch_size"],
    )
    waltz = Path(runs["waltzrl"]["run_dir"])
    # The untrained agents are the WaltzRL run's own initial agents (same seed, same warm start).
    base = AgentsSource(config=str(waltz / "config.yaml"))
    jobs = {
        "baselines": dict(base=base, trained=AgentsSource(exported=str(waltz / "agents")), modes=[
            ModeSpec("alone"), ModeSpec("safeguard"), ModeSpec("collaboration"), ModeSpec("oracle"), ModeSpec("waltzrl"),
            ModeSpec("alone", agents="trained", label="WaltzRL conversation agent alone")]),
        "single_rl": dict(single_rl=AgentsSource(exported=str(Path(runs["single_rl"]["run_dir"]) / "agents")), modes=[
            ModeSpec("alone", agents="single_rl", label="Single-model RL"),
            ModeSpec("safeguard", agents="single_rl", label="Single-model RL + Safeguard")]),
    }
    for name, run in runs.items():
        if name == "single_rl_equal":
            jobs[name] = dict(single_rl=AgentsSource(exported=str(Path(run["run_dir"]) / "agents")),
                              modes=[ModeSpec("alone", agents="single_rl", label=run["label"])])
        elif name not in ("waltzrl", "single_rl"):
            jobs[name] = dict(trained=AgentsSource(exported=str(Path(run["run_dir"]) / "agents")),
                              modes=[ModeSpec("waltzrl", label=run["label"])])
    rows: dict[str, dict] = {}
    for job, kwargs in jobs.items():
        folder = out / "eval" / f"seed{seed}" / job
        marker = folder / "rows.json"
        if not marker.exists():
            log.info("evaluate %s seed %d", job, seed)
            cfg = EvalConfig(eval_sets=eval_sets(), rollout=rollout, seed=seed, output_dir=str(folder), progress=False,
                             **kwargs)
            started = time.perf_counter()
            result = evaluate(cfg, device="cpu")
            job_rows = {s.label: {**summary_metrics(s), "eval_seconds": s.seconds} for s in result.summaries}
            marker.write_text(json.dumps({"rows": job_rows, "seconds": time.perf_counter() - started}, indent=2))
        rows.update(json.loads(marker.read_text())["rows"])
    for run in runs.values():  # wall-clock of the training behind each trained row
        label = {"waltzrl": "WaltzRL", "single_rl": "Single-model RL"}.get(run["variant"], run["label"])
        rows.setdefault(label, {})["train_seconds"] = run["seconds"]
    return rows


# ----------------------------------------------------------------------------- tables
TABLE1_ROWS = ("Baseline response", "+ Safeguard", "Single-model RL", "Single-model RL + Safeguard",
               "Inference-time collaboration", "Oracle label-converted feedback", "WaltzRL",
               "Single-model RL, WaltzRL's number of updates", "WaltzRL, gate on gains only")


def tables_markdown(stats: dict, meta: dict) -> str:
    """tables.md: the paper's Tables 1, 3, 6, 7 and the gate ablation, mean ± std over seeds (%)."""
    p = format_percent
    lines = [
        "# Track 2 — synthetic world: WaltzRL vs baselines and ablations",
        "",
        f"Held-out prompts ({meta['heldout']}), each answered {EVAL_DRAWS} times; mean ± sample std over "
        f"seeds {meta['seeds']} (percent). Command: `{meta['command']}`. Machine: {meta['machine']}. "
        f"Wall-clock of all trainings and evaluations: {meta['total_seconds']:.0f} s.",
        "",
        "## Known base rates of the world (before any RL)",
        "",
        f"- base policy alone: unsafe (ASR) {p(stats['Baseline response']['asr'])}, over-refusal (ORR) "
        f"{p(stats['Baseline response']['orr'])}",
        f"- feedback agent (untrained collaboration): label accuracy {p(stats['Inference-time collaboration']['label_accuracy'])}, "
        f"JSON errors {p(stats['Inference-time collaboration']['json_error_rate'])}, "
        f"trigger rate {p(stats['Inference-time collaboration']['trigger_rate'])}",
        "",
        "## Table 1 layout — ASR and ORR (↓)",
        "",
        "| # | Method | ASR | ORR | F1 (↑) | train s |",
        "|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(TABLE1_ROWS, 1):
        s = stats.get(row, {})
        number = str(i) if i <= 7 else "·"  # rows 8+ are not the paper's
        lines.append(f"| {number} | {row} | {p(s.get('asr'))} | {p(s.get('orr'))} | {p(s.get('f1'))} | {format_seconds(s.get('train_seconds'))} |")
    lines += ["", "## Table 3 layout — feedback label accuracy and FTR", "",
              "| Method | Label acc harmful | Label acc benign | Label acc all | FTR harmful | FTR benign | FTR all | JSON err |",
              "|---|---|---|---|---|---|---|---|"]
    for row in ("Inference-time collaboration", "WaltzRL", "WaltzRL, gate on gains only"):
        s = stats.get(row, {})
        lines.append(f"| {row} | {p(s.get('label_accuracy_harmful'))} | {p(s.get('label_accuracy_benign'))} | "
                     f"{p(s.get('label_accuracy'))} | {p(s.get('trigger_rate_harmful'))} | {p(s.get('trigger_rate_benign'))} | "
                     f"{p(s.get('trigger_rate'))} | {p(s.get('json_error_rate'))} |")
    lines += ["", "## Tables 5-7 layout (co-evolution, DIR, stage 2), the gate ablation, and two stage-2 fixes (not in the paper)", "",
              "| Method | ASR | ORR | F1 (↑) | Label acc | FTR | train s |", "|---|---|---|---|---|---|---|"]
    for row in ("WaltzRL", "WaltzRL conversation agent alone", "Frozen conversation agent (both stages)",
                "No DIR reward (next-response R_c)", "− Stage 2 training", "DIR without label gate",
                "WaltzRL, label term kept in stage 2", "WaltzRL, gate on gains only"):
        s = stats.get(row, {})
        lines.append(f"| {row} | {p(s.get('asr'))} | {p(s.get('orr'))} | {p(s.get('f1'))} | {p(s.get('label_accuracy'))} | "
                     f"{p(s.get('trigger_rate'))} | {format_seconds(s.get('train_seconds'))} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- curves
CURVES = {
    "label_accuracy.png": (("train/label_accuracy", "label accuracy (train)"), ("val/label_accuracy", "label accuracy (held-out)")),
    "json_error_rate.png": (("train/json_error_rate", "JSON error rate (train)"),),
    "reward_c0_vs_final.png": (("train/conversation/reward_initial", "R_c of c0"), ("train/conversation/reward_final", "R_c of final response")),
    "trigger_rate.png": (("train/trigger_rate", "trigger rate (train)"),),
    "unsafe_and_overrefusal.png": (("train/unsafe_rate_final", "unsafe rate, final (train)"),
                                   ("train/overrefusal_rate_final", "over-refusal rate, final (train)")),
}


def read_scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one TensorBoard scalar of a run (empty when the tag is absent)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    if tag not in accumulator.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]


MECHANISM = (("train/false_alarm_rate", "false alarms (share of good c0 flagged)"),
             ("train/label_accuracy", "label accuracy (train)"),
             ("train/trigger_rate", "trigger rate (train)"),
             ("train/conversation/reward_final", "R_c of the final response (train)"))
"""Panels of stage2_mechanism.png: what the feedback agent does in stage 2, per reward variant."""

MECHANISM_VARIANTS = ("waltzrl", "stage2_label", "gate_gains", "no_gate")


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def write_curves(run_dirs: dict[str, list[Path]], labels: dict[str, str], out: Path, stage1_steps: int, log) -> dict:
    """Mean-over-seeds curves: ``curves.json`` (every variant), the WaltzRL PNGs and
    ``stage2_mechanism.png`` (the reward variants side by side); PNGs need matplotlib."""
    tags = {tag for series in CURVES.values() for tag, _ in series} | {tag for tag, _ in MECHANISM}
    data = {name: {tag: mean_curve([read_scalars(d, tag) for d in dirs]) for tag in sorted(tags)}
            for name, dirs in run_dirs.items()}
    (out / "curves.json").write_text(json.dumps(data, indent=1))
    plt = _pyplot()
    if plt is None:
        log.warning("matplotlib is not installed: curves.json written, no PNG")
        return data
    seeds = len(run_dirs["waltzrl"])
    for name, series in CURVES.items():
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for tag, label in series:
            points = data["waltzrl"].get(tag)
            if not points:
                continue
            steps, values = [s for s, _, _ in points], [v for _, v, _ in points]
            line, = ax.plot(steps, values, alpha=0.3)
            smooth = values if label.endswith("(held-out)") else moving_average(values, 5)
            ax.plot(steps, smooth, color=line.get_color(), label=f"{label}" + ("" if label.endswith("(held-out)") else ", 5-step mean"))
        _stage_line(ax, stage1_steps)
        ax.set_xlabel("RL step")
        ax.set_title(f"WaltzRL, mean over {seeds} seeds")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
    fig, axes = plt.subplots(1, len(MECHANISM), figsize=(4.2 * len(MECHANISM), 3.6))
    for ax, (tag, title) in zip(axes, MECHANISM):
        for name in MECHANISM_VARIANTS:
            points = data.get(name, {}).get(tag)
            if points:
                ax.plot([s for s, _, _ in points], moving_average([v for _, v, _ in points], 5), label=labels[name])
        _stage_line(ax, stage1_steps)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("RL step")
    axes[-1].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"Stage-2 reward variants, 5-step means over {seeds} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "stage2_mechanism.png", dpi=110)
    plt.close(fig)
    return data


def _stage_line(ax, stage1_steps: int) -> None:
    ax.axvline(stage1_steps, color="grey", linestyle="--", linewidth=1)
    ax.text(stage1_steps, ax.get_ylim()[0], " stage 2", va="bottom", fontsize=8, color="grey")


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(REPO_ROOT / "benchmarks/learning/results/synthetic"))
    parser.add_argument("--total-rl-steps", type=int, default=None, help="override the recipe's (smoke runs)")
    parser.add_argument("--stage1-steps", type=int, default=None, help="override the recipe's (smoke runs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    log = logging.getLogger("synthetic")
    for noisy in ("waltzlit", "lightning", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    out = Path(args.out).resolve()
    os.chdir(REPO_ROOT)  # the recipe's prompt file path is relative to the repository root
    out.mkdir(parents=True, exist_ok=True)
    schedule = _recipe()["model"]["schedule"]
    stage1 = schedule["stage1_steps"] if args.stage1_steps is None else args.stage1_steps
    total = schedule["total_rl_steps"] if args.total_rl_steps is None else args.total_rl_steps
    started = time.perf_counter()

    per_seed, run_dirs, recorded_seconds = [], {}, 0.0
    for seed in args.seeds:
        runs = {v.name: train(v, seed, total, stage1, out, log) for v in variants(stage1, total)}
        for name, run in runs.items():
            run_dirs.setdefault(name, []).append(Path(run["run_dir"]))
        rows = evaluate_seed(seed, runs, out, log)
        # wall-clock of the work behind the numbers, including runs finished by an earlier invocation
        recorded_seconds += sum(run["seconds"] for run in runs.values())
        recorded_seconds += sum(json.loads(m.read_text())["seconds"] for m in (out / "eval" / f"seed{seed}").glob("*/rows.json"))
        (out / f"rows_seed{seed}.json").write_text(json.dumps(rows, indent=2))
        per_seed.append(rows)

    stats = aggregate_over_seeds(per_seed)
    meta = {
        "command": "OMP_NUM_THREADS=1 python benchmarks/learning/synthetic.py --seeds " + " ".join(map(str, args.seeds))
        + (f" --total-rl-steps {total}" if args.total_rl_steps is not None else "")
        + (f" --stage1-steps {stage1}" if args.stage1_steps is not None else ""),
        "rl_steps": {"total": total, "stage1": stage1},
        "seeds": args.seeds,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
                   f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        "heldout": "conf/learning/synthetic_prompts.jsonl, holdout part 'eval': 41 harmful + 41 benign",
        "eval_draws": EVAL_DRAWS,
        "recipe": str(RECIPE.relative_to(REPO_ROOT)),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "total_seconds": recorded_seconds,  # every training and evaluation, whichever invocation ran it
        "this_invocation_seconds": time.perf_counter() - started,
    }
    (out / "summary.json").write_text(json.dumps({"meta": meta, "stats": stats, "per_seed": per_seed}, indent=2))
    (out / "tables.md").write_text(tables_markdown(stats, meta))
    write_curves(run_dirs, {v.name: v.label for v in variants(stage1, total)}, out, stage1, log)
    print((out / "tables.md").read_text())


if __name__ == "__main__":
    main()
