"""Run a token span that several rows share once, and let every row read it through the KV cache.

Two kinds of sharing, used by the sampler's prefill (``agents/sampler.py``) and by the log-prob
forwards of training (``agents/logprobs.py``):

- **identical rows**: rows whose whole context is the same (the samples of one prompt, several
  feedbacks on one response) run that context once (:func:`distinct_rows`);
- **a common prefix**: rows whose contexts differ but *begin* with the same tokens (the system
  prompt and the fixed opening of every feedback request) run that prefix once, as a batch of one
  row, and the rest of each row after it (:func:`common_prefix_length`, :func:`drop_prefix`).

Why this is exact. Every row is left-padded and its position ids skip the padding, so the prefix
sits at positions ``0 .. K-1`` in every row whatever its padding. Moving a row's padding from before
the prefix to just after it (:func:`drop_prefix`) changes no token's position and no real token's
set of visible keys: the padded keys are masked out wherever they are, and causal order among the
real tokens is kept. Attention then computes the same sums over the same keys (up to the order of
floating-point additions), and the gradient of every row's copy of the prefix keys and values
flows back into the one prefix forward, summed over rows, through the indexing that made the copies.

This module imports nothing from waltzlit, so both the rollout and the agents can use it.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

SHARED_KV_MODELS = frozenset({"llama", "qwen2", "qwen3", "mistral"})
"""Decoder families whose attention layers read a ``DynamicCache`` exactly as they read their own
keys and values; with a sliding window the cache would drop context, so those fall back."""


MIN_SAVED_FLOPS = 2e9
"""Split a forward only when the positions it skips are worth more than the extra model call:
about 2 * parameters * skipped positions multiply-adds. Measured on 2 CPU cores (8 rows, 2 contexts
of 30 tokens, 64-token responses): a 12 M-parameter Llama (4e9 skipped) goes from 0.45 to 0.38 s
per forward+backward, a 0.14 M one (6e7) loses 1 ms per call to the second call's overhead."""


def worth_splitting(model: nn.Module, skipped_positions: int) -> bool:
    """Whether skipping this many positions pays for one more model call (``MIN_SAVED_FLOPS``)."""
    parameters = sum(p.numel() for p in model.parameters())
    return skipped_positions > 0 and 2 * parameters * skipped_positions >= MIN_SAVED_FLOPS


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (whose ``forward`` signature is ``**kwargs``)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def cache_kwarg(model: nn.Module) -> str:
    """The name under which this model's ``forward`` takes a KV cache: ``cache`` from transformers
    5.24 on, ``past_key_values`` before (still accepted there, with a deprecation warning)."""
    parameters = inspect.signature(base_model(model).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def shared_kv_supported(model: nn.Module) -> bool:
    """Whether a forward split at a cache boundary computes here what the single forward would.

    Not for: families outside ``SHARED_KV_MODELS`` or with sliding-window layers; a model training
    under gradient checkpointing (the checkpointed layers drop the cache); sharded (DTensor)
    parameters, where a rank's number of forward calls must not depend on its data.
    """
    base = base_model(model)
    config = getattr(base, "config", None)
    if config is None or getattr(config, "model_type", None) not in SHARED_KV_MODELS:
        return False
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    if any(kind != "full_attention" for kind in layer_types) or getattr(config, "use_sliding_window", False):
        return False
    if base.training and torch.is_grad_enabled() and _checkpointing(base):
        return False
    return not sharded(base)


def sharded(model: nn.Module) -> bool:
    """Whether the parameters are sharded (DTensor): every rank must then make the same forward
    calls, so no saving may add calls that depend on a rank's own data."""
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def _checkpointing(model: nn.Module) -> bool:
    """Whether activation checkpointing is on (transformers >= 5.2x renamed the property)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if name in dir(type(model)):
            return bool(getattr(model, name))
    return False


def distinct_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(the first row holding each distinct value of ``rows`` ``[U]``, each row's index into it
    ``[B]``) for a 2-D ``rows`` ``[B, W]``; None when every row is distinct (nothing to share)."""
    unique, inverse = torch.unique(rows, dim=0, return_inverse=True)
    if len(unique) == len(rows):
        return None
    first = torch.full((len(unique),), len(rows), dtype=torch.long, device=rows.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(rows), device=rows.device), reduce="amin")
    return first, inverse


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, ``[B, L]``: the rule ``generate`` applies, so a training
    forward sees every token at the position it was sampled at."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def left_padding(attention_mask: torch.Tensor) -> torch.Tensor:
    """Each row's number of leading padding positions, ``[B]``."""
    return (attention_mask.cumsum(-1) == 0).sum(-1)


def common_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, context_width: int) -> int:
    """K: how many tokens every row's context begins with in common, ``0 <= K < min context length``.

    Args:
        input_ids, attention_mask: ``[B, W]`` left-padded rows; the context is ``[:, :context_width]``.

    K stops one token short of the shortest context, so that every row keeps at least one context
    token of its own after the prefix: the last context position is the one that predicts the
    first response token, and it must be computed in the row's own forward.
    """
    if input_ids.shape[0] < 2:
        return 0
    pads = context_width - attention_mask[:, :context_width].sum(1)  # [B] left padding per row
    shortest = int(context_width - pads.max())
    if shortest < 2:
        return 0
    columns = pads[:, None] + torch.arange(shortest - 1, device=input_ids.device)[None]  # [B, shortest - 1]
    aligned = input_ids.gather(1, columns)  # every row's context from its first real token
    differs = (aligned != aligned[:1]).any(0)  # [shortest - 1] some row differs at this offset
    return int(differs.nonzero()[0]) if bool(differs.any()) else shortest - 1


def drop_prefix(attention_mask: torch.Tensor, prefix_length: int, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Each ``[B, W]`` tensor without its row's ``prefix_length`` prefix columns, ``[B, W - K]``.

    A row ``[pad.. prefix rest][response ..pad]`` becomes ``[pad.. rest][response ..pad]``: the
    padding that stood before the prefix now stands where the prefix was, so that the row can be
    read after a cache holding the prefix (module docstring). ``attention_mask`` gives each row's
    padding and is the first tensor returned.
    """
    width = attention_mask.shape[1]
    pads = left_padding(attention_mask)
    columns = torch.arange(width - prefix_length, device=attention_mask.device)[None]
    source = torch.where(columns < pads[:, None], columns, columns + prefix_length)  # [B, W - K]
    return [t.gather(1, source) for t in (attention_mask, *tensors)]


def prefill_prefix(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    prefix_length: int,
    **call: object,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the common prefix once, as one unpadded row, into the cache passed in ``call`` (with the
    other keyword arguments of the model call), and return the rows as they continue after it:
    ``(input_ids [B, W - K], attention_mask [B, W], position_ids [B, W - K])``, the mask covering
    the cached prefix (ones) and then each row's own tokens and padding (:func:`drop_prefix`)."""
    start = int(left_padding(attention_mask[:1]))
    span = slice(start, start + prefix_length)
    model(input_ids=input_ids[:1, span], position_ids=position_ids[:1, span], **call)
    own_mask, input_ids, position_ids = drop_prefix(attention_mask, prefix_length, input_ids, position_ids)
    full_mask = torch.cat([own_mask.new_ones(own_mask.shape[0], prefix_length), own_mask], dim=1)
    return input_ids, full_mask, position_ids
