"""Reduction of episodes to single-agent samples (paper §2.3-(II); method spec §5).

Each agent's sample is a plain (context -> its own response) pair; the other agent's text only
ever appears inside the context, so no interior loss masks are needed.

- Feedback agent: one sample per episode, the feedback turn f_t of a uniformly drawn round t.
- Conversation agent: one sample per episode, A = (p -> c0) with R_c(c0), or B = (p, c0, f0, ...
  -> c_T) with R_c(c_T), B drawn with probability ``sample_b_probability``. With no revision B
  reduces to A's pair.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from waltzlit.types import AgentBatch, Episode, Generation


def collate_generations(
    turns: Sequence[Generation], rewards: Sequence[float], group_ids: Sequence[int], pad_id: int
) -> AgentBatch:
    """Pad turns as ``[pad.. context][response ..pad]`` (see ``AgentBatch``)."""
    context_width = max(len(t.context_ids) for t in turns)
    response_width = max(len(t.response_ids) for t in turns)
    rows = len(turns)
    input_ids = torch.full((rows, context_width + response_width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    response_mask = torch.zeros((rows, response_width), dtype=torch.float32)
    have_logprobs = all(t.logprobs is not None for t in turns)
    generation_logprobs = torch.zeros((rows, response_width)) if have_logprobs else None
    for row, turn in enumerate(turns):
        p, n = len(turn.context_ids), len(turn.response_ids)
        input_ids[row, context_width - p : context_width] = turn.context_ids
        input_ids[row, context_width : context_width + n] = turn.response_ids
        attention_mask[row, context_width - p : context_width + n] = 1
        response_mask[row, :n] = 1.0
        if have_logprobs:
            generation_logprobs[row, :n] = turn.logprobs
    return AgentBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        rewards=torch.tensor(rewards, dtype=torch.float32),
        generation_logprobs=generation_logprobs,
        group_ids=torch.tensor(group_ids, dtype=torch.long),
    )


def feedback_samples(
    episodes: Sequence[Episode],
    round_rewards: Sequence[Sequence[float]],
    rng: random.Random,
    pad_id: int,
    group_ids: Sequence[int] | None = None,
) -> tuple[AgentBatch, list[int]]:
    """One feedback sample per episode; returns the batch and the round drawn for each episode.

    Args:
        round_rewards: ``round_rewards[e][t]`` is the eq. 2 reward of feedback turn t of episode e.
        group_ids: group of each episode for group baselines (``rollout.groups``); default: each
            episode its own group.
    """
    rounds = [rng.randrange(len(e.feedbacks)) for e in episodes]
    turns = [e.feedbacks[t] for e, t in zip(episodes, rounds)]
    rewards = [round_rewards[i][t] for i, t in enumerate(rounds)]
    groups = list(range(len(episodes))) if group_ids is None else list(group_ids)
    return collate_generations(turns, rewards, groups, pad_id), rounds


def conversation_samples(
    episodes: Sequence[Episode],
    response_rewards: Sequence[Sequence[float]],
    sample_b_probability: float,
    rng: random.Random,
    pad_id: int,
    group_ids: Sequence[int] | None = None,
) -> tuple[AgentBatch, list[bool]]:
    """One conversation sample per episode; returns the batch and whether each is sample B.

    Args:
        response_rewards: ``response_rewards[e][t]`` is R_c of response c_t of episode e.
        group_ids: as for ``feedback_samples``.
    """
    use_b = [rng.random() < sample_b_probability for _ in episodes]
    turns = [e.responses[-1] if b else e.responses[0] for e, b in zip(episodes, use_b)]
    rewards = [r[-1] if b else r[0] for r, b in zip(response_rewards, use_b)]
    groups = list(range(len(episodes))) if group_ids is None else list(group_ids)
    return collate_generations(turns, rewards, groups, pad_id), use_b
