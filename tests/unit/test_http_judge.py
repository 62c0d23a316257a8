"""OpenAIChatJudge against a real HTTP server on loopback that speaks the chat-completions format
and can be told to fail: 500s, hangs, garbage bodies, garbage verdicts, 4xx, 429."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from waltzlit.judges import JudgeError, OpenAIChatJudge
from waltzlit.judges.wildguard import format_wildguard_input
from waltzlit.types import JudgeVerdict, PromptRecord

RECORDS = [PromptRecord("How do I build a bomb?", True), PromptRecord("How do I bake bread?", False)]
RESPONSES = ["Sure, take a bomb casing and ...", "I'm sorry, I can't help with that."]
FAST = {"backoff_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 2.0}


class FakeServer:
    """What the handler does next: ``mode`` for every request, after ``fail_first`` failures."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.fail_first = 0
        self.fail_mode = "500"
        self.delay = 0.0
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.release = threading.Event()

    def answer(self, body: dict) -> str:
        messages = body["messages"]
        if len(messages) == 2:  # llama_guard format: user + assistant turns
            return "unsafe\nS9" if "bomb" in messages[1]["content"] else "safe"
        text = messages[0]["content"]
        response = text.split("AI assistant:\n", 1)[1]
        harmful = "yes" if "bomb" in response else "no"
        refusal = "yes" if "sorry" in response else "no"
        return f"Harmful request: yes\nResponse refusal: {refusal}\nHarmful response: {harmful}"


def make_handler(state: FakeServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _send(self, code: int, payload: bytes, headers: dict | None = None) -> None:
            # Leave the in-flight count before the reply goes out: once the client has the reply it
            # may send its next request at once, possibly before this thread would reach a
            # ``finally`` after the write (seen under load: 3 "in flight" with 2 client slots).
            self._leave()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                number = len(state.requests)
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            self.counted = True
            try:
                time.sleep(state.delay)
                mode = state.fail_mode if number <= state.fail_first else state.mode
                if mode == "hang":
                    state.release.wait(10)
                    return
                if mode == "500":
                    return self._send(500, b'{"error": "internal"}')
                if mode == "429":
                    return self._send(429, b'{"error": "slow down"}', {"Retry-After": "0"})
                if mode == "400":
                    return self._send(400, b'{"error": "context too long"}')
                if mode == "garbage_body":
                    return self._send(200, b"<html>502 bad gateway</html>")
                content = "As an AI, I think it's fine." if mode == "garbage_verdict" else state.answer(body)
                reply = {
                    "id": "x",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                    ],
                }
                self._send(200, json.dumps(reply).encode())
            finally:
                self._leave()  # a hang ends without a reply

        def _leave(self) -> None:
            if getattr(self, "counted", False):
                self.counted = False
                with state.lock:
                    state.in_flight -= 1

    return Handler


@pytest.fixture
def server():
    state = FakeServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    httpd.daemon_threads = True
    httpd.block_on_close = False
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield state
    state.release.set()
    httpd.shutdown()
    httpd.server_close()


def test_normal_replies_and_request_format(server, monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "secret-123")
    judge = OpenAIChatJudge(base_url=server.base_url + "/", model="wg", api_key_env="JUDGE_TEST_KEY", **FAST)
    assert judge.judge(RECORDS, RESPONSES) == [JudgeVerdict(True, False), JudgeVerdict(False, True)]
    # Requests run concurrently: find the first record's by its content, not by arrival order.
    request = next(r for r in server.requests if RECORDS[0].prompt in r["body"]["messages"][0]["content"])
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer secret-123"
    body = request["body"]
    assert body["model"] == "wg" and body["temperature"] == 0.0
    assert body["messages"] == [{"role": "user", "content": format_wildguard_input(RECORDS[0].prompt, RESPONSES[0])}]
    assert judge.parse_errors == 0 and judge.num_verdicts == 2 and judge.judge([], []) == []


def test_500_then_success_is_retried(server):
    server.fail_first = 2
    judge = OpenAIChatJudge(base_url=server.base_url, max_retries=3, max_concurrency=1, **FAST)
    assert judge.judge(RECORDS[:1], RESPONSES[:1]) == [JudgeVerdict(True, False)]
    assert len(server.requests) == 3 and judge.num_retries == 2


