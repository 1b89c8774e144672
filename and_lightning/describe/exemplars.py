"""A unit's exemplars with `exemplars=window`: not its top (and bottom) clips but the windows around the unit's peak
frame in each of them (`data/windows.py`), which are captioned and summarised in place of the whole clips; a layer
without a time axis (its peak times are NaN) keeps whole clips. Also what the HTML report shows beside them: the
windows of each record and the unit's activation curve over each of its top clips (computed again for those clips
only, so nothing per frame is ever stored)."""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from and_lightning.data.audio_io import fix_length, load_audio
from and_lightning.data.clips import ClipRecord
from and_lightning.data.windows import Window, window_around
from and_lightning.lit.probe import frame_centres
from and_lightning.store.activations import ActivationStore


def exemplar_windows(store: ActivationStore, layer: str, rows: np.ndarray, window_seconds: float) -> list[list[Window]]:
    """Per unit u, the windows around u's peak frame in the clips of store rows `rows[u]` ([M, K]: e.g. a TopK's
    top_rows), in that order; whole clips where the layer has no time axis."""
    clip_seconds = float(store.manifest["preprocessing"]["clip_seconds"])
    peaks = store.peak(layer)
    out = []
    for unit, unit_rows in enumerate(np.asarray(rows)):
        times = np.asarray(peaks[unit_rows, unit], np.float64)
        out.append([Window(store.clip_ids[r], 0.0, clip_seconds) if math.isnan(t) else
                    window_around(store.clip_ids[r], t, window_seconds, clip_seconds)
                    for r, t in zip(unit_rows.tolist(), times.tolist())])
    return out


def needed_windows(store: ActivationStore, k: int, window_seconds: float) -> list[Window]:
    """Every distinct window among the top-k and bottom-k exemplars of every unit of the store, in first-seen
    order (layer by layer, unit by unit)."""
    seen: dict[str, Window] = {}
    for layer in store.layers:
        t = store.topk(layer, k)
        for rows in (t.top_rows, t.bottom_rows):
            for unit in exemplar_windows(store, layer, rows, window_seconds):
                seen.update((w.id, w) for w in unit if w.id not in seen)
    return list(seen.values())


def record_windows(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, int], list[Window]]:
    """(layer, unit) -> the windows of its top clips, from description records that carry `top_windows`."""
    return {(r["layer"], r["unit"]): [Window(c, s, e) for c, (s, e) in zip(r["top_clips"], r["top_windows"])]
            for r in records if "top_windows" in r}


def top_clip_curves(adapter: Any, records: Sequence[Mapping[str, Any]], clips: Mapping[str, ClipRecord],
                    clip_seconds: float, pre_activation: bool = False, batch_size: int = 32,
                    ) -> dict[tuple[str, int], list[tuple[np.ndarray, np.ndarray]]]:
    """(layer, unit) -> per top clip of its record, (frame centres in seconds, the unit's activation per frame)
    (`TargetAdapter.time_curve`); layers without a time axis are left out. The model runs once over the distinct
    top clips (in batches), keeping only the curves of the units that list each clip: memory grows with
    records x K, not with the probing set."""
    wanted: dict[str, list[tuple[str, int]]] = {}
    for r in records:
        for cid in r["top_clips"]:
            wanted.setdefault(cid, []).append((r["layer"], r["unit"]))
    layers = sorted({layer for pairs in wanted.values() for layer, _ in pairs})
    n = int(round(clip_seconds * adapter.sample_rate))
    per_clip: dict[tuple[str, int, str], tuple[np.ndarray, np.ndarray]] = {}
    seen: dict[str, torch.Tensor] = {}
    handles = [adapter.layer_module(name).register_forward_hook(
        lambda m, args, out, name=name: seen.__setitem__(name, out)) for name in layers]
    ids = list(wanted)
    try:
        adapter.eval()
        device = next(adapter.parameters()).device
        for start in range(0, len(ids), batch_size):
            chunk = ids[start:start + batch_size]
            waves = torch.stack([fix_length(load_audio(clips[c].path, adapter.sample_rate)[0], n) for c in chunk])
            seen.clear()
            with torch.inference_mode():
                adapter.run(waves.to(device), torch.full((len(chunk),), n))
                timed = {layer: adapter.time_curve(layer, seen[layer], len(chunk), clip_seconds, pre_activation)
                         for layer in layers}
            for b, cid in enumerate(chunk):
                for layer, unit in wanted[cid]:
                    if timed[layer] is None:
                        continue
                    curve, seconds = timed[layer]
                    times = frame_centres(curve.shape[2], seconds, clip_seconds).numpy().astype(np.float32)
                    per_clip[layer, unit, cid] = times, curve[b, unit, :len(times)].float().cpu().numpy()
    finally:
        for h in handles:
            h.remove()
    return {(r["layer"], r["unit"]): [per_clip[r["layer"], r["unit"], c] for c in r["top_clips"]]
            for r in records if all((r["layer"], r["unit"], c) in per_clip for c in r["top_clips"])}
