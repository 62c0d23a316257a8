"""``python -m waltzlit serve --agents.exported runs/tiny/version_0/agents --port 8000``

An OpenAI-compatible ``POST /v1/chat/completions`` running the two-agent pipeline with adaptive
feedback, plus ``GET /health`` and ``GET /v1/models``. Standard library only.

- Validation: a missing/oversized body, bad JSON, a missing or malformed ``messages``, ``stream``
  or ``n > 1`` (not supported) and out-of-range sampling values give 4xx with a message naming the
  problem, in OpenAI's error shape ``{"error": {"message", "type", "param", "code"}}``.
- Concurrency: at most ``max_concurrent`` requests are admitted (a BoundedSemaphore); one more
  gets 503 with ``Retry-After`` at once instead of piling up threads. Admitted requests take turns
  on the models (a lock): one torch model serves one ``generate`` at a time. The listen backlog is
  128 and at most ``max_connections`` connections get a thread; one more is answered 503 at once,
  so every request gets an HTTP answer.
- Slow or silent clients: a request (its request line, headers and body) must arrive within
  ``read_timeout_s`` (10 s) in all, counted from when the server starts waiting for it; then the
  connection is closed. A per-read timeout alone would let a client that sends one byte a second
  hold a thread for ever. After a 4xx for a body whose length is unknown or invalid
  (``Content-Length`` missing or not a number, ``Transfer-Encoding``), the connection is closed
  too: the unread body must never be parsed as a next request.
- Prompts longer than the conversation model's context are cut to its own limit (the model's
  positions minus the answer's ``max_tokens``), keeping their end; the reply says so in
  ``usage.prompt_truncated`` and the ``X-Waltzlit-Prompt-Truncated`` header.
- Optional ``"waltzlit"`` field in the reply (``expose_feedback``): c0, whether feedback fired and
  what it said. Off by default: the feedback text can quote what the safe answer left out.
"""

from __future__ import annotations

import io
import json
import logging
import math
import threading
import time
import uuid
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)


