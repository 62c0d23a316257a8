"""Step breakdown: seconds and tokens per stage of a normal ``fit`` run, read back from its TensorBoard logs.

    python benchmarks/step_breakdown.py              # conf/tiny.yaml and conf/single_agent_tiny.yaml
    python benchmarks/step_breakdown.py --steps 8
    OMP_NUM_THREADS=2 python benchmarks/step_breakdown.py --recipe smollm2     # the real-model recipe, fast vs off

``WaltzModule.training_step`` logs ``time/<stage>`` every RL step (timing.py):
rollout/c0, rollout/feedback, rollout/revision (inside ``run_episodes``), judge, rewards, samples,
logprobs/<agent> (old + reference log-probs), update/<agent> (forward, backward, clip and
optimizer step) and time/step (the whole training step up to logging), and ``tokens/<stage>/...``:
the prompt and generated tokens of each rollout turn, and the real tokens and padded positions
of each agent's training batch.

Tiny recipes (default): the shipped configs run through the CLI for a few RL steps (the
two-agent run crosses the stage switch); the median of each scalar over the RL steps after the
first is printed. Warm starts are cached (``$WALTZLIT_CACHE``), so only the first run pays them.

``--recipe smollm2``: ``conf/smollm2_cpu.yaml`` (SmolLM2-135M-Instruct for both agents, LoRA r16 on
every linear layer, 8 prompts per RL step, 64/96/64-token turns, the KL in the reward) in one
process per variant (``VARIANTS``), the processes taking turns *step by step* (a process starts an
RL step only when the driver hands it the baton, so machine noise falls on all alike): "fast" as
shipped, "off" with the speed options of the performance work switched off (``OFF_OPTIONS``), and
"fast + bf16 sampling" (the opt-in, inexact bf16 sampling copy). All use the same seed, so they
roll out nearly the same episodes. Stage 1 (feedback agent trained) and stage 2 (both) are
reported apart, with per-stage ratios to "off". Needs the converted model
(``python -m waltzlit convert-gguf --out models/smollm2-135m-instruct``) and waltzlit/assets/prompts.
"""

from __future__ import annotations

import argparse
import glob
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, median, start_workers, table, take_turns, uptime, write_result  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RUNS = {
    "two agents (conf/tiny.yaml)": ["--config", str(REPO / "conf/tiny.yaml"), "--model.schedule.stage1_steps=2"],
    "single agent (conf/single_agent_tiny.yaml)": ["--config", str(REPO / "conf/single_agent_tiny.yaml")],
}
OFF_OPTIONS = [
    f"--model.{role}.{key}=false"
    for role in ("conversation", "feedback")
    for key in ("shared_prefix_forward", "length_buckets", "merged_lora_sampler")
] + ["--model.algorithm.old_logprobs_from_update=false"]
"""The speed options of the real-model performance work, all off: the step as it ran before them."""


def scalars(log_dir: str, prefixes: tuple[str, ...] = ("time/", "tokens/")) -> dict[str, list[float]]:
    """Every logged value of the tags under ``prefixes``, in step order."""
    return {tag: [v for _, v in sorted(by_step.items())] for tag, by_step in scalars_by_step(log_dir, prefixes).items()}


