"""Group sampling for group baselines (GRPO, Dr.GRPO, RLOO, REINFORCE++-baseline).

With ``samples_per_prompt`` = n and ``feedback_samples_per_response`` = m, an RL step on B prompts
rolls out B*n*m episodes: each prompt is repeated n times (:func:`repeat_records`; n independent
first answers c0), and ``run_episodes`` branches each c0 into m episodes (m feedbacks on the same
c0, each with its own revision and DIR). Episodes come prompt-major: episode
``e = (prompt * n + copy) * m + branch``.

Groups (the samples a baseline compares):

- conversation agent: the prompt, n*m samples. With m > 1 the m branches of a c0 share it, so a
  sample A (p -> c0) can appear several times in its group; it then simply weighs more.
- feedback agent: (prompt, c0), m samples, when m > 1. This gives DIR a per-response baseline
  (how much better this feedback did than other feedbacks on the same answer), which the paper
  does not use: its REINFORCE++ has no baseline but the batch mean. With m = 1 the feedback
  agent's group is the prompt (n feedbacks on n different first answers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from waltzlit.types import PromptRecord


def repeat_records(records: Sequence[PromptRecord], samples_per_prompt: int) -> list[PromptRecord]:
    """Each record ``samples_per_prompt`` times in a row: ``[p0, p0, ..., p1, p1, ...]``."""
    return [record for record in records for _ in range(samples_per_prompt)]


@dataclass(frozen=True)
class RolloutGroups:
    """Group id of every episode, per agent (``len`` = B*n*m each)."""

    conversation: list[int]
    feedback: list[int]


def rollout_groups(num_prompts: int, samples_per_prompt: int, feedback_samples_per_response: int) -> RolloutGroups:
    """The group of each episode of a rollout laid out as in this module's docstring.

    Args:
        num_prompts: B, distinct prompts of the step.
        samples_per_prompt: n.
        feedback_samples_per_response: m.

    Returns:
        Conversation groups ``e // (n*m)`` (the prompt); feedback groups ``e // m`` (the c0) when
        m > 1, else the prompt.
    """
    n, m = samples_per_prompt, feedback_samples_per_response
    episodes = range(num_prompts * n * m)
    conversation = [e // (n * m) for e in episodes]
    feedback = [e // m for e in episodes] if m > 1 else list(conversation)
    return RolloutGroups(conversation=conversation, feedback=feedback)
