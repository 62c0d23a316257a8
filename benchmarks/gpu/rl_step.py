"""A few two-agent WaltzRL steps of a ~1B Llama on one device: seconds per RL step and peak memory
against ``python -m waltzlit plan``'s estimate for the same configuration.

    python benchmarks/gpu/rl_step.py --size 1b --device cuda --precision bf16-mixed
    python benchmarks/gpu/rl_step.py --size 1b --device cuda --memory shared_base_qlora
    python benchmarks/gpu/rl_step.py --size tiny --device cpu        # the same path, seconds on a CPU

The model is randomly initialised from a config (no download: the GPU machine may have no hub
access) with the bundled 512-token tokenizer, so its answers are noise; what is measured is the
cost of a step, which depends on shapes, not weights. The recipe is conf/tiny.yaml with the model,
lengths and batch below; step 1 is stage 1 (feedback agent only) and is left out of the timing.
Prints one JSON object (also written to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

SIZES = {
    # Llama-3.2-1B's shape with the bundled tokenizer's vocabulary: 0.97B parameters per agent
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2},
}
TURN_TOKENS = {"1b": 128, "tiny": 16}
BATCH = {"1b": 16, "tiny": 4}


def overrides(size: str, device: str, precision: str, memory: str, steps: int, scratch: str) -> list[str]:
    model_config = json.dumps({"model_type": "llama", "vocab_size": 512, "max_position_embeddings": 4096,
                               "tie_word_embeddings": False, **SIZES[size]})
    args = ["--config", str(ROOT / "conf/tiny.yaml"),
            f"--trainer.accelerator={device}", f"--trainer.precision={precision}", "--trainer.logger=false",
            f"--trainer.default_root_dir={scratch}", "--trainer.enable_progress_bar=false",
            "--trainer.limit_val_batches=0", "--trainer.val_check_interval=1000",
            f"--export.directory={scratch}/agents", "--checkpoint.every_n_rl_steps=0",
            f"--model.schedule.total_rl_steps={steps + 1}", "--model.schedule.stage1_steps=1",
            f"--model.rollout.conversation.max_new_tokens={TURN_TOKENS[size]}",
            f"--model.rollout.feedback.max_new_tokens={TURN_TOKENS[size]}",
            f"--data.batch_size={BATCH[size]}", f"--model.algorithm.micro_batch_size={BATCH[size] // 2}"]
    for role in ("conversation", "feedback"):
        args += [f"--model.{role}.model_config={model_config}", f"--model.{role}.warm_start=null",
                 f"--model.{role}.gradient_checkpointing=true", f"--model.{role}.lr=1e-5"]
        if memory == "shared_base_qlora":
            args += [f"--model.{role}.load_in_4bit=true", f"--model.{role}.lora={{r: 16, alpha: 32}}",
                     f"--model.{role}.dtype={'bfloat16' if device == 'cuda' else 'float32'}"]
    if memory == "shared_base_qlora":
        args += ["--model.memory_mode=shared_base", "--model.feedback.seed=0"]  # one base: one initialisation
    return args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--memory", choices=["separate", "shared_base_qlora"], default="separate")
    parser.add_argument("--steps", type=int, default=3, help="stage-2 RL steps timed (after one stage-1 step)")
    parser.add_argument("--out")
    args = parser.parse_args()

    import torch
    from lightning.pytorch import Callback

    from waltzlit.cli import main as cli_main
    from waltzlit.memory_plan import estimate
    from waltzlit.plan import workload_from_config

    class StepClock(Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_train_batch_start(self, *_):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self._start = time.perf_counter()

        def on_train_batch_end(self, *_):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.seconds.append(time.perf_counter() - self._start)

    scratch = tempfile.mkdtemp(prefix="waltzlit_rl_step_")
    warnings.filterwarnings("ignore", message=".*args parameter is intended")
    cli = cli_main(overrides(args.size, args.device, args.precision, args.memory, args.steps, scratch), run=False)
    work = workload_from_config(cli.config.as_dict())
    planned = estimate(work)
    clock = StepClock()
    cli.trainer.callbacks.append(clock)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    measured = (torch.cuda.max_memory_allocated() if args.device == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    result = {
        "size": args.size, "device": args.device, "precision": args.precision, "memory": args.memory,
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "parameters_per_agent": next(iter(work.agents.values())).architecture.parameters,
        "rl_steps": len(clock.seconds), "fit_seconds": round(time.perf_counter() - started, 1),
        "stage2_step_seconds_median": round(statistics.median(clock.seconds[1:]), 2) if len(clock.seconds) > 1 else None,
        # on CUDA the allocator's peak; on a CPU the process's peak RSS (imports included)
        "peak_gib_measured": round(measured / 2**30, 2),
        "peak_gib_planned": round(planned.peak_gib, 2),
        # a CPU process's RSS also holds the interpreter and libraries: compared on CUDA only
        # (benchmarks/memory.py compares the plan with step peaks on a CPU)
        "plan_error": round(planned.peak_bytes / measured - 1, 3) if args.device == "cuda" else None,
        "rl_step_reached": int(cli.model.rl_step),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
