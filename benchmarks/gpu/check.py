"""The GPU check: what a lent CUDA machine should measure, in one command, under 8 minutes on one
H100/H200, written to one JSON file.

    bash benchmarks/gpu/check.sh                    # on the GPU machine
    bash benchmarks/gpu/check.sh --dry-run          # the same steps, CPU-sized, in the test suite

Steps (each with its own time limit; a failing step is recorded and the others still run):

1. ``gpu_tests``: ``pytest -m gpu tests/gpu`` (bf16-mixed and FSDP2 fits on CUDA, GPU vs CPU log-probs);
2. ``rl_step_bf16``: two-agent WaltzRL steps of a ~1B Llama in bf16-mixed (``rl_step.py``): seconds
   per stage-2 step and ``torch.cuda.max_memory_allocated`` against ``python -m waltzlit plan``;
3. ``rl_step_qlora``: the same with one shared 4-bit base and two LoRA adapters;
4. ``equal_work``: the equal-work benchmark (waltzlit vs TRL vs a bare loop) on the GPU, bf16.

Needs a Python environment with CUDA torch and ``pip install -e ".[test,bench]"`` (TRL
``--no-deps``; without it the TRL column is skipped). Nothing is downloaded: models are built from
configs. ``--dry-run`` runs steps 2-4 at tiny sizes on the CPU and only collects step 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def steps(dry_run: bool, scratch: Path) -> list[tuple[str, list[str], int, Path | None]]:
    """(name, command, time limit in s, the JSON the command writes or None)."""
    py = sys.executable
    device = ["--device", "cpu", "--precision", "32-true", "--size", "tiny", "--steps", "1"] if dry_run else \
        ["--device", "cuda", "--precision", "bf16-mixed", "--size", "1b", "--steps", "3"]
    equal = ["--sizes", "tiny", "--steps", "3", "--warmup", "1", "--no-old-variant"] if dry_run else \
        ["--sizes", "mid", "--steps", "10", "--warmup", "3", "--device", "cuda", "--precision", "bf16-mixed"]
    return [
        ("gpu_tests", [py, "-m", "pytest", "-q", "-m", "gpu", "tests/gpu", "-p", "no:cacheprovider"]
         + (["--collect-only"] if dry_run else []), 150, None),
        ("rl_step_bf16", [py, "benchmarks/gpu/rl_step.py", *device, "--out", str(scratch / "rl_bf16.json")], 150,
         scratch / "rl_bf16.json"),
        ("rl_step_qlora", [py, "benchmarks/gpu/rl_step.py", *device, "--memory", "shared_base_qlora",
                           "--out", str(scratch / "rl_qlora.json")], 120, scratch / "rl_qlora.json"),
        ("equal_work", [py, "benchmarks/equal_work.py", *equal, "--out", str(scratch / "equal_work")], 150,
         scratch / "equal_work.json"),
    ]


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "host": platform.node()}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(), gpu_memory_gib=round(
            torch.cuda.get_device_properties(0).total_memory / 2**30, 1), cuda=torch.version.cuda)
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU; GPU tests only collected")
    default_out = Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else \
        ROOT / "benchmarks/results/gpu_check.json"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = {"dry_run": args.dry_run, "machine": machine(), "steps": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        for name, command, limit, produced in steps(args.dry_run, Path(scratch)):
            print(f"== {name}: {' '.join(command[1:])}", flush=True)
            begun = time.perf_counter()
            try:
                done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit,
                                      check=False)
                ok, tail = done.returncode == 0, (done.stdout + done.stderr)[-1500:]
            except subprocess.TimeoutExpired:
                ok, tail = False, f"timed out after {limit} s"
            record = {"ok": ok, "seconds": round(time.perf_counter() - begun, 1), "command": " ".join(command[1:])}
            if produced is not None and produced.is_file():
                record["result"] = json.loads(produced.read_text())
            if not ok:
                record["output_tail"] = tail
            result["steps"][name] = record
            print(f"   {'ok' if ok else 'FAILED'} in {record['seconds']} s", flush=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for name in ("rl_step_bf16", "rl_step_qlora"):
        measured = result["steps"][name].get("result")
        if measured:
            print(f"{name}: {measured['stage2_step_seconds_median']} s/step, peak {measured['peak_gib_measured']} GiB "
                  f"(plan {measured['peak_gib_planned']} GiB, error {measured['plan_error']})")
    print(f"wrote {args.out} ({result['seconds']} s)")
    return 0 if all(step["ok"] for step in result["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