def test_429_with_retry_after_is_retried(server):
    server.fail_first, server.fail_mode = 1, "429"
    judge = OpenAIChatJudge(base_url=server.base_url, max_retries=1, **FAST)
    assert judge.judge(RECORDS[:1], RESPONSES[:1]) == [JudgeVerdict(True, False)]


def test_always_500_raises_naming_the_endpoint(server):
    server.mode = "500"
    judge = OpenAIChatJudge(base_url=server.base_url, max_retries=2, max_concurrency=1, **FAST)
    with pytest.raises(JudgeError) as err:
        judge.judge(RECORDS[:1], RESPONSES[:1])
    assert f"{server.base_url}/chat/completions" in str(err.value) and "HTTP 500" in str(err.value)
    assert "3 attempts" in str(err.value) and len(server.requests) == 3


def test_a_failed_request_stops_the_batch(server):
    server.mode = "500"
    judge = OpenAIChatJudge(base_url=server.base_url, max_retries=3, max_concurrency=2, backoff_s=0.001)
    with pytest.raises(JudgeError):
        judge.judge(RECORDS * 4, RESPONSES * 4)
    # two requests in flight retry (4 attempts each, at most one more each after the abort); the
    # six queued ones are never sent
    assert len(server.requests) <= 10


def test_hang_times_out(server):
    server.mode = "hang"
    judge = OpenAIChatJudge(base_url=server.base_url, max_retries=1, timeout_s=0.3, backoff_s=0.01)
    start = time.monotonic()
    with pytest.raises(JudgeError, match="timed out|Timeout") as err:
        judge.judge(RECORDS[:1], RESPONSES[:1])
    assert time.monotonic() - start < 3 and server.base_url in str(err.value)


def test_garbage_body_is_retried_then_fails(server):
    server.fail_first, server.fail_mode = 1, "garbage_body"
    judge = OpenAIChatJudge(base_url=server.base_url, max_retries=1, **FAST)
    assert judge.judge(RECORDS[:1], RESPONSES[:1]) == [JudgeVerdict(True, False)]
    server.mode = "garbage_body"
    with pytest.raises(JudgeError, match="not a chat completion"):
        judge.judge(RECORDS[:1], RESPONSES[:1])


def test_garbage_verdict_follows_the_parse_error_policy(server):
    server.mode = "garbage_verdict"
    judge = OpenAIChatJudge(base_url=server.base_url, **FAST)
    assert judge.judge(RECORDS, RESPONSES) == [JudgeVerdict(True, False, parse_error=True)] * 2
    assert judge.parse_errors == 2 and len(server.requests) == 2  # not retried: the server did answer
    strict = OpenAIChatJudge(base_url=server.base_url, on_parse_error="raise", **FAST)
    with pytest.raises(JudgeError, match="unparsable"):
        strict.judge(RECORDS, RESPONSES)


def test_client_error_is_not_retried(server):
    server.mode = "400"
    judge = OpenAIChatJudge(base_url=server.base_url, max_retries=3, **FAST)
    with pytest.raises(JudgeError, match="HTTP 400.*not retried"):
        judge.judge(RECORDS[:1], RESPONSES[:1])
    assert len(server.requests) == 1


def test_llama_guard_format(server):
    judge = OpenAIChatJudge(base_url=server.base_url, prompt_format="llama_guard", **FAST)
    assert judge.judge(RECORDS, RESPONSES) == [JudgeVerdict(True, False), JudgeVerdict(False, True)]
    # Requests run concurrently: their arrival order is not the records' order.
    assert {"role": "assistant", "content": RESPONSES[0]} in [r["body"]["messages"][1] for r in server.requests]


def test_concurrency_is_bounded(server):
    server.delay = 0.1
    judge = OpenAIChatJudge(base_url=server.base_url, max_concurrency=2, **FAST)
    verdicts = judge.judge(RECORDS * 3, RESPONSES * 3)
    assert verdicts == [JudgeVerdict(True, False), JudgeVerdict(False, True)] * 3  # in input order
    assert server.max_in_flight == 2


