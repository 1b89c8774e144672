"""The captioner interface: one English caption per audio clip."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Clip:
    """A clip to caption: its stable id, mono float32 waveform, sample rate and class name (None: unlabelled).
    Only captioners with `uses_labels` read the label."""

    clip_id: str
    wave: np.ndarray
    sample_rate: int
    label: str | None = None


class Captioner:
    """Subclasses implement `caption`; `name`, `model`, `prompt` and `params()` key the caption cache."""

    name: str = "base"
    model: str = ""
    prompt: str = ""
    # Further config fields that change a caption (sampling parameters); None: not declared, so every config field
    # counts for the dissection key (see `store.kvcache.semantic_config`).
    semantic_fields: tuple[str, ...] | None = None
    # Whether captions depend on `Clip.label`: then the label keys the caption cache too.
    uses_labels: bool = False

    def params(self) -> dict:
        """The values of `semantic_fields`."""
        return {f: getattr(self, f) for f in self.semantic_fields or ()}

    def caption(self, clips: list[Clip]) -> list[str]:
        """One caption per clip, in order."""
        raise NotImplementedError


@runtime_checkable
class FitsProbingSet(Protocol):
    """A captioner whose words are relative to the probing set (the acoustic one's loud / bright / noisy): the
    caption stage measures the clips `reference_ids` picks with `fit_reference` and applies the result (or the
    cached one) with `use_reference`, which must make it part of `prompt`."""

    def reference_ids(self, clip_ids: Sequence[str]) -> list[str]: ...

    def fit_reference(self, clips: Iterable[Clip]) -> dict[str, Any]: ...

    def use_reference(self, reference: Mapping[str, Any]) -> None: ...
