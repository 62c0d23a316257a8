"""Peak memory of the two agents (+ references) through one training step, per memory mode.

    python benchmarks/memory.py                      # ~100M-parameter random Llama, CPU
    python benchmarks/memory.py --layers 4 --hidden 256   # quicker, smaller

Each mode runs in a fresh process (peak RSS is per process): build both agents with their
references, sample nothing (a fixed batch of random responses), then for each agent compute old
and reference log-probs and take one AdamW step; both optimizers stay alive, as in training. Reports peak RSS, the RSS taken by the models
alone (resident after loading), the peak resident memory during one training step of both
agents above the footprint after imports ("step peak"), and the ratio of each mode's step memory to the paper's ``separate`` full fine-tuning, and the estimate of
``python -m waltzlit plan`` (``waltzlit/memory_plan.py``) for the same workload with its error.
On a GPU (``--device cuda``) it reports ``torch.cuda.max_memory_allocated`` instead.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = {
    "separate (full, paper)": dict(memory_mode="separate", lora=False, load_in_4bit=False),
    "separate + LoRA": dict(memory_mode="separate", lora=True, load_in_4bit=False),
    "shared_base (LoRA)": dict(memory_mode="shared_base", lora=True, load_in_4bit=False),
    "shared_base + 4-bit (QLoRA)": dict(memory_mode="shared_base", lora=True, load_in_4bit=True),
}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class PeakSampler:
    """Polls this process's resident memory from a thread; ``peak`` is the largest value seen."""

    def __init__(self, interval: float = 0.002) -> None:
        import threading

        self.peak = _current_rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _current_rss_mib())
            self._stop.wait(interval)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _current_rss_mib())


