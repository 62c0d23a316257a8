"""A judge served over HTTP by any OpenAI-compatible server (vLLM, TGI, ...).

Each (prompt, response) pair is one ``POST {base_url}/chat/completions`` at temperature 0; up to
``max_concurrency`` requests run at once. Failures that may pass (connection errors, timeouts,
HTTP 408/429/5xx, a body that is not a chat completion) are retried with exponential backoff;
after ``max_retries`` retries, or at once on another HTTP 4xx (auth, bad request: retrying cannot
help), :class:`JudgeError` is raised naming the endpoint and the last error. The training step
then fails before any update, so the checkpoints written so far stay as they were.

Prompt formats (``prompt_format``):

* ``"wildguard"`` (default): the whole WildGuard input text as one user message, parsed with
  :func:`~waltzlit.judges.wildguard.parse_wildguard_output`. Serve WildGuard with a pass-through
  chat template, as allenai's server example does, e.g. ``vllm serve allenai/wildguard
  --chat-template passthrough.jinja`` with ``{% for message in messages %}{{ message['content']
  }}{% endfor %}``; the text already holds WildGuard's ``<s><|user|> [INST] ... <|assistant|>``.
* ``"llama_guard"``: the conversation as user/assistant messages; the server applies the
  checkpoint's Llama Guard template. Refusals come from ``refusal_fallback`` (see llama_guard.py).

A completion whose text cannot be parsed is not retried: ``on_parse_error`` decides it, as for the
local judges, and it is counted in ``parse_errors``.

Limits: redirects are never followed (a 3xx is a :class:`JudgeError` naming its target), so the
``Authorization`` header only ever goes to ``base_url``'s origin; a reply larger than
``max_reply_bytes`` (4 MB) is a :class:`JudgeError`; ``timeout_s`` bounds a whole request, however
slowly a server trickles its status line, headers or body: a timer shuts the request's socket when
the time is up (a socket timeout only bounds one read). A connection attempt under way at that
moment still ends at its own timeout (``timeout_s``); name resolution is the system's.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import random
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

from waltzlit.judges.base import Judge, JudgeError
from waltzlit.judges.llama_guard import (
    llama_guard_messages,
    llama_guard_verdict,
    parse_llama_guard_output,
    rule_refusals,
)
from waltzlit.judges.wildguard import (
    check_lengths,
    check_policy,
    format_wildguard_input,
    parse_wildguard_output,
    wildguard_verdict,
)
from waltzlit.types import JudgeVerdict, PromptRecord

log = logging.getLogger(__name__)

_RETRY_STATUS = {408, 409, 425, 429}
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: urllib then raises the 3xx as an HTTPError (handled above)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_requests = threading.local()
"""The :class:`_Deadline` of the request this thread is making (urllib opens connections on it)."""


class _Deadline:
    """Shuts the socket of this thread's request when ``seconds`` have passed.

    urllib reads the status line and headers before it returns, with a timeout per read only, so a
    server sending one byte a second could hold a request for as long as it likes; shutting the
    socket ends any read at once. The socket is duplicated when it connects: shutdown acts on the
    connection behind every descriptor, and a TLS wrapper takes over (detaches) the original object.
    """

    def __init__(self, seconds: float) -> None:
        self.fired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> None:
        _requests.deadline = self
        self._timer.start()

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        _requests.deadline = None
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock.dup()
            fired = self.fired
        if fired:
            self._fire()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)


def _watched(connection_class: type) -> type:
    """``connection_class`` whose new sockets are handed to this thread's :class:`_Deadline`."""

    class Watched(connection_class):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            create = self._create_connection

            def create_watched(*create_args, **create_kwargs):
                sock = create(*create_args, **create_kwargs)
                deadline = getattr(_requests, "deadline", None)
                if deadline is not None:
                    deadline.watch(sock)
                return sock

            self._create_connection = create_watched

    return Watched


_WATCHED = {http.client.HTTPConnection: _watched(http.client.HTTPConnection),
            http.client.HTTPSConnection: _watched(http.client.HTTPSConnection)}


class _WatchedHTTPHandler(urllib.request.HTTPHandler):
    def do_open(self, http_class, req, **http_conn_args):
        return super().do_open(_WATCHED.get(http_class, http_class), req, **http_conn_args)


class _WatchedHTTPSHandler(urllib.request.HTTPSHandler):
    def do_open(self, http_class, req, **http_conn_args):
        return super().do_open(_WATCHED.get(http_class, http_class), req, **http_conn_args)


