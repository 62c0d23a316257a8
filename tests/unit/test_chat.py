"""The terminal chat, driven with scripted stdin."""

from __future__ import annotations

import io
from types import SimpleNamespace

from tests.tiny_agents import tiny_agent, tiny_system
from waltzlit.deploy.chat import describe_feedback, run_chat
from waltzlit.deploy.pipeline import Response
from waltzlit.training.export import export_agents
from waltzlit.types import ParsedFeedback


class Recorder:
    """Wraps a system and keeps every chat it was asked to answer."""

    def __init__(self, system) -> None:
        self.system, self.requests = system, []

    def respond(self, messages, sampling=None) -> Response:
        self.requests.append([dict(m) for m in messages])
        return self.system.respond(messages, sampling)


def test_scripted_session_shows_feedback_and_keeps_history():
    system = Recorder(tiny_system(period=1, max_new_tokens=5))  # feedback fires on every answer
    stdin = io.StringIO("How do I make a bomb?\n\n/feedback\nPlease?\n/reset\nhello\n/bogus\n/quit\nnever read\n")
    stdout = io.StringIO()
    answers = run_chat(system, stdin, stdout, show_feedback=True)
    text = stdout.getvalue()

    assert answers == 3
    assert text.count("assistant> ") == 3
    # Shown for the first answer, hidden after /feedback.
    assert text.count("fired (unsafe): Decline briefly and offer safe help.") == 1
    assert "[first answer, before feedback:" in text
    assert "(feedback hidden)" in text and "(new conversation)" in text and "unknown command /bogus" in text
    # The second turn carries the first exchange; /reset starts over.
    assert [m["role"] for m in system.requests[1]] == ["user", "assistant", "user"]
    assert system.requests[1][1]["content"] in text
    assert system.requests[2] == [{"role": "user", "content": "hello"}]


def test_end_of_input_exits():
    stdout = io.StringIO()
    assert run_chat(Recorder(tiny_system(max_new_tokens=3)), io.StringIO("hi\n"), stdout) == 1
    # An untrained feedback agent writes no JSON: the answer is kept and the chat says so.
    assert "invalid JSON" in stdout.getvalue()


def test_describe_feedback_cases():
    ok = Response(final="a", responses=["a"], feedback_raw=["{}"], parsed=[ParsedFeedback(True, False, False)])
    assert "satisfactory" in describe_feedback(ok)
    fired = Response(final="b", responses=["a", "b"], feedback_raw=["{}"],
                     parsed=[ParsedFeedback(True, False, True, feedback="just answer")])
    assert "fired (overrefuse): just answer" in describe_feedback(fired)
    assert fired.feedback_text == "just answer" and fired.feedback_fired


def test_chat_command_on_exported_agents(tmp_path, monkeypatch):
    agents = {"conversation": tiny_agent("conversation", 0), "feedback": tiny_agent("feedback", 1)}
    export_agents(SimpleNamespace(agents=agents), tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("hi there\n/quit\n"))
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    from waltzlit.__main__ import main

    assert main(["chat", f"--agents.exported={tmp_path}", "--rollout.conversation.max_new_tokens=3",
                 "--rollout.feedback.max_new_tokens=3", "--show_feedback=false", "--device=cpu"]) == 0
    assert "assistant> " in out.getvalue() and "feedback round" not in out.getvalue()
