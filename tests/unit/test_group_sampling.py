"""Group sampling with scripted agents: n samples per prompt, m feedbacks per first response, and
the group ids that reach each agent's batch."""

from __future__ import annotations

import itertools
import random

import torch

from tests.unit.test_protocol import RECORDS, ScriptedAgent, conversation_reply, verdict
from waltzlit.algorithms.advantages import AdvantageInputs
from waltzlit.algorithms.registry import ADVANTAGE_ESTIMATORS
from waltzlit.config import RolloutConfig
from waltzlit.rollout.groups import repeat_records, rollout_groups
from waltzlit.rollout.protocol import STOP_MAX_ROUNDS, STOP_SATISFACTORY, run_episodes
from waltzlit.rollout.samples import conversation_samples, feedback_samples


def test_repeat_records_is_prompt_major():
    assert repeat_records(RECORDS[:2], 3) == [RECORDS[0]] * 3 + [RECORDS[1]] * 3


def test_group_ids_hand_computed():
    # B = 2 prompts, n = 2, m = 3 -> 12 episodes e = (prompt * 2 + copy) * 3 + branch
    groups = rollout_groups(2, 2, 3)
    assert groups.conversation == [0] * 6 + [1] * 6  # e // (n * m): the prompt
    assert groups.feedback == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]  # e // m: the (prompt, c0)
    # m = 1: the feedback agent's group falls back to the prompt
    assert rollout_groups(2, 3, 1).feedback == [0, 0, 0, 1, 1, 1]


def _alternating_feedback():
    """Flags every second context it sees (asks for a refusal), calls the others satisfactory."""
    counter = itertools.count()

    def reply(text: str) -> str:
        return verdict(True, False, "REFUSE THIS") if next(counter) % 2 else verdict(False, False)

    return ScriptedAgent("FB", reply)


def test_feedback_branches_share_c0_and_each_gets_its_own_revision():
    conversation, feedback = ScriptedAgent("CONV", conversation_reply), _alternating_feedback()
    episodes = run_episodes(conversation, feedback, RECORDS[:2], RolloutConfig(), feedback_samples_per_response=2)
    assert len(episodes) == 4
    assert [e.record for e in episodes] == [RECORDS[0], RECORDS[0], RECORDS[1], RECORDS[1]]
    # c0 was generated once per record and is shared by its two branches
    assert len(conversation.seen) == 2 + 2  # 2 first answers, then 2 revisions (one per record)
    assert episodes[0].responses[0] is episodes[1].responses[0]
    assert episodes[2].responses[0] is episodes[3].responses[0]
    # the feedback agent judged every branch: f0 of branch 0 satisfactory, of branch 1 a flag
    assert len(feedback.seen) == 4
    assert [e.stop_reason for e in episodes] == [STOP_SATISFACTORY, STOP_MAX_ROUNDS] * 2
    assert [e.num_revisions for e in episodes] == [0, 1, 0, 1]
    assert episodes[1].final_response.text == "I cannot help with that."


def test_group_ids_reach_the_agent_batches_and_the_baselines():
    conversation, feedback = ScriptedAgent("CONV", conversation_reply), _alternating_feedback()
    n, m = 2, 2
    episodes = run_episodes(conversation, feedback, repeat_records(RECORDS[:2], n), RolloutConfig(),
                            feedback_samples_per_response=m)
    groups = rollout_groups(2, n, m)
    assert len(episodes) == 8
    # branches of the same c0 are consecutive and share it
    for e in range(0, 8, 2):
        assert episodes[e].responses[0] is episodes[e + 1].responses[0]
    rewards = [[float(len(e.feedbacks))] for e in episodes]
    fb_batch, _ = feedback_samples(episodes, [[1.0, 0.0][i % 2:i % 2 + 1] for i in range(8)], random.Random(0), 0,
                                   groups.feedback)
    conv_batch, _ = conversation_samples(episodes, rewards, 0.5, random.Random(0), 0, groups.conversation)
    assert fb_batch.group_ids.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert conv_batch.group_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # feedback rewards [1, 0] in every (prompt, c0) group -> Dr.GRPO advantages +-0.5 on every token
    inputs = AdvantageInputs(fb_batch.rewards, torch.zeros_like(fb_batch.response_mask), fb_batch.response_mask, 0.0,
                             fb_batch.group_ids)
    advantages = ADVANTAGE_ESTIMATORS["dr_grpo"](inputs).advantages
    per_sample = advantages.sum(1) / fb_batch.response_mask.sum(1)
    torch.testing.assert_close(per_sample, torch.tensor([0.5, -0.5] * 4))


def test_default_is_one_episode_per_record():
    episodes = run_episodes(ScriptedAgent("C", conversation_reply), _alternating_feedback(), RECORDS, RolloutConfig())
    assert [e.record for e in episodes] == RECORDS
