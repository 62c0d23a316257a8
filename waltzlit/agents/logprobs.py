"""Log-probs of given response tokens under a causal LM, on the batch layout of ``AgentBatch``.

Three exact savings, each switched per agent in ``AgentConfig`` and used only where it is exact
(``kv_sharing.shared_kv_supported``) and worth its extra model call (``kv_sharing.worth_splitting``):

- **Shared contexts** (``shared_context_forward``): rows sampled from the same context (GRPO/RLOO
  groups, several feedback samples per response) run that context once; the responses after it
  read its keys and values through a KV cache indexed to one copy per row.
- **A shared prefix** (``shared_prefix_forward``): the tokens every row's context begins with (the
  system prompt and the fixed opening of every feedback request, ~70 % of a feedback context in
  the SmolLM2 recipe) run once, as one row; every row's remaining tokens then read them through
  the cache. Saves ``(B - 1) * K`` of the ``B * (P + T)`` positions of the forward and backward.
- **Length buckets** (``length_buckets``): rows of very different lengths (a first answer beside a
  revision that carries the answer and the feedback) run in separate forwards, each padded only to
  its own longest row, when that saves more than a model call costs.

Each is the same function of the same tokens (``kv_sharing``'s docstring: same positions, same
visible keys); the gradient of the rows' copies of a shared span reaches its one forward through
the indexing. Results equal the single padded forward up to floating-point rounding
(``tests/unit/test_shared_context.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from waltzlit.algorithms.policy_losses import entropy_from_logprobs
from waltzlit.kv_sharing import (
    base_model,
    cache_kwarg,
    common_prefix_length,
    distinct_rows,
    position_ids_from_mask,
    prefill_prefix,
    sharded,
    shared_kv_supported,
    worth_splitting,
)
from waltzlit.types import AgentBatch

_MAX_BUCKETS = 4


@dataclass(frozen=True)
class ForwardSharing:
    """Which exact savings a log-prob forward may use (module docstring)."""

    contexts: bool = False
    prefix: bool = False
    buckets: bool = False


NO_SHARING = ForwardSharing()


def response_logprobs(
    model: nn.Module,
    batch: AgentBatch,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    sharing: ForwardSharing = NO_SHARING,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(y_j | x, y_<j) for every response token, ``[B, T]``, and optionally token entropies.

    The entropies are detached unless ``entropy_grad`` (an entropy bonus in the loss): their graph
    holds another ``[B, T, V]`` tensor. Only the response positions go through the vocabulary
    projection (``logits_to_keep``): the context's logits are never needed, and the projection
    dominates memory for large vocabularies. ``sharing`` picks the savings of the module docstring.
    """
    width = batch.response_mask.shape[1]
    device = next(model.parameters()).device
    input_ids = batch.input_ids.to(device)
    attention_mask = batch.attention_mask.to(device)
    buckets = None
    if sharing.buckets and not sharded(model):  # sharded ranks must make the same calls
        # a prefix that every row shares runs once per bucket: the split must save more than that
        prefix = 0
        if sharing.prefix and shared_kv_supported(model):
            prefix = common_prefix_length(input_ids, attention_mask, input_ids.shape[1] - width)
        buckets = _length_buckets(model, attention_mask, width, prefix)
    if buckets is None:
        logits = _response_logits(model, input_ids, attention_mask, width, sharing)
        return _token_statistics(logits, input_ids[:, -width:], with_entropy, entropy_grad)
    token_logprobs = torch.zeros(input_ids.shape[0], width, device=device)
    entropy = torch.zeros(input_ids.shape[0], width, device=device) if with_entropy else None
    context_width = input_ids.shape[1] - width
    for rows, start, bucket_width in buckets:  # each bucket cut to its own padding
        ids = input_ids[rows, start : context_width + bucket_width]
        logits = _response_logits(model, ids, attention_mask[rows, start : context_width + bucket_width],
                                  bucket_width, sharing)
        values, bucket_entropy = _token_statistics(logits, ids[:, -bucket_width:], with_entropy, entropy_grad)
        token_logprobs = token_logprobs.index_put((rows[:, None], torch.arange(bucket_width, device=device)), values)
        if entropy is not None:
            entropy = entropy.index_put((rows[:, None], torch.arange(bucket_width, device=device)), bucket_entropy)
    return token_logprobs, entropy


def _token_statistics(logits: torch.Tensor, targets: torch.Tensor, with_entropy: bool, entropy_grad: bool):
    """(log-prob of each target ``[B, T]``, entropy ``[B, T]`` or None) from logits ``[B, T, V]``."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    token_logprobs = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = entropy_from_logprobs(log_probs)
    return token_logprobs, entropy


def distinct_contexts(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(first row of each distinct context ``[U]``, each row's context index ``[B]``), or None when
    every context is distinct (nothing to share). A context is the left part ``[:, :P]`` of the
    row, tokens and padding mask both (a pad id may also be a real token, e.g. EOS)."""
    return distinct_rows(torch.cat([input_ids[:, :-width], attention_mask[:, :-width].to(input_ids.dtype)], dim=1))


