"""A lean token sampling loop: the same tokens as Hugging Face ``generate``, less work per token.

Why: on small models the rollout is mostly per-token Python overhead, and ``generate`` adds its
own on top of the model's forward (logits-processor and stopping-criteria lists, model-kwargs
bookkeeping, output dataclasses, one ``[B, V]`` logits copy kept per step for log-probs). Profiling
a single-agent GRPO step on a 2-layer Llama put ~20 % of the step there (benchmarks/README.md).

The loop calls the model exactly as ``generate``'s greedy/multinomial path does (transformers 5):
a ``DynamicCache``, position ids from the attention mask, ``logits_to_keep=1``, the 2-D mask
dropped when there is no padding, the same temperature -> top-k -> top-p warpers, one
``multinomial`` draw per step, finished rows fed the pad token, stop when every row has hit EOS
or ``max_new_tokens``. Same inputs and the same random stream therefore give the same tokens
(tests/unit/test_sampler.py checks this against ``generate``). Log-probs of the sampled tokens are
taken in the loop from the raw logits, so no per-step logits are kept.

Savings that change no number: the loop runs under ``torch.inference_mode`` (no autograd
bookkeeping per op; the outputs are cloned into ordinary tensors; under autocast ``no_grad``
with autocast's cache of casted weights, ``_sampling_mode``); for decoder families whose
every layer attends causally over the whole sequence with SDPA (``_FULL_ATTENTION``) the decode
steps get the boolean ``[B, 1, 1, kv]`` padding mask that the model would otherwise rebuild from the
2-D mask at every step, sliced from one preallocated buffer (mask creation was ~12 % of a tiny
model's decode step); and the KV cache is written into buffers allocated once for the prompt plus
``max_new_tokens`` (``_PreallocatedLayer``) instead of being re-concatenated at every step, which
copies the whole cache of every layer per token.

Two savings that change rounding only (``waltzlit/kv_sharing.py``): rows with the same prompt (the
samples of a group) share one prefill, whose keys and values are then indexed to one copy per row
(``share_prefill``); and the tokens that every prompt of the batch begins with (a system prompt,
the fixed opening of each feedback request) are pre-filled once, as one row, before the rest of
each prompt (``share_prefix``). The prefill's matrix products then run on fewer rows, so its last
bits may differ from ``generate``'s.

Anything outside that path falls back to ``generate`` (:func:`lean_sampling_supported`): a
generation config asking for another logits processor (repetition penalty, min_p, bad words, ...),
an encoder-decoder model, or several processes (``generate`` keeps sharded ranks in step).
"""

from __future__ import annotations

import contextlib
import inspect

import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from waltzlit.config import SamplingConfig
from waltzlit.kv_sharing import (
    base_model as _base_model,
)
from waltzlit.kv_sharing import (
    cache_kwarg,
    common_prefix_length,
    distinct_rows,
    position_ids_from_mask,
    prefill_prefix,
    shared_kv_supported,
    worth_splitting,
)

_PLAIN_GENERATION_KEYS = frozenset({
    "bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "do_sample", "temperature", "top_p",
    "top_k", "max_length", "max_new_tokens", "use_cache", "output_attentions", "output_hidden_states",
    "return_dict_in_generate", "output_logits", "output_scores", "transformers_version", "_from_model_config",
})
"""Generation-config keys that do not add logits processors or change the decoding loop."""


def lean_sampling_supported(model: nn.Module, world_size: int = 1) -> bool:
    """Whether :func:`sample_tokens` decodes exactly as ``model.generate`` would here."""
    base = _base_model(model)
    if world_size > 1 or getattr(base.config, "is_encoder_decoder", False):
        return False
    config = getattr(base, "generation_config", None)
    if config is None:
        return False
    return set(config.to_diff_dict()) <= _PLAIN_GENERATION_KEYS


_FULL_ATTENTION = frozenset({"llama", "qwen2", "qwen3"})
"""Model types whose decode-step mask under SDPA is the plain padding mask, unless a sliding window
or chunked layers are configured (checked in :func:`_prepared_decode_mask`)."""


