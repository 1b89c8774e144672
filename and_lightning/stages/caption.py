"""Stage 2: caption every unique clip that any neuron needs, once, through the caption cache."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from tqdm import tqdm

from and_lightning.data.audio_io import fix_length, load_audio
from and_lightning.data.clips import ClipRecord
from and_lightning.describe.captioners.base import Captioner, Clip
from and_lightning.describe.captioners.cached import caption_clips
from and_lightning.store.activations import ActivationStore
from and_lightning.store.atomic import write_text
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
               clip_seconds: float) -> Iterator[Clip]:
    """The audio the model saw for each clip id (same rate, same crop/pad)."""
    n = int(round(clip_seconds * sample_rate))
    for cid in clip_ids:
        wave, _ = load_audio(records[cid].path, sample_rate)
        yield Clip(cid, fix_length(wave, n).numpy(), sample_rate)


def caption_stage(
    store: ActivationStore,
    records: Mapping[str, ClipRecord],
    captioner: Captioner,
    cache_path: str | os.PathLike,
    out_path: str | os.PathLike,
    k: int,
    all_clips: bool,
) -> dict[str, str]:
    """Caption the clips the describe stage needs; write `out_path` (captions.jsonl) and return id -> caption."""
    out_path = Path(out_path)
    ids = needed_clips(store, k, all_clips)
    pre = store.manifest["preprocessing"]
    cache = KVCache(cache_path)
    captions: dict[str, str] = {}
    requested = 0
    try:
        with tqdm(total=len(ids), desc=f"caption ({captioner.name})", unit="clip") as bar:
            for start in range(0, len(ids), CHUNK):
                chunk = ids[start:start + CHUNK]
                got = caption_clips(captioner, iter_clips(records, chunk, pre["sample_rate"], pre["clip_seconds"]),
                                    cache)
                requested += got.requested
                captions.update(got)
                bar.update(len(chunk))
    finally:
        cache.close()
    log.info("captions: %d clips needed, %d sent to %s, the rest from the cache", len(ids), requested, captioner.name)
    lines = [json.dumps({"clip_id": c, "caption": captions[c], "captioner": captioner.name,
                         "model": captioner.model, "prompt": captioner.prompt}) for c in ids]
    write_text(out_path, "\n".join(lines) + "\n")
    return captions


def read_captions(path: str | os.PathLike) -> dict[str, str]:
    """captions.jsonl -> {clip_id: caption}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no captions yet; run `python dissect.py stage=caption` first")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["clip_id"]: r["caption"] for r in rows}
