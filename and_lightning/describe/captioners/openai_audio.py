"""Captioner for any OpenAI-compatible server that accepts `input_audio` chat parts (OpenAI audio models, vLLM
serving Qwen2-Audio / Ultravox, llama.cpp omni models): one chat request per clip, base64 16-bit WAV.

Requests go through `OpenAIChatLLM`, so concurrency, retries, timeout, reply validation (a caption must be readable
text) and the API key (from the env var named by `api_key_env`) behave exactly as for the summary LLM. With a
`cache_path`, each caption is cached the moment it arrives, so a batch that fails part-way keeps its answers.
"""
from __future__ import annotations

import base64
import io

import numpy as np
import soundfile as sf
import torch

from and_lightning.data.audio_io import resample
from and_lightning.describe.captioners.base import Captioner, Clip
from and_lightning.describe.llm.base import ChatRequest, LLMStats
from and_lightning.describe.llm.openai_chat import OpenAIChatLLM

DEFAULT_PROMPT = (
    "Describe this audio clip in detail: the sound sources and events, and its acoustic properties "
    "(pitch, loudness, timbre, rhythm, recording quality)."
)


def wav_base64(wave: np.ndarray, sample_rate: int) -> str:
    """Mono waveform -> base64 of a 16-bit PCM WAV file (samples clipped to [-1, 1]), no `data:` prefix."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1 or wave.size == 0:
        raise ValueError(f"expected a non-empty mono waveform [T], got shape {wave.shape}")
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class OpenAIAudioCaptioner(Captioner):
    """Captions each clip with an audio chat model behind an OpenAI-compatible `/v1/chat/completions`."""

    name = "openai_audio"
    semantic_fields = ("sample_rate", "temperature", "seed", "max_tokens")

    def __init__(
        self,
        model: str,
        prompt: str = DEFAULT_PROMPT,
        base_url: str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        sample_rate: int | None = 16000,
        temperature: float = 0.0,
        seed: int | None = 0,
        max_tokens: int | None = 256,
        concurrency: int = 16,
        max_retries: int = 5,
        reply_retries: int = 2,
        reply_backoff: float = 0.5,
        timeout: float = 120.0,
        cache_path: str | None = None,
    ):
        self.model, self.prompt, self.sample_rate = model, prompt, sample_rate
        self.temperature, self.seed, self.max_tokens = temperature, seed, max_tokens
        self.llm = OpenAIChatLLM(
            model=model,
            name=self.name,
            base_url=base_url,
            api_key_env=api_key_env,
            temperature=temperature,
            seed=seed,
            max_tokens=max_tokens,
            concurrency=concurrency,
            max_retries=max_retries,
            reply_retries=reply_retries,
            reply_backoff=reply_backoff,
            timeout=timeout,
            cache_path=cache_path,
        )

    @property
    def stats(self) -> LLMStats:
        return self.llm.stats

    def request(self, clip: Clip) -> ChatRequest:
        """The chat request for one clip: the text prompt and the clip as an `input_audio` WAV part."""
        wave, sr = np.asarray(clip.wave, dtype=np.float32), clip.sample_rate
        if self.sample_rate is not None and sr != self.sample_rate:
            wave = resample(torch.from_numpy(wave), sr, self.sample_rate).numpy()
            sr = self.sample_rate
        try:
            data = wav_base64(wave, sr)
        except ValueError as e:
            raise ValueError(f"clip {clip.clip_id}: {e}") from e
        content = [
            {"type": "text", "text": self.prompt},
            {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
        ]
        return ChatRequest([{"role": "user", "content": content}], kind="caption")

    def caption(self, clips: list[Clip]) -> list[str]:
        return self.llm.complete_many([self.request(c) for c in clips])
