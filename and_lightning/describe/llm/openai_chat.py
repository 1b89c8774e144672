"""Chat LLM over any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp) through `openai.AsyncOpenAI`.

The API key is read from the environment variable NAMED by `api_key_env` when a batch starts; it is never an
attribute, a config value, a cache key or a log line. Timeouts, dropped connections, 408/409/429 and 5xx are
retried by the openai client itself (`max_retries`, exponential backoff, honouring Retry-After); a reply that is
not a chat completion or fails validation is requested again by `AsyncRetryingLLM`.
"""
from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

import openai

from and_lightning.describe.llm.base import ChatRequest, LLMRequestError
from and_lightning.describe.llm.client import AsyncRetryingLLM
from and_lightning.describe.llm.schema import InvalidReply, response_format, shown

log = logging.getLogger(__name__)

NO_KEY_PLACEHOLDER = "EMPTY"  # what vLLM / Ollama / llama.cpp accept when they run without authentication


def _error_text(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        body = body.get("message", body)
    return str(body if body else error.message)


@dataclass
class OpenAIChatLLM(AsyncRetryingLLM):
    """`ChatLLM` for `/v1/chat/completions`. Structured output uses `response_format` json_schema."""

    name: str = "openai"
    base_url: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = 0
    max_tokens: int | None = None
    frequency_penalty: float | None = None  # > 0 discourages repeats (transformers serve: repetition_penalty 1 + it)
    strict_schema: bool = True
    extra_body: dict | None = None

    semantic_fields = ("temperature", "top_p", "seed", "max_tokens", "frequency_penalty", "strict_schema",
                       "extra_body")

    def describe(self) -> str:
        return f"{self.name} backend (model {self.model!r} at {self.base_url or 'the OpenAI API'})"

    def _api_key(self) -> str:
        """The key from the environment; the placeholder for a self-hosted server without one."""
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            return key
        if self.base_url is None:
            raise LLMRequestError(
                f"{self.describe()}: no API key: set the environment variable {self.api_key_env or 'OPENAI_API_KEY'} "
                "(its name is llm.api_key_env), or set llm.base_url to a server that needs no key",
                backend=self.name, model=self.model, status="no_api_key",
            )
        log.info("%s: environment variable %s is not set; sending a placeholder key", self.describe(), self.api_key_env)
        return NO_KEY_PLACEHOLDER

    async def _count_attempt(self, request: Any) -> None:
        """Every HTTP request the client sends, its own retries included, counts in `stats`."""
        self.stats.requests_sent += 1
        if request.headers.get("x-stainless-retry-count", "0") != "0":
            self.stats.retries += 1

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[openai.AsyncOpenAI]:
        client = openai.AsyncOpenAI(
            api_key=self._api_key(), base_url=self.base_url, timeout=self.timeout, max_retries=self.max_retries,
            http_client=openai.DefaultAsyncHttpxClient(event_hooks={"request": [self._count_attempt]}),
        )
        async with client:
            yield client

    def _failed(self, request: ChatRequest, what: str, status: Any, retried: bool) -> LLMRequestError:
        tries = (f"after {self.max_retries + 1} attempts (max_retries={self.max_retries})" if retried
                 else "(not retried: retrying cannot fix this)")
        return LLMRequestError(f"{self.describe()}: {request.label} request failed {tries}: {what}",
                               backend=self.name, model=self.model, status=status,
                               attempts=self.max_retries + 1 if retried else 1)

    async def _send(self, client: openai.AsyncOpenAI, request: ChatRequest) -> str:
        optional = {"top_p": self.top_p, "seed": self.seed, "max_tokens": self.max_tokens,
                    "frequency_penalty": self.frequency_penalty}
        kwargs: dict[str, Any] = {"model": self.model, "messages": request.messages, "temperature": self.temperature,
                                  **{k: v for k, v in optional.items() if v is not None}}
        if self.extra_body:
            kwargs["extra_body"] = dict(self.extra_body)
        if request.schema is not None:
            kwargs["response_format"] = response_format(request.schema, self.strict_schema)
        try:
            raw = await client.chat.completions.with_raw_response.create(**kwargs)
        except openai.APITimeoutError as e:
            raise self._failed(request, f"no reply within the {self.timeout}s timeout", "timeout", True) from e
        except openai.APIConnectionError as e:
            raise self._failed(request, f"connection failed ({e.__cause__ or e})", "connection", True) from e
        except openai.APIStatusError as e:
            what = f"HTTP {e.status_code}, reply: {shown(_error_text(e))}"
            if e.status_code in (401, 403):
                what += f" (check the key in the environment variable {self.api_key_env})"
            retried = e.status_code in (408, 409, 429) or e.status_code >= 500  # what the openai client retries
            raise self._failed(request, what, e.status_code, retried) from e
        body = raw.http_response.text
        try:
            content = raw.parse().choices[0].message.content
        except (ValueError, TypeError, LookupError, AttributeError, openai.APIResponseValidationError) as e:
            raise InvalidReply(f"the response is not a chat completion ({type(e).__name__})", body) from e
        if not isinstance(content, str):
            raise InvalidReply("the reply has no message content", body)
        return content
