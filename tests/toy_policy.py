"""Toy stand-ins for ``Agent`` and ``ValueModel`` for the update-loop tests (no transformers).

``BigramAgent`` is a real differentiable policy: the next-token distribution is a learned table
indexed by the previous token, so log-probs of any rows of an ``AgentBatch`` can be computed
independently, exactly as micro-batching needs. ``FixedAgent`` returns given tensors, for losses
computed by hand. ``GradCapture`` is an optimizer that records the gradient at every step.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import torch
from torch import nn

from waltzlit.agents.critic import ValueModel
from waltzlit.types import AgentBatch

VOCAB = 7


class BigramAgent:
    """log pi(y_j) = log_softmax(table[previous token])[y_j]; the reference is a frozen copy."""

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(VOCAB, VOCAB, generator=g, dtype=torch.float64))
        self.reference = (self.table.detach() + 0.3 * torch.randn(VOCAB, VOCAB, generator=g, dtype=torch.float64))

    def _logprobs(self, table: torch.Tensor, batch: AgentBatch, with_entropy: bool):
        width = batch.response_mask.shape[1]
        previous = batch.input_ids[:, -width - 1 : -1]
        targets = batch.input_ids[:, -width:]
        log_probs = torch.log_softmax(table[previous], dim=-1)
        token = log_probs.gather(-1, targets[..., None]).squeeze(-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1) if with_entropy else None
        return token, entropy

    def policy_logprobs(self, batch: AgentBatch, with_entropy: bool = False, entropy_grad: bool = False):
        token, entropy = self._logprobs(self.table, batch, with_entropy)
        if entropy is not None and not entropy_grad:
            entropy = entropy.detach()
        return token, entropy

    def reference_logprobs(self, batch: AgentBatch) -> torch.Tensor:
        return self._logprobs(self.reference, batch, False)[0]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.table]

    def training_mode(self, enabled: bool):
        return contextlib.nullcontext()


class FixedAgent(BigramAgent):
    """Returns the rows of given ``[B, T]`` log-prob and entropy parameters; row ids ride in
    ``input_ids[:, 0]``."""

    def __init__(self, logprobs: torch.Tensor, entropy: torch.Tensor) -> None:
        self.logprobs = nn.Parameter(logprobs.clone())
        self.entropy = nn.Parameter(entropy.clone())

    def policy_logprobs(self, batch: AgentBatch, with_entropy: bool = False, entropy_grad: bool = False):
        rows = batch.input_ids[:, 0]
        entropy = self.entropy[rows] if entropy_grad else self.entropy[rows].detach()
        return self.logprobs[rows], entropy

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [self.logprobs, self.entropy]


class _EmbeddingBackbone(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = nn.Parameter(torch.randn(32, 4, generator=g))  # row ids in column 0 go up to 31

    def forward(self, input_ids, attention_mask, position_ids, use_cache):
        return SimpleNamespace(last_hidden_state=self.embed[input_ids])


def toy_critic(seed: int = 0) -> ValueModel:
    """A ``ValueModel`` whose "backbone" is an embedding table."""
    return ValueModel(_EmbeddingBackbone(seed), hidden_size=4, seed=seed)


def toy_batch(rows: int = 8, width: int = 5, seed: int = 0) -> AgentBatch:
    """``rows`` samples of 2 context tokens and 1..width response tokens, rewards in {0, 1}."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (rows,), generator=g)
    input_ids = torch.randint(0, VOCAB, (rows, 2 + width), generator=g)
    input_ids[:, 0] = torch.arange(rows)  # FixedAgent reads its row here; bigrams never look at column 0
    response_mask = (torch.arange(width)[None, :] < lengths[:, None]).float()
    return AgentBatch(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        response_mask=response_mask,
        rewards=torch.randint(0, 2, (rows,), generator=g).float(),
        generation_logprobs=None,
        group_ids=torch.arange(rows) // 2,
    )


class GradCapture:
    """An "optimizer" that records a copy of every parameter's gradient at each step."""

    def __init__(self, params) -> None:
        self.params = list(params)
        self.steps: list[list[torch.Tensor]] = []

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        self.steps.append([torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in self.params])
