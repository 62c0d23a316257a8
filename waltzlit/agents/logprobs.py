"""Log-probs of given response tokens under a causal LM, on the batch layout of ``AgentBatch``.

Shared contexts. Rows sampled from the same context (GRPO/RLOO groups, several feedback samples
per response) repeat that context token for token, and the context is usually a third or more of
each row. :func:`response_logprobs` then runs every distinct context once, with a KV cache, and
the responses after it, their attention reading the context's keys and values through the cache,
which is indexed to one copy per row. This is the same function of the same tokens (causal
attention over the same keys, the same positions, the same padding mask), and the gradient of the
copies reaches the one context forward through the indexing, summed over its rows; the results
equal the single full forward up to floating-point rounding (``tests/unit/test_shared_context.py``).
It saves ``(B - U) * P`` of the ``B * (P + T)`` token positions of the forward and the backward.
"""

from __future__ import annotations

import torch
from torch import nn

from waltzlit.rollout.sampler import distinct_rows
from waltzlit.types import AgentBatch

_SHARED_CONTEXT_MODELS = frozenset({"llama", "qwen2", "qwen3", "mistral"})
"""Decoder families whose attention layers read a ``DynamicCache`` exactly as they read their own
keys and values; with a sliding window the cache would drop context, so those fall back."""

_MIN_SAVED_FLOPS = 2e9
"""Split only when the context positions it skips are worth more than the extra model call:
about 2 * parameters * skipped positions multiply-adds. Measured on 2 CPU cores (8 rows, 2 contexts
of 30 tokens, 64-token responses): a 12 M-parameter Llama (4e9 skipped) goes from 0.45 to 0.38 s
per forward+backward, a 0.14 M one (6e7) loses 1 ms per call to the second call's overhead."""


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, ``[B, L]``: the same rule ``generate`` applies, so the
    training forward sees every token at the position it was sampled at."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_logprobs(
    model: nn.Module,
    batch: AgentBatch,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    share_contexts: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(y_j | x, y_<j) for every response token, ``[B, T]``, and optionally token entropies.

    The entropies are detached unless ``entropy_grad`` (an entropy bonus in the loss): their graph
    holds another ``[B, T, V]`` tensor.

    Only the last ``T + 1`` positions go through the vocabulary projection (``logits_to_keep``):
    the context's logits are never needed, and the projection dominates memory for large vocabularies.

    With ``share_contexts``, rows with identical contexts run their context once (module docstring)
    where :func:`shared_context_supported` allows it.
    """
    width = batch.response_mask.shape[1]
    device = next(model.parameters()).device
    input_ids = batch.input_ids.to(device)
    attention_mask = batch.attention_mask.to(device)
    context_rows = distinct_contexts(input_ids, attention_mask, width) if share_contexts else None
    if context_rows is not None and _worth_sharing(model, input_ids, width, context_rows[0]):
        logits = _shared_context_logits(model, input_ids, attention_mask, width, *context_rows)
    else:
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            logits_to_keep=width + 1,
            use_cache=False,
        )
        logits = out.logits[:, :-1]  # position P-1+j predicts response token j
    targets = input_ids[:, -width:]
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    token_logprobs = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = -(log_probs.exp() * log_probs).sum(-1)
    return token_logprobs, entropy


def distinct_contexts(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(first row of each distinct context ``[U]``, each row's context index ``[B]``), or None when
    every context is distinct (nothing to share). A context is the left part ``[:, :P]`` of the
    row, tokens and padding mask both (a pad id may also be a real token, e.g. EOS)."""
    return distinct_rows(torch.cat([input_ids[:, :-width], attention_mask[:, :-width].to(input_ids.dtype)], dim=1))


def _worth_sharing(model: nn.Module, input_ids: torch.Tensor, width: int, first_rows: torch.Tensor) -> bool:
    skipped = (input_ids.shape[0] - len(first_rows)) * (input_ids.shape[1] - width)
    parameters = sum(p.numel() for p in model.parameters())
    return 2 * parameters * skipped >= _MIN_SAVED_FLOPS and shared_context_supported(model)


def shared_context_supported(model: nn.Module) -> bool:
    """Whether the context/response split runs here exactly as the full forward would.

    Not for: families outside ``_SHARED_CONTEXT_MODELS`` or with sliding-window layers; a model
    training under gradient checkpointing (the checkpointed layers drop the cache); sharded
    (DTensor) parameters, where a rank's number of forward calls must not depend on its data.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or getattr(config, "model_type", None) not in _SHARED_CONTEXT_MODELS:
        return False
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    if any(kind != "full_attention" for kind in layer_types) or getattr(config, "use_sliding_window", False):
        return False
    if base.training and torch.is_grad_enabled() and getattr(base, "is_gradient_checkpointing", False):
        return False
    return not any(type(p).__name__ == "DTensor" for p in base.parameters())


def _shared_context_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    width: int,
    first_rows: torch.Tensor,
    row_context: torch.Tensor,
) -> torch.Tensor:
    """Logits predicting each response token ``[B, T, V]``, contexts run once.

    Args:
        input_ids, attention_mask: ``[B, P + T]`` rows ``[pad.. context][response ..pad]``.
        first_rows: ``[U]`` one row holding each distinct context.
        row_context: ``[B]`` index into ``first_rows`` of each row's context.
    """
    from transformers import DynamicCache

    context_width = input_ids.shape[1] - width
    positions = position_ids_from_mask(attention_mask)
    config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
    cache = DynamicCache(config=config)
    context = model(
        input_ids=input_ids[first_rows, :context_width],
        attention_mask=attention_mask[first_rows, :context_width],
        position_ids=positions[first_rows, :context_width],
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    cache.batch_select_indices(row_context)  # one copy of its context's keys/values per row
    response = model(
        input_ids=input_ids[:, context_width:],
        attention_mask=attention_mask,
        position_ids=positions[:, context_width:],
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=width,
    )
    # The context's last position predicts response token 0; response position j predicts j + 1.
    return torch.cat([context.logits[row_context], response.logits[:, :-1]], dim=1)
