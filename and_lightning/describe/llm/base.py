"""The chat-LLM interface: cached, de-duplicated `complete` / `complete_many` over a backend's `_complete_uncached`.

A reply is validated (`schema.valid_reply`) and only then cached on disk under sha256(backend, model, messages,
params, schema), as soon as it arrives, so a rerun of the same config sends nothing twice, a failed run keeps what
finished, and nothing invalid is ever cached or served from a cache.
"""
from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Awaitable, Callable, Sequence, TypeVar

from and_lightning.describe.llm.schema import InvalidReply, valid_reply
from and_lightning.store.hashing import hash_obj
from and_lightning.store.kvcache import KVCache

log = logging.getLogger(__name__)
T = TypeVar("T")
MISSING = object()  # "no cached reply"


class LLMError(RuntimeError):
    """Base class of LLM failures. `backend`, `model` and `status` say which backend failed and how."""

    def __init__(self, message: str, *, backend: str = "", model: str = "", status: Any = None, attempts: int = 0):
        super().__init__(message)
        self.backend, self.model, self.status, self.attempts = backend, model, status, attempts


class LLMRequestError(LLMError):
    """A request failed for good: retries ran out, or the server refused it (e.g. HTTP 401/400)."""


class LLMReplyError(LLMRequestError):
    """A request kept getting replies that fail validation (empty or garbage text, invalid JSON, wrong fields)."""


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to make: OpenAI-style `messages`, a JSON schema for structured output (None: text),
    what kind of request it is for error messages (`kind`; default: the schema's title, or "text"), and whether a
    reply that is not the JSON asked for is kept as its text (`text_fallback`: the caller parses free text) rather
    than retried and failed."""

    messages: list[dict]
    schema: dict | None = None
    kind: str | None = None
    text_fallback: bool = False

    @property
    def label(self) -> str:
        return self.kind or str((self.schema or {}).get("title") or "text")


@dataclass
class LLMStats:
    """Counters tests and logs read. `requests_sent` counts every attempt sent to the backend, retries included."""

    requests_sent: int = 0
    retries: int = 0
    completed: int = 0
    cache_hits: int = 0
    deduplicated: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def as_request(item: ChatRequest | Sequence[dict] | tuple) -> ChatRequest:
    """Accept a ChatRequest, a list of messages or a (messages, schema) tuple."""
    if isinstance(item, ChatRequest):
        return item
    if isinstance(item, tuple) and len(item) == 2:
        return ChatRequest(list(item[0]), item[1])
    if isinstance(item, list) and all(isinstance(m, dict) and "role" in m for m in item):
        return ChatRequest(item)
    raise TypeError(
        "a chat request must be a ChatRequest, a list of {'role', 'content'} messages or a (messages, schema) "
        f"tuple; got {type(item).__name__}: {str(item)[:80]}"
    )


def run_sync(make_coro: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, also when an event loop is already running (notebooks)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coro())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make_coro())).result()


@dataclass
class ChatLLM:
    """Base of every chat backend. Subclasses set `name` and `semantic_fields`, implement `_complete_uncached`."""

    model: str
    cache_path: str | os.PathLike | None = None
    stats: LLMStats = field(default_factory=LLMStats, init=False, repr=False)

    name = "base"
    # The fields besides `model` that change a reply (sampling parameters): with the backend name and the model,
    # they key every cache; how a reply is fetched (server, timeouts, retries, concurrency, cache paths) never does.
    # None: not declared, so every config field counts for the dissection key (`store.kvcache.semantic_config`).
    semantic_fields = None  # a tuple of field names (a class attribute, not a dataclass field)

    def __post_init__(self) -> None:
        self.cache = KVCache(self.cache_path) if self.cache_path else None

    def params(self) -> dict:
        """The values of `semantic_fields`."""
        return {f: getattr(self, f) for f in self.semantic_fields or ()}

    def request_key(self, request: ChatRequest) -> str:
        """sha256 of (backend, model, messages, params, schema): the cache key of one request."""
        return hash_obj(
            {
                "backend": self.name,
                "model": self.model,
                "messages": request.messages,
                "params": self.params(),
                "schema": request.schema,
            }
        )

    def cached(self, key: str, request: ChatRequest) -> Any:
        """The cached reply to `request`, or `MISSING`. A cached reply that fails validation (written by an older
        version) counts as missing, and is replaced when the request is answered."""
        value = self.cache.get(key, MISSING) if self.cache is not None else MISSING
        if value is MISSING:
            return value
        try:
            return valid_reply(value, request.schema, request.text_fallback)
        except InvalidReply as e:
            log.warning("%s: ignoring an invalid cached %s reply in %s (%s)", self.describe(), request.label,
                        self.cache.path, e.reason)
            return MISSING

    def complete(self, messages: list[dict], schema: dict | None = None) -> str | dict:
        """One reply: a string, or the parsed dict when `schema` is given."""
        return self.complete_many([ChatRequest(list(messages), schema)])[0]

    def complete_many(self, requests: Sequence[Any]) -> list[Any]:
        """Replies to `requests` in order (see `as_request` for accepted forms); blocking."""
        return run_sync(lambda: self.acomplete_many(requests))

    async def acomplete_many(self, requests: Sequence[Any]) -> list[Any]:
        """Async `complete_many`: cached replies come from disk, duplicates are sent once, the rest to the backend."""
        reqs = [as_request(r) for r in requests]
        keys = [self.request_key(r) for r in reqs]
        results: dict[str, Any] = {}
        todo: dict[str, ChatRequest] = {}
        for key, req in zip(keys, reqs):
            if key in results or key in todo:
                self.stats.deduplicated += 1
                continue
            cached = self.cached(key, req)
            if cached is MISSING:
                todo[key] = req
            else:
                self.stats.cache_hits += 1
                results[key] = cached

        def on_result(key: str, value: Any, fresh: bool = True) -> None:
            """Record a reply: `fresh` (validated, just received: cached now) or read from the cache."""
            results[key] = value
            if not fresh:
                self.stats.cache_hits += 1
                return
            self.stats.completed += 1
            if self.cache is not None:
                self.cache.put(key, value)

        if todo:
            try:
                await self._complete_uncached(list(todo.items()), on_result)
            except LLMError as e:
                done = sum(k in results for k in todo)
                where = f"kept in the cache {self.cache.path}" if self.cache is not None else "not cached"
                note = f"{done} of the {len(todo)} uncached requests of this batch finished: {where}"
                e.args = (f"{e.args[0]} [{note}]",)
                raise
        return [results[k] for k in keys]

    async def _complete_uncached(
        self, items: list[tuple[str, ChatRequest]], on_result: Callable[..., None]
    ) -> None:
        """Answer every (key, request) with a reply that passed `valid_reply`; call `on_result(key, reply)` as each
        finishes; raise LLMError on failure."""
        raise NotImplementedError

    def describe(self) -> str:
        """Backend and model, for error messages."""
        return f"{self.name} backend (model {self.model!r})"