class RequestError(Exception):
    """A client error: HTTP ``status`` with a message naming the problem and the offending field."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def parse_chat_request(body: bytes, system) -> tuple[list[dict], object]:
    """(messages, conversation sampling) of a chat-completions body; raises RequestError (400)."""
    from waltzlit.deploy.pipeline import normalize_request

    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(400, f"invalid JSON in request body: {err}") from None
    except RecursionError:
        raise RequestError(400, "invalid JSON in request body: nested too deeply") from None
    if not isinstance(payload, dict):
        raise RequestError(400, "request body must be a JSON object")
    if "messages" not in payload:
        raise RequestError(400, "missing required field 'messages'", "messages")
    if not isinstance(payload["messages"], list) or not payload["messages"]:
        raise RequestError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    try:
        messages = normalize_request(payload["messages"])
    except ValueError as err:
        raise RequestError(400, str(err), "messages") from None
    for index, message in enumerate(messages):
        try:
            message["content"].encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError(400, f"messages[{index}].content is not valid Unicode (a lone surrogate?)",
                               "messages") from None
    if payload.get("stream"):
        raise RequestError(400, "stream=true is not supported; send stream=false", "stream")
    if payload.get("n", 1) != 1:
        raise RequestError(400, "only n=1 is supported", "n")
    changes = {}
    limit = system.rollout.conversation.max_new_tokens
    for key, field_name, kind in (("max_tokens", "max_new_tokens", int), ("max_completion_tokens", "max_new_tokens", int),
                                  ("temperature", "temperature", float), ("top_p", "top_p", float)):
        if payload.get(key) is None:
            continue
        value = payload[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            expected = "an integer" if kind is int else "a number"
            raise RequestError(400, f"'{key}' must be {expected}", key)
        if not math.isfinite(value) or not _in_range(key, value):
            raise RequestError(400, f"'{key}' must be {REQUEST_RANGES[key]}, got {value!r}", key)
        changes[field_name] = min(value, limit) if field_name == "max_new_tokens" else kind(value)
    try:
        sampling = system.with_sampling(**changes)
    except ValueError as err:  # not reached for the ranges above; the message names the config field
        raise RequestError(400, str(err)) from None
    return messages, sampling


REQUEST_RANGES = {
    "max_tokens": "an integer >= 1",
    "max_completion_tokens": "an integer >= 1",
    "temperature": "0 (greedy) or a number in [0.01, 2]",
    "top_p": "a number in (0, 1]",
}
"""What each sampling field of a request accepts (OpenAI's ranges; a temperature below 0.01 other
than 0 divides the logits into overflow)."""


def _in_range(key: str, value: float) -> bool:
    if key in ("max_tokens", "max_completion_tokens"):
        return value >= 1
    if key == "temperature":
        return value == 0 or 0.01 <= value <= 2
    return 0 < value <= 1


def completion_body(response, model: str, expose_feedback: bool) -> dict:
    """An OpenAI ``chat.completion`` object for a pipeline :class:`Response`."""
    body = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": response.final},
            "finish_reason": "length" if response.truncated else "stop",
        }],
        "usage": {
            "prompt_tokens": response.prompt_tokens,
            "completion_tokens": response.completion_tokens,
            "total_tokens": response.prompt_tokens + response.completion_tokens,
            "prompt_truncated": bool(getattr(response, "prompt_truncated", False)),
        },
    }
    if expose_feedback:
        body["waltzlit"] = {
            "feedback_fired": response.feedback_fired,
            "feedback": response.feedback_text,
            "c0": response.c0,
            "rounds": [asdict(p) for p in response.parsed],
        }
    return body


class _DeadlineReader(io.RawIOBase):
    """A connection's bytes, each read waiting only until ``deadline`` (time.monotonic()): the
    socket timeout is set to the time left before every read, so a trickle cannot extend it."""

    def __init__(self, sock) -> None:
        super().__init__()
        self.sock, self.deadline = sock, math.inf

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request did not arrive within read_timeout_s")
        self.sock.settimeout(remaining)
        return self.sock.recv_into(buffer)


class _Handler(BaseHTTPRequestHandler):
    server: ChatServer  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.timeout = self.server.read_timeout_s  # writes of a reply: a client that stops reading is dropped
        super().setup()
        self.rfile.close()  # reads go through the deadline instead
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        # One deadline for the wait, the request line, the headers and the body of each request.
        self._reader.deadline = time.monotonic() + self.server.read_timeout_s
        super().handle_one_request()

    def send_response(self, code: int, message: str | None = None) -> None:
        # The last read left the socket timeout at what remained of the request's deadline; a reply
        # (ours or http.server's own errors) gets the full read_timeout_s per write.
        self.connection.settimeout(self.server.read_timeout_s)
        super().send_response(code, message)

    def handle(self) -> None:
        try:
            super().handle()
        except (TimeoutError, ConnectionError):
            self.close_connection = True  # a client that stalls or vanishes loses its connection, nothing else

    def log_message(self, format: str, *args) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, err: RequestError, headers: dict | None = None) -> None:
        kind = "invalid_request_error" if err.status < 500 else "server_error"
        self._send(err.status, {"error": {"message": err.message, "type": kind, "param": err.param, "code": None}},
                   headers)

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(200, {"status": "ok", "model": self.server.model_name, "in_flight": self.server.in_flight,
                             "max_concurrent": self.server.max_concurrent})
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [
                {"id": self.server.model_name, "object": "model", "created": 0, "owned_by": "waltzlit"}]})
        else:
            self._error(RequestError(404, f"no route GET {self.path}"))

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            # A chunked (or otherwise encoded) body is not read here: close, so it is never taken
            # for the next request on this connection.
            self.close_connection = True
            raise RequestError(411, "Transfer-Encoding is not supported; send the body with a Content-Length")
        if length is None:
            self.close_connection = True
            raise RequestError(411, "a Content-Length header is required")
        try:
            size = int(length)
        except ValueError:
            self.close_connection = True
            raise RequestError(400, f"bad Content-Length {length!r}") from None
        if size < 0 or size > self.server.max_body_bytes:
            # The body stays unread, so the connection cannot be reused: close it.
            self.close_connection = True
            raise RequestError(413, f"request body of {size} bytes exceeds the limit of {self.server.max_body_bytes}")
        return self.rfile.read(size)

    def do_POST(self) -> None:
        if self.path != "/v1/chat/completions":
            self.close_connection = True
            self._error(RequestError(404, f"no route POST {self.path}; use /v1/chat/completions"))
            return
        try:
            messages, sampling = parse_chat_request(self._read_body(), self.server.system)
        except RequestError as err:
            self._error(err)
            return
        if not self.server.slots.acquire(blocking=False):
            self._error(RequestError(503, f"server busy: {self.server.max_concurrent} requests in flight; retry later"),
                        {"Retry-After": "1"})
            return
        try:
            with self.server.count_lock:
                self.server.in_flight += 1
            with self.server.model_lock:
                response = self.server.system.respond(messages, sampling)
        except Exception as err:  # a generation failure must not kill the server thread silently
            log.exception("generation failed")
            self._release_slot()
            self._error(RequestError(500, f"generation failed: {type(err).__name__}: {err}"))
            return
        # The slot is free once the models are done, before the reply is written: a client that
        # sends its next request as soon as it reads this reply must find the slot available.
        self._release_slot()
        truncated = getattr(response, "prompt_truncated", False)
        body = completion_body(response, self.server.model_name, self.server.expose_feedback)
        self._send(200, body, {"X-Waltzlit-Prompt-Truncated": "true"} if truncated else None)

    def _release_slot(self) -> None:
        with self.server.count_lock:
            self.server.in_flight -= 1
        self.server.slots.release()


_BUSY_BODY = b'{"error": {"message": "server busy: too many connections", "type": "server_error", "param": null}}'
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
         b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(_BUSY_BODY)) + _BUSY_BODY


class ChatServer(ThreadingHTTPServer):
    """The HTTP server around a :class:`~waltzlit.deploy.pipeline.TwoAgentSystem` (or anything with
    ``respond(messages, sampling)``, ``with_sampling`` and ``rollout``). Port 0 picks a free port."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: bursts wait in the kernel instead of being reset

    def __init__(self, system, host: str = "127.0.0.1", port: int = 8000, model_name: str = "waltzlit",
                 max_concurrent: int = 4, max_body_bytes: int = 1 << 20, expose_feedback: bool = False,
                 max_connections: int = 64, read_timeout_s: float = 10.0) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent: must be >= 1, got {max_concurrent}")
        if max_connections < max_concurrent:
            raise ValueError(f"max_connections: must be >= max_concurrent ({max_concurrent}), got {max_connections}")
        if not read_timeout_s > 0:
            raise ValueError(f"read_timeout_s: must be > 0, got {read_timeout_s}")
        super().__init__((host, port), _Handler)
        self.system, self.model_name, self.expose_feedback = system, model_name, expose_feedback
        self.max_concurrent, self.max_body_bytes = max_concurrent, max_body_bytes
        self.max_connections, self.read_timeout_s = max_connections, read_timeout_s
        self.slots = threading.BoundedSemaphore(max_concurrent)
        self.connections = threading.BoundedSemaphore(max_connections)
        self.model_lock, self.count_lock = threading.Lock(), threading.Lock()
        self.in_flight = 0

    def process_request(self, request, client_address) -> None:
        """A thread per connection up to ``max_connections``; past that, 503 at once and close."""
        if not self.connections.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> threading.Thread:
        """Serve in a background thread (for tests and embedding); stop with ``shutdown()``."""
        thread = threading.Thread(target=self.serve_forever, name="waltzlit-serve", daemon=True)
        thread.start()
        return thread


