"""Building both agents in one of two memory modes.

- ``separate`` (the paper): two models, each with its own frozen reference (a copy of its initial
  weights), or, for a LoRA agent, its own base with the adapter disabled.
- ``shared_base``: one frozen base model carrying two LoRA adapters, one per agent. Generation and
  training switch the active adapter; the reference of both agents is the base with adapters
  disabled, so one copy of the base weights serves all four roles (two policies, two references).
  The base may be loaded in 4-bit (QLoRA).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from waltzlit.agents.agent import Agent
from waltzlit.agents.loading import add_lora, count_parameters, frozen_copy, load_causal_lm, load_tokenizer
from waltzlit.agents.logprobs import ForwardSharing
from waltzlit.agents.merged_sampler import MergedSampler
from waltzlit.agents.prompts import default_system_prompt
from waltzlit.config import AgentConfig
from waltzlit.types import PromptRecord

log = logging.getLogger(__name__)

ROLES = ("conversation", "feedback")
MEMORY_MODES = ("separate", "shared_base")


@dataclass
class BuiltAgents:
    """The agents and the modules the LightningModule must own (for devices and checkpoints)."""

    agents: dict[str, Agent]
    policies: nn.ModuleDict
    references: nn.ModuleDict


def forward_sharing(cfg: AgentConfig) -> ForwardSharing:
    """The exact log-prob forward savings an agent's config switches on."""
    return ForwardSharing(
        contexts=cfg.shared_context_forward, prefix=cfg.shared_prefix_forward, buckets=cfg.length_buckets
    )


def merged_sampler(cfg: AgentConfig, role: str, model: nn.Module, adapter_name: str) -> MergedSampler | None:
    """The agent's merged sampling copy when ``merged_lora_sampler`` asks for one; a config it
    cannot serve is an error naming the key."""
    if not cfg.merged_lora_sampler:
        if cfg.sampler_dtype != "same":
            raise ValueError(f"model.{role}.sampler_dtype: {cfg.sampler_dtype!r} needs merged_lora_sampler: true")
        return None
    reason = MergedSampler.supported(model, adapter_name) if cfg.lora is not None else "lora is null"
    if reason is None and cfg.load_in_4bit:
        reason = "the base is 4-bit"
    if reason is not None:
        raise ValueError(f"model.{role}.merged_lora_sampler: needs a LoRA policy on plain Linear layers; {reason}")
    dtype = None if cfg.sampler_dtype == "same" else getattr(torch, cfg.sampler_dtype)
    return MergedSampler(model, adapter_name, dtype)


def _system_prompt(cfg: AgentConfig, role: str) -> str:
    return cfg.system_prompt if cfg.system_prompt is not None else default_system_prompt(role)


def check_shared_base(configs: dict[str, AgentConfig]) -> None:
    """Both agents must be LoRA agents on the same base, tokenizer and loading settings."""
    conversation, feedback = configs["conversation"], configs["feedback"]
    for role, cfg in configs.items():
        if cfg.lora is None:
            raise ValueError(f"model.{role}.lora: memory_mode 'shared_base' needs LoRA adapters on both agents")
        if cfg.warm_start is not None:
            raise ValueError(f"model.{role}.warm_start: not available with memory_mode 'shared_base' (one base)")
    for key in ("model", "model_config", "tokenizer", "dtype", "load_in_4bit", "seed", "trust_remote_code"):
        if getattr(conversation, key) != getattr(feedback, key):
            raise ValueError(
                f"model.conversation.{key} / model.feedback.{key}: must be equal with memory_mode 'shared_base' "
                f"(got {getattr(conversation, key)!r} and {getattr(feedback, key)!r})"
            )


def build_agents(
    configs: dict[str, AgentConfig],
    memory_mode: str,
    needs_reference: bool,
    max_prompt_tokens: int,
    warm_start_records: Callable[[], list[PromptRecord]],
) -> BuiltAgents:
    """Load tokenizers and models, warm-start, add adapters and references, wrap as ``Agent``s.

    ``configs`` holds the agents to build: both roles, or the conversation agent alone (single-agent
    mode, where the feedback agent is never loaded).
    """
    if memory_mode == "shared_base":
        return _build_shared(configs, max_prompt_tokens)
    agents, policies, references = {}, {}, {}
    for role in [role for role in ROLES if role in configs]:
        cfg = configs[role]
        tokenizer = load_tokenizer(cfg)
        model = load_causal_lm(cfg, tokenizer)
        system_prompt = _system_prompt(cfg, role)
        if cfg.warm_start is not None:
            from waltzlit.agents.tiny import warm_start

            warm_start(model, tokenizer, role, system_prompt, warm_start_records(), cfg.warm_start)
        reference = None
        if cfg.lora is not None:
            model = add_lora(model, cfg.lora)  # reference: the same base with the adapter disabled
        elif needs_reference:
            reference = references[role] = frozen_copy(model)
        policies[role] = model
        agents[role] = Agent(role, model, tokenizer, system_prompt, reference, max_prompt_tokens=max_prompt_tokens,
                             sharing=forward_sharing(cfg), sampler=merged_sampler(cfg, role, model, "default"))
        _log_size(role, agents[role])
    return BuiltAgents(agents, nn.ModuleDict(policies), nn.ModuleDict(references))


def _build_shared(configs: dict[str, AgentConfig], max_prompt_tokens: int) -> BuiltAgents:
    check_shared_base(configs)
    cfg = configs["conversation"]
    tokenizer = load_tokenizer(cfg)
    model = add_lora(load_causal_lm(cfg, tokenizer), cfg.lora, adapter_name="conversation")
    add_lora(model, configs["feedback"].lora, adapter_name="feedback")
    agents = {
        role: Agent(
            role,
            model,
            tokenizer,
            _system_prompt(configs[role], role),
            reference=None,
            max_prompt_tokens=max_prompt_tokens,
            adapter_name=role,
            sharing=forward_sharing(configs[role]),
            sampler=merged_sampler(configs[role], role, model, role),
        )
        for role in ROLES
    }
    for role in ROLES:
        _log_size(role, agents[role])
    return BuiltAgents(agents, nn.ModuleDict({"shared": model}), nn.ModuleDict())


def _log_size(role: str, agent: Agent) -> None:
    trainable = sum(p.numel() for p in agent.trainable_parameters())
    log.info("%s agent: %d trainable of %d parameters", role, trainable, count_parameters(agent.model)[1])
