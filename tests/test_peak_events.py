"""Whose event a description names (analysis/peak_events.py), against hand-counted pairs."""
from __future__ import annotations

import numpy as np
import pytest

from and_lightning.analysis.peak_events import names_class, peak_event_naming
from and_lightning.data.clips import ClipRecord


def test_names_class_reads_the_sound_kind_and_its_plural():
    assert names_class("Most of them are noise hisses.", "noise_hiss")
    assert names_class("A loud pure tone at 440 Hz.", "pure_tone")
    assert names_class("Percussive hits over a clean background.", "percussive_hits")
    assert names_class("a percussive hit", "percussive_hits")
    assert not names_class("A rising chirp.", "falling_chirp")
    assert not names_class("a pure tones-like sound", "harmonic_tone")


def clip(cid: str, first: str, second: str) -> ClipRecord:
    return ClipRecord(cid, f"{cid}.wav", 0, 1, {"events": [{"source": first, "start": 0.0, "end": 1.0},
                                                           {"source": second, "start": 2.0, "end": 3.0}]})


def test_peak_event_naming_by_hand():
    clips = {"a": clip("a", "pure_tone", "noise_hiss"), "b": clip("b", "low_rumble", "pure_tone")}
    row_of = {"a": 0, "b": 1}
    peaks = {"conv": np.array([[0.5, 2.5], [2.5, 1.5]]), "head": np.full((2, 2), np.nan)}
    records = [
        # unit 0: peaks at a's pure tone (0.5 s) and b's pure tone (2.5 s); names the tone only: 2 peak, 0 other
        {"layer": "conv", "unit": 0, "top_clips": ["a", "b"], "description": "Most of them are pure tones."},
        # unit 1: a's hiss (2.5 s), b's silent slot (1.5 s); names both of a's events: 1 peak, 1 other, 1 both
        {"layer": "conv", "unit": 1, "top_clips": ["a", "b"], "description": "A noise hiss and a pure tone."},
        {"layer": "head", "unit": 0, "top_clips": ["a"], "description": "pure tone"},  # no time axis: left out
    ]
    (row,) = peak_event_naming(records, peaks, row_of, clips)
    assert row["layer"] == "conv" and row["pairs"] == 4 and row["peak_in_silence"] == pytest.approx(0.25)
    assert (row["names_peak"], row["names_other"], row["names_both"], row["names_neither"]) == pytest.approx(
        (1.0, 1 / 3, 1 / 3, 0.0))
    # judged on per-clip texts: unit 0's clip a names neither ("noise hiss" is the kind), its clip b the peak event,
    # unit 1's clip a the other event
    texts = {("conv", 0, 0): "a hiss", ("conv", 0, 1): "a pure tone", ("conv", 1, 0): "a pure tone"}
    (row,) = peak_event_naming(records, peaks, row_of, clips, lambda r, i: texts[r["layer"], r["unit"], i])
    assert (row["names_peak"], row["names_other"], row["names_neither"]) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
