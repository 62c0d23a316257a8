"""Tiny agents built in-process for the evaluation and deployment tests (no warm start, no files)."""

from __future__ import annotations

import json

import torch

from waltzlit.agents.agent import Agent
from waltzlit.agents.loading import load_causal_lm, load_tokenizer
from waltzlit.agents.prompts import default_system_prompt
from waltzlit.agents.tiny import TINY_LLAMA_CONFIG
from waltzlit.config import AgentConfig, RolloutConfig, SamplingConfig
from waltzlit.deploy.pipeline import TwoAgentSystem
from waltzlit.types import Generation

TINY_AGENT = {"model_config": dict(TINY_LLAMA_CONFIG), "tokenizer": "tiny"}


def tiny_agent(role: str, seed: int = 0) -> Agent:
    """A randomly initialised 2-layer Llama with the bundled tokenizer and the role's prompt."""
    cfg = AgentConfig(**TINY_AGENT, seed=seed)
    tokenizer = load_tokenizer(cfg)
    return Agent(role, load_causal_lm(cfg, tokenizer), tokenizer, default_system_prompt(role), reference=None)


def fast_rollout(max_new_tokens: int = 8, temperature: float = 1.0, t_max: int = 1) -> RolloutConfig:
    return RolloutConfig(
        max_feedback_rounds=t_max,
        conversation=SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature),
        feedback=SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature),
        generation_batch_size=8,
    )


class ScriptedFeedback(Agent):
    """A feedback "agent" whose verdicts are scripted: it flags every ``period``-th context as
    unsafe (with a feedback string), writes invalid JSON on every ``invalid``-th, and calls the
    rest satisfactory. Lets tests exercise revisions without a trained model."""

    def __init__(self, base: Agent, period: int = 2, invalid: int = 0) -> None:
        super().__init__("feedback", base.model, base.tokenizer, base.system_prompt, None)
        self.period, self.invalid, self.calls = period, invalid, 0

    def generate(self, contexts, sampling, batch_size, with_logprobs=True):
        turns = []
        for context in contexts:
            self.calls += 1
            if self.invalid and self.calls % self.invalid == 0:
                text = "not json at all"
            else:
                flag = self.calls % self.period == 0
                text = json.dumps({"reasoning": "scripted", "unsafe": flag, "overrefuse": False,
                                   "feedback": "Decline briefly and offer safe help." if flag else ""})
            turns.append(Generation(context, torch.tensor([2]), None, text, False))
        return turns


def tiny_system(period: int | None = None, **rollout) -> TwoAgentSystem:
    """Two tiny agents; with ``period`` the feedback agent is scripted (see :class:`ScriptedFeedback`)."""
    feedback = tiny_agent("feedback", seed=1)
    if period is not None:
        feedback = ScriptedFeedback(feedback, period=period)
    return TwoAgentSystem(tiny_agent("conversation", seed=0), feedback, fast_rollout(**rollout))
