"""Reward functions of WaltzRL as pure functions of labels and parses (paper §2.2, eq. 2–3, App. C).

The conversation agent's reward is a binary outcome of the judge's labels; the feedback agent's
reward (eq. 2) combines the dynamic improvement of the next response (eq. 3), gated by whether
the feedback's own labels were right, with label and format terms.
"""

from __future__ import annotations

from waltzlit.types import AlignmentLabels, FeedbackRewardBreakdown, ParsedFeedback

IMPROVEMENT_MODES = ("dir", "next_outcome")


def alignment_labels(response_harmful: bool, response_refusal: bool, prompt_harmful: bool) -> AlignmentLabels:
    """J(p, c) = (unsafe, overrefuse) from the judge's two outputs and the prompt's source (App. C).

    unsafe = response_harmful; overrefuse = not prompt_harmful and response_refusal. A refusal of
    a harmful prompt (WildJailbreak) is therefore never an over-refusal.

    Args:
        response_harmful: the judge's response-harmfulness verdict.
        response_refusal: the judge's response-refusal verdict.
        prompt_harmful: from the data source, never from a classifier.
    """
    return AlignmentLabels(
        unsafe=bool(response_harmful),
        overrefuse=(not prompt_harmful) and bool(response_refusal),
    )


def conversation_reward(labels: AlignmentLabels) -> float:
    """R_c = 1{not unsafe and not overrefuse} (method spec §4.2): 1.0 or 0.0."""
    return 1.0 if labels.satisfactory else 0.0


def improvement_reward(reward_before: float, reward_after: float | None, mode: str = "dir") -> float:
    """The improvement term of eq. 2.

    "dir" (eq. 3): R^DIR = R_c(c_{t+1}) - R_c(c_t), in {-1, 0, 1} for binary R_c.
    "next_outcome" (Table 6 ablation): R_c(c_{t+1}) alone.
    Both are 0 when the rollout stopped and there is no revision c_{t+1}.

    Args:
        reward_before: R_c of the response the feedback judged, c_t.
        reward_after: R_c of the revision c_{t+1}, or None when there was none.
        mode: one of ``IMPROVEMENT_MODES``.

    Raises:
        ValueError: ``mode`` is not one of the allowed names.
    """
    if mode not in IMPROVEMENT_MODES:
        raise ValueError(f"unknown improvement mode {mode!r}; allowed values: {', '.join(IMPROVEMENT_MODES)}")
    if reward_after is None:
        return 0.0
    if mode == "dir":
        return float(reward_after) - float(reward_before)
    return float(reward_after)


def label_reward(parsed: ParsedFeedback, labels: AlignmentLabels) -> float:
    """R^label = 1{L(f_t) = J(p, c_t)}: both predicted flags must equal the judge's labels.

    Unparsable feedback predicts nothing and earns 0.
    """
    if not parsed.valid:
        return 0.0
    correct = parsed.unsafe == labels.unsafe and parsed.overrefuse == labels.overrefuse
    return 1.0 if correct else 0.0


def format_reward(parsed: ParsedFeedback) -> float:
    """R^format = 1{f_t is parsable, well-formed JSON with the four fields}."""
    return 1.0 if parsed.valid else 0.0


def feedback_reward(
    improvement: float,
    label: float,
    fmt: float,
    alpha: float,
    label_weight: float,
    gamma: float,
    gate: bool = True,
    gate_losses: bool = True,
) -> FeedbackRewardBreakdown:
    """R_f = alpha * R^DIR * R^label + lambda * R^label + gamma * R^format (eq. 2).

    The gate (multiplying the improvement by label correctness) keeps a feedback agent from being
    paid for a revision it triggered with wrong labels; the paper never turns it off (§2.2).

    Args:
        improvement: R^DIR (or the "next_outcome" ablation), from ``improvement_reward``.
        label: R^label in {0, 1}.
        fmt: R^format in {0, 1}.
        alpha: weight of the improvement term (App. B.2: 0.65).
        label_weight: lambda (0.25 in stage 1, 0 in stage 2).
        gamma: weight of the format term (0.1).
        gate: multiply the improvement by ``label``; False is the ungated variant (Fig. 2 C).
        gate_losses: with the gate on, whether a negative improvement is gated too (the paper).
            False gates only gains: feedback that made a response worse is charged whatever its
            labels (with T_max = 1 and a binary R_c that is exactly a false alarm on a good
            response, which the gated, lambda = 0 reward otherwise pays like a correct pass).

    Returns:
        The three terms as given (``improvement`` ungated) and their weighted ``total``.
    """
    gated = improvement * label if gate and (gate_losses or improvement > 0) else improvement
    total = alpha * gated + label_weight * label + gamma * fmt
    return FeedbackRewardBreakdown(
        improvement=float(improvement), label=float(label), format=float(fmt), total=float(total)
    )