shared_context_supported = shared_kv_supported
"""Whether the context/response split runs here exactly as the full forward would."""


def _length_buckets(
    model: nn.Module, attention_mask: torch.Tensor, width: int, prefix: int = 0
) -> list[tuple[torch.Tensor, int, int]] | None:
    """Rows split into groups of similar length, or None when one padded forward is as good.

    Returns ``(rows [b], first context column, response width)`` per bucket: each bucket is cut to
    the widest context and the longest response among its own rows. Rows are ordered by length
    and split greedily where the split saves the most positions, while a split saves more than a
    model call costs (``kv_sharing.worth_splitting``) and there are fewer than ``_MAX_BUCKETS``
    buckets. A ``prefix`` shared by every row costs its length once per bucket, not per row.
    """
    if attention_mask.shape[0] < 2:
        return None
    context_width = attention_mask.shape[1] - width
    contexts = attention_mask[:, :context_width].sum(1)  # [B] real context tokens
    responses = attention_mask[:, context_width:].sum(1)  # [B] real response tokens (right-padded)
    order = torch.argsort(contexts + responses, stable=True)
    contexts, responses = contexts[order].tolist(), responses[order].tolist()

    def cost(lo: int, hi: int) -> int:  # positions run for rows order[lo:hi] in one forward
        return (hi - lo) * (max(contexts[lo:hi]) - prefix + max(responses[lo:hi])) + prefix

    spans = [(0, len(order))]
    while len(spans) < _MAX_BUCKETS:
        best = None  # (saving, span index, split point)
        for index, (lo, hi) in enumerate(spans):
            for cut in range(lo + 1, hi):
                saving = cost(lo, hi) - cost(lo, cut) - cost(cut, hi)
                if best is None or saving > best[0]:
                    best = (saving, index, cut)
        if best is None or not worth_splitting(model, best[0]):
            break
        _, index, cut = best
        lo, hi = spans.pop(index)
        spans[index:index] = [(lo, cut), (cut, hi)]
    if len(spans) == 1:
        return None
    return [
        (order[lo:hi], context_width - max(contexts[lo:hi]), max(max(responses[lo:hi]), 1))
        for lo, hi in spans
    ]


def _response_logits(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, width: int, sharing: ForwardSharing
) -> torch.Tensor:
    """Logits predicting each response token, ``[B, T, V]``, from rows ``[pad.. context][response ..pad]``
    ``[B, P + T]``: one padded forward, or the shared prefix once, then each distinct context
    once, then the responses, each call reading the previous ones through one KV cache."""
    rows, context_width = input_ids.shape[0], input_ids.shape[1] - width
    positions = position_ids_from_mask(attention_mask)
    supported = (sharing.prefix or sharing.contexts) and shared_kv_supported(model)
    prefix = common_prefix_length(input_ids, attention_mask, context_width) if supported and sharing.prefix else 0
    groups = distinct_contexts(input_ids, attention_mask, width) if supported and sharing.contexts else None
    if prefix and not worth_splitting(model, (rows - 1) * prefix):
        prefix = 0
    if groups is not None and not worth_splitting(model, (rows - len(groups[0])) * (context_width - prefix)):
        groups = None
    if not prefix and groups is None:
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                    logits_to_keep=width + 1, use_cache=False)
        return out.logits[:, :-1]  # position P-1+j predicts response token j

    from transformers import DynamicCache

    cache = DynamicCache(config=base_model(model).config)
    step = {cache_kwarg(model): cache, "use_cache": True}
    if prefix:
        input_ids, attention_mask, positions = prefill_prefix(
            model, input_ids, attention_mask, positions, prefix, logits_to_keep=1, **step
        )
        context_width -= prefix
    if groups is None:
        if prefix:
            cache.batch_select_indices(torch.zeros(rows, dtype=torch.long, device=input_ids.device))
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                    logits_to_keep=width + 1, **step)
        return out.logits[:, :-1]
    first, row_context = groups
    if prefix:
        cache.batch_select_indices(torch.zeros(len(first), dtype=torch.long, device=input_ids.device))
    context = model(
        input_ids=input_ids[first, :context_width],
        attention_mask=attention_mask[first, : attention_mask.shape[1] - width],
        position_ids=positions[first, :context_width],
        logits_to_keep=1,
        **step,
    )
    cache.batch_select_indices(row_context)  # one copy of its context's keys/values per row
    response = model(
        input_ids=input_ids[:, context_width:],
        attention_mask=attention_mask,
        position_ids=positions[:, context_width:],
        logits_to_keep=width,
        **step,
    )
    # The context's last position predicts response token 0; response position j predicts j + 1.
    return torch.cat([context.logits[row_context], response.logits[:, :-1]], dim=1)
