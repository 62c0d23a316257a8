"""Step breakdown: seconds per stage of a normal ``fit`` run, read back from its TensorBoard logs.

    python benchmarks/step_breakdown.py              # conf/tiny.yaml and conf/single_agent_tiny.yaml
    python benchmarks/step_breakdown.py --steps 8

Benchmark 4 of the performance issue. ``WaltzModule.training_step`` logs ``time/<stage>`` every
RL step (training/timing.py): rollout/c0, rollout/feedback, rollout/revision (inside
``run_episodes``), judge, rewards, samples, logprobs/<agent> (old + reference log-probs),
update/<agent> (forward, backward, clip and optimizer step) and time/step (the whole training
step up to logging). This script runs the shipped configs through the CLI for a few RL steps (the
two-agent run crosses the stage switch) and prints the median of each scalar over the RL steps
after the first. Warm starts are cached (``$WALTZLIT_CACHE``), so only the first run pays them.
"""

from __future__ import annotations

import argparse
import glob
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, median, table, uptime, write_result  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RUNS = {
    "two agents (conf/tiny.yaml)": ["--config", str(REPO / "conf/tiny.yaml"), "--model.schedule.stage1_steps=2"],
    "single agent (conf/single_agent_tiny.yaml)": ["--config", str(REPO / "conf/single_agent_tiny.yaml")],
}


def scalars(log_dir: str, prefix: str = "time/") -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: dict[str, list[float]] = {}
    for path in glob.glob(f"{log_dir}/**/events.out.tfevents.*", recursive=True):
        events = EventAccumulator(path)
        events.Reload()
        for tag in events.Tags()["scalars"]:
            if tag.startswith(prefix):
                values.setdefault(tag, []).extend(e.value for e in sorted(events.Scalars(tag), key=lambda e: e.step))
    return values


def run(args_list: list[str], steps: int) -> dict[str, list[float]]:
    from waltzlit.cli import main

    with tempfile.TemporaryDirectory() as folder:
        cli = main(args=[*args_list, f"--model.schedule.total_rl_steps={steps}", "--trainer.enable_progress_bar=false",
                         f"--trainer.default_root_dir={folder}", f"--trainer.logger.init_args.save_dir={folder}",
                         "--trainer.val_check_interval=1000", "--checkpoint.every_n_rl_steps=0"], run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        return scalars(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="RL steps per run (the first is left out)")
    parser.add_argument("--out", default="step_breakdown")
    args = parser.parse_args()
    payload = {"machine": machine(), "uptime_before": uptime(), "args": vars(args), "runs": {}}
    for name, run_args in RUNS.items():
        values = run(run_args, args.steps)
        order = sorted(values, key=lambda tag: (tag == "time/step", tag))  # the whole step last
        medians = {tag: median(values[tag][1:]) for tag in order}
        payload["runs"][name] = {"medians_s": medians, "all_s": values}
        step = medians.get("time/step", float("nan"))
        rows = [[tag[5:], seconds, f"{100 * seconds / step:.0f} %"] for tag, seconds in medians.items()]
        print(f"\n## {name}: median over RL steps 2..{args.steps}\n")
        print(table(["stage", "s", "of step"], rows))
    payload["uptime_after"] = uptime()
    print(f"\n{payload['uptime_before']}\n{payload['uptime_after']}")
    print(f"wrote {write_result(args.out, payload)}")


if __name__ == "__main__":
    main()
