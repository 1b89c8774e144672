"""TEST SERVER ONLY: a real HTTP server on 127.0.0.1 speaking OpenAI's POST /v1/chat/completions wire format.

Used by the tests and benchmarks to drive the real `openai` client. Its behaviour is scriptable: an answer
function, a fixed delay, and faults for the next N requests or for matching requests (`FAULTS`: answer late, an
HTTP error status, a body that is not JSON, empty or garbage content, a dropped connection). It records every
request's headers and JSON body in memory (never on disk) so tests can assert on them.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Union

Body = dict[str, Any]
Fault = Union[str, int]
# The faults a test can script; an int is an HTTP error status (429, 500, 503, 400, ...).
FAULTS = ("late", "malformed", "empty", "garbage", "drop")
GARBAGE = "\x00\x1b[2J\ufffd\ufffd #### \x07\x07 ]]}{"  # control characters, undecodable bytes, no words


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
        self._send_raw(status, json.dumps(payload).encode(), headers)

    def _send_raw(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
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

    `answer(body) -> str` gives the assistant message content; `delay` seconds pass before each answer; a "late"
    fault waits `late_seconds` first (past a client's timeout); HTTP-error faults carry `Retry-After-Ms:
    retry_after_ms` (None: no header). Use as a context manager; `base_url` is what the client needs.
    """

    def __init__(self, answer: Callable[[Body], str] = echo_answer, delay: float = 0.0, late_seconds: float = 2.0,
                 retry_after_ms: int | None = 10):
        self.answer = answer
        self.delay = delay
        self.late_seconds = late_seconds
        self.retry_after_ms = retry_after_ms
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._faults: list[Fault] = []
        self._fault_when: list[tuple[Callable[[Body], bool], Fault]] = []
        self._in_flight = 0
        self.max_in_flight = 0  # the most requests the server was answering at one time
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- scripting -------------------------------------------------------------------------------------------
    def fault_next(self, fault: Fault, n: int = 1) -> None:
        """The next `n` requests get `fault` (one of FAULTS, or an HTTP status)."""
        assert fault in FAULTS or isinstance(fault, int), f"unknown fault {fault!r}; expected one of {FAULTS} or int"
        with self._lock:
            self._faults.extend([fault] * n)

    def fault_when(self, predicate: Callable[[Body], bool], fault: Fault) -> None:
        """Every request whose body matches `predicate` gets `fault`, forever (after any `fault_next`)."""
        assert fault in FAULTS or isinstance(fault, int), f"unknown fault {fault!r}; expected one of {FAULTS} or int"
        with self._lock:
            self._fault_when.append((predicate, fault))

    def clear_faults(self) -> None:
        """Answer normally from now on."""
        with self._lock:
            self._faults.clear()
            self._fault_when.clear()

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
            fault = self._faults.pop(0) if self._faults else None
            if fault is None:
                fault = next((f for p, f in self._fault_when if p(body)), None)
        if fault == "drop":  # read the request, then close the connection without a word
            handler.close_connection = True
            return
        if isinstance(fault, int):
            headers = {"Retry-After-Ms": str(self.retry_after_ms)} if self.retry_after_ms is not None else None
            kind = "rate_limit_exceeded" if fault == 429 else "server_error"
            error = {"error": {"message": f"test server: scripted HTTP {fault}", "type": kind, "code": str(fault)}}
            handler._send_json(fault, error, headers)
            return
        if fault == "malformed":  # HTTP 200, but the body is cut off: not JSON
            handler._send_raw(200, b'{"id": "chatcmpl-test-%d", "object": "chat.completion", "choices": [{"ind' % n)
            return
        if fault == "late":
            self._stop.wait(self.late_seconds)
        if self.delay:
            time.sleep(self.delay)
        canned = {"empty": "", "garbage": GARBAGE}
        content = canned[fault] if fault in canned else self.answer(body)
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
