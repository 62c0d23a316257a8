"""``python -m waltzlit serve --agents.exported runs/tiny/version_0/agents --port 8000``

An OpenAI-compatible ``POST /v1/chat/completions`` running the two-agent pipeline with adaptive
feedback, plus ``GET /health`` and ``GET /v1/models``. Standard library only.

- Validation: a missing/oversized body, bad JSON, a missing or malformed ``messages``, ``stream``
  or ``n > 1`` (not supported) and out-of-range sampling values give 4xx with a message naming the
  problem, in OpenAI's error shape ``{"error": {"message", "type", "param", "code"}}``.
- Concurrency: at most ``max_concurrent`` requests are admitted (a BoundedSemaphore); one more
  gets 503 with ``Retry-After`` at once instead of piling up threads. Admitted requests take turns
  on the models (a lock): one torch model serves one ``generate`` at a time.
- Optional ``"waltzlit"`` field in the reply (``expose_feedback``): c0, whether feedback fired and
  what it said. Off by default: the feedback text can quote what the safe answer left out.
"""

from __future__ import annotations

import json
import logging
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
    if not isinstance(payload, dict):
        raise RequestError(400, "request body must be a JSON object")
    if "messages" not in payload:
        raise RequestError(400, "missing required field 'messages'", "messages")
    try:
        messages = normalize_request(payload["messages"])
    except ValueError as err:
        raise RequestError(400, str(err), "messages") from None
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
            raise RequestError(400, f"'{key}' must be a {kind.__name__}", key)
        changes[field_name] = min(value, limit) if field_name == "max_new_tokens" else kind(value)
    try:
        sampling = system.with_sampling(**changes)
    except ValueError as err:
        raise RequestError(400, str(err)) from None
    return messages, sampling


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


class _Handler(BaseHTTPRequestHandler):
    server: ChatServer  # type: ignore[assignment]
    protocol_version = "HTTP/1.1"

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
        if length is None:
            raise RequestError(411, "a Content-Length header is required")
        try:
            size = int(length)
        except ValueError:
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
        self._send(200, completion_body(response, self.server.model_name, self.server.expose_feedback))

    def _release_slot(self) -> None:
        with self.server.count_lock:
            self.server.in_flight -= 1
        self.server.slots.release()


class ChatServer(ThreadingHTTPServer):
    """The HTTP server around a :class:`~waltzlit.deploy.pipeline.TwoAgentSystem` (or anything with
    ``respond(messages, sampling)``, ``with_sampling`` and ``rollout``). Port 0 picks a free port."""

    daemon_threads = True

    def __init__(self, system, host: str = "127.0.0.1", port: int = 8000, model_name: str = "waltzlit",
                 max_concurrent: int = 4, max_body_bytes: int = 1 << 20, expose_feedback: bool = False) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent: must be >= 1, got {max_concurrent}")
        super().__init__((host, port), _Handler)
        self.system, self.model_name, self.expose_feedback = system, model_name, expose_feedback
        self.max_concurrent, self.max_body_bytes = max_concurrent, max_body_bytes
        self.slots = threading.BoundedSemaphore(max_concurrent)
        self.model_lock, self.count_lock = threading.Lock(), threading.Lock()
        self.in_flight = 0

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
    namespace = parser.instantiate(parser.parse_args(args))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    system = load_deployed(deploy_config(namespace))
    server = ChatServer(system, namespace.host, namespace.port, namespace.model_name, namespace.max_concurrent,
                        namespace.max_body_bytes, namespace.expose_feedback)
    log.info("serving %s/v1/chat/completions (health: %s/health)", server.url, server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
