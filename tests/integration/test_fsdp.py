"""FSDP2 on CPUs (gloo): a sharded update equals the single-process one; the CLI trains over two
processes and resumes from its sharded checkpoint."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import REPO_ROOT
from tests.integration import fsdp_worker

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sharded_update_matches_single_process(tmp_path):
    single, sharded = tmp_path / "single.pt", tmp_path / "sharded.pt"
    fsdp_worker.run(0, 1, 0, str(single))
    mp.spawn(fsdp_worker.run, args=(2, _free_port(), str(sharded)), nprocs=2, join=True)
    a = torch.load(single, weights_only=True)
    b = torch.load(sharded, weights_only=True)
    # The loss of the full batch is the mean of the two halves' losses (equal rows per rank).
    assert abs(a["loss"] - b["loss"]) < 1e-5
    moved = 0
    for name, value in a["weights"].items():
        assert torch.allclose(value, b["weights"][name], atol=1e-5), name
        moved += 1
    assert moved > 0


def _cli(tmp_path, *extra, export_directory: bool = True):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    args = [
        sys.executable, "-m", "waltzlit", "fit", "--config", "conf/tiny.yaml", "--config", "conf/strategy/fsdp.yaml",
        "--trainer.accelerator=cpu", "--trainer.devices=2", f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.enable_progress_bar=false", "--trainer.val_check_interval=100",
        "--model.conversation.warm_start.steps=40", "--model.feedback.warm_start.steps=40",
        "--model.rollout.conversation.max_new_tokens=16", "--model.rollout.feedback.max_new_tokens=48",
        "--data.batch_size=4", *([f"--export.directory={tmp_path}/agents"] if export_directory else []), *extra,
    ]
    done = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_two_process_fit_then_resume_from_sharded_checkpoint(tmp_path):
    # the default export folder (<log_dir>/agents): trainer.log_dir is a collective, asked on every rank
    _cli(tmp_path / "a", "--model.schedule.total_rl_steps=2", "--model.schedule.stage1_steps=1", export_directory=False)
    last = tmp_path / "a" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    assert (tmp_path / "a" / "tiny" / "version_0" / "agents" / "feedback" / "config.json").is_file()
    assert last.is_dir() and any(last.glob("*.distcp")), "expected a sharded (distributed) checkpoint"
    meta = torch.load(last / "meta.pt", weights_only=False)
    assert meta["waltzlit"]["rl_step"] == 2
    _cli(tmp_path / "b", "--model.schedule.total_rl_steps=3", "--model.schedule.stage1_steps=1", f"--ckpt_path={last}")
    meta = torch.load(tmp_path / "b" / "tiny" / "version_0" / "checkpoints" / "last.ckpt" / "meta.pt", weights_only=False)
    assert meta["waltzlit"]["rl_step"] == 3 and meta["waltzlit"]["stage"] == 2
    # The export gathered full weights that transformers loads on its own.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "b" / "agents" / "feedback")
    assert sum(p.numel() for p in model.parameters()) > 0


def test_bf16_mixed_policy_computes_in_bf16_and_updates_fp32_masters(tmp_path):
    """conf/waltz.yaml's precision under FSDP2: layers all-gather and compute in bf16, the shards
    stay fp32 masters, and one AdamW step at lr 5e-7 moves (nearly) every one of them; with bf16
    masters under 1 % would move (tests/unit/test_precision.py)."""
    out = tmp_path / "mixed.pt"
    mp.spawn(fsdp_worker.run_mixed, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    result = torch.load(out, weights_only=True)
    assert result["compute"] == {"weight": "torch.bfloat16", "output": "torch.bfloat16"}
    assert result["sharded"] == "DTensor" and result["master_dtype"] == "torch.float32"
    assert result["moved_share"] > 0.99, result
