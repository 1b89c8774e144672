"""Caption each UNIQUE clip exactly once, cached on disk by (captioner name, model, prompt, sha256 of the audio,
and the clip's class label for a captioner that `uses_labels`).

Clips with identical audio (and label, where it counts) share one caption; a rerun with the same captioner sends
nothing; captions are stored chunk by chunk, so a killed run keeps the chunks that finished.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from and_lightning.describe.captioners.base import Captioner, Clip
from and_lightning.store.hashing import hash_bytes, hash_obj
from and_lightning.store.kvcache import KVCache


class Captions(dict):
    """clip_id -> caption, plus how the captions were obtained: `requested` (clips sent to the captioner),
    `cache_hits` (unique clips found in the cache) and `unique` (distinct captions asked for: audio contents, and
    labels for a captioner that `uses_labels`)."""

    requested: int = 0
    cache_hits: int = 0
    unique: int = 0


def audio_sha256(clip: Clip) -> str:
    """sha256 of a clip's audio content: its float32 samples and sample rate (not its id or file name)."""
    wave = np.ascontiguousarray(np.asarray(clip.wave, dtype=np.float32))
    return hash_bytes(wave.tobytes() + f"|sr={int(clip.sample_rate)}".encode())


def caption_key(captioner: Captioner, audio_hash: str, label: str | None = None) -> str:
    """The cache key of one caption: what the caption depends on (never how it is fetched); the label only for a
    captioner that `uses_labels`."""
    what = {"captioner": captioner.name, "model": captioner.model, "prompt": captioner.prompt,
            "params": captioner.params(), "audio": audio_hash}
    if captioner.uses_labels:
        what["label"] = label
    return hash_obj(what)


def caption_clips(captioner: Captioner, clips: Iterable[Clip], cache: KVCache, chunk_size: int = 64) -> Captions:
    """Captions for `clips` (dict clip_id -> caption); only uncached unique audio goes to `captioner`."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out = Captions()
    clip_audio: dict[str, str] = {}  # clip_id -> audio hash
    clip_key: dict[str, str] = {}  # clip_id -> caption key
    todo: dict[str, Clip] = {}  # caption key -> first clip with that audio (and label)
    seen: set[str] = set()
    for clip in clips:
        audio = audio_sha256(clip)
        if clip.clip_id in clip_audio:
            if clip_audio[clip.clip_id] != audio:
                raise ValueError(
                    f"clip id {clip.clip_id!r} appears twice with different audio; clip ids must be unique"
                )
            continue
        clip_audio[clip.clip_id] = audio
        key = clip_key[clip.clip_id] = caption_key(captioner, audio, clip.label)
        if key in seen:
            continue
        seen.add(key)
        if key in cache:
            out.cache_hits += 1
        else:
            todo[key] = clip
    out.unique = len(seen)
    pending = list(todo.items())
    for start in range(0, len(pending), chunk_size):
        chunk = pending[start : start + chunk_size]
        captions = captioner.caption([clip for _, clip in chunk])
        if len(captions) != len(chunk):
            raise RuntimeError(
                f"captioner {captioner.name!r} returned {len(captions)} captions for {len(chunk)} clips"
            )
        out.requested += len(chunk)
        for (key, _), text in zip(chunk, captions):
            cache.put(key, text)
    for clip_id, key in clip_key.items():
        out[clip_id] = cache.get(key)
    return out
