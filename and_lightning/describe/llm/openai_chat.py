"""Chat LLM over any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp) through `openai.AsyncOpenAI`.

The API key is read from the environment variable NAMED by `api_key_env` when a batch starts; it is never an
attribute, a config value, a cache key or a log line. The SDK's own retries are off: `AsyncRetryingLLM` retries.
"""
from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

import openai

from and_lightning.describe.llm.base import ChatRequest, LLMRequestError
from and_lightning.describe.llm.client import AsyncRetryingLLM, PermanentError, TransientError
from and_lightning.describe.llm.schema import response_format

log = logging.getLogger(__name__)

NO_KEY_PLACEHOLDER = "EMPTY"  # what vLLM / Ollama / llama.cpp accept when they run without authentication
_RETRYABLE_STATUS = {408, 409, 429}


def _retry_after(response: Any) -> float | None:
    try:
        return float(response.headers.get("retry-after"))
    except (AttributeError, TypeError, ValueError):
        return None


def _error_text(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        body = body.get("message", body)
    return str(body if body else error.message)[:300]


@dataclass
class OpenAIChatLLM(AsyncRetryingLLM):
    """`ChatLLM` for `/v1/chat/completions`. Structured output uses `response_format` json_schema."""

    name: str = "openai"
    base_url: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    temperature: float = 0.0
    top_p: float | None = None
    max_tokens: int | None = None
    strict_schema: bool = True
    extra_body: dict | None = None

    def params(self) -> dict:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "max_tokens": self.max_tokens,
            "strict_schema": self.strict_schema,
            "extra_body": dict(self.extra_body) if self.extra_body else None,
        }

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

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[openai.AsyncOpenAI]:
        client = openai.AsyncOpenAI(
            api_key=self._api_key(), base_url=self.base_url, timeout=self.timeout, max_retries=0
        )
        async with client:
            yield client

    async def _send(self, client: openai.AsyncOpenAI, request: ChatRequest) -> str:
        kwargs: dict[str, Any] = {"model": self.model, "messages": request.messages, "temperature": self.temperature}
        if self.top_p is not None:
            kwargs["top_p"] = self.top_p
        if self.seed is not None:
            kwargs["seed"] = self.seed
        if self.max_tokens is not None:
            kwargs["max_tokens"] = self.max_tokens
        if self.extra_body:
            kwargs["extra_body"] = dict(self.extra_body)
        if request.schema is not None:
            kwargs["response_format"] = response_format(request.schema, self.strict_schema)
        try:
            reply = await client.chat.completions.create(**kwargs)
        except openai.APITimeoutError as e:
            raise TransientError(f"no reply within the {self.timeout}s timeout", status="timeout") from e
        except openai.APIConnectionError as e:
            raise TransientError(f"connection failed ({e.__cause__ or e})", status="connection") from e
        except openai.APIStatusError as e:
            what = f"HTTP {e.status_code}: {_error_text(e)}"
            if e.status_code in _RETRYABLE_STATUS or e.status_code >= 500:
                raise TransientError(what, status=e.status_code, retry_after=_retry_after(e.response)) from e
            if e.status_code in (401, 403):
                what += f" (check the key in the environment variable {self.api_key_env})"
            raise PermanentError(what, status=e.status_code) from e
        if not reply.choices or reply.choices[0].message.content is None:
            raise TransientError("the reply has no message content", status="empty_reply")
        return reply.choices[0].message.content
