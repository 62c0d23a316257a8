"""Tiny models for CPU runs and tests: a bundled 512-token tokenizer and behaviour-cloning warm start.

A randomly initialised causal LM never writes a parsable feedback JSON, so every feedback sample
would earn the same reward and RL would learn nothing. :func:`warm_start` teaches such a model the
output format (and a noisy version of the right choices) by teacher forcing on short templated
demonstrations, rendered exactly as the rollout renders its contexts. The tokenizer is trained on
the same texts so that they tokenize compactly: on CPU every generated token costs ~3 ms.

``python -m waltzlit.agents.tiny`` regenerates the bundled tokenizer in ``waltzlit/assets/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from waltzlit.agents.demonstrations import (  # noqa: F401  (re-exported: the tiny-model toolkit)
    COMPLIANCES,
    REFUSALS,
    Demonstration,
    demo_feedback,
    demo_response,
    make_demonstration,
    tokenizer_corpus,
    topic_words,
)
from waltzlit.assets import TINY_TOKENIZER_DIR  # noqa: F401  (re-exported: AutoTokenizer.from_pretrained(TINY_TOKENIZER_DIR))
from waltzlit.config import WarmStartConfig
from waltzlit.types import PromptRecord

log = logging.getLogger(__name__)


SPECIAL_TOKENS: tuple[str, ...] = ("<|pad|>", "<|bos|>", "<|eos|>", "<|system|>", "<|user|>", "<|assistant|>")
"""Ids 0..5 in this order, so pad=0, bos=1, eos=2 (Llama's default bos/eos ids)."""

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|eos|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

TINY_VOCAB_SIZE = 512

TINY_LLAMA_CONFIG: dict = {
    "model_type": "llama",
    "vocab_size": TINY_VOCAB_SIZE,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
"""A ~140k-parameter Llama for CPU tests; its special token ids match the bundled tokenizer."""

WARM_START_VERSION = "1"
"""Part of the cache key: bump when demonstrations or the training loop change."""


def build_tiny_tokenizer(save_dir: str | None = None):
    """Train the byte-level BPE (vocab 512) on :func:`tokenizer_corpus` and wrap it for transformers.

    Deterministic: the same corpus always gives the same merges. Returns a
    ``PreTrainedTokenizerFast`` with left padding (for batched generation) and the chat template.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|pad|>",
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        additional_special_tokens=list(SPECIAL_TOKENS[3:]),
        padding_side="left",
        model_max_length=TINY_LLAMA_CONFIG["max_position_embeddings"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    if save_dir is not None:
        tokenizer.save_pretrained(save_dir)
    return tokenizer


# ---------------------------------------------------------------------------------------------
# Warm start


def warm_start(
    model: torch.nn.Module,
    tokenizer,
    role: str,
    system_prompt: str,
    records: list[PromptRecord],
    cfg: WarmStartConfig,
    use_cache: bool = True,
) -> dict:
    """Behaviour-clone ``model`` in place on templated demonstrations for ``role``.

    Each step draws ``cfg.batch_size`` fresh demonstrations (:func:`make_demonstration`), so label
    noise becomes a stochastic policy rather than memorised mistakes. Loss is next-token cross-entropy on the target tokens only (demonstration
    text + EOS); the context is the chat-templated rollout context with the generation prompt.
    Training runs in float32 (the model is cast back afterwards) and restores the train/eval mode.

    The result is cached under ``$WALTZLIT_CACHE/warm_start/<sha256>.safetensors`` (default
    ``~/.cache/waltzlit``), keyed on everything that determines it, the initial weights included.

    Returns:
        ``{"role", "steps", "first_loss", "final_loss", "seconds", "from_cache", "cache_path"}``;
        ``final_loss`` is the mean of the last 10 steps.
    """
    if role not in ("conversation", "feedback"):
        raise ValueError(f"role must be 'conversation' or 'feedback', got {role!r}")
    if not records:
        raise ValueError("warm_start needs at least one prompt record")
    from safetensors.torch import load_model, save_model

    path = _cache_path(model, tokenizer, role, system_prompt, records, cfg)
    if use_cache and path.exists():
        load_model(model, str(path))
        meta = _read_metadata(path)
        log.info("warm start (%s): loaded cached weights from %s", role, path)
        return {**meta, "seconds": 0.0, "from_cache": True, "cache_path": str(path)}

    log.info("warm start (%s): %d steps of behaviour cloning on templated demonstrations (cached afterwards)",
             role, cfg.steps)
    started = time.perf_counter()
    losses = _train(model, tokenizer, role, system_prompt, records, cfg)
    result = {
        "role": role,
        "steps": cfg.steps,
        "first_loss": losses[0] if losses else float("nan"),
        "final_loss": sum(losses[-10:]) / max(1, len(losses[-10:])),
    }
    seconds = time.perf_counter() - started
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        save_model(model, str(tmp), metadata={k: json.dumps(v) for k, v in result.items()})
        os.replace(tmp, path)  # atomic, so a concurrent reader never sees half a file
    log.info("warm start (%s): %d steps in %.1fs, loss %.3f -> %.3f%s", role, cfg.steps, seconds,
             result["first_loss"], result["final_loss"], f", saved to {path}" if use_cache else "")
    return {**result, "seconds": seconds, "from_cache": False, "cache_path": str(path)}


def _train(model, tokenizer, role, system_prompt, records, cfg: WarmStartConfig) -> list[float]:
    rng = random.Random(cfg.seed)
    eos = tokenizer.eos_token_id
    contexts: dict[tuple, list[int]] = {}
    targets: dict[str, list[int]] = {}

    def encode(demo: Demonstration) -> tuple[list[int], list[int]]:
        # Templated texts repeat across steps; tokenizing each once is a visible saving on CPU.
        key = tuple((m["role"], m["content"]) for m in demo.messages)
        if key not in contexts:
            contexts[key] = list(tokenizer.apply_chat_template(
                demo.messages, add_generation_prompt=True, tokenize=True, return_dict=False))
        if demo.target not in targets:
            targets[demo.target] = tokenizer(demo.target, add_special_tokens=False)["input_ids"] + [eos]
        return contexts[key], targets[demo.target]

    was_training, dtype = model.training, next(model.parameters()).dtype
    device = next(model.parameters()).device
    model.float().train()
    losses: list[float] = []
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # leave the caller's RNG streams untouched
        torch.manual_seed(cfg.seed)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
        for _ in range(cfg.steps):
            demos = [make_demonstration(rng, role, system_prompt, rng.choice(records), cfg.label_noise)
                     for _ in range(cfg.batch_size)]
            loss = target_loss(model, [encode(d) for d in demos], tokenizer.pad_token_id, device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
    model.to(dtype)
    model.train(was_training)
    return losses


def target_loss(model, pairs: list[tuple[list[int], list[int]]], pad_id: int, device) -> torch.Tensor:
    """Mean cross-entropy of the target tokens given their contexts.

    Two savings keep CPU warm starts short, neither changing the result: the token prefix all
    contexts share (the system prompt) runs once and its KV cache is repeated over the batch, and
    only the hidden states that predict target tokens go through the LM head.
    """
    from transformers import DynamicCache

    from waltzlit.kv_sharing import cache_kwarg

    shared = _common_prefix_length([c for c, _ in pairs])
    base = model.base_model
    cache = None
    if shared > 0:
        prefix = torch.tensor([pairs[0][0][:shared]], device=device)
        cache = DynamicCache()
        base(input_ids=prefix, use_cache=True, **{cache_kwarg(base): cache})
        cache.batch_repeat_interleave(len(pairs))
    rows = [(c[shared:], t) for c, t in pairs]  # suffixes, right-padded below
    width = max(len(c) + len(t) for c, t in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), shared + width), dtype=torch.long)
    attention[:, :shared] = 1
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for row, (context, target) in enumerate(rows):
        n = len(context) + len(target)
        input_ids[row, :n] = torch.tensor(context + target)
        attention[row, : shared + n] = 1
        labels[row, len(context) : n] = torch.tensor(target)
    input_ids, attention, labels = input_ids.to(device), attention.to(device), labels.to(device)
    hidden = base(input_ids=input_ids, attention_mask=attention, use_cache=cache is not None,
                  **({cache_kwarg(base): cache} if cache is not None else {})).last_hidden_state
    predicts = labels[:, 1:] != -100  # the hidden state at i predicts token i + 1
    logits = model.get_output_embeddings()(hidden[:, :-1][predicts])
    return F.cross_entropy(logits.float(), labels[:, 1:][predicts])


def _common_prefix_length(contexts: list[list[int]]) -> int:
    """Tokens shared by all contexts, leaving each at least one own token (it predicts the target)."""
    limit = min(len(c) for c in contexts) - 1
    n = 0
    while n < limit and all(c[n] == contexts[0][n] for c in contexts):
        n += 1
    return n


def _cache_path(model, tokenizer, role, system_prompt, records, cfg) -> Path:
    """``$WALTZLIT_CACHE/warm_start/<sha256 of every input that determines the result>.safetensors``."""
    digest = hashlib.sha256()
    spec = {
        "version": WARM_START_VERSION,
        "role": role,
        "system_prompt": system_prompt,
        "records": [asdict(r) for r in records],
        "cfg": asdict(cfg),
        "model_config": model.config.to_json_string(use_diff=False),
        "tokenizer": _tokenizer_fingerprint(tokenizer),
        "chat_template": tokenizer.chat_template,
        "torch": torch.__version__.split("+")[0],
    }
    digest.update(json.dumps(spec, sort_keys=True).encode())
    # The initial weights matter too (AgentConfig.seed), so hash them.
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    root = Path(os.environ.get("WALTZLIT_CACHE", "~/.cache/waltzlit")).expanduser()
    return root / "warm_start" / f"{digest.hexdigest()}.safetensors"


def _tokenizer_fingerprint(tokenizer) -> dict:
    """The backend tokenizer's vocabulary and rules, without the padding/truncation state that
    transformers changes on the fly during calls."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec.pop("padding", None)
    spec.pop("truncation", None)
    return spec


def _read_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    tok = build_tiny_tokenizer(TINY_TOKENIZER_DIR)
    print(f"wrote {TINY_TOKENIZER_DIR}: {sorted(os.listdir(TINY_TOKENIZER_DIR))}, vocab {len(tok)}")
