"""Track 1 of the learning benchmark: WaltzRL on SmolLM2-135M-Instruct from a mixed base.

    OMP_NUM_THREADS=1 python benchmarks/learning/smollm2.py --seeds 0 1 [--commit]

Runs whatever is missing, in this order, then writes the report:

1. the starting checkpoints (``smollm2_bases.py``: mixed conversation base, format-trained feedback);
2. per seed: WaltzRL (``conf/learning/smollm2.yaml``, stage 1 then stage 2, keeping
   ``stage1_end.ckpt``), WaltzRL whose stage 2 uses the gains-only gate (continued from that
   checkpoint), single-model RL with WaltzRL's number of conversation updates (its stage 2) and
   with twice that;
3. held-out evaluations (``conf/eval/learning/smollm2.yaml`` plus one small YAML per system): the
   base (alone, + safeguard, untrained collaboration, oracle feedback) once, and per seed each
   trained system (WaltzRL: the two-agent system and its conversation agent alone);
4. ``results/smollm2/``: ``tables.md`` (per seed, with 95 % bootstrap intervals over prompts, and
   the mean over seeds), ``summary.json``, ``curves.png``, ``transcripts.md`` and the trained
   adapters in float16 (``adapters/<run>/<role>``).

Every task leaves a marker when it finishes and is skipped afterwards; a killed training resumes
from its ``last.ckpt``. Tasks take a lock file, so two drivers may run side by side (one per core)
and share the work. ``--commit`` commits the results folder after each finished task, so a long
benchmark can span sittings.
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
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

RECIPE = "conf/learning/smollm2.yaml"
SINGLE_RL = "conf/learning/smollm2_single_rl.yaml"
EVAL_CONFIG = "conf/eval/learning/smollm2.yaml"
OUT = ROOT / "benchmarks/learning/results/smollm2"
RUNS = ROOT / "runs/learning"
_RECIPE = yaml.safe_load((ROOT / RECIPE).read_text())
STAGE1 = _RECIPE["model"]["schedule"]["stage1_steps"]
TOTAL = _RECIPE["model"]["schedule"]["total_rl_steps"]
BATCH = _RECIPE["data"]["batch_size"]


@dataclass
class Task:
    """One unit of work with a done marker; ``needs`` are the names of tasks that must finish first."""

    name: str
    kind: str  # bases | fit | eval
    needs: list[str] = field(default_factory=list)
    args: dict = field(default_factory=dict)

    @property
    def marker(self) -> Path:
        return OUT / "done" / f"{self.name}.json"

    def done(self) -> bool:
        return self.marker.is_file()


# ----------------------------------------------------------------------------- the plan
def seed_overrides(seed: int, with_feedback: bool = True) -> list[str]:
    """What a seed changes: LoRA initialisation, sampling, the AdvBench subsample and batch order.
    The starting checkpoints and the held-out split stay the same."""
    overrides = [f"--seed_everything={seed}", f"--model.seed={seed}", f"--data.seed={seed}",
                 f"--model.conversation.seed={2 * seed}"]
    return overrides + ([f"--model.feedback.seed={2 * seed + 1}"] if with_feedback else [])


FITS = {
    # run -> (row label, extra fit arguments, the run it continues from after stage 1)
    "waltzrl": ("WaltzRL", [], None),
    "waltzrl_gate_gains": ("WaltzRL, gate on gains only", ["--model.reward.gate_losses=false"], "waltzrl"),
    "single_rl": ("Single-model RL, WaltzRL's number of conversation updates",
                  ["--config", SINGLE_RL, f"--model.schedule.total_rl_steps={TOTAL - STAGE1}"], None),
    "single_rl_2x": ("Single-model RL, twice WaltzRL's conversation updates",
                     ["--config", SINGLE_RL, f"--model.schedule.total_rl_steps={2 * (TOTAL - STAGE1)}"], None),
}


def plan(seeds: list[int]) -> list[Task]:
    """Every task, in the order a driver should take them (see ``_priority``)."""
    tasks = [Task("bases", "bases"),
             Task("eval_base", "eval", ["bases"], {"agents": "base", "modes": [
                 {"name": "alone"}, {"name": "safeguard"}, {"name": "collaboration"}, {"name": "oracle"}]})]
    for seed in seeds:
        for run, (label, _, parent) in FITS.items():
            needs = ["bases"] + ([f"{parent}_s{seed}"] if parent else [])
            tasks.append(Task(f"{run}_s{seed}", "fit", needs, {"run": run, "seed": seed}))
        for run, (label, _, _) in FITS.items():
            if run.startswith("waltzrl"):
                modes = [{"name": "waltzrl", "agents": "trained", "label": label},
                         {"name": "alone", "agents": "trained", "label": f"{label}: conversation agent alone"}]
                agents = "trained"
            else:
                modes, agents = [{"name": "alone", "agents": "single_rl", "label": label}], "single_rl"
            tasks.append(Task(f"eval_{run}_s{seed}", "eval", [f"{run}_s{seed}"],
                              {"agents": agents, "modes": modes, "run": f"{run}_s{seed}"}))
    if 0 in seeds:
        tasks.append(Task("repro", "repro", ["eval_waltzrl_s0"]))
    # A driver takes the first runnable task, so order by what the tables need most: the rows that
    # need two seeds (WaltzRL, single-model RL with equal updates) before the optional ones, and
    # every evaluation as soon as its training has finished (results land while others train).
    return sorted(tasks, key=_priority)


_RUN_PRIORITY = {"waltzrl": 0, "single_rl": 1, "waltzrl_gate_gains": 2, "single_rl_2x": 3}


def _priority(task: Task) -> tuple:
    if task.kind == "repro":  # a re-check of finished work comes last
        return (3, 0, 0, 0, 0)
    if task.kind == "bases" or task.name == "eval_base":
        return (0 if task.kind == "bases" else 1, 0, 0, 0, 0)
    run, seed = task.args["run"].rsplit("_s", 1) if task.kind == "eval" else (task.args["run"], task.args["seed"])
    # evaluations first (they only become runnable after their training), then trainings
    return (2, 0 if task.kind == "eval" else 1, _RUN_PRIORITY[run] // 2, int(seed), _RUN_PRIORITY[run])


# ----------------------------------------------------------------------------- running tasks
def sh(command: list[str], log_path: Path) -> float:
    """Run ``command`` from the repository root, output appended to ``log_path``; its seconds."""
    print("+", " ".join(command), flush=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log_path, "a") as log:
        result = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"exit {result.returncode}: {' '.join(command)} (log: {log_path})")
    return time.perf_counter() - started


def run_dir(name: str) -> Path:
    return RUNS / name / "version_0"


def fit(task: Task) -> dict:
    """Train one run; a killed run resumes from ``last.ckpt``. WaltzRL stops after stage 1 once to
    keep ``stage1_end.ckpt`` (the gains-only variant continues from it; exact resume makes the
    split invisible), then trains stage 2."""
    run, seed = task.args["run"], task.args["seed"]
    name = task.name
    _, extra, parent = FITS[run]
    folder = run_dir(name)
    checkpoints = folder / "checkpoints"
    base = [sys.executable, "-m", "waltzlit", "fit", "--config", RECIPE, *seed_overrides(seed, not run.startswith("single")),
            *extra, "--trainer.logger.init_args.save_dir=runs/learning", f"--trainer.logger.init_args.name={name}",
            "--trainer.logger.init_args.version=0", "--trainer.enable_progress_bar=false"]
    last, stage1_end = checkpoints / "last.ckpt", checkpoints / "stage1_end.ckpt"
    log = folder.parent / "fit.log"
    record = {"commands": [], "seconds": 0.0}
    if run == "waltzrl" and not stage1_end.is_file():
        command = base + [f"--model.schedule.total_rl_steps={STAGE1}"] + ([f"--ckpt_path={last}"] if last.is_file() else [])
        record["commands"].append(" ".join(command[1:]))
        record["seconds"] += sh(command, log)
        shutil.copy(last, stage1_end)
    if last.is_file():
        start = last
    elif parent:
        start = run_dir(f"{parent}_s{seed}") / "checkpoints/stage1_end.ckpt"
        if not start.is_file():  # a later sitting: the parent finished, but its run folder is gone
            command, seconds = rebuild_stage1(parent, seed, log)
            record["commands"].append(command)
            record["seconds"] += seconds
    else:
        start = None
    command = base + ([f"--ckpt_path={start}"] if start else [])
    record["commands"].append(" ".join(command[1:]))
    record["seconds"] += sh(command, log)
    return record


def rebuild_stage1(parent: str, seed: int, log: Path) -> tuple[str, float]:
    """Train ``parent``'s stage 1 again when a variant needs its ``stage1_end.ckpt`` in a later sitting
    (the finished parent's run folder is not committed). Exact resume makes the checkpoint equal to the
    one the parent itself continued from. It runs in a folder of its own (killed, it resumes there),
    so the parent's markers and adapters stay untouched. Returns the command and its seconds."""
    name = f"{parent}_s{seed}_stage1"
    last = run_dir(name) / "checkpoints/last.ckpt"
    command = [sys.executable, "-m", "waltzlit", "fit", "--config", RECIPE, *seed_overrides(seed), *FITS[parent][1],
               "--trainer.logger.init_args.save_dir=runs/learning", f"--trainer.logger.init_args.name={name}",
               "--trainer.logger.init_args.version=0", "--trainer.enable_progress_bar=false",
               f"--model.schedule.total_rl_steps={STAGE1}"] + ([f"--ckpt_path={last}"] if last.is_file() else [])
    seconds = sh(command, log)
    target = run_dir(f"{parent}_s{seed}") / "checkpoints/stage1_end.ckpt"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(last, target)
    return " ".join(command[1:]), seconds


def evaluate(task: Task) -> dict:
    """One ``python -m waltzlit evaluate`` on the shared eval config plus this system's YAML."""
    folder = OUT / "eval" / task.name.removeprefix("eval_")
    if folder.exists():
        shutil.rmtree(folder)  # an interrupted evaluation starts again
    folder.mkdir(parents=True)
    agents = task.args["agents"]
    overlay: dict = {"modes": task.args["modes"], "output_dir": str(folder.relative_to(ROOT))}
    if agents == "base":
        overlay["base"] = {"config": RECIPE}
    else:
        # the committed float16 adapters, so that anyone can re-run exactly what the table reports
        overlay[agents] = {"exported": str((OUT / "adapters" / task.args["run"]).relative_to(ROOT)), "config": RECIPE}
    (folder / "eval.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    command = [sys.executable, "-m", "waltzlit", "evaluate", "--config", EVAL_CONFIG, "--config",
               str((folder / "eval.yaml").relative_to(ROOT))]
    seconds = sh(command, folder / "evaluate.log")
    return {"command": " ".join(command[1:]), "seconds": seconds}


REPRO = OUT / "repro"
REPRO_PER_LABEL = 4


def repro_command(out_dir: Path) -> list[str]:
    """Evaluate the committed seed-0 WaltzRL adapters on the handful of prompts in ``REPRO``
    (``tests/integration/test_learning_smollm2.py`` runs it again and compares)."""
    return [sys.executable, "-m", "waltzlit", "evaluate", "--config", EVAL_CONFIG, "--config",
            str((REPRO / "eval.yaml").relative_to(ROOT)), f"--output_dir={out_dir}"]


def repro(task: Task) -> dict:
    """A reference run for the reproduction test: the first held-out XSTest prompts of each label,
    written as a JSONL file with its own column names (the path any user's prompt file takes)."""
    from waltzlit.data.sources import PromptSourceConfig, load_prompt_source

    eval_sets = yaml.safe_load((ROOT / EVAL_CONFIG).read_text())["eval_sets"]
    records = load_prompt_source(PromptSourceConfig(**eval_sets[0]))
    chosen = [r for r in records if r.prompt_harmful][:REPRO_PER_LABEL] + [r for r in records if not r.prompt_harmful][:REPRO_PER_LABEL]
    REPRO.mkdir(parents=True, exist_ok=True)
    (REPRO / "prompts.jsonl").write_text("".join(
        json.dumps({"text": r.prompt, "label": "harmful" if r.prompt_harmful else "benign"}) + "\n" for r in chosen))
    overlay = {
        "eval_sets": [{"name": "file", "path": str((REPRO / "prompts.jsonl").relative_to(ROOT)),
                       "columns": {"prompt": "text", "label": "label"}, "tag": "repro"}],
        "trained": {"exported": str((OUT / "adapters/waltzrl_s0").relative_to(ROOT)), "config": RECIPE},
        "modes": [{"name": "waltzrl"}, {"name": "alone", "agents": "trained", "label": "WaltzRL conversation agent alone"}],
        "bootstrap_resamples": 0,
    }
    (REPRO / "eval.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    out_dir = REPRO / "reference"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    command = repro_command(out_dir.relative_to(ROOT))
    return {"command": " ".join(command[1:]), "seconds": sh(command, REPRO / "evaluate.log")}


def bases(task: Task) -> dict:
    command = [sys.executable, "benchmarks/learning/smollm2_bases.py"]
    return {"command": " ".join(command[1:]), "seconds": sh(command, OUT / "bases" / "build.log")}


def restore_bases(tasks: list[Task]) -> None:
    """A fresh checkout has the bases' marker and adapters but not the merged checkpoints (they are
    not committed): rebuild them from the committed adapters rather than training them again, so
    that later rows start from exactly the base that was evaluated."""
    if not next(t for t in tasks if t.name == "bases").done():
        return
    if all((ROOT / "models" / name / "config.json").is_file() for name in ("smollm2-mixed", "smollm2-feedback")):
        return
    command = [sys.executable, "benchmarks/learning/smollm2_bases.py", "--from-adapters"]
    sh(command, OUT / "bases" / "restore.log")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def take_lock(task: Task) -> Path | None:
    """A lock file for ``task`` (None when another live driver holds it; a dead holder's is taken over)."""
    lock = OUT / "locks" / f"{task.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = int(lock.read_text() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and _alive(holder):
                return None
            lock.unlink(missing_ok=True)
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return lock
    return None


def commit(message: str, attempts: int = 5) -> None:
    """Commit the results folder alone; retried while another git command (another driver, a person
    working in the same checkout) holds the index lock."""
    paths = [str(OUT.relative_to(ROOT))]
    for attempt in range(attempts):
        try:
            subprocess.run(["git", "add", "-A", *paths], cwd=ROOT, check=True)
            if subprocess.run(["git", "diff", "--cached", "--quiet", "--", *paths], cwd=ROOT, check=False).returncode:
                subprocess.run(["git", "commit", "-q", "-m", message, "--", *paths], cwd=ROOT, check=True)
            return
        except subprocess.CalledProcessError:
            if attempt == attempts - 1:
                raise
            time.sleep(10)


def work(tasks: list[Task], do_commit: bool, only: list[str] | None = None) -> None:
    """Run every runnable task (dependencies done, not locked by another driver) until none is left;
    with ``only``, just those tasks, in that order."""
    runners = {"bases": bases, "fit": fit, "eval": evaluate, "repro": repro}
    by_name = {t.name: t for t in tasks}
    selected = [by_name[name] for name in only] if only else tasks
    while True:
        pending = [t for t in selected if not t.done()]
        if not pending:
            return
        ready = [t for t in pending if all(by_name[n].done() for n in t.needs if n in by_name)]
        lock = task = None
        for candidate in ready:
            lock = take_lock(candidate)
            if lock:
                task = candidate
                break
        if task is None:
            if not ready and all(any(not by_name[n].done() for n in t.needs) for t in pending) and not _others_working():
                raise RuntimeError("tasks left whose dependencies cannot finish: " + ", ".join(t.name for t in pending))
            time.sleep(30)  # another driver holds what is runnable; wait for it
            continue
        try:
            if task.done():
                continue
            print(f"== {task.name}", flush=True)
            record = runners[task.kind](task)
            task.marker.parent.mkdir(parents=True, exist_ok=True)
            task.marker.write_text(json.dumps(record, indent=1) + "\n")
            if task.kind == "fit":
                copy_adapters(task.name)
            if do_commit:
                report(tasks)
                commit(f"Track 1 learning benchmark: {task.name} finished ({record['seconds']:.0f} s)")
        finally:
            lock.unlink(missing_ok=True)


def _others_working() -> bool:
    return any(p.is_file() for p in (OUT / "locks").glob("*.lock"))


# ----------------------------------------------------------------------------- the report
def copy_adapters(name: str) -> None:
    """A finished run's adapters to ``OUT/adapters/<run>/<role>`` in float16 with their system prompt."""
    import torch
    from safetensors.torch import load_file, save_file

    for role_dir in sorted((run_dir(name) / "agents").glob("*")):
        target = OUT / "adapters" / name / role_dir.name
        target.mkdir(parents=True, exist_ok=True)
        weights = load_file(str(role_dir / "adapter_model.safetensors"))
        save_file({k: v.to(torch.float16) for k, v in weights.items()}, str(target / "adapter_model.safetensors"))
        config = json.loads((role_dir / "adapter_config.json").read_text())
        base = Path(config["base_model_name_or_path"])
        config["base_model_name_or_path"] = str(base.relative_to(ROOT)) if base.is_absolute() and base.is_relative_to(ROOT) else str(base)
        (target / "adapter_config.json").write_text(json.dumps(config, indent=1))
        for extra in ("system_prompt.txt",):
            if (role_dir / extra).is_file():
                shutil.copy(role_dir / extra, target / extra)


def scalars(name: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, dict[int, float]] = {}
    for path in sorted(glob.glob(str(run_dir(name) / "events.out.tfevents.*"))):
        events = EventAccumulator(path, size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            series.setdefault(tag, {}).update((e.step, e.value) for e in events.Scalars(tag))
    if not series:  # a run trained in an earlier sitting: its curves were kept in summary.json
        summary = OUT / "summary.json"
        stored = json.loads(summary.read_text()).get("curves", {}).get(name, {}) if summary.is_file() else {}
        return {tag: [tuple(point) for point in points] for tag, points in stored.items()}
    return {tag: sorted(points.items()) for tag, points in series.items()}


def report(tasks: list[Task]) -> None:
    """tables.md and summary.json from whatever evaluations have finished; curves when matplotlib is there."""
    from report_smollm2 import write_report

    write_report(OUT, [t for t in tasks if t.kind == "eval" and t.done()], FITS, scalars, run_dir, STAGE1, BATCH)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--commit", action="store_true", help="git-commit the results folder after each finished task")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from finished tasks; train nothing")
    parser.add_argument("--only", nargs="+", metavar="TASK",
                        help="run just these tasks, in this order (e.g. to give each of two drivers its own share)")
    args = parser.parse_args()
    os.chdir(ROOT)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    tasks = plan(args.seeds)
    if not args.report_only:
        restore_bases(tasks)
        unknown = sorted(set(args.only or []) - {t.name for t in tasks})
        if unknown:
            parser.error(f"--only: no task named {', '.join(unknown)}; tasks: {', '.join(t.name for t in tasks)}")
        work(tasks, args.commit, args.only)
    report(tasks)


if __name__ == "__main__":
    main()
