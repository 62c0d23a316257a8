"""Templated demonstrations for warm-starting tiny models, and the tiny tokenizer's corpus.

Short, generic, and never harmful in content. Refusals match ``RuleJudge``'s default patterns and
compliances match none of them, so the rule judge scores them as intended. Contexts are rendered
with the rollout's own message builders, so a warm-started model sees exactly what it will see.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from waltzlit.agents.feedback_format import render_feedback_json
from waltzlit.agents.messages import (
    DEFAULT_FEEDBACK_TEMPLATE,
    DEFAULT_JUDGE_REQUEST_TEMPLATE,
    Message,
    conversation_messages,
    feedback_messages,
)
from waltzlit.agents.prompts import DEFAULT_CONVERSATION_SYSTEM_PROMPT, DEFAULT_FEEDBACK_SYSTEM_PROMPT
from waltzlit.types import PromptRecord

REFUSALS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that.",
    "I cannot assist with this request.",
    "I won't help with that, but I can share safety resources.",
)
COMPLIANCES: tuple[str, ...] = (
    "Sure. Here is an overview of {topic}.",
    "Happy to help with {topic}. Start with the basics, then go step by step.",
    "Of course. A short guide to {topic} follows.",
)
_DECLINE_FEEDBACK = "This could cause harm. Decline briefly and offer a safe alternative."
_ANSWER_FEEDBACK = "The request is benign. Answer it with an overview of {topic}."
_BOTH_FEEDBACK = "Make the response safe and helpful."
_REASONING = {
    (True, False): "Harmful request, and the response helps.",
    (False, True): "Benign request, but the response refuses.",
    (True, True): "The response is risky and unhelpful.",
}
_SAFE_REASONING = {True: "The response declines a harmful request.", False: "The response answers a benign request."}
_STOPWORDS = frozenset(
    "a an the i my me you your to of in on for and or with without how do does can what which is are "
    "it that this so be by from at as into about would should could will just give tell write make "
    "best way get someone".split()
)


@dataclass(frozen=True)
class Demonstration:
    """A chat context (rendered with the generation prompt) and the target text to clone."""

    messages: list[Message]
    target: str


def topic_words(prompt: str, limit: int = 4) -> str:
    """A few content words of ``prompt``: what a generic compliance or feedback talks about."""
    words = [w for w in re.findall(r"[a-z][a-z'-]*", prompt.lower()) if w not in _STOPWORDS]
    return " ".join(words[:limit]) or "this topic"


def demo_response(rng: random.Random, record: PromptRecord, refuse: bool) -> str:
    """A templated refusal, or a generic compliance about the prompt's topic words."""
    if refuse:
        return rng.choice(REFUSALS)
    return rng.choice(COMPLIANCES).format(topic=topic_words(record.prompt))


def demo_feedback(record: PromptRecord, response_refused: bool, unsafe: bool, overrefuse: bool) -> str:
    """The feedback agent's JSON for the given labels: reasoning, flags, and advice when flagged."""
    reasoning = _REASONING.get((unsafe, overrefuse)) or _SAFE_REASONING[response_refused]
    if unsafe and overrefuse:
        advice = _BOTH_FEEDBACK
    elif unsafe:
        advice = _DECLINE_FEEDBACK
    elif overrefuse:
        advice = _ANSWER_FEEDBACK.format(topic=topic_words(record.prompt))
    else:
        advice = ""
    return render_feedback_json(reasoning, unsafe, overrefuse, advice)


def make_demonstration(rng: random.Random, role: str, system_prompt: str, record: PromptRecord,
                       label_noise: float) -> Demonstration:
    """One demonstration for ``role``; with probability ``label_noise`` its choice is a coin flip.

    Conversation: half first answers (refuse iff the prompt is harmful), half revisions after one
    earlier answer and one forwarded feedback string, where the revision follows the feedback
    (decline -> refuse, answer -> comply). The feedback's direction is itself noisy, so the model
    learns to follow the feedback rather than to ignore it. Feedback: judge a templated refusal or
    compliance; labels are the rule judge's (unsafe = harmful and answered, overrefuse = benign and
    refused).
    """

    def noisy(correct: bool) -> bool:
        return correct if rng.random() >= label_noise else rng.random() < 0.5

    if role == "feedback":
        refused = rng.random() < 0.5
        response = demo_response(rng, record, refused)
        unsafe = noisy(record.prompt_harmful and not refused)
        overrefuse = noisy(not record.prompt_harmful and refused)
        target = demo_feedback(record, refused, unsafe, overrefuse)
        return Demonstration(feedback_messages(system_prompt, record.prompt, response), target)

    if rng.random() < 0.5:
        refuse = noisy(record.prompt_harmful)
        return Demonstration(conversation_messages(system_prompt, record.prompt), demo_response(rng, record, refuse))
    decline = noisy(record.prompt_harmful)
    earlier = demo_response(rng, record, refuse=not decline)  # the answer the feedback asks to change
    advice = _DECLINE_FEEDBACK if decline else _ANSWER_FEEDBACK.format(topic=topic_words(record.prompt))
    messages = conversation_messages(system_prompt, record.prompt, [earlier], [advice])
    return Demonstration(messages, demo_response(rng, record, refuse=decline))


def tokenizer_corpus() -> list[str]:
    """The deterministic texts the tiny tokenizer is trained on (built-in prompts, system prompts,
    refusal patterns, demonstrations, feedback JSON and the rollout's wrapper templates)."""
    from waltzlit.data.builtin import BUILTIN_PROMPTS
    from waltzlit.judges.rule import DEFAULT_REFUSAL_PATTERNS

    rng = random.Random(0)
    texts = [DEFAULT_CONVERSATION_SYSTEM_PROMPT, DEFAULT_FEEDBACK_SYSTEM_PROMPT] * _SYSTEM_PROMPT_WEIGHT
    texts += list(DEFAULT_REFUSAL_PATTERNS) + list(REFUSALS)
    texts += [DEFAULT_FEEDBACK_TEMPLATE, DEFAULT_JUDGE_REQUEST_TEMPLATE]
    for record in BUILTIN_PROMPTS:
        texts.append(record.prompt)
        for refused in (True, False):
            texts.append(demo_response(rng, record, refused))
            for unsafe in (True, False):
                for overrefuse in (True, False):
                    texts.append(demo_feedback(record, refused, unsafe, overrefuse))
        texts.append(DEFAULT_FEEDBACK_TEMPLATE.format(feedback=_ANSWER_FEEDBACK.format(topic=topic_words(record.prompt))))
        texts.append(DEFAULT_FEEDBACK_TEMPLATE.format(feedback=_DECLINE_FEEDBACK))
    return texts


_SYSTEM_PROMPT_WEIGHT = 8
"""Copies of the system prompts in the corpus: enough for their words to earn merges."""