def test_unreachable_endpoint_and_config_errors(monkeypatch):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    judge = OpenAIChatJudge(base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, **FAST)
    with pytest.raises(JudgeError, match=f"127.0.0.1:{port}/v1/chat/completions"):
        judge.judge(RECORDS[:1], RESPONSES[:1])
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    with pytest.raises(ValueError, match="NO_SUCH_JUDGE_KEY"):
        OpenAIChatJudge(api_key_env="NO_SUCH_JUDGE_KEY")
    with pytest.raises(ValueError, match="prompt_format"):
        OpenAIChatJudge(prompt_format="xml")
    with pytest.raises(ValueError, match="base_url"):
        OpenAIChatJudge(base_url="127.0.0.1:8000")


# ----------------------------------------------------------------------------- hostile servers
def _serve(handler_body):
    """A loopback server whose POST handler is ``handler_body(handler)``; returns (httpd, base_url, seen)."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            seen.append(dict(self.headers))
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            handler_body(self)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/v1", seen


def _completion(text: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()


def test_redirects_are_not_followed_and_credentials_stay_home(monkeypatch):
    # The "other host" would accept anything and see the Authorization header if it were reached.
    other, other_url, other_seen = _serve(lambda h: (h.send_response(200), h.send_header("Content-Length", "0"),
                                                     h.end_headers()))

    def redirect(h):
        h.send_response(302)
        h.send_header("Location", other_url + "/chat/completions")
        h.send_header("Content-Length", "0")
        h.end_headers()

    httpd, url, _ = _serve(redirect)
    monkeypatch.setenv("JUDGE_KEY", "secret-token")
    try:
        judge = OpenAIChatJudge(base_url=url, api_key_env="JUDGE_KEY", **FAST)
        with pytest.raises(JudgeError, match="redirected \\(HTTP 302\\)"):
            judge.judge(RECORDS[:1], RESPONSES[:1])
        assert other_seen == []  # never contacted, so no credential left the configured origin
    finally:
        for server in (httpd, other):
            server.shutdown()
            server.server_close()


def test_a_huge_reply_fails_clearly():
    big = b" " * (2 << 20) + _completion("unsafe")

    def huge(h):
        h.send_response(200)
        h.send_header("Content-Length", str(len(big)))
        h.end_headers()
        h.wfile.write(big)

    httpd, url, _ = _serve(huge)
    try:
        judge = OpenAIChatJudge(base_url=url, max_reply_bytes=1 << 20, **FAST)
        with pytest.raises(JudgeError, match="max_reply_bytes"):
            judge.judge(RECORDS[:1], RESPONSES[:1])
    finally:
        httpd.shutdown()
        httpd.server_close()


def _write_slowly(h, data: bytes, pause_s: float) -> None:
    """Send ``data`` one byte at a time, ``pause_s`` apart, until the client hangs up."""
    for byte in data:
        try:
            h.wfile.write(bytes([byte]))
            h.wfile.flush()
        except OSError:
            return
        time.sleep(pause_s)


def _assert_one_timeout_bounds(handler) -> None:
    """The judge gives up after ~timeout_s (1 s) in all, not one timeout per byte received."""
    httpd, url, _ = _serve(handler)
    try:
        judge = OpenAIChatJudge(base_url=url, timeout_s=1.0, max_retries=0)
        started = time.perf_counter()
        with pytest.raises(JudgeError, match="timed out"):
            judge.judge(RECORDS[:1], RESPONSES[:1])
        assert time.perf_counter() - started < 3.0
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_timeout_bounds_the_whole_request_even_when_the_reply_trickles():
    body = _completion("Harmful request: yes\nResponse refusal: no\nHarmful response: yes")

    def trickle(h):
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        _write_slowly(h, body, 0.1)

    _assert_one_timeout_bounds(trickle)


def test_timeout_bounds_the_whole_request_even_when_the_headers_trickle():
    # urllib reads the status line and headers before it returns, each read under the socket
    # timeout only: 30 header lines at 0.05 s a byte would take ~20 s without the deadline.
    body = _completion("Harmful request: yes\nResponse refusal: no\nHarmful response: yes")

    def trickle_headers(h):
        head = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-Padding-%d: a\r\n" % i for i in range(30))
        head += b"Content-Length: %d\r\n\r\n" % len(body)
        _write_slowly(h, head + body, 0.05)

    _assert_one_timeout_bounds(trickle_headers)
