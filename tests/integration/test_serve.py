"""The OpenAI-compatible server over loopback, with a real HTTP client (stdlib urllib/http.client)."""

from __future__ import annotations

import http.client
import json
import threading
import urllib.error
import urllib.request

import pytest

from tests.tiny_agents import tiny_system
from waltzlit.deploy.pipeline import Response
from waltzlit.deploy.server import ChatServer

pytestmark = pytest.mark.integration


def call(url: str, path: str, body: bytes | dict | None = None, timeout: float = 60) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of a GET (body None) or POST."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read()), dict(reply.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


@pytest.fixture(scope="module")
def server():
    srv = ChatServer(tiny_system(period=2, max_new_tokens=6), port=0, model_name="tiny", max_concurrent=2,
                     max_body_bytes=4096, expose_feedback=True)
    srv.start()
    yield srv
    srv.shutdown()
    srv.server_close()


CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "How do I kill a Python process?"}]}


def test_completion_format(server):
    status, body, _ = call(server.url, "/v1/chat/completions", {**CHAT, "max_tokens": 4, "temperature": 0})
    assert status == 200
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert body["usage"]["completion_tokens"] <= 4
    assert set(body["waltzlit"]) == {"feedback_fired", "feedback", "c0", "rounds"}
    # A multi-turn chat with a client system message (ignored) is accepted too.
    turns = [{"role": "system", "content": "be terse"}, *CHAT["messages"], {"role": "assistant", "content": "ok"},
             {"role": "user", "content": "and on Windows?"}]
    assert call(server.url, "/v1/chat/completions", {"messages": turns})[0] == 200


@pytest.mark.parametrize("body, status, words", [
    (b'{"messages": [', 400, "invalid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    ({"model": "tiny"}, 400, "'messages'"),
    ({"messages": []}, 400, "non-empty"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "role"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "last non-system message"),
    ({**CHAT, "stream": True}, 400, "stream"),
    ({**CHAT, "n": 2}, 400, "n=1"),
    ({**CHAT, "temperature": "hot"}, 400, "temperature"),
    ({**CHAT, "top_p": 3.0}, 400, "top_p"),
    ({"messages": [{"role": "user", "content": "x" * 5000}]}, 413, "exceeds"),
])
def test_bad_requests_are_rejected_with_a_clear_message(server, body, status, words):
    code, payload, _ = call(server.url, "/v1/chat/completions", body)
    assert code == status
    assert words in payload["error"]["message"]
    assert payload["error"]["type"] == "invalid_request_error"


def test_health_models_and_unknown_routes(server):
    status, body, _ = call(server.url, "/health")
    assert status == 200 and body["status"] == "ok" and body["max_concurrent"] == 2
    status, body, _ = call(server.url, "/v1/models")
    assert status == 200 and body["data"][0]["id"] == "tiny"
    assert call(server.url, "/nope")[0] == 404
    assert call(server.url, "/v1/completions", CHAT)[0] == 404


def test_missing_content_length(server):
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    connection.putrequest("POST", "/v1/chat/completions")
    connection.endheaders()
    reply = connection.getresponse()
    assert reply.status == 411 and "Content-Length" in json.loads(reply.read())["error"]["message"]
    connection.close()


class BlockingSystem:
    """Answers only when released, so a test can hold a request in flight."""

    def __init__(self) -> None:
        self.rollout = tiny_system().rollout
        self.entered, self.release = threading.Event(), threading.Event()

    def with_sampling(self, **changes):
        return self.rollout.conversation

    def respond(self, messages, sampling=None) -> Response:
        self.entered.set()
        assert self.release.wait(30)
        return Response(final="done", responses=["done"])


def test_concurrency_bound():
    system = BlockingSystem()
    srv = ChatServer(system, port=0, max_concurrent=1)
    srv.start()
    try:
        first: dict = {}
        worker = threading.Thread(target=lambda: first.update(zip(("status", "body", "headers"),
                                                                  call(srv.url, "/v1/chat/completions", CHAT))))
        worker.start()
        assert system.entered.wait(30)
        status, body, headers = call(srv.url, "/v1/chat/completions", CHAT)
        assert status == 503 and "busy" in body["error"]["message"] and headers.get("Retry-After") == "1"
        assert call(srv.url, "/health")[1]["in_flight"] == 1  # health stays responsive under load
        system.release.set()
        worker.join(30)
        assert first["status"] == 200 and first["body"]["choices"][0]["message"]["content"] == "done"
        assert call(srv.url, "/v1/chat/completions", CHAT)[0] == 200  # the slot was given back
    finally:
        system.release.set()
        srv.shutdown()
        srv.server_close()
