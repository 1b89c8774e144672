"""Stage 2: caption every unique clip that any neuron needs, once, through the caption cache (with
`exemplars=window` also every window around a unit's peak frame that is one of its exemplars, keyed by
`Window.id`). A captioner whose words are relative to the probing set (`FitsProbingSet`) is first fitted on it;
the reference is written beside the captions (caption_reference.json) and enters the caption cache key."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from tqdm import tqdm

from and_lightning.data.audio_io import fix_length, load_audio
from and_lightning.data.clips import ClipRecord
from and_lightning.data.windows import Window
from and_lightning.describe.captioners.base import Captioner, Clip, FitsProbingSet
from and_lightning.describe.captioners.cached import audio_sha256, caption_clips, caption_key
from and_lightning.describe.exemplars import needed_windows
from and_lightning.store.activations import ActivationStore
from and_lightning.store.atomic import write_json, write_text
from and_lightning.store.hashing import hash_obj
from and_lightning.store.kvcache import KVCache

log = logging.getLogger(__name__)

CHUNK = 64


def needed_clips(store: ActivationStore, k: int, all_clips: bool) -> list[str]:
    """Clip ids whose captions the describe stage reads: every clip (DB scores all clips) or the union of
    every neuron's top-k and bottom-k clips, in store order."""
    if all_clips:
        return list(store.clip_ids)
    wanted: set[str] = set()
    for layer in store.layers:
        t = store.topk(layer, k)
        wanted.update(t.top_ids.ravel().tolist())
        wanted.update(t.bottom_ids.ravel().tolist())
    return [c for c in store.clip_ids if c in wanted]


def iter_clips(records: Mapping[str, ClipRecord], clip_ids: Iterable[str], sample_rate: int,
               clip_seconds: float, class_names: Sequence[str] = ()) -> Iterator[Clip]:
    """The audio the model saw for each clip id (same rate, same crop/pad), with its class name when its label
    indexes `class_names` (else None)."""
    n = int(round(clip_seconds * sample_rate))
    for cid in clip_ids:
        wave, _ = load_audio(records[cid].path, sample_rate)
        label = records[cid].label
        yield Clip(cid, fix_length(wave, n).numpy(), sample_rate,
                   class_names[label] if 0 <= label < len(class_names) else None)


def iter_exemplars(records: Mapping[str, ClipRecord], ids: Iterable[str], windows: Mapping[str, Window],
                   sample_rate: int, clip_seconds: float, class_names: Sequence[str] = ()) -> Iterator[Clip]:
    """The audio of each id: a window of `windows` (cut from its clip as the model saw it) or a whole clip."""
    for i in ids:
        w = windows.get(i)
        clip = next(iter_clips(records, [w.clip_id if w else i], sample_rate, clip_seconds, class_names))
        if w is None:
            yield clip
        else:
            start, end = int(round(w.start * sample_rate)), int(round(w.end * sample_rate))
            yield Clip(w.id, clip.wave[start:end], sample_rate, clip.label)


def fit_to_probing_set(captioner: Captioner, records: Mapping[str, ClipRecord], clip_ids: list[str], sample_rate: int,
                       clip_seconds: float, cache: KVCache) -> dict | None:
    """Fit a `FitsProbingSet` captioner on the probing set (None for other captioners). The reference is computed
    once per captioner setting and audio of the clips measured: it is kept in the caption cache under that key."""
    if not isinstance(captioner, FitsProbingSet):
        return None
    ids = captioner.reference_ids(clip_ids)
    audio = sorted(audio_sha256(c) for c in iter_clips(records, ids, sample_rate, clip_seconds))
    key = caption_key(captioner, hash_obj({"reference of": audio}))
    if key in cache:
        reference = cache.get(key)
    else:
        reference = captioner.fit_reference(tqdm(iter_clips(records, ids, sample_rate, clip_seconds), total=len(ids),
                                                 desc=f"caption reference ({captioner.name})", unit="clip"))
        cache.put(key, reference)
    captioner.use_reference(reference)
    log.info("captions relative to the probing set: %s", reference)
    return reference


def caption_stage(
    store: ActivationStore,
    records: Mapping[str, ClipRecord],
    captioner: Captioner,
    cache_path: str | os.PathLike,
    out_path: str | os.PathLike,
    k: int,
    all_clips: bool,
    class_names: Sequence[str] = (),
    window_seconds: float | None = None,
) -> dict[str, str]:
    """Caption the clips the describe stage needs (and with `window_seconds` the exemplar windows of that length,
    `describe/exemplars.py`); write `out_path` (captions.jsonl, and caption_reference.json beside it for a
    captioner fitted on the probing set) and return id -> caption."""
    out_path = Path(out_path)
    ids = needed_clips(store, k, all_clips)
    pre = store.manifest["preprocessing"]
    windows = {w.id: w for w in needed_windows(store, k, window_seconds)} if window_seconds is not None else {}
    ids = [*ids, *windows]
    cache = KVCache(cache_path)
    captions: dict[str, str] = {}
    requested = 0
    try:
        reference = fit_to_probing_set(captioner, records, list(store.clip_ids), pre["sample_rate"],
                                       pre["clip_seconds"], cache)
        with tqdm(total=len(ids), desc=f"caption ({captioner.name})", unit="clip") as bar:
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start:start + CHUNK]
                got = caption_clips(captioner, iter_exemplars(records, chunk, windows, pre["sample_rate"],
                                                              pre["clip_seconds"], class_names), cache)
                requested += got.requested
                captions.update(got)
                bar.update(len(chunk))
    finally:
        cache.close()
    log.info("captions: %d clips needed, %d sent to %s, the rest from the cache", len(ids), requested, captioner.name)
    lines = [json.dumps({"clip_id": c, "caption": captions[c], "captioner": captioner.name,
                         "model": captioner.model, "prompt": captioner.prompt}) for c in ids]
    if reference is not None:
        write_json(out_path.with_name("caption_reference.json"),
                   {"captioner": captioner.name, "model": captioner.model, "prompt": captioner.prompt,
                    "reference": reference})
    write_text(out_path, "\n".join(lines) + "\n")
    return captions


def read_captions(path: str | os.PathLike) -> dict[str, str]:
    """captions.jsonl -> {clip_id: caption}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no captions yet; run `python dissect.py stage=caption` first")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["clip_id"]: r["caption"] for r in rows}
