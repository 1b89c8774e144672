"""TEST SERVER ONLY: a real HTTP server on 127.0.0.1 speaking OpenAI's POST /v1/chat/completions wire format.

Used by the tests and benchmarks to drive the real `openai` client. Its behaviour is scriptable (answer function,
fixed delay, fail the next N requests or matching requests with an HTTP status, hang past the client's timeout),
and it records every request's headers and JSON body in memory (never on disk) so tests can assert on them.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

Body = dict[str, Any]


def last_user_text(body: Body) -> str:
    """The text parts of the last user message of a chat-completions request body."""
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return " ".join(p.get("text", "") for p in content if p.get("type") == "text")
    return ""


def echo_answer(body: Body) -> str:
    return f"echo: {last_user_text(body)}"


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: Body


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid the 40 ms delayed-ACK stall
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): nothing to answer
            self.close_connection = True

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(length)
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send_json(404, {"error": {"message": f"test server: no route {self.path}", "type": "not_found"}})
            return
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            self._send_json(400, {"error": {"message": "test server: body is not JSON", "type": "invalid_request"}})
            return
        self.server.owner._handle(self, body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 drops bursts of connections (1 s SYN retransmits)
    owner: "OpenAITestServer"


class OpenAITestServer:
    """Test double of an OpenAI-compatible chat server, on a free port of 127.0.0.1, in a background thread.

    `answer(body) -> str` gives the assistant message content; `delay` seconds pass before each answer.
    Use as a context manager; `base_url` is what the client needs.
    """

    def __init__(self, answer: Callable[[Body], str] = echo_answer, delay: float = 0.0):
        self.answer = answer
        self.delay = delay
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._fail_next: list[tuple[int, float | None]] = []
        self._fail_when: list[tuple[Callable[[Body], bool], int]] = []
        self._hang_next: list[float] = []
        self._in_flight = 0
        self.max_in_flight = 0  # the most requests the server was answering at one time
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- scripting -------------------------------------------------------------------------------------------
    def fail_next(self, n: int, status: int = 429, retry_after: float | None = None) -> None:
        """The next `n` requests get HTTP `status` (optionally with a Retry-After header)."""
        with self._lock:
            self._fail_next.extend([(status, retry_after)] * n)

    def fail_when(self, predicate: Callable[[Body], bool], status: int = 500) -> None:
        """Every request whose body matches `predicate` gets HTTP `status`, forever."""
        with self._lock:
            self._fail_when.append((predicate, status))

    def hang_next(self, n: int, seconds: float) -> None:
        """The next `n` requests wait `seconds` before answering (to exceed a client timeout)."""
        with self._lock:
            self._hang_next.extend([seconds] * n)

    # --- inspection ------------------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def bodies(self) -> list[Body]:
        with self._lock:
            return [r.body for r in self.requests]

    # --- lifecycle -------------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "start the test server first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> "OpenAITestServer":
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="openai-test-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "OpenAITestServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- request handling (runs in the server's threads) -----------------------------------------------------
    def _handle(self, handler: _Handler, body: Body) -> None:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            self._answer(handler, body)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _answer(self, handler: _Handler, body: Body) -> None:
        with self._lock:
            n = len(self.requests)
            self.requests.append(RecordedRequest(handler.path, dict(handler.headers.items()), body))
            hang = self._hang_next.pop(0) if self._hang_next else None
            fail = self._fail_next.pop(0) if self._fail_next else None
            if fail is None:
                fail = next(((s, None) for p, s in self._fail_when if p(body)), None)
        if hang is not None:
            self._stop.wait(hang)
        if fail is not None:
            status, retry_after = fail
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
            kind = "rate_limit_exceeded" if status == 429 else "server_error"
            error = {"error": {"message": f"test server: scripted HTTP {status}", "type": kind, "code": str(status)}}
            handler._send_json(status, error, headers)
            return
        if self.delay:
            time.sleep(self.delay)
        content = self.answer(body)
        handler._send_json(
            200,
            {
                "id": f"chatcmpl-test-{n}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", ""),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                        "logprobs": None,
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            },
        )
