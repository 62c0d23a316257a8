"""The deployed two-agent system (method §11), shared by ``evaluate``, ``chat`` and ``serve``.

1. The conversation agent answers (c0).
2. The feedback agent *always* checks the answer once and writes its JSON verdict.
3. Satisfactory verdict (both predicted flags False) -> c0 is final.
4. Otherwise only the verdict's ``feedback`` string goes to the conversation agent, which revises;
   with ``T_max > 1`` the revision is checked again, up to ``T_max`` feedback rounds.
5. Invalid JSON ends the exchange and the latest answer is final (paper: UNCONFIRMED at inference;
   returning c0 is the natural choice, and the one taken here).

:meth:`TwoAgentSystem.episodes` (evaluation) and :meth:`TwoAgentSystem.respond_batch` (chat,
serve) both run the training protocol, ``rollout.protocol.run_episodes``; a chat request's earlier
turns reach the conversation agent as ``histories``, while the feedback agent sees the latest user
message and the answer to it (its RL state (p, c_t)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from waltzlit.agents.agent import Agent
from waltzlit.agents.messages import Message
from waltzlit.config import RolloutConfig, SamplingConfig
from waltzlit.rollout.protocol import run_episodes
from waltzlit.types import Episode, ParsedFeedback, PromptRecord

CHAT_ROLES = ("system", "user", "assistant")


@dataclass
class Response:
    """What the two-agent system answered to one request.

    Attributes:
        final: the answer returned to the user (c_T).
        responses: c0 .. c_T, the conversation agent's answers in order.
        feedback_raw: the feedback agent's raw output for each round it ran.
        parsed: the parse of each of those outputs.
        truncated: the final answer hit ``max_new_tokens``.
        prompt_tokens: tokens of the conversation agent's first context.
        completion_tokens: tokens of the final answer.
    """

    final: str
    responses: list[str]
    feedback_raw: list[str] = field(default_factory=list)
    parsed: list[ParsedFeedback] = field(default_factory=list)
    truncated: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_truncated: bool = False
    """The chat was longer than the conversation agent's context limit and was cut (its end kept)."""

    @property
    def c0(self) -> str:
        return self.responses[0]

    @property
    def feedback_fired(self) -> bool:
        """The feedback agent flagged a problem and the conversation agent revised."""
        return len(self.responses) > 1

    @property
    def feedback_text(self) -> str:
        """The feedback string(s) the conversation agent received ("" when none fired)."""
        fired = [p.feedback for p in self.parsed[: len(self.responses) - 1]]
        return "\n".join(fired)


def response_of(episode: Episode) -> Response:
    """What a request gets back from its episode of the protocol."""
    own = episode.responses
    return Response(
        final=own[-1].text,
        responses=[turn.text for turn in own],
        feedback_raw=[turn.text for turn in episode.feedbacks],
        parsed=list(episode.parsed),
        truncated=own[-1].truncated,
        prompt_tokens=len(own[0].context_ids),
        completion_tokens=len(own[-1].response_ids),
    )


def normalize_request(request: str | Sequence[Message]) -> list[Message]:
    """A chat as user/assistant messages ending with a user turn; raises ValueError naming the problem.

    A plain string is one user turn. ``system`` messages are dropped: both agents were trained with
    their own system prompts, and a client's system prompt would change the policy being served.
    """
    if isinstance(request, str):
        request = [{"role": "user", "content": request}]
    if not isinstance(request, Sequence) or not request:
        raise ValueError("'messages' must be a non-empty list of {role, content} objects")
    chat: list[Message] = []
    for index, message in enumerate(request):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{index}] must be an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in CHAT_ROLES:
            raise ValueError(f"messages[{index}].role must be one of {list(CHAT_ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{index}].content must be a string")
        if role != "system":
            chat.append({"role": role, "content": content})
    if not chat or chat[-1]["role"] != "user":
        raise ValueError("the last non-system message must have role 'user'")
    return chat


@dataclass
class TwoAgentSystem:
    """A conversation agent and a feedback agent deployed together with adaptive feedback.

    Attributes:
        conversation: answers and revises.
        feedback: checks every answer once per round; None for a conversation agent trained
            alone (single-model RL), which can answer but not collaborate.
        rollout: decoding of both agents, T_max (``max_feedback_rounds``), feedback wording.
    """

    conversation: Agent
    feedback: Agent | None
    rollout: RolloutConfig = field(default_factory=RolloutConfig)

    def _require_feedback(self) -> Agent:
        if self.feedback is None:
            raise ValueError("this system has no feedback agent (a conversation agent trained alone); "
                             "it can answer alone but not run the two-agent protocol")
        return self.feedback

    def episodes(self, records: Sequence[PromptRecord]) -> list[Episode]:
        """The training protocol at inference: invalid JSON stops the episode (final = latest answer)."""
        self._require_feedback()
        return run_episodes(
            self.conversation, self.feedback, records, self.rollout, stop_on_invalid_json=True, with_logprobs=False
        )

    def respond(self, request: str | Sequence[Message], conversation_sampling: SamplingConfig | None = None) -> Response:
        """Answer one prompt or chat (see :func:`normalize_request`)."""
        return self.respond_batch([request], conversation_sampling)[0]

    def respond_batch(
        self, requests: Sequence[str | Sequence[Message]], conversation_sampling: SamplingConfig | None = None
    ) -> list[Response]:
        """Answer several chats, each turn batched over the chats still running.

        Args:
            conversation_sampling: decoding of the conversation agent for these requests (e.g. a
                client's ``max_tokens``); None takes ``rollout.conversation``.
        """
        chats = [normalize_request(r) for r in requests]
        self._require_feedback()
        records = [PromptRecord(prompt=chat[-1]["content"], prompt_harmful=False, source="request") for chat in chats]
        episodes = run_episodes(self.conversation, self.feedback, records, self.rollout, stop_on_invalid_json=True,
                                with_logprobs=False, histories=[chat[:-1] for chat in chats],
                                conversation_sampling=conversation_sampling)
        return [replace(response_of(episode), prompt_truncated=self._too_long(chat))
                for episode, chat in zip(episodes, chats)]

    def _too_long(self, chat: list[Message]) -> bool:
        """Whether the conversation agent's first context for ``chat`` exceeds its limit."""
        agent = self.conversation
        messages = ([{"role": "system", "content": agent.system_prompt}] if agent.system_prompt else []) + chat
        ids = agent.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        return len(ids) > agent.max_prompt_tokens

    def with_sampling(self, **changes) -> SamplingConfig:
        """The conversation agent's sampling with ``changes`` applied (validated by SamplingConfig)."""
        return replace(self.rollout.conversation, **changes)
