"""On a CUDA device: the tiny recipe trains under bf16-mixed, alone and under FSDP2, and log-probs
on the GPU match the CPU's. Run by ``benchmarks/gpu/check.sh`` (``pytest -m gpu tests/gpu``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SHORT = ["--model.conversation.warm_start.steps=20", "--model.feedback.warm_start.steps=20",
         "--model.rollout.conversation.max_new_tokens=16", "--model.rollout.feedback.max_new_tokens=48",
         "--model.schedule.total_rl_steps=2", "--model.schedule.stage1_steps=1", "--data.batch_size=4",
         "--trainer.enable_progress_bar=false", "--trainer.val_check_interval=100", "--trainer.accelerator=cuda",
         "--trainer.precision=bf16-mixed"]


def _fit(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "waltzlit", "fit", "--config", "conf/tiny.yaml", *SHORT,
            f"--trainer.logger.init_args.save_dir={tmp_path}", f"--export.directory={tmp_path}/agents", *extra]
    done = subprocess.run(args, cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_tiny_recipe_trains_in_bf16_mixed(tmp_path):
    _fit(tmp_path)
    assert (tmp_path / "agents" / "conversation" / "config.json").is_file()
    assert (tmp_path / "agents" / "feedback" / "config.json").is_file()


def test_tiny_recipe_trains_under_fsdp2_on_one_gpu(tmp_path):
    _fit(tmp_path, "--config", "conf/strategy/fsdp.yaml", "--trainer.devices=1")
    assert (tmp_path / "agents" / "feedback" / "config.json").is_file()


def test_response_logprobs_on_the_gpu_match_the_cpu():
    from tests.integration.fsdp_worker import fixed_batch
    from waltzlit.agents.agent import Agent
    from waltzlit.agents.loading import load_causal_lm, load_tokenizer
    from waltzlit.agents.tiny import TINY_LLAMA_CONFIG
    from waltzlit.config import AgentConfig

    cfg = AgentConfig(model_config=dict(TINY_LLAMA_CONFIG), tokenizer="tiny")
    tokenizer = load_tokenizer(cfg)
    model = load_causal_lm(cfg, tokenizer)
    agent = Agent("conversation", model, tokenizer, "", reference=None)
    batch = fixed_batch(agent)
    on_cpu = agent.policy_logprobs(batch)[0].detach()
    model.to("cuda")
    on_gpu = agent.policy_logprobs(batch)[0].detach().cpu()  # inputs follow the model to the GPU
    assert torch.allclose(on_cpu, on_gpu, atol=1e-4), (on_cpu - on_gpu).abs().max()
