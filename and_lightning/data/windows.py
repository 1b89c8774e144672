"""Time windows of clips: the part of a clip around a unit's peak frame, which is captioned and played in place of
the whole clip when a dissection records frame-level activations."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """Seconds [start, end) of clip `clip_id`."""

    clip_id: str
    start: float
    end: float

    @property
    def id(self) -> str:
        """The key of this window's caption (and of its audio in the report): the clip id and the bounds in ms."""
        return f"{self.clip_id}@{self.start:.3f}-{self.end:.3f}"

    @property
    def seconds(self) -> float:
        return self.end - self.start


def window_around(clip_id: str, peak: float, window_seconds: float, clip_seconds: float) -> Window:
    """The `window_seconds` window centred on `peak` (seconds), shifted to lie inside the clip; the whole clip when
    the clip is not longer than the window. Bounds are rounded to the millisecond (the id's precision)."""
    if window_seconds <= 0:
        raise ValueError(f"window_seconds must be > 0, got {window_seconds}")
    length = min(window_seconds, clip_seconds)
    start = min(max(peak - length / 2, 0.0), clip_seconds - length)
    return Window(clip_id, round(start, 3), round(start + length, 3))
