"""Chat-LLM backends (`openai`, `hf`, `none`) behind one cached, retrying `ChatLLM` interface."""
from and_lightning.describe.llm.base import (
    ChatLLM,
    ChatRequest,
    LLMError,
    LLMNotConfiguredError,
    LLMReplyError,
    LLMRequestError,
    LLMStats,
)
from and_lightning.describe.llm.factory import build_llm

__all__ = [
    "ChatLLM",
    "ChatRequest",
    "LLMError",
    "LLMNotConfiguredError",
    "LLMReplyError",
    "LLMRequestError",
    "LLMStats",
    "build_llm",
]