class _Retryable(Exception):
    """A failure worth another attempt; ``delay`` is a server-requested wait (Retry-After)."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class OpenAIChatJudge(Judge):
    """Judge through an OpenAI-compatible chat-completions endpoint (module docstring).

    Args:
        base_url: server root including the API prefix, e.g. ``http://10.0.0.5:8000/v1``.
        model: model name the server knows the judge by.
        prompt_format: "wildguard" or "llama_guard".
        api_key_env: name of the environment variable holding the API key (never the key).
        max_concurrency: requests in flight at once.
        timeout_s: time for a whole request: connect, headers and body (a trickling reply too).
        max_retries: retries after the first attempt.
        backoff_s: first retry delay; doubles each retry (with up to 10% jitter).
        backoff_max_s: cap on one delay.
        max_tokens: completion budget per verdict.
        on_parse_error: "unsafe", "safe", "refusal" or "raise" (see wildguard.py).
        refusal_fallback: llama_guard format only: "rule" or "none".
        extra_body: extra JSON fields of every request (e.g. ``{"top_p": 1.0}``).
        max_reply_bytes: a larger reply is an error (a verdict is a few hundred bytes).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000/v1",
        model: str = "allenai/wildguard",
        prompt_format: str = "wildguard",
        api_key_env: str | None = None,
        max_concurrency: int = 8,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        max_tokens: int = 32,
        on_parse_error: str = "unsafe",
        refusal_fallback: str = "rule",
        extra_body: dict[str, Any] | None = None,
        max_reply_bytes: int = 4 << 20,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: must start with http:// or https://, got {base_url!r}")
        if prompt_format not in ("wildguard", "llama_guard"):
            raise ValueError(f"prompt_format: must be 'wildguard' or 'llama_guard', got {prompt_format!r}")
        if refusal_fallback not in ("rule", "none"):
            raise ValueError(f"refusal_fallback: must be 'rule' or 'none', got {refusal_fallback!r}")
        if max_reply_bytes < 1:
            raise ValueError(f"max_reply_bytes: must be >= 1, got {max_reply_bytes}")
        if max_concurrency < 1 or max_retries < 0 or timeout_s <= 0 or backoff_s < 0 or max_tokens < 1:
            raise ValueError("max_concurrency >= 1, max_retries >= 0, timeout_s > 0, backoff_s >= 0, max_tokens >= 1")
        check_policy(on_parse_error)
        self.api_key: str | None = None
        if api_key_env is not None:
            self.api_key = os.environ.get(api_key_env)
            if not self.api_key:
                raise ValueError(f"api_key_env: environment variable {api_key_env!r} is not set")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.model, self.prompt_format, self.max_tokens = model, prompt_format, max_tokens
        self.max_concurrency, self.timeout_s, self.max_retries = max_concurrency, timeout_s, max_retries
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.on_parse_error, self.refusal_fallback = on_parse_error, refusal_fallback
        self.extra_body = dict(extra_body or {})
        self.max_reply_bytes = max_reply_bytes
        # A proxy can never reach this machine's loopback; honour proxy settings for anything else.
        host = urllib.parse.urlsplit(self.base_url).hostname or ""
        handlers = [urllib.request.ProxyHandler({})] if host in _LOOPBACK else []
        self._opener = urllib.request.build_opener(*handlers, _NoRedirect(), _WatchedHTTPHandler(),
                                                   _WatchedHTTPSHandler())
        self.parse_errors = 0
        self.num_verdicts = 0
        self.num_retries = 0

    def messages(self, prompt: str, response: str) -> list[dict[str, Any]]:
        """The chat messages sent for one pair."""
        if self.prompt_format == "wildguard":
            return [{"role": "user", "content": format_wildguard_input(prompt, response)}]
        return llama_guard_messages(prompt, response)

    def _post_once(self, body: bytes) -> str:
        """One request -> the completion text. Raises _Retryable or JudgeError."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        deadline = _Deadline(self.timeout_s)
        with deadline:
            try:
                return self._exchange(request)
            except (_Retryable, JudgeError) as err:
                if deadline.fired:  # whatever broke, it broke because the time was up
                    raise _Retryable(f"timed out: the request took longer than timeout_s={self.timeout_s}") from err
                raise

    def _exchange(self, request: urllib.request.Request) -> str:
        """Send ``request``, read the reply -> the completion text. Raises _Retryable or JudgeError."""
        try:
            with self._opener.open(request, timeout=self.timeout_s) as reply:
                payload = self._read_reply(reply)
        except urllib.error.HTTPError as err:
            if 300 <= err.code < 400:
                target = err.headers.get("Location") if err.headers else None
                raise JudgeError(f"judge endpoint {self.url} redirected (HTTP {err.code}) to {target!r}; redirects "
                                 "are not followed, so credentials never leave base_url's origin: set base_url to the "
                                 "final address") from err
            detail = err.read(300)[:300].decode("utf-8", "replace")
            message = f"HTTP {err.code}: {detail}"
            if err.code in _RETRY_STATUS or err.code >= 500:
                retry_after = err.headers.get("Retry-After") if err.headers else None
                # isascii: str.isdigit() accepts digits float() rejects (e.g. "\xb2", a latin-1 header byte).
                delay = float(retry_after) if retry_after and retry_after.isascii() and retry_after.isdigit() else None
                raise _Retryable(message, delay) from err
            raise JudgeError(f"judge endpoint {self.url} refused the request ({message}); not retried") from err
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            reason = getattr(err, "reason", err)
            raise _Retryable(f"{type(reason).__name__}: {reason}") from err
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        # RecursionError: a deeply nested body (found by fuzzing) is garbage like any other.
        except (ValueError, KeyError, IndexError, TypeError, RecursionError) as err:
            raise _Retryable(f"not a chat completion: {payload[:200]!r}") from err
        if not isinstance(content, str):
            raise _Retryable(f"completion content is {type(content).__name__}, not text: {payload[:200]!r}")
        return content

    def _read_reply(self, reply) -> bytes:
        """The reply body, read in pieces: at most ``max_reply_bytes``."""
        chunks, size = [], 0
        while True:
            chunk = reply.read1(65536) if hasattr(reply, "read1") else reply.read(65536)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.max_reply_bytes:
                raise JudgeError(f"judge endpoint {self.url} sent a reply over max_reply_bytes={self.max_reply_bytes}; "
                                 "not a verdict")
            chunks.append(chunk)

    def complete(self, messages: list[dict[str, Any]], abort: threading.Event | None = None) -> str:
        """The completion text for ``messages``, with retries; JudgeError after the last one.

        ``abort`` (set when another request of the batch failed for good) ends the retries early.
        """
        body = {"model": self.model, "messages": messages, "temperature": 0.0, "max_tokens": self.max_tokens}
        data = json.dumps({**body, **self.extra_body}).encode("utf-8")
        abort = abort or threading.Event()
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                return self._post_once(data)
            except _Retryable as err:
                last = str(err)
                if attempt == self.max_retries or abort.is_set():
                    break
                self.num_retries += 1
                delay = min(self.backoff_max_s, self.backoff_s * 2**attempt) * (1 + 0.1 * random.random())
                if err.delay is not None:
                    delay = max(delay, min(err.delay, self.backoff_max_s))
                log.warning(
                    "judge endpoint %s: %s; retry %d/%d in %.2fs", self.url, last, attempt + 1, self.max_retries, delay
                )
                if abort.wait(delay):
                    break
        raise JudgeError(
            f"judge endpoint {self.url} failed after {attempt + 1} attempts; last error: {last}. "
            "Check that the server is up and reachable; checkpoints written so far are intact."
        )

    def complete_all(self, conversations: Sequence[list[dict[str, Any]]]) -> list[str]:
        """Completions for many conversations, at most ``max_concurrency`` in flight, in order.

        The first request that fails for good stops the batch: queued requests are dropped and the
        others stop retrying, so the error surfaces after one request's retries, not the batch's.
        """
        if not conversations:
            return []
        abort = threading.Event()
        pool = ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(conversations)), thread_name_prefix="judge")
        try:
            futures = [pool.submit(self.complete, messages, abort) for messages in conversations]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f in done and f.exception() is not None), None)
            if failed is not None:
                abort.set()
                raise failed.exception()
            return [future.result() for future in futures]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def judge(self, records: Sequence[PromptRecord], responses: Sequence[str]) -> list[JudgeVerdict]:
        check_lengths(records, responses)
        texts = self.complete_all([self.messages(r.prompt, c) for r, c in zip(records, responses)])
        if self.prompt_format == "wildguard":
            verdicts = [wildguard_verdict(parse_wildguard_output(t), self.on_parse_error, t) for t in texts]
        else:
            refusals = rule_refusals(responses, self.refusal_fallback)
            verdicts = [
                llama_guard_verdict(parse_llama_guard_output(t), refusal, self.on_parse_error, t)
                for t, refusal in zip(texts, refusals)
            ]
        errors = sum(v.parse_error for v in verdicts)
        self.num_verdicts += len(verdicts)
        self.parse_errors += errors
        if errors:
            log.warning(
                "judge endpoint %s: %d/%d completions unparsable (policy %s)",
                self.url,
                errors,
                len(verdicts),
                self.on_parse_error,
            )
        return verdicts
