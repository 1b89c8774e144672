"""Prediction writer that streams ProbeModule outputs into activation-store shards (batch by batch, no epoch list).

Each rank fills a fixed-size float16 row buffer and keeps a running top/bottom-K; when `shard_rows` rows are
buffered (and at the end of the predict loop) the buffer is folded into the running top-K, in blocks of about
1 M values (bounded memory, few calls), and committed as one shard file with the top-K state so far (cumulative
over the rank's run; assembly takes the union, each row counted once). Rows are found from the
batch's `clip_id`s, never from Lightning's inferred batch indices. Use with
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

TOPK_BLOCK_VALUES = 1 << 20  # buffered values folded into the running top-K per call (bounds its temporaries)


def to_float16(acts: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """float32 [B, M] -> (float16 [B, M], saturated?): values beyond the float16 range are clipped to +-65504.

    NaN raises ValueError: a model that outputs NaN would poison every statistic downstream.
    """
    peak = acts.abs().amax() if acts.numel() else acts.new_zeros(())
    if torch.isnan(peak):
        raise ValueError("NaN activations")
    saturated = bool(peak > F16_MAX)
    if saturated:
        acts = acts.clamp(-F16_MAX, F16_MAX)
    return acts.to(torch.float16), saturated


class ActivationWriter(BasePredictionWriter):
    """Writes {"clip_id", "acts"} predictions into shard files under `shard_dir` (see module docstring).

    All layers share one float16 row buffer [shard_rows, sum of widths] and one running top-K over all their
    units, so a batch costs one concatenation, one cast and one copy whatever the number of layers.
    """

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
        self._units = sum(self.widths.values())
        self._saturated: set[str] = set()
        self._n = 0
        self._allocate(capacity=0)
        self._topk = RunningTopK(self.top_k)  # over all units of all layers, kept across shards

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """All ranks must write into the same store: refuse to start if they computed different store keys
        (ranks launched separately that see different weights or dataset files)."""
        super().setup(trainer, pl_module, stage)
        key = self.shard_dir.parent.name.removesuffix(".partial")
        same = trainer.strategy.broadcast(key, src=0) == key
        if not trainer.strategy.reduce_boolean_decision(same, all=True):
            raise RuntimeError(f"rank {trainer.global_rank}: the ranks computed different activation-store keys "
                               f"('{key}' here): they see different model weights or dataset files")

    def _allocate(self, capacity: int) -> None:
        self._capacity = capacity
        self._rows = np.empty(capacity, np.int64)
        self._buffer = np.empty((capacity, self._units), np.float16)

    def write_on_batch_end(self, trainer: Any, pl_module: Any, prediction: dict[str, Any], batch_indices: Any,
                           batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        ids = prediction["clip_id"]
        try:
            rows = np.array([self.clip_rows[c] for c in ids], np.int64)
        except KeyError as e:
            raise KeyError(f"clip_id {e.args[0]!r} is not in the collection's clip list") from None
        b = len(ids)
        parts = []
        for layer, width in self.widths.items():
            acts = prediction["acts"][layer]
            if tuple(acts.shape) != (b, width):
                raise ValueError(f"layer '{layer}': got activations of shape {tuple(acts.shape)}, "
                                 f"expected ({b}, {width})")
            parts.append(acts)
        try:
            half, saturated = to_float16(torch.cat(parts, dim=1))
        except ValueError:
            bad = [layer for layer, acts in zip(self.widths, parts) if torch.isnan(acts).any()]
            raise ValueError(f"layer(s) {bad} produced NaN activations for clips {list(ids)}") from None
        if saturated:
            self._warn_saturated(parts)
        if self._n + b > self._capacity:
            self._flush()
            if self._capacity < b:
                self._allocate(capacity=max(self.shard_rows, b))
        n = self._n
        self._rows[n:n + b] = rows
        self._buffer[n:n + b] = half.numpy()
        self._n = n + b
        if self._n >= self.shard_rows:
            self._flush()

    def _warn_saturated(self, parts: list[torch.Tensor]) -> None:
        for layer, acts in zip(self.widths, parts):
            if layer not in self._saturated and bool(acts.abs().amax() > F16_MAX):
                self._saturated.add(layer)
                warnings.warn(f"layer '{layer}': activations beyond +-{F16_MAX:g} clipped to the float16 range")

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        self._flush()

    def _flush(self) -> None:
        """Commit the buffered rows (if any) as one shard and start an empty one."""
        if self._n == 0:
            return
        n = self._n
        block = max(1, TOPK_BLOCK_VALUES // self._units)
        for start in range(0, n, block):
            self._topk.update(self._buffer[start:min(n, start + block)], self._rows[start:min(n, start + block)])
        write_shard(self.shard_dir, self.widths, self._rows[:n], self._buffer[:n],
                    self._topk.top_keys, self._topk.bottom_keys)
        self.shards_written += 1
        self._n = 0
