"""Prediction writer that streams ProbeModule outputs into activation-store shards (batch by batch, no epoch list).

Each rank fills fixed-size float32 row buffers (activations and their tie-break statistics); when `shard_rows`
rows are buffered (and at the end of the predict loop) they are committed as one shard file. Top-K is computed
when the store is assembled, from the stored matrices. Rows are found from the batch's `clip_id`s, never from
Lightning's inferred batch indices. Use with `trainer.predict(..., return_predictions=False)` so Lightning keeps no
predictions in memory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from and_lightning.store.activations import write_shard


class ActivationWriter(BasePredictionWriter):
    """Writes {"clip_id", "acts", "tiebreak"} predictions (and "peak", the peak frame times, with `peaks`) into
    shard files under `shard_dir` (see module docstring).

    All layers share one row buffer per matrix [shard_rows, sum of widths], so a batch costs one concatenation and
    one copy per matrix whatever the number of layers.
    """

    def __init__(self, shard_dir: str | Path, clip_rows: Mapping[str, int], widths: Mapping[str, int],
                 shard_rows: int, peaks: bool = False):
        super().__init__(write_interval="batch")
        if shard_rows < 1:
            raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
        self.shard_dir = Path(shard_dir)
        self.clip_rows = dict(clip_rows)
        self.widths = dict(widths)
        self.shard_rows = int(shard_rows)
        self.shards_written = 0
        self.matrices = ("acts", "tiebreak", "peak") if peaks else ("acts", "tiebreak")
        self._units = sum(self.widths.values())
        self._n = 0
        self._allocate(capacity=0)

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
        self._buffers = {name: np.empty((capacity, self._units), np.float32) for name in self.matrices}

    def write_on_batch_end(self, trainer: Any, pl_module: Any, prediction: dict[str, Any], batch_indices: Any,
                           batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        ids = prediction["clip_id"]
        try:
            rows = np.array([self.clip_rows[c] for c in ids], np.int64)
        except KeyError as e:
            raise KeyError(f"clip_id {e.args[0]!r} is not in the collection's clip list") from None
        b = len(ids)
        batch_rows = {}
        for name in self._buffers:
            parts = []
            for layer, width in self.widths.items():
                acts = prediction[name][layer]
                if tuple(acts.shape) != (b, width):
                    raise ValueError(f"layer '{layer}': got {name} of shape {tuple(acts.shape)}, "
                                     f"expected ({b}, {width})")
                parts.append(acts)
            batch_rows[name] = torch.cat(parts, dim=1).float()
            # NaN or inf would poison every statistic downstream (a NaN peak time: the layer has no time axis)
            if name != "peak" and not torch.isfinite(batch_rows[name]).all():
                bad = [layer for layer, part in zip(self.widths, parts) if not torch.isfinite(part).all()]
                raise ValueError(f"layer(s) {bad} produced NaN or infinite {name} for clips {list(ids)}")
        if self._n + b > self._capacity:
            self._flush()
            if self._capacity < b:
                self._allocate(capacity=max(self.shard_rows, b))
        n = self._n
        self._rows[n:n + b] = rows
        for name, buffer in self._buffers.items():
            buffer[n:n + b] = batch_rows[name].numpy()
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
        write_shard(self.shard_dir, self.widths, self._rows[:n], self._buffers["acts"][:n],
                    self._buffers["tiebreak"][:n], self._buffers["peak"][:n] if "peak" in self._buffers else None)
        self.shards_written += 1
        self._n = 0
