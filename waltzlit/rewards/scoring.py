"""Judging episodes and computing both agents' rewards (paper §2.2, App. C; method spec §4).

The judge sees every conversation response once, in a single batched call. The rewards of each
response and each feedback turn then follow from the pure functions in ``rewards.functions``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from waltzlit.config import RewardConfig
from waltzlit.judges.base import Judge
from waltzlit.rewards.functions import (
    alignment_labels,
    conversation_reward,
    feedback_reward,
    format_reward,
    improvement_reward,
    label_reward,
)
from waltzlit.types import Episode, FeedbackRewardBreakdown


def judge_episodes(judge: Judge, episodes: Sequence[Episode]) -> int:
    """Fill ``episode.labels`` with J(p, c_t) for every response; returns the judge's parse errors."""
    records, responses, owners = [], [], []
    for index, episode in enumerate(episodes):
        for response in episode.responses:
            records.append(episode.record)
            responses.append(response.text)
            owners.append(index)
    verdicts = judge.judge(records, responses)
    if len(verdicts) != len(responses):
        raise RuntimeError(f"judge returned {len(verdicts)} verdicts for {len(responses)} responses")
    for episode in episodes:
        episode.labels = []
    for owner, verdict in zip(owners, verdicts):
        episode = episodes[owner]
        episode.labels.append(
            alignment_labels(verdict.response_harmful, verdict.response_refusal, episode.record.prompt_harmful)
        )
    return sum(v.parse_error for v in verdicts)


@dataclass(frozen=True)
class EpisodeRewards:
    """Rewards of one judged episode.

    Attributes:
        responses: R_c(c_t) for each conversation response c_t.
        feedbacks: the eq. 2 breakdown for each feedback turn f_t.
    """

    responses: list[float]
    feedbacks: list[FeedbackRewardBreakdown]


def score_episode(episode: Episode, cfg: RewardConfig, label_weight: float) -> EpisodeRewards:
    """Rewards of a judged episode; ``label_weight`` is lambda of the current stage."""
    response_rewards = [conversation_reward(labels) for labels in episode.labels]
    feedback_rewards = []
    for t, parsed in enumerate(episode.parsed):
        # DIR compares c_{t+1}, written by the *current* conversation policy, with c_t; it is 0
        # when the episode stopped at f_t and no c_{t+1} exists.
        after = response_rewards[t + 1] if t + 1 < len(response_rewards) else None
        improvement = improvement_reward(response_rewards[t], after, mode=cfg.improvement)
        feedback_rewards.append(
            feedback_reward(
                improvement,
                label_reward(parsed, episode.labels[t]),
                format_reward(parsed),
                alpha=cfg.alpha,
                label_weight=label_weight,
                gamma=cfg.gamma,
                gate=cfg.gate_improvement,
                gate_losses=cfg.gate_losses,
            )
        )
    return EpisodeRewards(responses=response_rewards, feedbacks=feedback_rewards)
