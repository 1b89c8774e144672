"""The `none` backend: "no LLM". The pipeline checks `llm.name == "none"` and uses its offline implementations."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from and_lightning.describe.llm.base import ChatLLM, LLMNotConfiguredError


@dataclass
class NoLLM(ChatLLM):
    """A placeholder that refuses every request with an error saying how to configure a real LLM."""

    model: str = ""
    name: str = "none"

    def _refuse(self) -> LLMNotConfiguredError:
        return LLMNotConfiguredError(
            "llm=none: this run has no LLM backend, so the pipeline uses its offline implementations "
            "(rule-based summaries and concept filters) and must not call complete(). To use an LLM, run with "
            "llm=openai llm.base_url=<server>/v1 llm.model=<name> (key from the env var named by llm.api_key_env) "
            "or llm=hf llm.model=<local path or hub id>.",
            backend="none",
        )

    def complete(self, messages: list[dict], schema: dict | None = None) -> Any:
        raise self._refuse()

    async def acomplete_many(self, requests: Sequence[Any]) -> list[Any]:
        raise self._refuse()
