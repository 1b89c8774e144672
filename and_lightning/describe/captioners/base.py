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
    """Subclasses implement `caption`; `name`, `model` and `prompt` key the caption cache."""

    name: str = "base"
    model: str = ""
    prompt: str = ""

    def caption(self, clips: list[Clip]) -> list[str]:
        """One caption per clip, in order."""
        raise NotImplementedError
