"""``python -m waltzlit chat --agents.exported runs/tiny/version_0/agents``

An interactive terminal conversation with the two-agent system. After each answer it shows whether
the feedback agent fired and what it told the conversation agent (``--show_feedback false`` or
``/feedback`` hides it). Commands: ``/reset`` starts a new conversation, ``/feedback`` toggles the
feedback display, ``/quit`` (or end of input) exits. Earlier turns stay in the conversation
agent's context; the feedback agent judges the latest answer to the latest message.
"""

from __future__ import annotations

import sys
from typing import TextIO

from waltzlit.agents.messages import Message
from waltzlit.deploy.pipeline import Response, TwoAgentSystem

HELP = "Commands: /reset new conversation, /feedback show or hide feedback, /quit exit."


def describe_feedback(response: Response) -> str:
    """One or more lines saying what the feedback agent did for this answer."""
    if not response.parsed:
        return "[feedback agent did not run]"
    lines = []
    for round_index, parsed in enumerate(response.parsed):
        if not parsed.valid:
            lines.append(f"[feedback round {round_index + 1}: invalid JSON ({parsed.error}); answer kept]")
        elif parsed.triggers_revision:
            flags = ", ".join(name for name, on in (("unsafe", parsed.unsafe), ("overrefuse", parsed.overrefuse)) if on)
            lines.append(f"[feedback round {round_index + 1} fired ({flags}): {parsed.feedback}]")
        else:
            lines.append(f"[feedback round {round_index + 1}: satisfactory, no revision]")
    if response.feedback_fired:
        lines.append(f"[first answer, before feedback: {response.c0}]")
    return "\n".join(lines)


def run_chat(system: TwoAgentSystem, stdin: TextIO, stdout: TextIO, show_feedback: bool = True) -> int:
    """Read user lines from ``stdin`` until /quit or end of input; returns the number of answers."""
    history: list[Message] = []
    answers = 0
    stdout.write(f"Two-agent chat (conversation + feedback agent). {HELP}\n")
    while True:
        stdout.write("you> ")
        stdout.flush()
        line = stdin.readline()
        if not line:  # end of input
            stdout.write("\n")
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        if text == "/reset":
            history = []
            stdout.write("(new conversation)\n")
            continue
        if text == "/feedback":
            show_feedback = not show_feedback
            stdout.write(f"(feedback {'shown' if show_feedback else 'hidden'})\n")
            continue
        if text.startswith("/"):
            stdout.write(f"(unknown command {text}) {HELP}\n")
            continue
        history.append({"role": "user", "content": text})
        response = system.respond(history)
        if show_feedback:
            stdout.write(describe_feedback(response) + "\n")
        stdout.write(f"assistant> {response.final}\n")
        history.append({"role": "assistant", "content": response.final})
        answers += 1
    return answers


def main(args: list[str] | None = None) -> int:
    from waltzlit.deploy.options import deploy_config, deploy_parser, load_deployed

    parser = deploy_parser("python -m waltzlit chat", "Chat with the two-agent system in the terminal.")
    parser.add_argument("--show_feedback", type=bool, default=True, help="Show when feedback fired and what it said.")
    namespace = parser.instantiate(parser.parse_args(args))
    system = load_deployed(deploy_config(namespace))
    run_chat(system, sys.stdin, sys.stdout, show_feedback=namespace.show_feedback)
    return 0
