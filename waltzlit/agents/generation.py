"""Batched, KV-cached sampling of one turn per context, keeping the exact token ids and log-probs."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from waltzlit.agents.sampler import lean_sampling_supported, sample_tokens
from waltzlit.config import SamplingConfig
from waltzlit.distributed import max_over_ranks, world_size
from waltzlit.types import Generation


def left_pad(sequences: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D id tensors left-padded to a common width: (ids ``[B, P]``, attention mask ``[B, P]``)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = seq
        mask[row, width - len(seq) :] = 1
    return ids, mask


def _sampling_kwargs(sampling: SamplingConfig) -> dict:
    if sampling.temperature == 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k}


def _sampled_logprobs(step_logits: tuple[torch.Tensor, ...], tokens: torch.Tensor) -> torch.Tensor:
    """log_softmax(raw logits)[sampled token] per step, ``[B, steps]``, one step at a time so that no
    ``[B, steps, V]`` float32 copy is ever made."""
    columns = [
        torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[:, step : step + 1]).squeeze(-1)
        for step, logits in enumerate(step_logits)
    ]
    return torch.stack(columns, dim=1)


@torch.no_grad()
def generate_turns(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    contexts: list[torch.Tensor],
    sampling: SamplingConfig,
    batch_size: int,
    with_logprobs: bool = True,
    share_prefix: bool = False,
) -> list[Generation]:
    """Sample one response per context (token ids ``[P_i]``), ``batch_size`` contexts per call.

    Each response is cut after its first EOS (kept: the policy must learn to stop). Log-probs are
    of the untempered policy, log_softmax of the raw logits, which is the pi of the RL objective;
    ``with_logprobs=False`` skips them (``generate`` then keeps no per-step logits in memory).
    Sampling runs in the lean loop of ``agents/sampler.py`` (the same tokens as ``generate``, with
    less per-token overhead) wherever that loop is exact, else in ``model.generate``;
    ``share_prefix`` pre-fills the tokens every context of a call begins with once (that loop only).
    """
    results: list[Generation] = []
    device = next(model.parameters()).device
    eos_ids = model.generation_config.eos_token_id
    eos_ids = set(eos_ids if isinstance(eos_ids, list) else [eos_ids] if eos_ids is not None else [])
    eos_ids.add(tokenizer.eos_token_id)
    real = len(contexts)
    calls = max_over_ranks(-(-real // batch_size))  # every rank makes as many generate calls
    if calls * batch_size - batch_size >= real:
        # Another rank needs more generate calls than this one (e.g. more revisions); sharded
        # forward passes are collectives, so this rank joins them with throw-away contexts.
        filler = torch.tensor([tokenizer.eos_token_id], dtype=torch.long)
        contexts = list(contexts) + [filler] * ((calls - 1) * batch_size + 1 - real)
    lean = lean_sampling_supported(model, world_size())
    for start in range(0, len(contexts), batch_size):
        chunk = contexts[start : start + batch_size]
        ids, mask = left_pad(chunk, tokenizer.pad_token_id)
        if lean:
            new_tokens, token_logprobs = sample_tokens(
                model, ids.to(device), mask.to(device), sampling, sorted(eos_ids), tokenizer.pad_token_id, with_logprobs,
                share_prefix=share_prefix,
            )
        else:
            out = model.generate(
                synced_gpus=world_size() > 1,
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=sampling.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=sorted(eos_ids),
                return_dict_in_generate=True,
                output_logits=with_logprobs,
                **_sampling_kwargs(sampling),
            )
            new_tokens = out.sequences[:, ids.shape[1] :]
            token_logprobs = _sampled_logprobs(out.logits, new_tokens) if with_logprobs else None
        token_logprobs = token_logprobs.cpu() if token_logprobs is not None else None
        new_tokens = new_tokens.cpu()
        for row, context in enumerate(chunk):
            tokens = new_tokens[row]
            is_eos = torch.tensor([t in eos_ids for t in tokens.tolist()])
            length = int(is_eos.nonzero()[0]) + 1 if is_eos.any() else len(tokens)
            response = tokens[:length]
            results.append(
                Generation(
                    context_ids=context,
                    response_ids=response,
                    logprobs=None if token_logprobs is None else token_logprobs[row, :length],
                    text=tokenizer.decode(response, skip_special_tokens=True).strip(),
                    truncated=not bool(is_eos.any()),
                )
            )
    return results[:real]
