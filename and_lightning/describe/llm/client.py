"""Async request machinery shared by remote backends: bounded concurrency, a claim per uncached entry so processes
sharing a cache share the work (`KVCache.claim`), and validation of every reply (`schema.valid_reply`).

Transport faults (timeouts, dropped connections, 429, 5xx) are retried by the backend's own client library
(`max_retries`) inside `_send`. A reply that arrives but fails validation (empty or garbage text, a body or content
that is not the JSON asked for) is requested again `reply_retries` times with exponential backoff; then the request
fails with an error naming the server, the request kind and the (truncated) reply. Nothing invalid is cached.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from and_lightning.describe.llm.base import MISSING, ChatLLM, ChatRequest, LLMError, LLMReplyError
from and_lightning.describe.llm.schema import InvalidReply, shown, valid_reply

log = logging.getLogger(__name__)

CLAIM_POLL_S = 0.05  # how often a request claimed by another process is looked for in the cache


@dataclass
class AsyncRetryingLLM(ChatLLM):
    """A ChatLLM whose backend is called once per request through `_send`, under a semaphore."""

    concurrency: int = 16
    max_retries: int = 5  # transport retries, done by the client library
    reply_retries: int = 2  # new requests after a reply that fails validation
    reply_backoff: float = 0.5  # seconds before the first of them, doubling for each next one
    timeout: float = 60.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, low in (("concurrency", 1), ("max_retries", 0), ("reply_retries", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{self.name}: {name} must be >= {low}, got {getattr(self, name)}")

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[Any]:
        """Open what `_send` needs (e.g. an HTTP client) for one batch; it lives inside the batch's event loop."""
        yield None

    async def _send(self, session: Any, request: ChatRequest) -> str:
        """Send one request (the client retries transport faults); return the reply text. Raise InvalidReply when
        the response is not a readable reply, LLMRequestError when the request failed for good."""
        raise NotImplementedError

    async def _complete_uncached(
        self, items: list[tuple[str, ChatRequest]], on_result: Callable[..., None]
    ) -> None:
        semaphore = asyncio.Semaphore(self.concurrency)
        abort = asyncio.Event()  # set by the first request that fails for good: queued requests are not sent

        async def one(session: Any, key: str, request: ChatRequest) -> None:
            while not abort.is_set():
                async with semaphore:
                    if abort.is_set():
                        return
                    with (self.cache.claim(key) if self.cache is not None else nullcontext(True)) as mine:
                        if mine:
                            value = self.cached(key, request)  # another process may have answered it meanwhile
                            if value is not MISSING:
                                on_result(key, value, fresh=False)
                                return
                            try:
                                on_result(key, await self._attempts(session, request))
                            except Exception:
                                abort.set()
                                raise
                            return
                await asyncio.sleep(CLAIM_POLL_S)  # another process is answering it: look again soon

        async with self._session() as session:
            outcomes = await asyncio.gather(*(one(session, k, r) for k, r in items), return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:
            raise next((e for e in errors if not isinstance(e, LLMError)), errors[0])

    async def _attempts(self, session: Any, request: ChatRequest) -> Any:
        """Send `request` until a reply passes `valid_reply` or `reply_retries` retries are spent."""
        for attempt in range(self.reply_retries + 1):
            if attempt:
                self.stats.retries += 1
                await asyncio.sleep(self.reply_backoff * 2 ** (attempt - 1))
            try:
                fallback = request.text_fallback and attempt == self.reply_retries  # free text, on the last try
                return valid_reply(await self._send(session, request), request.schema, fallback)
            except InvalidReply as e:
                last = e
                log.info("%s: invalid %s reply (%s), attempt %d of %d", self.describe(), request.label, e.reason,
                         attempt + 1, self.reply_retries + 1)
        raise LLMReplyError(
            f"{self.describe()}: {request.label} request got no valid reply in {self.reply_retries + 1} attempts "
            f"(reply_retries={self.reply_retries}): {last.reason}; last reply: {shown(last.reply)}",
            backend=self.name, model=self.model, status="invalid_reply", attempts=self.reply_retries + 1,
        )
