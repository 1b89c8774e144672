"""LightningModule that runs a target adapter with forward hooks and returns one number per (clip, unit) per layer.

Reductions over a layer's positions (time frames, tokens, or conv cells in (freq, time) order), applied to the
adapter's `unit_view` [B, units, positions]:
- "mean": average over positions (default; time-pooled activations).
- "max": maximum over positions.
- "cls": position 0. For transformers with a [CLS] token (AST) that is the CLS token.
- "token0": position 0 too, named for the original AND code, which stored token 0 of every layer (AST: CLS;
  BEATs: the first, earliest and lowest-frequency patch; conv layers: the first (freq, time) cell).
  Kept as a separate name so configs say which behaviour they mean; the values are identical to "cls".
Layers with a single position (e.g. a classifier head's logits [B, C]) give the same value under every reduction.
Units are recorded as the next layer reads them (through the layer's activation, see `models/base.py`), or
before the activation with `pre_activation=True` (the original AND code's hooks, for faithful runs).
Beside each value the probe records a tie-break statistic (`tie_break`) that orders clips of equal value, and with
`record_peaks` the time of each unit's peak frame in the clip (`peak_times`; NaN for layers without a time axis, see
`TargetAdapter.time_curve`): only that number per (clip, unit) is kept, never the frames.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import lightning as L
import torch
from torch.utils.hooks import RemovableHandle

from and_lightning.models.base import TargetAdapter

REDUCTIONS = ("mean", "max", "cls", "token0")


def tie_break(reduction: str, through_activation: bool) -> tuple[str, str]:
    """(reduction, description) of the statistic that orders clips of equal value in a layer recorded with
    `reduction`. Values that pass an activation: the same reduction before it, so the many clips on which a ReLU
    unit is exactly 0 go by how far below zero it stayed. Values without one: the other pooling of the output
    (peak beside mean, mean beside peak or first position); a layer with one position has nothing else to tell."""
    if through_activation:
        return reduction, f"{reduction} of the unit's output before its activation"
    other = "max" if reduction == "mean" else "mean"
    return other, f"{other} over positions of the unit's output"


def reduce_positions(x: torch.Tensor, reduction: str, valid: torch.Tensor | None = None) -> torch.Tensor:
    """[B, units, positions] -> float32 [B, units] by `reduction` (see the module docstring); `valid` (bool
    [B, positions], position 0 always valid) leaves a clip's padding positions out."""
    if valid is not None and reduction == "mean":
        kept = x.float().masked_fill(~valid[:, None, :], 0.0)
        return kept.sum(dim=2) / valid.sum(dim=1, keepdim=True)
    if valid is not None and reduction == "max":
        return x.masked_fill(~valid[:, None, :], float("-inf")).amax(dim=2).float()
    if reduction == "mean":
        return x.mean(dim=2, dtype=torch.float32)
    if reduction == "max":
        return x.amax(dim=2).float()
    if reduction in ("cls", "token0"):
        return x[:, :, 0].float()
    raise ValueError(f"unknown reduction '{reduction}'; expected one of {REDUCTIONS}")


def frame_centres(frames: int, seconds_per_frame: float, clip_seconds: float) -> torch.Tensor:
    """Centres (seconds, at most `clip_seconds`) of the first of `frames` frames that start inside the clip (at
    least one)."""
    inside = max(1, min(frames, math.ceil(clip_seconds / seconds_per_frame - 1e-6)))
    return ((torch.arange(inside) + 0.5) * seconds_per_frame).clamp(max=clip_seconds)


def peak_times(curve: torch.Tensor, seconds_per_frame: float, clip_seconds: float) -> torch.Tensor:
    """Units over time [B, units, frames] -> float32 [B, units]: the centre (seconds) of each unit's highest frame
    among those inside the clip (`frame_centres`; the first of equal frames)."""
    centres = frame_centres(curve.shape[2], seconds_per_frame, clip_seconds).to(curve.device)
    return centres[curve[:, :, :len(centres)].argmax(dim=2)].float()


