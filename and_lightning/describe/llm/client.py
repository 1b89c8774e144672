"""Async request machinery shared by remote backends: bounded concurrency, retries with seeded jittered
exponential backoff on timeouts / 429 / 5xx, and validation of structured replies (a bad reply is retried too).
"""
from __future__ import annotations

import asyncio
import logging
import random
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from and_lightning.describe.llm.base import ChatLLM, ChatRequest, LLMError, LLMReplyError, LLMRequestError
from and_lightning.describe.llm.schema import InvalidReply, parse_reply

log = logging.getLogger(__name__)


class TransientError(Exception):
    """One attempt failed in a way worth retrying (timeout, connection, 429, 5xx, bad structured reply)."""

    def __init__(self, what: str, status: Any = None, retry_after: float | None = None):
        super().__init__(what)
        self.what, self.status, self.retry_after = what, status, retry_after


class PermanentError(Exception):
    """One attempt failed in a way a retry cannot fix (e.g. HTTP 400, 401, 404)."""

    def __init__(self, what: str, status: Any = None):
        super().__init__(what)
        self.what, self.status = what, status


def backoff_delay(
    retry: int, base: float, cap: float, jitter: float, u: float, retry_after: float | None = None
) -> float:
    """Seconds to wait before retry number `retry` (0-based): min(cap, base*2^retry) * (1 + jitter*u), u in [0,1);
    at least the server's Retry-After (itself capped at `cap`)."""
    delay = min(cap, base * 2.0**retry) * (1.0 + jitter * u)
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


@dataclass
class AsyncRetryingLLM(ChatLLM):
    """A ChatLLM whose backend is called once per request through `_send`, under a semaphore, with retries."""

    concurrency: int = 16
    max_retries: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    jitter: float = 0.5
    timeout: float = 60.0
    seed: int | None = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.concurrency < 1:
            raise ValueError(f"{self.name}: concurrency must be >= 1, got {self.concurrency}")
        if self.max_retries < 0:
            raise ValueError(f"{self.name}: max_retries must be >= 0, got {self.max_retries}")
        self._rng = random.Random(self.seed)

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[Any]:
        """Open what `_send` needs (e.g. an HTTP client) for one batch; it lives inside the batch's event loop."""
        yield None

    async def _send(self, session: Any, request: ChatRequest) -> str:
        """Send one attempt; return the reply text or raise TransientError / PermanentError."""
        raise NotImplementedError

    async def _complete_uncached(
        self, items: list[tuple[str, ChatRequest]], on_result: Callable[[str, Any], None]
    ) -> None:
        semaphore = asyncio.Semaphore(self.concurrency)
        abort = asyncio.Event()  # set by the first request that fails for good: queued requests are not sent

        async def one(session: Any, key: str, request: ChatRequest) -> None:
            async with semaphore:
                if abort.is_set():
                    return
                try:
                    value = await self._attempts(session, request)
                except Exception:
                    abort.set()
                    raise
                on_result(key, value)

        async with self._session() as session:
            outcomes = await asyncio.gather(*(one(session, k, r) for k, r in items), return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:
            raise next((e for e in errors if not isinstance(e, LLMError)), errors[0])

    async def _attempts(self, session: Any, request: ChatRequest) -> Any:
        """Send `request` until it succeeds or `max_retries` retries are spent; parse structured replies."""
        last: TransientError | None = None
        bad_reply = False
        for attempt in range(self.max_retries + 1):
            if last is not None:
                delay = backoff_delay(
                    attempt - 1, self.backoff_base, self.backoff_max, self.jitter, self._rng.random(), last.retry_after
                )
                log.info("%s: %s; retry %d/%d in %.2fs", self.describe(), last.what, attempt, self.max_retries, delay)
                await asyncio.sleep(delay)
                self.stats.retries += 1
            self.stats.requests_sent += 1
            try:
                content = await self._send(session, request)
                if request.schema is None:
                    return content
                try:
                    return parse_reply(content, request.schema)
                except InvalidReply as e:
                    raise TransientError(str(e), status="invalid_reply") from e
            except TransientError as e:
                last, bad_reply = e, e.status == "invalid_reply"
            except PermanentError as e:
                raise LLMRequestError(
                    f"{self.describe()}: {e.what} (not retried: retrying cannot fix this)",
                    backend=self.name, model=self.model, status=e.status, attempts=attempt + 1,
                ) from e
        assert last is not None
        error = LLMReplyError if bad_reply else LLMRequestError
        raise error(
            f"{self.describe()}: gave up after {self.max_retries + 1} attempts "
            f"(max_retries={self.max_retries}); last error: {last.what}",
            backend=self.name, model=self.model, status=last.status, attempts=self.max_retries + 1,
        )