def _prepared_decode_mask(model: nn.Module) -> bool:
    config = _base_model(model).config
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    return (
        config.model_type in _FULL_ATTENTION
        and getattr(config, "_attn_implementation", None) == "sdpa"
        and all(kind == "full_attention" for kind in layer_types)
        and not getattr(config, "use_sliding_window", False)
    )


def _warpers(sampling: SamplingConfig) -> list:
    """``generate``'s sampling warpers for these settings, in its order (one beam: keep >= 1 token)."""
    warpers = []
    if sampling.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k != 0:
        warpers.append(TopKLogitsWarper(top_k=sampling.top_k, min_tokens_to_keep=1))
    if sampling.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=sampling.top_p, min_tokens_to_keep=1))
    return warpers


class _PreallocatedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys/values live in buffers sized at the first update (the prompt)
    plus ``capacity`` tokens; ``keys``/``values`` are views of the filled part, so attention reads
    exactly the tensors a growing cache would hold, without a copy of the whole cache per token."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity, self.length = capacity, 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.device, self.is_initialized = key_states.device, True
            batch, heads, length, dim = key_states.shape
            self._key_buffer = key_states.new_empty((batch, heads, length + self.capacity, dim))
            self._value_buffer = value_states.new_empty((batch, heads, length + self.capacity, dim))
        start, self.length = self.length, self.length + key_states.shape[-2]
        self._key_buffer[:, :, start : self.length].copy_(key_states)
        self._value_buffer[:, :, start : self.length].copy_(value_states)
        self.keys = self._key_buffer[:, :, : self.length]
        self.values = self._value_buffer[:, :, : self.length]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._key_buffer, self._value_buffer = self._key_buffer[indices], self._value_buffer[indices]
            self.keys = self._key_buffer[:, :, : self.length]
            self.values = self._value_buffer[:, :, : self.length]


def _decode_cache(model: nn.Module, capacity: int) -> DynamicCache:
    """The model's ``DynamicCache`` with preallocated layers where every layer is a plain one."""
    cache = DynamicCache(config=_base_model(model).config)
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [_PreallocatedLayer(capacity) for _ in cache.layers]
    return cache


def _accepts(model: nn.Module, name: str) -> bool:
    return name in inspect.signature(_base_model(model).forward).parameters


