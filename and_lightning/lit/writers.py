"""Prediction writer that streams ProbeModule outputs into activation-store shards (batch by batch, no epoch list).

Each rank fills a fixed-size float16 buffer per layer and a running top/bottom-K per layer; when `shard_rows`
rows are buffered (and at the end of the predict loop) they are committed as one shard file. Rows are found
from the batch's `clip_id`s, never from Lightning's inferred batch indices. Use with
`trainer.predict(..., return_predictions=False)` so Lightning keeps no predictions in memory.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from and_lightning.store.activations import F16_MAX, RunningTopK, write_shard


def to_float16(layer: str, acts: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """float32 [B, M] -> (float16 [B, M], saturated?): values beyond the float16 range are clipped to +-65504.

    NaN raises: a model that outputs NaN would poison every statistic downstream.
    """
    peak = acts.abs().amax() if acts.numel() else acts.new_zeros(())
    if torch.isnan(peak):
        raise ValueError(f"layer '{layer}' produced NaN activations")
    saturated = bool(peak > F16_MAX)
    if saturated:
        acts = acts.clamp(-F16_MAX, F16_MAX)
    return acts.to(torch.float16), saturated


class ActivationWriter(BasePredictionWriter):
    """Writes {"clip_id", "acts"} predictions into shard files under `shard_dir` (see module docstring)."""

    def __init__(self, shard_dir: str | Path, clip_rows: Mapping[str, int], widths: Mapping[str, int],
                 top_k: int, shard_rows: int):
        super().__init__(write_interval="batch")
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
        self.shard_dir = Path(shard_dir)
        self.clip_rows = dict(clip_rows)
        self.widths = dict(widths)
        self.top_k = int(top_k)
        self.shard_rows = int(shard_rows)
        self.shards_written = 0
        self._saturated: set[str] = set()
        self._n = 0
        self._allocate(capacity=0)
        self._topk = {layer: RunningTopK(self.top_k) for layer in self.widths}

    def _allocate(self, capacity: int) -> None:
        self._capacity = capacity
        self._rows = np.empty(capacity, np.int64)
        self._buffers = {layer: np.empty((capacity, m), np.float16) for layer, m in self.widths.items()}

    def write_on_batch_end(self, trainer: Any, pl_module: Any, prediction: dict[str, Any], batch_indices: Any,
                           batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        ids = prediction["clip_id"]
        try:
            rows = torch.tensor([self.clip_rows[c] for c in ids], dtype=torch.int64)
        except KeyError as e:
            raise KeyError(f"clip_id {e.args[0]!r} is not in the collection's clip list") from None
        b = len(ids)
        halves = {}
        for layer, width in self.widths.items():
            acts = prediction["acts"][layer]
            if tuple(acts.shape) != (b, width):
                raise ValueError(f"layer '{layer}': got activations of shape {tuple(acts.shape)}, "
                                 f"expected ({b}, {width})")
            halves[layer], saturated = to_float16(layer, acts)
            if saturated and layer not in self._saturated:
                self._saturated.add(layer)
                warnings.warn(f"layer '{layer}': activations beyond +-{F16_MAX:g} clipped to the float16 range")
        if self._n + b > self._capacity:
            self._flush()
            if self._capacity < b:
                self._allocate(capacity=max(self.shard_rows, b))
        n = self._n
        self._rows[n:n + b] = rows.numpy()
        for layer, half in halves.items():
            self._buffers[layer][n:n + b] = half.numpy()
            self._topk[layer].update(half, rows)
        self._n = n + b
        if self._n >= self.shard_rows:
            self._flush()

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        self._flush()

    def _flush(self) -> None:
        """Commit the buffered rows (if any) as one shard and start an empty one."""
        if self._n == 0:
            return
        n = self._n
        write_shard(self.shard_dir, self._rows[:n], {k: v[:n] for k, v in self._buffers.items()}, self._topk)
        self.shards_written += 1
        self._n = 0
        self._topk = {layer: RunningTopK(self.top_k) for layer in self.widths}
