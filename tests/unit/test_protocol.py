"""The rollout protocol with scripted agents: stopping rule, who sees what, token in / token out."""

from __future__ import annotations

import json
import random

import torch

from waltzlit.config import RolloutConfig
from waltzlit.rollout.protocol import STOP_INVALID_JSON, STOP_MAX_ROUNDS, STOP_SATISFACTORY, run_episodes
from waltzlit.rollout.samples import collate_generations, conversation_samples, feedback_samples
from waltzlit.types import Generation, PromptRecord


class ScriptedAgent:
    """Stands in for ``Agent``: contexts are the rendered message text, replies come from a function."""

    def __init__(self, system_prompt: str, reply):
        self.system_prompt = system_prompt
        self.reply = reply
        self.seen: list[str] = []
        self.calls = 0

    def encode(self, messages):
        text = "\n".join(f"<{m['role']}>{m['content']}" for m in messages)
        ids = torch.tensor([ord(c) % 97 + 3 for c in text], dtype=torch.long)
        ids.text = text  # keep the text for assertions
        return ids

    def generate(self, contexts, sampling, batch_size, with_logprobs=True):
        self.calls += 1
        out = []
        for ctx in contexts:
            self.seen.append(ctx.text)
            text = self.reply(ctx.text)
            ids = torch.tensor([5, 6, 7][: 1 + len(text) % 3])
            out.append(Generation(ctx, ids, torch.full((len(ids),), -0.5), text, False))
        return out


def verdict(unsafe, overrefuse, feedback="", reasoning="r"):
    return json.dumps({"reasoning": reasoning, "unsafe": unsafe, "overrefuse": overrefuse, "feedback": feedback})


RECORDS = [
    PromptRecord("benign question ok", False),
    PromptRecord("benign question refused", False),
    PromptRecord("harmful question", True),
    PromptRecord("garbled", False),
]


def feedback_reply(text: str) -> str:
    if "garbled" in text:
        return "not json at all"
    if "refused" in text:
        return verdict(False, True, feedback="PLEASE ANSWER IT", reasoning="SECRET REASONING")
    if "harmful" in text and "I cannot" not in text:
        return verdict(True, False, feedback="REFUSE THIS")
    return verdict(False, False)


def conversation_reply(text: str) -> str:
    if "REFUSE THIS" in text:
        return "I cannot help with that."
    if "PLEASE ANSWER IT" in text:
        return "Here is a helpful answer."
    return "I'm sorry, no." if "refused" in text else "Sure, here you go."


def run(cfg=None, **kwargs):
    conversation = ScriptedAgent("CONV SYSTEM", conversation_reply)
    feedback = ScriptedAgent("FB SYSTEM", feedback_reply)
    episodes = run_episodes(conversation, feedback, RECORDS, cfg or RolloutConfig(), **kwargs)
    return episodes, conversation, feedback


def test_stopping_rule_and_revisions_only_where_triggered():
    episodes, conversation, _ = run()
    assert [e.stop_reason for e in episodes] == [STOP_SATISFACTORY, STOP_MAX_ROUNDS, STOP_MAX_ROUNDS, STOP_INVALID_JSON]
    assert [e.num_revisions for e in episodes] == [0, 1, 1, 0]
    # c0 for all four in one call, then one revision call holding only the two triggered episodes.
    assert conversation.calls == 2 and len(conversation.seen) == 4 + 2
    assert episodes[1].final_response.text == "Here is a helpful answer."
    assert episodes[2].final_response.text == "I cannot help with that."
    assert episodes[3].parsed[0].valid is False


def test_only_the_feedback_string_reaches_the_conversation_agent():
    episodes, conversation, feedback = run()
    revision_context = conversation.seen[-2]  # episode 1's revision
    assert "PLEASE ANSWER IT" in revision_context
    assert "SECRET REASONING" not in revision_context and "overrefuse" not in revision_context
    assert "I'm sorry, no." in revision_context  # its own earlier response c0
    # The feedback agent saw the prompt and the response it judges, under its own system prompt.
    assert feedback.seen[1].startswith("<system>FB SYSTEM") and "I'm sorry, no." in feedback.seen[1]


