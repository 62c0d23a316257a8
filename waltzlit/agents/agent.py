"""An agent: a causal LM with its tokenizer, system prompt and reference policy.

The agent renders chat contexts to token ids, samples turns (token in, token out), and computes
log-probs of given responses under its current policy or its reference. It holds no training
state: the optimizer belongs to the LightningModule.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from waltzlit.agents.generation import generate_turns
from waltzlit.agents.logprobs import NO_SHARING, ForwardSharing, response_logprobs
from waltzlit.agents.merged_sampler import MergedSampler
from waltzlit.agents.messages import Message
from waltzlit.config import SamplingConfig
from waltzlit.types import AgentBatch, Generation


@dataclass
class Agent:
    """One of the two WaltzRL agents.

    Attributes:
        role: "conversation" or "feedback".
        model: the trained policy (a peft model when LoRA is used).
        tokenizer: left-padding tokenizer with a chat template.
        system_prompt: the role's system prompt.
        reference: a frozen copy of the initial policy, or None when the reference is ``model``
            with its LoRA adapters disabled (one copy of the base weights serves both).
        max_prompt_tokens: contexts longer than this keep their last tokens.
        adapter_name: the agent's LoRA adapter when several agents share one base model; it is
            made active before every use of ``model``.
        sharing: the exact savings its log-prob forwards may use (shared contexts, a shared
            prefix, length buckets; ``agents/logprobs.py``), from ``AgentConfig``.
        sampler: a copy of a LoRA policy with the adapter merged, which samples in its place
            (``AgentConfig.merged_lora_sampler``, ``agents/merged_sampler.py``); None samples from
            ``model``.
    """

    role: str
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    system_prompt: str
    reference: nn.Module | None
    max_prompt_tokens: int = 4096
    adapter_name: str | None = None
    sharing: ForwardSharing = NO_SHARING
    sampler: MergedSampler | None = None

    @property
    def uses_lora(self) -> bool:
        return hasattr(self.model, "disable_adapter")

    def activate(self) -> None:
        """Make this agent's adapter the active one on a shared base (no-op otherwise)."""
        if self.adapter_name is not None and self.model.active_adapter != self.adapter_name:
            self.model.set_adapter(self.adapter_name)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters this agent's optimizer updates: its own adapter's on a shared base
        (peft flips ``requires_grad`` when switching adapters, so names decide), else those
        requiring gradients."""
        if self.adapter_name is not None:
            tag = f".{self.adapter_name}."
            return [p for n, p in self.model.named_parameters() if tag in n and "lora_" in n]
        return [p for p in self.model.parameters() if p.requires_grad]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, messages: list[Message]) -> torch.Tensor:
        """Token ids of the chat ``messages`` followed by the assistant generation prompt, ``[P]``."""
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        ids = torch.tensor(ids, dtype=torch.long)
        return ids[-self.max_prompt_tokens :]

    @torch.no_grad()
    def generate(
        self, contexts: list[torch.Tensor], sampling: SamplingConfig, batch_size: int, with_logprobs: bool = True
    ) -> list[Generation]:
        """Sample one turn per context, in micro-batches of ``batch_size``."""
        self.activate()
        model = self.sampler.current() if self.sampler is not None else self.model
        return generate_turns(model, self.tokenizer, contexts, sampling, batch_size, with_logprobs,
                              share_prefix=self.sharing.prefix)

    def policy_logprobs(self, batch: AgentBatch, with_entropy: bool = False, entropy_grad: bool = False):
        """log pi_theta of the batch's response tokens ``[B, T]`` (and token entropies ``[B, T]``,
        with gradient when ``entropy_grad``)."""
        self.activate()
        return response_logprobs(
            self.model, batch, with_entropy=with_entropy, entropy_grad=entropy_grad, sharing=self.sharing
        )

    @torch.no_grad()
    def reference_logprobs(self, batch: AgentBatch) -> torch.Tensor:
        """log pi_ref of the batch's response tokens, ``[B, T]``."""
        if self.reference is not None:
            return response_logprobs(self.reference, batch, sharing=self.sharing)[0]
        with self._adapters_disabled():
            return response_logprobs(self.model, batch, sharing=self.sharing)[0]

    def _adapters_disabled(self):
        if not self.uses_lora:
            raise RuntimeError(f"{self.role} agent has neither a reference copy nor LoRA adapters to disable")
        return self.model.disable_adapter()

    @contextlib.contextmanager
    def training_mode(self, enabled: bool):
        """Context that puts the policy in train mode (LoRA dropout on) and restores eval mode."""
        self.model.train(enabled)
        try:
            yield
        finally:
            self.model.eval()
