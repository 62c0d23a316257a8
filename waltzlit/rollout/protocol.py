"""The WaltzRL collaborative rollout (paper §2.1, §2.3-(I); method spec §2).

For a batch of prompts: the conversation agent answers (c0) -> the feedback agent writes its JSON
verdict on the latest answer -> the episode stops when the verdict is "satisfactory" (both of the
agent's *own* predicted flags False), when the JSON is invalid (early in training), or when T_max
feedback rounds are used -> otherwise only the ``feedback`` string reaches the conversation
agent, which revises. Every turn is generated batched over the episodes still running, so a
revision is generated only for the episodes whose feedback triggered one.

Without a feedback agent (single-agent mode, the paper's "single-model RL" baseline) an episode
is the first answer alone, (p, c0).

This is the one protocol: training, ``evaluate``, ``chat`` and ``serve`` all run
:func:`run_episodes` (deployment adds earlier chat turns through ``histories``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from waltzlit.agents.agent import Agent
from waltzlit.agents.feedback_format import parse_feedback
from waltzlit.agents.messages import Message, conversation_messages, feedback_messages
from waltzlit.config import RolloutConfig, SamplingConfig
from waltzlit.timing import StageTimer, count_tokens, timed
from waltzlit.types import Episode, Generation, PromptRecord

STOP_SATISFACTORY = "satisfactory"
STOP_INVALID_JSON = "invalid_json"
STOP_MAX_ROUNDS = "max_rounds"
STOP_SINGLE_AGENT = "single_agent"


def _conversation_context(agent: Agent, episode: Episode, cfg: RolloutConfig, history: Sequence[Message] = ()):
    """The conversation agent's context: system prompt, ``history`` (earlier chat turns, deployment
    only), the prompt, then each earlier answer c_t and the feedback string it received."""
    feedback_texts = [
        parsed.feedback if parsed.valid else raw.text for parsed, raw in zip(episode.parsed, episode.feedbacks)
    ]
    messages = conversation_messages(
        agent.system_prompt,
        episode.record.prompt,
        responses=[r.text for r in episode.responses],
        feedbacks=feedback_texts,
        feedback_role=cfg.feedback_role,
        feedback_template=cfg.feedback_template,
    )
    if history:
        head = 1 if agent.system_prompt else 0
        messages = messages[:head] + list(history) + messages[head:]
    return agent.encode(messages)


def _count(timer: StageTimer | None, stage: str, turns: Sequence[Generation]) -> None:
    count_tokens(timer, stage, prompt=sum(len(t.context_ids) for t in turns),
                 generated=sum(len(t.response_ids) for t in turns))


def feedback_turns(
    agent: Agent, pairs: Sequence[tuple[str, str]], cfg: RolloutConfig, with_logprobs: bool = True
) -> list[Generation]:
    """The feedback agent's verdict on each (prompt, response) pair, one batched generation.

    With ``cfg.feedback_prefix`` the prefix's tokens end each context (they are conditioned on,
    never sampled, so never trained on) and each returned ``text`` starts with the prefix, so the
    parser, the logs and the forwarded raw text see the whole verdict.
    """
    contexts = [agent.encode(feedback_messages(agent.system_prompt, prompt, response)) for prompt, response in pairs]
    prefix = cfg.feedback_prefix
    if prefix:
        prefix_ids = torch.tensor(agent.tokenizer(prefix, add_special_tokens=False)["input_ids"], dtype=torch.long)
        contexts = [torch.cat([context, prefix_ids]) for context in contexts]
    turns = agent.generate(contexts, cfg.feedback, cfg.generation_batch_size, with_logprobs)
    if prefix:
        turns = [dataclasses.replace(turn, text=prefix + turn.text) for turn in turns]
    return turns


def run_episodes(
    conversation: Agent,
    feedback: Agent | None,
    records: Sequence[PromptRecord],
    cfg: RolloutConfig,
    stop_on_invalid_json: bool = True,
    with_logprobs: bool = True,
    feedback_samples_per_response: int = 1,
    timer: StageTimer | None = None,
    histories: Sequence[Sequence[Message]] | None = None,
    conversation_sampling: SamplingConfig | None = None,
) -> list[Episode]:
    """Roll out one episode per prompt record (``m`` per record with feedback branching).

    Args:
        feedback: the feedback agent; None rolls out c0 only (single-agent mode).
        stop_on_invalid_json: end an episode whose feedback JSON is invalid (paper: early in
            training). When False the raw feedback text is forwarded and the episode continues.
        with_logprobs: record generation log-probs in every ``Generation``.
        feedback_samples_per_response: m. After c0, each episode branches into m episodes that
            share c0; each gets its own feedback, revision and DIR (group baselines for the
            feedback agent; see ``waltzlit.rollout.groups``).
        timer: accumulates the stages rollout/c0, rollout/feedback and rollout/revision.
        histories: per record, the chat turns before its prompt (user/assistant messages), which
            the conversation agent sees and the feedback agent does not (it judges (p, c_t), its RL
            state); None: single-turn prompts, as in training.
        conversation_sampling: the conversation agent's decoding for this call (e.g. a client's
            ``max_tokens``); None takes ``cfg.conversation``.

    Returns:
        Episodes in the order of ``records`` (record i's m branches at i*m .. i*m + m - 1), with
        responses, feedbacks, parses and a stop reason; ``labels`` is left empty for judging.
    """
    episodes = [Episode(record=record) for record in records]
    sampling = conversation_sampling or cfg.conversation
    history = list(histories) if histories is not None else [()] * len(records)
    if len(history) != len(records):
        raise ValueError(f"need one history per record, got {len(history)} and {len(records)}")
    with timed(timer, "rollout/c0"):  # the stages include rendering and tokenising their contexts
        contexts = [_conversation_context(conversation, e, cfg, h) for e, h in zip(episodes, history)]
        turns = conversation.generate(contexts, sampling, cfg.generation_batch_size, with_logprobs)
    _count(timer, "rollout/c0", turns)
    for episode, turn in zip(episodes, turns):
        episode.responses.append(turn)
    if feedback is None:
        for episode in episodes:
            episode.stop_reason = STOP_SINGLE_AGENT
        return episodes
    branches = feedback_samples_per_response
    if branches > 1:  # m copies sharing the c0 Generation, each with its own lists from here on
        episodes = [Episode(record=e.record, responses=[e.responses[0]]) for e in episodes for _ in range(branches)]
        history = [h for h in history for _ in range(branches)]
    running = list(range(len(episodes)))

    for round_index in range(cfg.max_feedback_rounds):
        with timed(timer, "rollout/feedback"):
            pairs = [(episodes[i].record.prompt, episodes[i].responses[-1].text) for i in running]
            turns = feedback_turns(feedback, pairs, cfg, with_logprobs)
        _count(timer, "rollout/feedback", turns)
        triggered = []
        for i, turn in zip(running, turns):
            parsed = parse_feedback(turn.text)
            episodes[i].feedbacks.append(turn)
            episodes[i].parsed.append(parsed)
            if parsed.satisfactory:
                episodes[i].stop_reason = STOP_SATISFACTORY
            elif not parsed.valid and stop_on_invalid_json:
                episodes[i].stop_reason = STOP_INVALID_JSON
            else:
                triggered.append(i)
        # No early exit when nothing triggered: under sharding every rank must join each generate
        # call; an empty one costs nothing on a single process.
        with timed(timer, "rollout/revision"):
            contexts = [_conversation_context(conversation, episodes[i], cfg, history[i]) for i in triggered]
            revisions = conversation.generate(contexts, sampling, cfg.generation_batch_size, with_logprobs)
        _count(timer, "rollout/revision", revisions)
        for i, turn in zip(triggered, revisions):
            episodes[i].responses.append(turn)
        running = triggered
    for i in running:
        # T_max feedback rounds used; the last revision is final and is not checked again.
        episodes[i].stop_reason = STOP_MAX_ROUNDS
    return episodes