def save_random_base(folder: str, layers: int, hidden: int) -> None:
    """A randomly initialised Llama saved like a hub checkpoint, so every mode loads it the way a
    real run loads its base (4-bit quantization then happens while loading)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from waltzlit.agents.loading import load_tokenizer
    from waltzlit.config import AgentConfig

    config = AutoConfig.for_model(
        "llama", hidden_size=hidden, intermediate_size=hidden * 8 // 3, num_hidden_layers=layers,
        num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 256), vocab_size=512,
        max_position_embeddings=512, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    load_tokenizer(AgentConfig(model_config={"model_type": "llama"}, tokenizer="tiny")).save_pretrained(folder)


def run_mode(mode: str, base: str, device: str, checkpointing: bool = False) -> dict:
    import torch

    from waltzlit.agents.build import build_agents
    from waltzlit.config import AgentConfig, AlgorithmConfig, LoRAConfig
    from waltzlit.rollout.samples import collate_generations
    from waltzlit.training.update import policy_update, prepare_batch
    from waltzlit.types import Generation

    torch.set_num_threads(1)
    spec = MODES[mode]
    lora = LoRAConfig(r=16, alpha=32) if spec["lora"] else None
    configs = {
        role: AgentConfig(model=base, lora=lora, load_in_4bit=spec["load_in_4bit"], lr=1e-5,
                          gradient_checkpointing=checkpointing)
        for role in ("conversation", "feedback")
    }
    before = _current_rss_mib()
    built = build_agents(configs, spec["memory_mode"], needs_reference=True, max_prompt_tokens=512,
                         warm_start_records=list)
    if device != "cpu":
        for module in (*built.policies.values(), *built.references.values()):
            module.to(device)
        torch.cuda.reset_peak_memory_stats()
    load_peak = _rss_mib()
    parameters = sum(p.numel() for m in built.policies.values() for p in m.parameters())
    # Checkpoints are memory-mapped: touch every weight so that what is resident is what is held.
    for module in (*built.policies.values(), *built.references.values()):
        for tensor in (*module.parameters(), *module.buffers()):
            tensor.detach().float().sum()
    loaded = _current_rss_mib()
    generator = torch.Generator().manual_seed(0)
    timings = {}
    sampler = PeakSampler().__enter__()
    optimizers = []  # both stay alive, as Lightning keeps both agents' optimizers
    for role, agent in built.agents.items():
        turns = [
            Generation(torch.randint(10, 500, (48,), generator=generator), torch.randint(10, 500, (32,), generator=generator),
                       None, "", False)
            for _ in range(8)
        ]
        batch = collate_generations(turns, [float(i % 2) for i in range(8)], list(range(8)), 0)
        algo = AlgorithmConfig(micro_batch_size=4)
        start = time.perf_counter()
        batch, advantages, kl = prepare_batch(agent, batch, algo)
        params = agent.trainable_parameters()
        optimizer = torch.optim.AdamW(params, lr=1e-5)
        optimizers.append(optimizer)
        policy_update(agent, batch, advantages, kl, algo, optimizer, lambda loss: loss.backward(),
                      lambda: float(torch.nn.utils.clip_grad_norm_(params, 1.0)))
        timings[role] = time.perf_counter() - start
    sampler.__exit__(None, None, None)
    result = {
        "mode": mode,
        "policy_parameters": parameters,
        "load_peak_mib": load_peak - before,  # loading transients (e.g. fp32 weights before 4-bit)
        "step_peak_mib": sampler.peak - before,  # models + one training step of both agents
        "models_rss_mib": loaded - before,
        "step_seconds": timings,
    }
    if device != "cpu":
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    result["plan_mib"] = planned_mib(mode, base, checkpointing)
    return result


def planned_mib(mode: str, base: str, checkpointing: bool) -> float:
    """``waltzlit.memory_plan``'s peak for this benchmark's workload: fp32, no sampling, batches of
    4 rows of 48 context + 32 response tokens, LoRA r=16 on every linear layer."""
    from waltzlit.memory_plan import AgentPlan, Workload, architecture_from_config, estimate

    spec = MODES[mode]
    arch = architecture_from_config(json.loads((Path(base) / "config.json").read_text()))
    agent = AgentPlan(arch, "float32", lora_r=16 if spec["lora"] else None, load_in_4bit=spec["load_in_4bit"])
    work = Workload({"conversation": agent, "feedback": agent}, precision="32-true", memory_mode=spec["memory_mode"],
                    generation_batch_size=0, max_prompt_tokens=48, max_new_tokens=32, micro_batch_size=4,
                    gradient_checkpointing=checkpointing)
    return estimate(work).peak_bytes / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=14)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="activation checkpointing in every mode")
    parser.add_argument("--out", default="benchmarks/results/memory.json")
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # internal: run one mode in this process
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.base, args.device, args.gradient_checkpointing)))
        return
    results = []
    scratch = tempfile.TemporaryDirectory()
    save_random_base(scratch.name, args.layers, args.hidden)
    for mode in MODES:
        command = [sys.executable, __file__, "--mode", mode, "--base", scratch.name, "--device", args.device]
        command += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
        # glibc keeps freed heap blocks (the activations of the no-grad forwards) resident, which
        # inflated the LoRA modes' peaks by ~35 %; served by mmap, every freed tensor returns to the
        # OS, so the peak RSS tracks live memory.
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            print(f"{mode}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    key = "cuda_peak_mib" if args.device != "cpu" else "step_peak_mib"
    baseline = results[0][key] if results else 1.0
    print(f"{'mode':30s} {'policy params':>14s} {'models MiB':>11s} {'load peak':>10s} {'step peak MiB':>14s} "
          f"{'vs separate':>12s} {'plan MiB':>9s} {'plan error':>11s}")
    for r in results:
        error = r["plan_mib"] / r[key] - 1
        print(f"{r['mode']:30s} {r['policy_parameters']:>14,d} {r['models_rss_mib']:>11.0f} {r['load_peak_mib']:>10.0f} "
              f"{r[key]:>14.0f} {r[key] / baseline:>11.2f}x {r['plan_mib']:>9.0f} {error:>+10.0%}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"layers": args.layers, "hidden": args.hidden, "device": args.device,
                                          "gradient_checkpointing": args.gradient_checkpointing,
                                          "results": results}, indent=2))


if __name__ == "__main__":
    main()