def scalars_by_step(log_dir: str, prefixes: tuple[str, ...] = ("time/", "tokens/")) -> dict[str, dict[int, float]]:
    """``{tag: {rl_step: value}}``: the logger's step counts optimizer steps (two per stage-2 RL
    step), so values are keyed by the RL step logged beside them (``train/rl_step``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    raw: dict[str, dict[int, float]] = {}
    for path in glob.glob(f"{log_dir}/**/events.out.tfevents.*", recursive=True):
        events = EventAccumulator(path, size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            if tag.startswith(prefixes) or tag == "train/rl_step":
                raw.setdefault(tag, {}).update({e.step: e.value for e in events.Scalars(tag)})
    rl_step = {step: int(value) for step, value in raw.pop("train/rl_step", {}).items()}
    return {tag: {rl_step.get(step, step): value for step, value in by_step.items()} for tag, by_step in raw.items()}


def _cli_args(args_list: list[str], steps: int, folder: str) -> list[str]:
    return [*args_list, f"--model.schedule.total_rl_steps={steps}", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={folder}", f"--trainer.logger.init_args.save_dir={folder}",
            "--trainer.val_check_interval=1000", "--checkpoint.every_n_rl_steps=0",
            "--model.schedule.log_transcripts_every=0"]


def run(args_list: list[str], steps: int) -> dict[str, list[float]]:
    from waltzlit.cli import main

    with tempfile.TemporaryDirectory() as folder:
        cli = main(args=_cli_args(args_list, steps, folder), run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        return scalars(folder)


# ----------------------------------------------------------------------------- the real recipe
def _baton_worker(args_list: list[str], steps: int, conn) -> None:
    """Runs one fit; before every RL step, says "ready" and waits for the driver's "go"."""
    try:
        from lightning.pytorch import Callback

        from waltzlit.cli import main

        class Baton(Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                conn.send("ready")
                conn.recv()

        with tempfile.TemporaryDirectory() as folder:
            cli = main(args=_cli_args(args_list, steps, folder), run=False)
            cli.trainer.callbacks.append(Baton())
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
            conn.send(("done", scalars_by_step(folder)))
    except Exception as error:  # report, never leave the driver waiting
        conn.send(("error", f"{type(error).__name__}: {error}"))


def interleaved(variants: dict[str, list[str]], steps: int) -> dict[str, dict[str, list[float]]]:
    """Each variant's scalars, the variants' RL steps taken in turns (order rotating each round)."""
    workers, results, active = start_workers(_baton_worker, {name: (args, steps) for name, args in variants.items()})
    round_index = 0
    while active:
        active = take_turns(workers, active, round_index, results)
        round_index += 1
    for process, _ in workers.values():
        process.join(timeout=120)
    for name, message in results.items():
        if message[0] != "done":
            raise RuntimeError(f"{name}: {message[1]}")
    return {name: message[1] for name, message in results.items()}


VARIANTS = {
    "off": OFF_OPTIONS,
    "fast": [],
    "fast + bf16 sampling": [f"--model.{role}.sampler_dtype=bfloat16" for role in ("conversation", "feedback")],
}
"""The recipe as shipped ("fast": every exact option on), with the speed options off, and with the
opt-in, inexact bf16 sampling copy on top."""


def recipe_breakdown(steps: int, stage1: int, variants: list[str]) -> dict:
    base = ["--config", str(REPO / "conf/smollm2_cpu.yaml"), f"--model.schedule.stage1_steps={stage1}"]
    values = interleaved({name: [*base, *VARIANTS[name]] for name in variants}, steps)
    stages = {"stage 1": range(1, stage1), "stage 2": range(stage1 + 1, steps)}  # first step of each left out
    report = {"variants": {name: {"by_rl_step": v} for name, v in values.items()}, "stages": {}}
    for stage, kept in stages.items():
        medians = {
            name: {tag: median([v[i] for i in kept if i in v])
                   for tag, v in variant.items() if any(i in v for i in kept)}
            for name, variant in values.items()
        }
        tags = sorted(set().union(*medians.values()), key=lambda t: (t.startswith("tokens/"), t == "time/step", t))
        others = [name for name in variants if name != "off"]
        rows, ratios = [], {name: {} for name in others}
        for tag in tags:
            off = medians["off"].get(tag, float("nan"))
            row = [tag, off]
            for name in others:
                value = medians[name].get(tag, float("nan"))
                ratio = value / off if off else float("nan")
                if tag.startswith("time/"):
                    ratios[name][tag[5:]] = ratio
                row += [value, f"{ratio:.2f}x"]
            rows.append(row)
        report["stages"][stage] = {"rl_steps": list(kept), "medians": medians, "ratios_over_off": ratios}
        print(f"\n## SmolLM2 recipe, {stage}: medians over RL steps {list(kept)}\n")
        print(table(["scalar", "off", *[h for name in others for h in (name, "/ off")]], rows))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--steps", type=int, default=None, help="RL steps per run (tiny: 6; smollm2: 7)")
    parser.add_argument("--stage1-steps", type=int, default=3, help="smollm2: RL steps of stage 1")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="smollm2: the variants to interleave (off is always run)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    payload = {"machine": machine(), "uptime_before": uptime(), "args": vars(args), "runs": {}}
    if args.recipe == "smollm2":
        steps = args.steps or 7
        variants = ["off", *[name for name in args.variants if name != "off"]]
        payload["smollm2"] = recipe_breakdown(steps, args.stage1_steps, variants)
        payload["variant_options"] = {name: VARIANTS[name] for name in variants}
    else:
        steps = args.steps or 6
        for name, run_args in RUNS.items():
            values = run(run_args, steps)
            order = sorted(values, key=lambda tag: (tag.startswith("tokens/"), tag == "time/step", tag))
            medians = {tag: median(values[tag][1:]) for tag in order}
            payload["runs"][name] = {"medians_s": medians, "all_s": values}
            step = medians.get("time/step", float("nan"))
            rows = [[tag, value, f"{100 * value / step:.0f} %" if tag.startswith("time/") else ""]
                    for tag, value in medians.items()]
            print(f"\n## {name}: median over RL steps 2..{steps}\n")
            print(table(["scalar", "value", "of step"], rows))
    payload["uptime_after"] = uptime()
    print(f"\n{payload['uptime_before']}\n{payload['uptime_after']}")
    out = args.out or ("step_breakdown" if args.recipe == "tiny" else "step_breakdown_smollm2")
    print(f"wrote {write_result(out, payload)}")


if __name__ == "__main__":
    main()