class ProbeModule(L.LightningModule):
    """predict_step -> {"clip_id": list[str], "acts" and "tiebreak" (and "peak" with `record_peaks`): {layer:
    float32 [B, units] on CPU}}.

    Hooks are registered in `on_predict_start` and removed in `on_predict_end` / `teardown`; layer names are
    resolved by `adapter.layer_module` (UnknownLayerError listing the available names, raised at construction).
    """

    def __init__(self, adapter: TargetAdapter, layers: Sequence[str], reduction: str = "mean",
                 pre_activation: bool = False, record_peaks: bool = False):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction '{reduction}'; expected one of {REDUCTIONS}")
        layers = list(layers)
        if not layers:
            raise ValueError("ProbeModule: no layers given")
        if len(set(layers)) != len(layers):
            raise ValueError(f"ProbeModule: duplicate layer names in {layers}")
        for name in layers:
            adapter.layer_module(name)  # raises UnknownLayerError naming the available layers
        widths = adapter.layers()
        self.adapter = adapter
        self.layer_names = layers
        self.widths = {name: widths[name] for name in layers}
        self.reduction = reduction
        self.pre_activation = pre_activation
        self.record_peaks = record_peaks
        self._activated = set() if pre_activation else set(adapter.unit_activations()) & set(layers)
        self.tie_breaks = {name: tie_break(reduction, name in self._activated) for name in layers}
        self._handles: list[RemovableHandle] = []
        self._acts: dict[str, tuple[torch.Tensor, ...]] = {}
        self._batch_size = 0
        self._clip_seconds = 0.0

    def _hook(self, name: str):
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"layer '{name}' returned {type(output).__name__}, expected a tensor")
            if name in self._acts:
                raise RuntimeError(f"layer '{name}' ran twice in one forward pass; hook a module called once")
            view = self.adapter.unit_view(name, output, self._batch_size, self.pre_activation)
            raw = (self.adapter.unit_view(name, output, self._batch_size, pre_activation=True)
                   if name in self._activated else view)
            valid = self.adapter.valid_positions(view.shape[2])
            self._acts[name] = (reduce_positions(view, self.reduction, valid).cpu(),
                                reduce_positions(raw, self.tie_breaks[name][0], valid).cpu())
            if self.record_peaks:
                self._acts[name] += (self._peaks(name, output, view.shape[:2]),)

        return hook

    def _peaks(self, name: str, output: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Peak times [B, units] of a layer's output (NaN: the layer has no time axis)."""
        timed = self.adapter.time_curve(name, output, self._batch_size, self._clip_seconds, self.pre_activation)
        if timed is None:
            return torch.full(tuple(shape), float("nan"))
        return peak_times(timed[0], timed[1], self._clip_seconds).cpu()

    def on_predict_start(self) -> None:
        self._remove_hooks()
        self._handles = [self.adapter.layer_module(n).register_forward_hook(self._hook(n)) for n in self.layer_names]

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        audio = batch["audio"]
        self._batch_size = int(audio.shape[0])
        self._clip_seconds = audio.shape[1] / self.adapter.sample_rate
        self._acts = {}
        self.adapter.run(audio, batch.get("length"))
        acts, self._acts = self._acts, {}
        missing = [n for n in self.layer_names if n not in acts]
        if missing:
            raise RuntimeError(f"layers {missing} did not run in the forward pass of {type(self.adapter).__name__}")
        out = {"clip_id": list(batch["clip_id"]), "acts": {n: a[0] for n, a in acts.items()},
               "tiebreak": {n: a[1] for n, a in acts.items()}}
        if self.record_peaks:
            out["peak"] = {n: a[2] for n, a in acts.items()}
        return out

    def on_predict_end(self) -> None:
        self._remove_hooks()

    def teardown(self, stage: str) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
