"""Security defaults: no hub code unless asked, no code from checkpoints, model output never run.

The serve endpoint's request-size (413) and concurrency (503) bounds are exercised over HTTP in
tests/integration/test_serve.py; here only their defaults are checked to be finite.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest

import waltzlit
from waltzlit.agents import loading
from waltzlit.config import AgentConfig

PACKAGE = Path(waltzlit.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))


# ----------------------------------------------------------------------------- trust_remote_code
def test_trust_remote_code_is_off_by_default_everywhere():
    assert AgentConfig(model="org/model").trust_remote_code is False
    from waltzlit.judges.llama_guard import LlamaGuardJudge
    from waltzlit.judges.wildguard import WildGuardJudge

    for judge in (WildGuardJudge, LlamaGuardJudge):
        assert inspect.signature(judge.__init__).parameters["trust_remote_code"].default is False


@pytest.mark.parametrize("trust", [False, True])
def test_trust_remote_code_reaches_transformers_as_set(trust, monkeypatch):
    seen = {}

    def fake_tokenizer(name, **kwargs):
        seen["tokenizer"] = kwargs.get("trust_remote_code")
        return SimpleNamespace(padding_side="right", pad_token_id=0, eos_token="</s>", chat_template="{{x}}")

    def fake_model(name, **kwargs):
        seen["model"] = kwargs.get("trust_remote_code")
        return SimpleNamespace(generation_config=SimpleNamespace(pad_token_id=0), eval=lambda: None)

    monkeypatch.setattr(loading.AutoTokenizer, "from_pretrained", fake_tokenizer)
    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", fake_model)
    cfg = AgentConfig(model="org/model", trust_remote_code=trust)
    loading.load_causal_lm(cfg, loading.load_tokenizer(cfg))
    assert seen == {"tokenizer": trust, "model": trust}


# ----------------------------------------------------------------------------- no code from data
def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else None
            dotted = None
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                dotted = f"{func.value.id}.{func.attr}"
            yield node, name, dotted


def test_no_dynamic_code_execution_or_unsafe_deserialisation_in_the_package():
    """eval/exec/compile of any string, pickle, unsafe YAML, shell=True: none may appear, so model
    output (and any other data) can only ever be parsed, never run. ``model.eval()`` is a method
    call and is not matched: the check reads the syntax tree, not the text."""
    offences = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node, name, dotted in _calls(tree):
            where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
            if name in {"eval", "exec", "compile", "__import__"}:
                offences.append(f"{where}: {name}()")
            if dotted in {"pickle.load", "pickle.loads", "marshal.loads", "yaml.load", "yaml.unsafe_load", "os.system"}:
                offences.append(f"{where}: {dotted}()")
            if any(k.arg == "shell" and getattr(k.value, "value", False) is True for k in node.keywords):
                offences.append(f"{where}: shell=True")
    assert not offences, offences


def test_every_torch_load_in_the_package_is_weights_only():
    offences = []
    for path in SOURCES:
        for node, _, dotted in _calls(ast.parse(path.read_text())):
            if dotted == "torch.load":
                flag = next((k.value for k in node.keywords if k.arg == "weights_only"), None)
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    offences.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not offences, f"torch.load without weights_only=True: {offences}"


def test_training_checkpoints_load_weights_only_by_default(tmp_path):
    """The CLI's checkpoint callback installs AtomicCheckpointIO, whose loads default to weights_only."""
    import pickle

    import torch

    from waltzlit.training.fault_tolerance import AtomicCheckpointIO

    path = tmp_path / "x.ckpt"
    torch.save({"payload": SimpleNamespace(a=1)}, path)
    with pytest.raises(pickle.UnpicklingError):
        AtomicCheckpointIO().load_checkpoint(path)


# ----------------------------------------------------------------------------- serving
def test_serve_bounds_request_size_and_concurrency_by_default():
    from waltzlit.deploy.server import ChatServer

    params = inspect.signature(ChatServer.__init__).parameters
    assert 1 <= params["max_concurrent"].default <= 64
    assert 0 < params["max_body_bytes"].default <= 16 << 20