def sample_tokens(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    sampling: SamplingConfig,
    eos_ids: list[int],
    pad_id: int,
    with_logprobs: bool = True,
    share_prefill: bool = True,
    share_prefix: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample up to ``sampling.max_new_tokens`` tokens after left-padded ``input_ids`` ``[B, P]``.

    With ``share_prefill``, identical prompt rows share one prefill; with ``share_prefix``, the
    tokens all prompts begin with are pre-filled once (module docstring; rounding only).

    Returns:
        new tokens ``[B, S]`` (S = steps run; rows that finished early hold ``pad_id`` after their
        EOS, as ``generate`` pads them) and, with ``with_logprobs``, log_softmax of the raw logits
        at each sampled token ``[B, S]`` (else None).
    """
    with _sampling_mode(input_ids.device.type):
        tokens, logprobs = _sample_loop(
            model, input_ids, attention_mask, sampling, eos_ids, pad_id, with_logprobs, share_prefill, share_prefix
        )
    # Ordinary tensors again: an inference tensor must never reach autograd (e.g. as the embedding
    # indices of a training forward, which are saved for backward).
    return tokens.clone(), None if logprobs is None else logprobs.clone()


@contextlib.contextmanager
def _sampling_mode(device_type: str):
    """``inference_mode``; under autocast, ``no_grad`` and autocast with its weight-cast cache on.

    Weights do not change while sampling, so each weight is cast once instead of at every op of
    every token. Lightning's mixed precision runs with the cache off, and inference_mode bypasses
    it; either way every decode step re-cast every weight: twice the decode time under bf16
    autocast on CPU (benchmarks/README.md). The cache is emptied on the way out, before any update.
    """
    if not torch.is_autocast_enabled(device_type):
        with torch.inference_mode():
            yield
        return
    dtype = torch.get_autocast_dtype(device_type)
    try:
        with torch.no_grad(), torch.autocast(device_type, dtype=dtype, cache_enabled=True):
            yield
    finally:
        torch.clear_autocast_cache()


def _sample_loop(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    sampling: SamplingConfig,
    eos_ids: list[int],
    pad_id: int,
    with_logprobs: bool,
    share_prefill: bool,
    share_prefix: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    device, batch = input_ids.device, input_ids.shape[0]
    greedy = sampling.temperature == 0
    warpers = [] if greedy else _warpers(sampling)
    extra = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    position_ids = position_ids_from_mask(attention_mask)
    prefix = common_prefix_length(input_ids, attention_mask, input_ids.shape[1]) if share_prefix else 0
    if prefix and not (shared_kv_supported(model) and worth_splitting(model, (batch - 1) * prefix)):
        prefix = 0
    # The cache's first update is the prefix (or the whole prompt); it then grows by the rest.
    cache = _decode_cache(model, input_ids.shape[1] - prefix + sampling.max_new_tokens if prefix else
                          sampling.max_new_tokens)
    model_kwargs = {cache_kwarg(model): cache, "use_cache": True, "return_dict": True, **extra}

    def next_logits(inputs, mask, positions):  # [rows, V] logits of the next token
        return model(input_ids=inputs, attention_mask=mask, position_ids=positions, **model_kwargs).logits[:, -1]

    if prefix:  # the common prefix once (one row, no padding), its cache then copied to every row
        # the mask then covers the cached prefix (ones) and each row's own tokens and padding
        input_ids, attention_mask, position_ids = prefill_prefix(
            model, input_ids, attention_mask, position_ids, prefix, **model_kwargs
        )
    # generate drops an all-ones mask (no padding) so that attention needs none; so does this loop.
    mask = None if bool(attention_mask.all()) else attention_mask
    decode_mask = None  # [B, 1, 1, P + max_new_tokens]: the prompt's padding, every new token visible
    if mask is not None and _prepared_decode_mask(model):
        width = attention_mask.shape[1]
        decode_mask = torch.ones((batch, 1, 1, width + sampling.max_new_tokens), dtype=torch.bool, device=device)
        decode_mask[:, 0, 0, :width] = attention_mask.bool()

    eos = torch.tensor(sorted(eos_ids), device=device)
    pad = torch.tensor(pad_id, device=device)
    unfinished = torch.ones(batch, dtype=torch.bool, device=device)
    tokens, logprobs = [], []
    prompts = distinct_rows(torch.cat([input_ids, attention_mask.to(input_ids.dtype)], 1)) if share_prefill else None
    if prompts is None:
        if prefix:
            cache.batch_select_indices(torch.zeros(batch, dtype=torch.long, device=device))
        step_logits = next_logits(input_ids, mask, position_ids)
    else:  # one prefill per distinct prompt, its cache and logits indexed to every row holding it
        first, row_prompt = prompts
        if prefix:
            cache.batch_select_indices(torch.zeros(len(first), dtype=torch.long, device=device))
        step_logits = next_logits(input_ids[first], None if mask is None else mask[first], position_ids[first])
        step_logits = step_logits[row_prompt]
        cache.batch_select_indices(row_prompt)
    inputs = input_ids
    for step in range(sampling.max_new_tokens):
        logits = step_logits.to(dtype=torch.float32, copy=True)
        scores = logits
        for warper in warpers:
            scores = warper(inputs, scores)
        if greedy:
            next_tokens = scores.argmax(dim=-1)
        else:
            next_tokens = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        next_tokens = torch.where(unfinished, next_tokens, pad)
        tokens.append(next_tokens)
        if with_logprobs:
            logprobs.append(torch.log_softmax(logits, dim=-1).gather(-1, next_tokens[:, None]).squeeze(-1))
        unfinished &= ~torch.isin(next_tokens, eos)
        if not bool(unfinished.any()) or step == sampling.max_new_tokens - 1:
            break
        inputs = next_tokens[:, None]
        position_ids = position_ids[:, -1:] + 1
        if decode_mask is not None:
            mask = decode_mask[..., : attention_mask.shape[1] + len(tokens)]
        elif mask is not None:
            mask = torch.cat([mask, mask.new_ones((batch, 1))], dim=-1)
        step_logits = next_logits(inputs, mask, position_ids)
    new_tokens = torch.stack(tokens, dim=1)
    return new_tokens, torch.stack(logprobs, dim=1) if with_logprobs else None

