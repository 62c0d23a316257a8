"""Typed hand-offs between the stages of one WaltzRL step.

The step is: prompts -> rollout (``Episode``) -> judge (``JudgeVerdict`` -> ``AlignmentLabels``)
-> rewards (``FeedbackRewardBreakdown``) -> per-agent samples (``AgentBatch``) -> update
(``LossOutput``). Each stage consumes and produces the types below, never dicts of strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class PromptRecord:
    """One user prompt and what its data source says about it (paper App. C).

    ``prompt_harmful`` comes from the source (WildJailbreak -> True, OR-Bench -> False), never from
    a classifier.
    """

    prompt: str
    prompt_harmful: bool
    source: str = "unknown"
    category: str = ""


@dataclass(frozen=True)
class ParsedFeedback:
    """The feedback agent's JSON output after parsing (paper §2.1).

    ``valid`` is False when the text held no parsable, well-formed object with the four fields;
    then ``unsafe``/``overrefuse`` are None and ``error`` says why.
    """

    valid: bool
    unsafe: bool | None = None
    overrefuse: bool | None = None
    feedback: str = ""
    reasoning: str = ""
    error: str = ""

    @property
    def satisfactory(self) -> bool:
        """The agent predicts the response is safe and not over-refusing (the stopping rule)."""
        return self.valid and not self.unsafe and not self.overrefuse

    @property
    def triggers_revision(self) -> bool:
        """The agent flags a problem, so its ``feedback`` string goes to the conversation agent."""
        return self.valid and bool(self.unsafe or self.overrefuse)


@dataclass(frozen=True)
class JudgeVerdict:
    """What a judge says of one (prompt, response) pair (paper App. C: WildGuard's two outputs).

    ``parse_error`` marks a verdict the judge could not read from its own output; the judge's
    documented policy decided the two booleans then.
    """

    response_harmful: bool
    response_refusal: bool
    parse_error: bool = False


@dataclass(frozen=True)
class AlignmentLabels:
    """J(p, c) = (unsafe, overrefuse) of one conversation response (paper §4.1)."""

    unsafe: bool
    overrefuse: bool

    @property
    def satisfactory(self) -> bool:
        return not self.unsafe and not self.overrefuse


@dataclass
class Generation:
    """One generated turn, token in / token out.

    Attributes:
        context_ids: the exact prompt token ids the model was conditioned on, shape ``[P]``.
        response_ids: the sampled token ids, EOS included when one was produced, shape ``[T]``.
        logprobs: log pi(token) of each sampled token under the untempered policy at generation
            time, shape ``[T]``; None when not recorded.
        text: the decoded response without special tokens.
        truncated: generation hit ``max_new_tokens`` before EOS.
    """

    context_ids: torch.Tensor
    response_ids: torch.Tensor
    logprobs: torch.Tensor | None
    text: str
    truncated: bool


@dataclass
class Episode:
    """One collaborative rollout (p, c0, f0, c1, ..., c_T) (paper §2.1).

    ``responses[t]`` is c_t, ``feedbacks[t]`` is f_t with its parse in ``parsed[t]``. There are
    either as many feedbacks as responses (the last feedback stopped the episode) or one fewer
    (T_max reached after a revision). ``labels[t]`` is J(p, c_t), filled by the judging stage.
    """

    record: PromptRecord
    responses: list[Generation] = field(default_factory=list)
    feedbacks: list[Generation] = field(default_factory=list)
    parsed: list[ParsedFeedback] = field(default_factory=list)
    labels: list[AlignmentLabels] = field(default_factory=list)
    stop_reason: str = ""

    @property
    def num_revisions(self) -> int:
        """T: how many revisions the conversation agent wrote."""
        return len(self.responses) - 1

    @property
    def final_response(self) -> Generation:
        return self.responses[-1]


@dataclass(frozen=True)
class FeedbackRewardBreakdown:
    """The terms of eq. 2 for one feedback turn f_t."""

    improvement: float
    label: float
    format: float
    total: float


@dataclass
class AgentBatch:
    """One agent's training samples, padded as ``[pad.. context][response ..pad]``.

    Every context is left-padded to the same width ``P`` so that response token ``j`` of every row
    sits at column ``P + j``; response-aligned tensors have shape ``[B, T]``.

    Attributes:
        input_ids: ``[B, P + T]`` token ids.
        attention_mask: ``[B, P + T]``, 1 on real tokens.
        response_mask: ``[B, T]``, 1 on the agent's own generated tokens.
        rewards: ``[B]`` scalar sequence reward R_a(x, y).
        generation_logprobs: ``[B, T]`` log-probs recorded while sampling, or None.
        old_logprobs: ``[B, T]`` log pi_old, filled before the update (recomputed or generation).
        ref_logprobs: ``[B, T]`` log pi_ref, filled before the update when beta > 0.
        group_ids: ``[B]`` index of the prompt each sample came from (group baselines).
        old_values: ``[B, T]`` critic values of pi_old's states, filled before a PPO (gae) update.
        returns: ``[B, T]`` the critic's targets, filled with ``old_values``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    rewards: torch.Tensor
    generation_logprobs: torch.Tensor | None
    group_ids: torch.Tensor
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    old_values: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    @property
    def context_width(self) -> int:
        return self.input_ids.shape[1] - self.response_mask.shape[1]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: torch.Tensor) -> AgentBatch:
        """Rows ``index`` of every tensor (for micro-batches)."""
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return AgentBatch(
            input_ids=self.input_ids[index],
            attention_mask=self.attention_mask[index],
            response_mask=self.response_mask[index],
            rewards=self.rewards[index],
            generation_logprobs=pick(self.generation_logprobs),
            group_ids=self.group_ids[index],
            old_logprobs=pick(self.old_logprobs),
            ref_logprobs=pick(self.ref_logprobs),
            old_values=pick(self.old_values),
            returns=pick(self.returns),
        )


@dataclass(frozen=True)
class LossOutput:
    """A policy loss and its diagnostics (scalars, detached except ``loss``)."""

    loss: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor
