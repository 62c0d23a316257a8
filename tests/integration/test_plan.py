"""``python -m waltzlit plan``: the paper recipes' verdicts, overrides, and architectures read
from the configuration match the models that training builds."""

from __future__ import annotations

import pytest

from tests.conftest import REPO_ROOT
from waltzlit.__main__ import main

pytestmark = pytest.mark.integration


def plan(capsys, *args: str) -> str:
    assert main(["plan", *args]) == 0
    return capsys.readouterr().out


def test_paper_recipe_fits_eight_80gb_gpus_not_four(capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    out = plan(capsys, "--config", "conf/waltz.yaml")
    assert "FSDP2 over 8 ranks" in out and "fits a 80 GiB device" in out
    assert "master weights (fp32)" in out and "judge model (bf16)" in out
    out = plan(capsys, "--config", "conf/waltz.yaml", "--trainer.devices=4")
    assert "does NOT fit a 80 GiB device" in out and "smallest FSDP2 world size that fits 80 GiB: 8" in out


def test_one_gpu_recipe_fits_one_80gb_gpu(capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    out = plan(capsys, "--config", "conf/waltz_1gpu.yaml")
    assert "memory_mode shared_base, 1 device(s)" in out and "4-bit" in out
    assert "fits a 80 GiB device" in out and "reference" not in out
    assert "does NOT fit a 24 GiB device" in plan(capsys, "--config", "conf/waltz_1gpu.yaml", "--device-memory-gib", "24")


def test_architecture_from_model_config_counts_the_built_model(capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    from waltzlit.agents.loading import load_causal_lm, load_tokenizer
    from waltzlit.agents.tiny import TINY_LLAMA_CONFIG
    from waltzlit.config import AgentConfig
    from waltzlit.plan import architecture_of

    arch = architecture_of({"model_config": dict(TINY_LLAMA_CONFIG)}, "model.conversation")
    cfg = AgentConfig(model_config=dict(TINY_LLAMA_CONFIG), tokenizer="tiny")
    model = load_causal_lm(cfg, load_tokenizer(cfg))
    assert arch.parameters == sum(p.numel() for p in model.parameters())
    out = plan(capsys, "--config", "conf/tiny.yaml")
    assert f"conversation {arch.parameters / 1e9:.2f}B (full fine-tuning)" in out


def test_a_model_it_cannot_size_is_one_line_naming_the_key(capsys, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    with pytest.raises(SystemExit):
        main(["plan", "--config", "conf/waltz.yaml", "--model.conversation.model=someone/unknown-7b"])
    err = capsys.readouterr().err
    assert "model.conversation.model: cannot size 'someone/unknown-7b' offline" in err
    assert "Traceback" not in err
