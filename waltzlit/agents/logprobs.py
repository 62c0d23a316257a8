"""Log-probs of given response tokens under a causal LM, on the batch layout of ``AgentBatch``."""

from __future__ import annotations

import torch
from torch import nn

from waltzlit.types import AgentBatch


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, ``[B, L]``: the same rule ``generate`` applies, so the
    training forward sees every token at the position it was sampled at."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_logprobs(
    model: nn.Module, batch: AgentBatch, with_entropy: bool = False, entropy_grad: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(y_j | x, y_<j) for every response token, ``[B, T]``, and optionally token entropies.

    The entropies are detached unless ``entropy_grad`` (an entropy bonus in the loss): their graph
    holds another ``[B, T, V]`` tensor.

    Only the last ``T + 1`` positions go through the vocabulary projection (``logits_to_keep``):
    the context's logits are never needed, and the projection dominates memory for large vocabularies.
    """
    width = batch.response_mask.shape[1]
    device = next(model.parameters()).device
    input_ids = batch.input_ids.to(device)
    attention_mask = batch.attention_mask.to(device)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        logits_to_keep=width + 1,
        use_cache=False,
    )
    logits = out.logits[:, :-1].float()  # position P-1+j predicts response token j
    targets = input_ids[:, -width:]
    log_probs = torch.log_softmax(logits, dim=-1)
    token_logprobs = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = -(log_probs.exp() * log_probs).sum(-1)
    return token_logprobs, entropy
