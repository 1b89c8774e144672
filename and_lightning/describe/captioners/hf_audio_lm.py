"""Captioner running a Qwen2-Audio-family model locally with transformers (AutoProcessor +
Qwen2AudioForConditionalGeneration), batched generate. `model` is a local directory or a hub id
(e.g. Qwen/Qwen2-Audio-7B-Instruct; the hub needs network). The Whisper feature extractor keeps at most 30 s.
A caption that is not readable text (`schema.valid_reply`) is an error, never cached.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from and_lightning.data.audio_io import resample
from and_lightning.describe.captioners.base import Captioner, Clip
from and_lightning.describe.llm.hf_chat import generate_text, load_pretrained
from and_lightning.describe.llm.schema import InvalidReply, shown, valid_reply

DEFAULT_PROMPT = (
    "Describe this audio clip in detail: the sound sources and events, and its acoustic properties "
    "(pitch, loudness, timbre, rhythm, recording quality)."
)


class HFAudioLMCaptioner(Captioner):
    """Captions clips with a local audio-language model; loads it on the first `caption` call."""

    name = "hf_audio_lm"
    semantic_fields = ("max_new_tokens", "temperature", "top_p", "seed", "dtype")

    def __init__(
        self,
        model: str,
        prompt: str = DEFAULT_PROMPT,
        max_new_tokens: int = 128,
        batch_size: int = 4,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        device: str = "cpu",
        dtype: str = "float32",
    ):
        if batch_size < 1:
            raise ValueError(f"hf_audio_lm: batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.device = device
        self.dtype = dtype
        self._processor: Any = None
        self._model: Any = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

        self._processor, self._model = load_pretrained("hf_audio_lm", "a Qwen2-Audio processor/model", self.model,
                                                       AutoProcessor, Qwen2AudioForConditionalGeneration, self.dtype,
                                                       self.device)

    def _prompt_text(self) -> str:
        conversation = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": self.prompt}]}]
        return self._processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)

    def caption(self, clips: list[Clip]) -> list[str]:
        self._load()
        processor = self._processor
        sr = processor.feature_extractor.sampling_rate
        text = self._prompt_text()
        captions: list[str] = []
        for start in range(0, len(clips), self.batch_size):
            batch = clips[start : start + self.batch_size]
            audios = []
            for clip in batch:
                wave = torch.as_tensor(np.asarray(clip.wave, dtype=np.float32))
                if wave.ndim != 1 or wave.numel() == 0:
                    raise ValueError(
                        f"clip {clip.clip_id}: expected a non-empty mono waveform [T], got shape {tuple(wave.shape)}"
                    )
                audios.append(resample(wave, clip.sample_rate, sr).numpy())
            inputs = processor(
                text=[text] * len(batch), audio=audios, sampling_rate=sr, return_tensors="pt", padding=True
            ).to(self.device)
            replies = generate_text(self._model, processor, inputs, self.seed, self.temperature, self.top_p,
                                    max_new_tokens=self.max_new_tokens, pad_token_id=processor.tokenizer.pad_token_id)
            for clip, reply in zip(batch, replies):
                try:
                    captions.append(valid_reply(reply, None))
                except InvalidReply as e:  # a local model repeats itself: no retry, and nothing invalid is cached
                    raise ValueError(f"hf_audio_lm (model {self.model!r}): the caption of clip {clip.clip_id} is not "
                                     f"valid: {e.reason}; reply: {shown(reply)}") from None
        return captions