def main(args: list[str] | None = None) -> int:
    from waltzlit.deploy.options import deploy_config, deploy_parser, load_deployed

    parser = deploy_parser("python -m waltzlit serve", "Serve the two-agent system as /v1/chat/completions.")
    parser.add_argument("--host", type=str, default="127.0.0.1", help="Interface to bind (0.0.0.0 for all).")
    parser.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one.")
    parser.add_argument("--model_name", type=str, default="waltzlit", help="Model id reported to clients.")
    parser.add_argument("--max_concurrent", type=int, default=4, help="Requests admitted at once; more get 503.")
    parser.add_argument("--max_body_bytes", type=int, default=1 << 20, help="Largest accepted request body.")
    parser.add_argument("--expose_feedback", type=bool, default=False, help="Add c0 and the feedback to replies.")
    parser.add_argument("--max_connections", type=int, default=64,
                        help="Connections served at once (a thread each); more get 503 at once.")
    parser.add_argument("--read_timeout_s", type=float, default=10.0,
                        help="Seconds a whole request (headers and body) may take to arrive; then the connection "
                             "closes.")
    namespace = parser.instantiate(parser.parse_args(args))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    system = load_deployed(deploy_config(namespace))
    server = ChatServer(system, namespace.host, namespace.port, namespace.model_name, namespace.max_concurrent,
                        namespace.max_body_bytes, namespace.expose_feedback, namespace.max_connections,
                        namespace.read_timeout_s)
    log.info("serving %s/v1/chat/completions (health: %s/health)", server.url, server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
