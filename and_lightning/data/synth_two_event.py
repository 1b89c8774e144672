"""Two-event synthetic clips: in each longer clip two sources of different classes sound at different times, and the
ground truth records which event is where.

A clip of class c (`SOURCES[c]`, its label) holds one event of c and one event of another source drawn uniformly;
the clip is cut into `event_seconds` slots and the two events take two distinct slots drawn at random (c first or
second), the other slots stay silent. Each event is a clip of the synthetic set (`synth.draw_params` + `synth.render`,
`event_seconds` long: the source sounds for its first 70 %, then its reverberation tail and background), with its
own five attributes. `ClipRecord.meta["events"]`: per event in time order {"source", "start", "end" (its slot, in
seconds), "params"}; `event_at` names the event that covers a time. Clip i of a class is drawn from a Generator
seeded with (seed, class index, clip index), so it does not depend on `clips_per_class`.

Files: `<root>/audio/<source>/synth-2ev-<source>-<i>.wav` and `<root>/manifest.json`, written last (as `synth.py`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from and_lightning.data.audio_io import save_audio
from and_lightning.data.clips import ClipRecord, DatasetIndex
from and_lightning.data.synth import (
    ATTRIBUTES, MANIFEST, SOURCES, check_params, draw_params, load_manifest, numbered_clips, remove_stale_audio,
    render,
)
from and_lightning.store.atomic import write_json
from and_lightning.store.hashing import hash_obj

GENERATOR_VERSION = 1  # bump when the audio a given set of parameters produces changes
NAME = "synth_two_event"


def generate_two_event(root: str | Path, seed: int = 0, clips_per_class: int = 30, sample_rate: int = 16000,
                       clip_seconds: float = 3.0, event_seconds: float = 1.0, num_folds: int = 5) -> DatasetIndex:
    """Generate (or load from `root`, when already generated with the same parameters) the two-event set."""
    check_params(clips_per_class, num_folds, sample_rate, event_seconds, "event_seconds")
    if clip_seconds < 2 * event_seconds:
        raise ValueError(f"need clip_seconds >= 2 * event_seconds (two slots), got clip_seconds={clip_seconds}, "
                         f"event_seconds={event_seconds}")
    root = Path(root)
    params = {"generator_version": GENERATOR_VERSION, "seed": int(seed), "clips_per_class": int(clips_per_class),
              "sample_rate": int(sample_rate), "clip_seconds": float(clip_seconds),
              "event_seconds": float(event_seconds), "num_folds": int(num_folds)}
    params_hash = hash_obj(params)
    cached = load_manifest(root, params_hash)
    if cached is not None:
        return cached
    (root / MANIFEST).unlink(missing_ok=True)  # a stale manifest must never describe half-rewritten audio
    slots = int(clip_seconds // event_seconds)
    n, per_event = int(round(clip_seconds * sample_rate)), int(round(event_seconds * sample_rate))
    clips = []
    for label, source, i, clip_id, rel, rng in numbered_clips(seed, clips_per_class, "synth-2ev"):
        other = SOURCES[(label + 1 + int(rng.integers(len(SOURCES) - 1))) % len(SOURCES)]
        wave, events = np.zeros(n, np.float32), []
        for name, slot in zip((source, other), rng.choice(slots, size=2, replace=False).tolist()):
            p = draw_params(rng, name, event_seconds)
            start = slot * per_event
            wave[start:start + per_event] = render(p, rng, sample_rate, event_seconds)
            events.append({"source": name, "start": round(slot * event_seconds, 4),
                           "end": round((slot + 1) * event_seconds, 4), "params": p})
        save_audio(root / rel, wave, sample_rate)
        meta = {"events": sorted(events, key=lambda e: e["start"])}
        clips.append({"clip_id": clip_id, "path": rel, "label": label, "fold": i % num_folds + 1, "meta": meta})
    remove_stale_audio(root, {c["path"] for c in clips})
    write_json(root / MANIFEST, {"name": NAME, "params": params, "params_hash": params_hash, "class_names": SOURCES,
                                 "attributes": ATTRIBUTES, "clips": clips})
    return load_manifest(root, params_hash)


def event_at(record: ClipRecord, seconds: float) -> str | None:
    """The source of the event of a two-event clip whose slot [start, end) holds `seconds` (None: a silent slot)."""
    events = record.meta.get("events")
    if not events:
        raise ValueError(f"clip '{record.clip_id}': no meta['events'] (is this a clip of the two-event set?)")
    return next((e["source"] for e in events if e["start"] <= seconds < e["end"]), None)
