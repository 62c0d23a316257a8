"""Chat messages each agent sees, built from an episode so far (paper §2.1, App. A).

The conversation agent sees its system prompt, the user prompt, its own earlier responses and
*only* the ``feedback`` strings of the feedback agent. The feedback agent sees its system prompt
and one user message holding the prompt and the response to judge: the RL state (p, c_t).
"""

from __future__ import annotations

Message = dict[str, str]

DEFAULT_FEEDBACK_TEMPLATE = "Feedback on your previous response: {feedback}"
"""How a feedback string is worded in the conversation agent's context. Which chat role carries the
feedback is UNCONFIRMED in the paper; the default is a user turn with this wrapper."""

DEFAULT_JUDGE_REQUEST_TEMPLATE = "User query:\n{prompt}\n\nResponse to evaluate:\n{response}"
"""The feedback agent's user message: the prompt and the latest conversation response."""


def conversation_messages(
    system_prompt: str,
    prompt: str,
    responses: list[str] = (),
    feedbacks: list[str] = (),
    feedback_role: str = "user",
    feedback_template: str = DEFAULT_FEEDBACK_TEMPLATE,
) -> list[Message]:
    """Context for the conversation agent's next turn c_t.

    Args:
        responses: c_0 .. c_{t-1}, its own earlier responses.
        feedbacks: the feedback strings f_0.feedback .. f_{t-1}.feedback, one per earlier response.
    """
    if len(responses) != len(feedbacks):
        raise ValueError(f"need one feedback per earlier response, got {len(responses)} and {len(feedbacks)}")
    messages: list[Message] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": prompt})
    for response, feedback in zip(responses, feedbacks):
        messages.append({"role": "assistant", "content": response})
        messages.append({"role": feedback_role, "content": feedback_template.format(feedback=feedback)})
    return messages


def feedback_messages(
    system_prompt: str,
    prompt: str,
    response: str,
    request_template: str = DEFAULT_JUDGE_REQUEST_TEMPLATE,
) -> list[Message]:
    """Context for the feedback agent judging ``response`` to ``prompt``."""
    messages: list[Message] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": request_template.format(prompt=prompt, response=response)})
    return messages
