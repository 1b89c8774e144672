"""The two-event synthetic set: two events of different classes in distinct slots, the ground truth saying which
is where (checked on the audio: silence outside the events, each event at its recorded level), determinism."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from and_lightning.data.synth import SOURCES
from and_lightning.data.synth_two_event import event_at, generate_two_event


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return generate_two_event(tmp_path_factory.mktemp("two"), clips_per_class=2, clip_seconds=3.0)


def test_events_are_where_the_ground_truth_says(index):
    assert index.name == "synth_two_event" and len(index.records) == 20
    for r in index.records:
        wave, sr = sf.read(r.path, dtype="float64")
        assert sr == 16000 and len(wave) == 3 * sr
        events = r.meta["events"]
        sources = [e["source"] for e in events]
        assert SOURCES[r.label] in sources and sources[0] != sources[1]
        assert events[0]["end"] <= events[1]["start"] and events[1]["end"] <= 3.0
        silent = np.ones(len(wave), bool)
        for e in events:
            part = wave[int(e["start"] * sr):int(e["end"] * sr)]
            silent[int(e["start"] * sr):int(e["end"] * sr)] = False
            rms_db = 20 * np.log10(np.sqrt(np.mean(part**2)))
            assert rms_db == pytest.approx(e["params"]["gain_db"], abs=0.1)  # 16-bit PCM rounding
            assert event_at(r, (e["start"] + e["end"]) / 2) == e["source"]
        assert np.all(wave[silent] == 0.0)  # the third slot
        gap = next(t + 0.5 for t in (0.0, 1.0, 2.0) if not any(e["start"] == t for e in events))
        assert event_at(r, gap) is None


def test_same_parameters_same_bytes(index, tmp_path):
    again = generate_two_event(tmp_path, clips_per_class=2, clip_seconds=3.0)
    for a, b in zip(index.records, again.records):
        assert a.meta == b.meta and open(a.path, "rb").read() == open(b.path, "rb").read()


def test_bad_lengths_and_foreign_clips_are_clear_errors(index, tmp_path):
    with pytest.raises(ValueError, match="clip_seconds >= 2 \\* event_seconds"):
        generate_two_event(tmp_path, clip_seconds=1.5)
    with pytest.raises(ValueError, match="no meta\\['events'\\]"):
        event_at(type(index.records[0])("x", "x.wav", 0, 1, {}), 0.5)
