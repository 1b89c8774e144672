"""The captioner interface: one English caption per audio clip."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Clip:
    """A clip to caption: its stable id, mono float32 waveform and sample rate."""

    clip_id: str
    wave: np.ndarray
    sample_rate: int


class Captioner:
    """Subclasses implement `caption`; `name`, `model`, `prompt` and `params()` key the caption cache."""

    name: str = "base"
    model: str = ""
    prompt: str = ""
    # Further config fields that change a caption (sampling parameters); None: not declared, so every config field
    # counts for the dissection key (see `store.kvcache.semantic_config`).
    semantic_fields: tuple[str, ...] | None = None

    def params(self) -> dict:
        """The values of `semantic_fields`."""
        return {f: getattr(self, f) for f in self.semantic_fields or ()}

    def caption(self, clips: list[Clip]) -> list[str]:
        """One caption per clip, in order."""
        raise NotImplementedError
