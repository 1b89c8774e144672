"""The one held-out split every description scorer uses (simulation, detection, intervention).

The probing clips are split once into an "explain" part and a "score" part (`make_split`), saved in the dissection
folder (`load_or_make_split`) so every evaluation of one dissection scores the same clips; a unit is scored on
score clips that were NOT among the top-k / bottom-k clips its description was written from (`score_masks`).
Settings: the `split` section of conf/evaluate/ (`split_settings` checks them).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from and_lightning.store.atomic import write_json
from and_lightning.store.hashing import hash_obj


def make_split(clip_ids: Sequence[str], score_fraction: float, seed: int) -> dict[str, Any]:
    """A fixed random split of the clips into "explain" and "score" (round(score_fraction * N) clips),
    both kept in the clips' given order; the same ids, fraction and seed always give the same split."""
    if not 0.0 < score_fraction < 1.0:
        raise ValueError(f"score_fraction must be in (0, 1), got {score_fraction}")
    ids = list(clip_ids)
    if len(set(ids)) != len(ids):
        raise ValueError("clip ids must be unique")
    n_score = int(round(score_fraction * len(ids)))
    chosen = set(np.random.default_rng(seed).permutation(len(ids))[:n_score].tolist())
    return {"seed": int(seed), "score_fraction": float(score_fraction), "clips_hash": hash_obj(ids),
            "explain": [c for i, c in enumerate(ids) if i not in chosen],
            "score": [c for i, c in enumerate(ids) if i in chosen]}


def load_or_make_split(folder: str | os.PathLike, clip_ids: Sequence[str], score_fraction: float,
                       seed: int) -> tuple[dict[str, Any], Path]:
    """The split saved in `folder` for these clips, fraction and seed (made and saved on first use)."""
    ids = list(clip_ids)
    path = Path(folder) / f"split-s{seed}-f{score_fraction:g}-{hash_obj(ids)[:12]}.json"
    if path.is_file():
        split = json.loads(path.read_text(encoding="utf-8"))
        if split.get("clips_hash") != hash_obj(ids) or sorted(split["explain"] + split["score"]) != sorted(ids):
            raise ValueError(f"{path}: saved split does not cover this store's clips; delete it to make a new one")
        return split, path
    split = make_split(ids, score_fraction, seed)
    write_json(path, split)
    return split, path


def split_settings(split: Mapping[str, Any] | None) -> tuple[float, int, bool]:
    """(score_fraction, seed, exclude_described) of an `evaluate.split` section; a one-line error naming the field."""
    s = dict(split or {})
    fraction, seed = s.get("score_fraction", 0.5), s.get("seed", 0)
    if not isinstance(fraction, (int, float)) or not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"evaluate.split.score_fraction must be in (0, 1), got {fraction!r}")
    if not isinstance(seed, int):
        raise ValueError(f"evaluate.split.seed must be an integer, got {seed!r}")
    return float(fraction), seed, bool(s.get("exclude_described", True))


def held_out_split(folder: str | os.PathLike, clip_ids: Sequence[str], settings: Mapping[str, Any] | None,
                   ) -> tuple[dict[str, Any], Path, int, bool]:
    """(split, its file, seed, exclude_described) for a scorer's `split` setting (the `evaluate.split` section)."""
    fraction, seed, exclude = split_settings(settings)
    split, path = load_or_make_split(folder, clip_ids, fraction, seed)
    return split, path, seed, exclude


def score_masks(records: Sequence[Mapping[str, Any]], score_ids: Sequence[str], exclude_described: bool) -> np.ndarray:
    """bool [M, n] over `score_ids`: the clips each neuron is scored on (not its own top / bottom clips)."""
    masks = np.ones((len(records), len(score_ids)), bool)
    if exclude_described:
        column = {c: j for j, c in enumerate(score_ids)}
        for m, record in enumerate(records):
            seen = [column[c] for c in (*record.get("top_clips", []), *record.get("bottom_clips", [])) if c in column]
            masks[m, seen] = False
    return masks
