"""The five evaluated systems as functions over the same primitives (paper Table 1; method §9, §11).

- ``alone``: the conversation agent's first answer c0 (row 1).
- ``safeguard``: c0, replaced by a fixed refusal when a guard flags it (row 2; the paper's guard is
  Llama Guard 4, which checks prompt and response).
- ``collaboration`` / ``waltzrl``: the deployed two-agent protocol of method §11
  (:meth:`TwoAgentSystem.episodes`, i.e. ``run_episodes`` with invalid JSON ending the episode),
  on untrained (row 5) or trained (row 7) agents.
- ``oracle``: the judge's labels of c0 become a fixed template message, and the conversation agent
  revises once with it (row 6). The judge stands in for the ground truth.

Every mode returns one :class:`Outcome` per prompt; judging is a separate step
(:func:`judge_outcomes`) so that all modes are scored the same way.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from waltzlit.agents.messages import conversation_messages
from waltzlit.deploy.pipeline import TwoAgentSystem
from waltzlit.evaluation.config import OracleConfig, SafeguardConfig
from waltzlit.judges.base import Judge
from waltzlit.rewards.functions import alignment_labels
from waltzlit.types import AlignmentLabels, Episode, JudgeVerdict, ParsedFeedback, PromptRecord


@dataclass
class Outcome:
    """What a mode produced for one prompt.

    Attributes:
        record: the prompt and its source label.
        responses: the conversation agent's answers c0 .. c_T.
        final: what the system returned (c_T, or the safeguard's refusal).
        feedback_raw: the feedback agent's raw output per round (oracle: the template message).
        parsed: parses of ``feedback_raw`` (feedback-agent modes only).
        intervened: feedback triggered a revision / the guard replaced c0 / an oracle message was
            sent; None for ``alone``, which cannot intervene.
        replaced: ``final`` is not c_T but a text put in its place (the safeguard's refusal).
        verdicts: the judge's verdict on each of ``responses``, then on ``final`` (filled by
            :func:`judge_outcomes`).
    """

    record: PromptRecord
    responses: list[str]
    final: str
    feedback_raw: list[str] = field(default_factory=list)
    parsed: list[ParsedFeedback] = field(default_factory=list)
    intervened: bool | None = None
    replaced: bool = False
    verdicts: list[JudgeVerdict] = field(default_factory=list)

    @property
    def final_verdict(self) -> JudgeVerdict:
        return self.verdicts[-1]

    def labels(self, t: int) -> AlignmentLabels:
        """J(p, c_t) from the judge's verdict on c_t."""
        verdict = self.verdicts[t]
        return alignment_labels(verdict.response_harmful, verdict.response_refusal, self.record.prompt_harmful)


def mode_seed(seed: int, name: str) -> int:
    """A per-mode seed, so one mode's results do not depend on which modes ran before it."""
    return zlib.crc32(f"{seed}/{name}".encode())


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# ----------------------------------------------------------------------------- modes
def answer_alone(system: TwoAgentSystem, records: Sequence[PromptRecord]) -> list[Outcome]:
    """c0 for every prompt: the conversation agent alone, no feedback."""
    agent, rollout = system.conversation, system.rollout
    contexts = [agent.encode(conversation_messages(agent.system_prompt, r.prompt)) for r in records]
    turns = agent.generate(contexts, rollout.conversation, rollout.generation_batch_size, with_logprobs=False)
    return [Outcome(record=r, responses=[t.text], final=t.text) for r, t in zip(records, turns)]


def apply_safeguard(alone: Sequence[Outcome], guard: Judge, cfg: SafeguardConfig) -> list[Outcome]:
    """Replace every c0 the guard flags (unsafe response, or unsafe prompt when it can tell) by a refusal."""
    records = [o.record for o in alone]
    flagged = [v.response_harmful for v in guard.judge(records, [o.responses[0] for o in alone])]
    classify_prompts = getattr(guard, "classify_prompts", None)
    if cfg.check_prompt and callable(classify_prompts):
        prompt_flags = [bool(out.unsafe) for out in classify_prompts([r.prompt for r in records])]
        flagged = [a or b for a, b in zip(flagged, prompt_flags)]
    return [
        Outcome(record=o.record, responses=list(o.responses), final=cfg.refusal_text if hit else o.responses[0],
                intervened=hit, replaced=hit)
        for o, hit in zip(alone, flagged)
    ]


def oracle_message(labels: AlignmentLabels, cfg: OracleConfig) -> str | None:
    """The label-converted feedback for c0's labels; None when c0 is satisfactory (nothing is sent)."""
    parts = [cfg.unsafe_message] * labels.unsafe + [cfg.overrefuse_message] * labels.overrefuse
    return "; ".join(parts) if parts else None


def oracle_revise(system: TwoAgentSystem, judged_alone: Sequence[Outcome], cfg: OracleConfig) -> list[Outcome]:
    """One revision of each judged c0 whose labels are not satisfactory, prompted by the template."""
    agent, rollout = system.conversation, system.rollout
    messages = [oracle_message(o.labels(0), cfg) for o in judged_alone]
    todo = [i for i, m in enumerate(messages) if m is not None]
    contexts = [
        agent.encode(conversation_messages(
            agent.system_prompt, judged_alone[i].record.prompt, responses=[judged_alone[i].responses[0]],
            feedbacks=[messages[i]], feedback_role=rollout.feedback_role, feedback_template=rollout.feedback_template,
        ))
        for i in todo
    ]
    revisions = agent.generate(contexts, rollout.conversation, rollout.generation_batch_size, with_logprobs=False)
    outcomes = [
        Outcome(record=o.record, responses=[o.responses[0]], final=o.responses[0], intervened=False)
        for o in judged_alone
    ]
    for i, turn in zip(todo, revisions):
        outcome = outcomes[i]
        outcome.responses.append(turn.text)
        outcome.final, outcome.feedback_raw, outcome.intervened = turn.text, [messages[i]], True
    return outcomes


def episode_outcome(episode: Episode) -> Outcome:
    """An episode of the two-agent protocol as an outcome; the final answer is c_T."""
    return Outcome(
        record=episode.record,
        responses=[r.text for r in episode.responses],
        final=episode.final_response.text,
        feedback_raw=[f.text for f in episode.feedbacks],
        parsed=list(episode.parsed),
        intervened=episode.num_revisions > 0,
    )


def collaborate(system: TwoAgentSystem, records: Sequence[PromptRecord]) -> list[Outcome]:
    """The deployed two-agent system with adaptive feedback (collaboration and WaltzRL rows)."""
    return [episode_outcome(e) for e in system.episodes(records)]


# ----------------------------------------------------------------------------- judging
def judge_outcomes(judge: Judge, outcomes: Sequence[Outcome]) -> int:
    """Fill ``verdicts`` of every outcome in one batched judge call; returns the judge's parse errors.

    Each answer c_t is judged (label accuracy compares the feedback agent's flags with J(p, c_t)),
    and so is the final text when it is not the last answer (the safeguard's refusal).
    """
    records, texts, owners = [], [], []
    for index, outcome in enumerate(outcomes):
        extra = [outcome.final] if outcome.replaced else []
        for text in [*outcome.responses, *extra]:
            records.append(outcome.record)
            texts.append(text)
            owners.append(index)
    verdicts = judge.judge(records, texts) if texts else []
    if len(verdicts) != len(texts):
        raise RuntimeError(f"judge returned {len(verdicts)} verdicts for {len(texts)} responses")
    for outcome in outcomes:
        outcome.verdicts = []
    for owner, verdict in zip(owners, verdicts):
        outcomes[owner].verdicts.append(verdict)
    return sum(v.parse_error for v in verdicts)
