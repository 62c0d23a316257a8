"""Loading an agent's tokenizer and causal LM: the same code for hub ids, local paths and
randomly initialised configs, with optional LoRA adapters (peft)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from collections.abc import Iterator

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from waltzlit.config import AgentConfig, LoRAConfig

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

TINY_TOKENIZER_NAME = "tiny"
"""Tokenizer name that resolves to the tokenizer bundled with waltzlit (vocab 512, chat template)."""


def load_tokenizer(cfg: AgentConfig) -> PreTrainedTokenizerBase:
    """The agent's tokenizer, left-padded for batched generation, with a pad token."""
    name = cfg.tokenizer or cfg.model
    if name is None:
        raise ValueError("tokenizer: needed when the model is built from model_config (e.g. tokenizer: tiny)")
    if name == TINY_TOKENIZER_NAME:
        from waltzlit.agents.tiny import TINY_TOKENIZER_DIR

        name = str(TINY_TOKENIZER_DIR)
    tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=cfg.trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        # Llama-3 style tokenizers ship without a pad token; padding is always masked out.
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise ValueError(f"tokenizer {name!r} has no chat template; both agents are prompted as chats")
    return tokenizer


def load_causal_lm(cfg: AgentConfig, tokenizer: PreTrainedTokenizerBase) -> nn.Module:
    """The agent's causal LM, from ``cfg.model`` (hub id or path) or ``cfg.model_config`` (random init)."""
    dtype = DTYPES[cfg.dtype]
    if cfg.load_in_4bit:
        model = _load_4bit(cfg, tokenizer, dtype)
    elif cfg.model is not None:
        model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    else:
        kwargs = dict(cfg.model_config)
        model_type = kwargs.pop("model_type")
        kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
        kwargs.setdefault("bos_token_id", tokenizer.bos_token_id)
        kwargs.setdefault("eos_token_id", tokenizer.eos_token_id)
        config = AutoConfig.for_model(model_type, **kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if cfg.gradient_checkpointing:
        # transformers 5.2x renamed it (the old name goes in v6)
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    model.eval()
    return model


def _load_4bit(cfg: AgentConfig, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype) -> nn.Module:
    """The base in 4-bit NF4 (bitsandbytes, imported only here), for QLoRA.

    A randomly initialised base goes through a temporary folder so that it is quantized by the very
    ``from_pretrained`` path a real checkpoint takes.
    """
    import tempfile

    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )
    if cfg.model is not None:
        return AutoModelForCausalLM.from_pretrained(
            cfg.model, dtype=dtype, quantization_config=quantization, trust_remote_code=cfg.trust_remote_code
        )
    full = load_causal_lm(dataclasses.replace(cfg, load_in_4bit=False, gradient_checkpointing=False), tokenizer)
    with tempfile.TemporaryDirectory() as folder:
        full.save_pretrained(folder)
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, quantization_config=quantization)


@contextlib.contextmanager
def peft_wrapping() -> Iterator[None]:
    """Around a call that wraps a model in peft: peft (<= 0.21) reads transformers' deprecated
    ``is_gradient_checkpointing`` property, which would print a FutureWarning on every run that
    uses LoRA. The call is peft's own, so only that message is silenced, only here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
        yield


def add_lora(model: nn.Module, cfg: LoRAConfig, adapter_name: str = "default") -> nn.Module:
    """Wrap ``model`` in peft LoRA adapters (only adapter weights stay trainable); on a model that is
    already a peft model, add another adapter named ``adapter_name`` beside the existing ones."""
    from peft import LoraConfig, get_peft_model

    peft_config = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        task_type="CAUSAL_LM",
    )
    if hasattr(model, "add_adapter") and hasattr(model, "peft_config"):
        model.add_adapter(adapter_name, peft_config)
        return model
    with peft_wrapping():
        return get_peft_model(model, peft_config, adapter_name=adapter_name)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen reference policy: a deep copy of the initial weights (paper: pi_ref = initial model)."""
    import copy

    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    reference.eval()
    return reference


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
