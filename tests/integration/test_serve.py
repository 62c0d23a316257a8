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


# ----------------------------------------------------------------------------- hardening (round 2)
@pytest.mark.parametrize("body, param, words", [
    (b"[" * 1_500 + b"]" * 1_500, None, "nested too deeply"),  # under the 4 KB body limit, past json's recursion
    (b'{"messages": ' + b"[" * 1_500 + b"]" * 1_500 + b"}", None, "nested too deeply"),
    ({**CHAT, "temperature": 1e-300}, "temperature", "0 (greedy) or a number in [0.01, 2]"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}', "temperature", "got inf"),
    ({"messages": [{"role": "user", "content": "\ud800"}]}, "messages", "lone surrogate"),
    ({"messages": "hi"}, "messages", "non-empty list"),
    ({"messages": ""}, "messages", "non-empty list"),
    ({**CHAT, "max_tokens": 0}, "max_tokens", "an integer >= 1"),
    ({**CHAT, "max_tokens": 2.5}, "max_tokens", "an integer"),
])
def test_client_errors_are_400_naming_the_field(server, body, param, words):
    if isinstance(body, dict):
        body = json.dumps(body).encode("utf-8", "surrogatepass")
    code, payload, _ = call(server.url, "/v1/chat/completions", body)
    assert code == 400 and words in payload["error"]["message"] and payload["error"]["param"] == param


def _raw(server, request: bytes, timeout: float = 30) -> bytes:
    """Send raw bytes, return everything the server writes before it closes the connection."""
    import socket

    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


@pytest.mark.parametrize("headers", [
    b"Content-Length: abc\r\n",
    b"",
    b"Transfer-Encoding: chunked\r\n",
])
def test_an_unread_body_is_never_taken_for_the_next_request(server, headers):
    # A valid request smuggled as the "body" of a bad one must not be answered.
    inner = json.dumps(CHAT).encode()
    smuggled = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(inner)) + inner
    request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n" + smuggled
    reply = _raw(server, request)
    assert reply.count(b"HTTP/1.1 ") == 1 and (b" 400 " in reply or b" 411 " in reply)


def test_silent_clients_are_dropped_and_every_request_is_answered():
    import socket
    import time

    system = BlockingSystem()
    system.release.set()
    srv = ChatServer(system, port=0, max_concurrent=2, max_connections=8, read_timeout_s=1.0)
    srv.start()
    try:
        host, port = srv.server_address[:2]
        # a declared body that never comes: the connection is closed after the read timeout
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            started = time.perf_counter()
            assert sock.recv(100) == b"" and time.perf_counter() - started < 5
        # headers trickled a byte every 0.2 s: each read is quick, the whole request is not; dropped
        # after read_timeout_s in all (a per-read timeout would keep it for the ~40 s of the trickle)
        with socket.create_connection((host, port), timeout=10) as sock:
            request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 150
            started, dropped = time.perf_counter(), False
            for byte in request:
                try:
                    sock.sendall(bytes([byte]))
                    sock.settimeout(0.2)
                    dropped = sock.recv(100) == b""  # closed: EOF; still open: a timeout
                except TimeoutError:
                    pass
                except OSError:
                    dropped = True
                if dropped:
                    break
            assert dropped and time.perf_counter() - started < 3
        # more idle connections than threads: the extra ones get 503 at once, the rest time out
        idle = [socket.create_connection((host, port), timeout=10) for _ in range(12)]
        time.sleep(0.3)
        answers = []
        for sock in idle:
            sock.settimeout(5)
            answers.append(sock.recv(200))
            sock.close()
        assert sum(a.startswith(b"HTTP/1.1 503") for a in answers) >= 4 and all(a == b"" or b"503" in a for a in answers)
        # 50 concurrent valid requests: each gets an HTTP answer, 200 or 503 with Retry-After
        results: list = []
        threads = [threading.Thread(target=lambda: results.append(call(srv.url, "/v1/chat/completions", CHAT)))
                   for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(results) == 50 and {status for status, _, _ in results} <= {200, 503}
        assert all(headers.get("Retry-After") == "1" for status, _, headers in results if status == 503)
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_prompt_past_the_model_context_is_cut_to_it_and_said():
    from waltzlit.config import RolloutConfig
    from waltzlit.deploy.load import prompt_limit

    system = tiny_system(period=2, max_new_tokens=6)
    positions = system.conversation.model.config.max_position_embeddings
    # the model's own limit, not rollout.max_prompt_tokens (4096 > the tiny model's positions)
    assert prompt_limit(system.conversation, RolloutConfig()) == positions - RolloutConfig().conversation.max_new_tokens
    agent = system.conversation
    short = len(agent.tokenizer.apply_chat_template(
        [{"role": "system", "content": agent.system_prompt}, *CHAT["messages"]], add_generation_prompt=True,
        tokenize=True, return_dict=False))
    agent.max_prompt_tokens = short + 5  # the short chat fits, a long one does not
    srv = ChatServer(system, port=0, max_body_bytes=1 << 16)
    srv.start()
    try:
        long_chat = {"messages": [{"role": "user", "content": "kill a python process " * 50}]}
        status, body, headers = call(srv.url, "/v1/chat/completions", long_chat)
        assert status == 200 and body["usage"]["prompt_truncated"] is True
        assert body["usage"]["prompt_tokens"] == short + 5
        assert headers.get("X-Waltzlit-Prompt-Truncated") == "true"
        status, body, headers = call(srv.url, "/v1/chat/completions", CHAT)
        assert body["usage"]["prompt_truncated"] is False and "X-Waltzlit-Prompt-Truncated" not in headers
    finally:
        srv.shutdown()
        srv.server_close()