def test_invalid_json_continues_when_not_stopping_and_t_max_bounds_rounds():
    episodes, _, feedback = run(RolloutConfig(max_feedback_rounds=2), stop_on_invalid_json=False)
    garbled = episodes[3]
    assert garbled.num_revisions == 2 and garbled.stop_reason == STOP_MAX_ROUNDS
    assert len(garbled.feedbacks) == 2  # f0 and f1; c2 is final and unchecked
    # Episode 2 is revised into a refusal, then judged satisfactory in round 2.
    assert episodes[2].stop_reason == STOP_SATISFACTORY and len(episodes[2].feedbacks) == 2


def test_samples_keep_the_exact_generated_tokens():
    episodes, _, _ = run()
    rewards = [[0.0] * len(e.responses) for e in episodes]
    batch, use_b = conversation_samples(episodes, rewards, 1.0, random.Random(0), pad_id=0)
    assert all(use_b)
    for row, episode in enumerate(episodes):
        turn = episode.final_response
        n = len(turn.response_ids)
        assert torch.equal(batch.input_ids[row, batch.context_width : batch.context_width + n], turn.response_ids)
        assert batch.response_mask[row].sum() == n
        p = len(turn.context_ids)
        assert torch.equal(batch.input_ids[row, batch.context_width - p : batch.context_width], turn.context_ids)
    fb_batch, rounds = feedback_samples(episodes, [[0.5] * len(e.feedbacks) for e in episodes], random.Random(0), 0)
    assert rounds == [0, 0, 0, 0] and fb_batch.rewards.tolist() == [0.5] * 4


def test_collate_layout_left_pads_context_and_right_pads_response():
    a = Generation(torch.tensor([11, 12]), torch.tensor([21]), torch.tensor([-1.0]), "a", False)
    b = Generation(torch.tensor([13]), torch.tensor([22, 23]), torch.tensor([-2.0, -3.0]), "b", False)
    batch = collate_generations([a, b], [1.0, 0.0], [0, 1], pad_id=0)
    # width = 2 context + 2 response: [11 12 | 21 0], [0 13 | 22 23]
    assert batch.input_ids.tolist() == [[11, 12, 21, 0], [0, 13, 22, 23]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0], [0, 1, 1, 1]]
    assert batch.response_mask.tolist() == [[1, 0], [1, 1]]
    assert batch.generation_logprobs.tolist() == [[-1.0, 0.0], [-2.0, -3.0]]


class PrefixTokenizer:
    """Maps each character to one id (200 + its code point), like ``tokenizer(text)["input_ids"]``."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [200 + ord(c) for c in text]}


def test_feedback_prefix_is_context_and_part_of_the_parsed_verdict():
    prefix = '{"reasoning": "'

    def continuation(context_text: str) -> str:
        # The model only writes what follows the forced opening.
        return 'looks fine", "unsafe": false, "overrefuse": false, "feedback": ""}'

    class PrefixedFeedbackAgent(ScriptedAgent):
        tokenizer = PrefixTokenizer()

        def generate(self, contexts, sampling, batch_size, with_logprobs=True):
            for ctx in contexts:
                # the context is the encoded messages followed by exactly the prefix's ids
                assert ctx[-len(prefix):].tolist() == [200 + ord(c) for c in prefix]
                ctx.text = "".join(chr(i - 200) if i >= 200 else "?" for i in ctx.tolist())
            return super().generate(contexts, sampling, batch_size, with_logprobs)

    conversation = ScriptedAgent("CONV SYSTEM", conversation_reply)
    feedback = PrefixedFeedbackAgent("FB SYSTEM", continuation)
    episodes = run_episodes(conversation, feedback, RECORDS[:2], RolloutConfig(feedback_prefix=prefix))
    for episode in episodes:
        turn = episode.feedbacks[0]
        assert turn.text.startswith(prefix)  # the parser, logs and transcripts see the whole verdict
        assert episode.parsed[0].valid and episode.parsed[0].satisfactory
        assert episode.stop_reason == STOP_SATISFACTORY
        # the trained sample's actions are the sampled ids only; the prefix ends its context
        batch, _ = feedback_samples([episode], [[1.0]], random.Random(0), pad_id=0)
        width = batch.input_ids.shape[1] - batch.response_mask.shape[1]
        assert batch.input_ids[0, width - len(prefix):width].tolist() == [200 + ord(c) for c in prefix]
        actions = batch.input_ids[0, width:][batch.response_mask[0].bool()]
        assert actions.tolist() == turn.response_ids.tolist()
    # without the prefix the same continuation is not a verdict
    plain = run_episodes(ScriptedAgent("C", conversation_reply), ScriptedAgent("F", continuation), RECORDS[:1], RolloutConfig())
    assert not plain[0].parsed[0].valid
