"""Unit masks by neuron INDEX: forward hooks that zero chosen output units of Linear / Conv / BatchNorm layers.

A unit is what the next layer reads (see `models/base.py`): the mask zeroes the layer module's output, and the
activation that may follow it (ReLU, GELU: f(0) = 0) passes that 0 on, so a pruned unit contributes exactly
nothing downstream, in eval and in training mode. Hooks leave the weights untouched, are removed with
`remove()`, and also hold during training: the zeroed outputs pass no gradient, so the pruned units' weights
get none. `bake()` writes the same masks into the weights (zero weight rows and bias entries, as the original
AND did with `custom_from_mask`; for BatchNorm its scale and shift) for export.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from and_lightning.models.base import UNIT_MODULES, TargetAdapter, unit_count, unit_dim


def maskable(module: nn.Module, name: str = "") -> nn.Module:
    """`module` if unit masks apply to it (Linear, Conv, BatchNorm: one weight row per unit; an SAE's feature
    tap, `sae/splice.py`: one feature per unit), else TypeError."""
    if not isinstance(module, UNIT_MODULES) and not hasattr(module, "unit_dim"):
        raise TypeError(f"layer '{name}' is a {type(module).__name__}; unit masks apply to Linear, Conv and "
                        "BatchNorm layers and to SAE features")
    return module


class UnitMasks:
    """Zero `units[layer]` (indices into the layer's output units) of an adapter's logical layers."""

    def __init__(self, adapter: TargetAdapter, units: Mapping[str, Sequence[int]]):
        self.adapter = adapter
        self.pruned: dict[str, torch.Tensor] = {}  # layer -> bool [width], True = zeroed
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for layer, idx in units.items():
            width = unit_count(maskable(adapter.layer_module(layer), layer))
            idx = [int(i) for i in idx]
            bad = [i for i in idx if not 0 <= i < width]
            if bad:
                raise IndexError(f"layer '{layer}' has {width} units; cannot mask units {bad[:10]}")
            mask = torch.zeros(width, dtype=torch.bool)
            mask[idx] = True
            self.pruned[layer] = mask

    @property
    def count(self) -> int:
        return int(sum(int(m.sum()) for m in self.pruned.values()))

    def apply(self) -> "UnitMasks":
        """Register the hooks (idempotent)."""
        if not self._handles:
            for layer, mask in self.pruned.items():
                module = self.adapter.layer_module(layer)
                self._handles.append(module.register_forward_hook(_zero_hook(mask, unit_dim(module))))
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> "UnitMasks":
        return self.apply()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    @torch.no_grad()
    def bake(self) -> None:
        """Zero the pruned units' weight rows and bias entries in place (the hooks' outputs, and a BatchNorm
        layer's outputs in training mode too)."""
        for layer, mask in self.pruned.items():
            module = self.adapter.layer_module(layer)
            if not isinstance(module, UNIT_MODULES):
                raise TypeError(f"layer '{layer}': SAE features have no weights to bake; keep the mask hooks")
            module.weight[mask.to(module.weight.device)] = 0
            if module.bias is not None:
                module.bias[mask.to(module.bias.device)] = 0


def _mask_view(mask: torch.Tensor, output: torch.Tensor, dim: int) -> torch.Tensor:
    """A unit mask, [width] (every row) or [B, width] (per batch row), shaped to broadcast over `output`. A model
    that folds F frames of each clip into the batch (CREPE: B * F rows, clip-major) gets each row's mask F times."""
    shape = [1] * output.dim()
    shape[dim] = -1
    if mask.dim() == 2:
        if output.shape[0] != mask.shape[0] and output.shape[0] % mask.shape[0] == 0:
            mask = mask.repeat_interleave(output.shape[0] // mask.shape[0], 0)
        shape[0] = mask.shape[0]
    return mask.to(output.device).view(shape)


def _zero_hook(mask: torch.Tensor, dim: int):
    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return output.masked_fill(_mask_view(mask, output, dim), 0)

    return hook


def _scale_hook(mask: torch.Tensor, dim: int, factor: float):
    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return torch.where(_mask_view(mask, output, dim), output * factor, output)

    return hook


@contextmanager
def row_unit_edit(adapter: TargetAdapter, layer: str, rows: torch.Tensor, factor: float = 0.0,
                  repeat: int = 1) -> Iterator[None]:
    """While inside, scale the units `rows` [B, width] (bool, per batch row) of `layer` by `factor`: 0 zeroes them
    with the pruning masks' own hook (ablation), another factor amplifies them. Lets one forward pass edit a
    different unit in each block of rows (the intervention scorer). `repeat` > 1: the forward pass gets B / repeat
    rows and the layer's output is repeated `repeat` times (blocks in order) before the edit, so the layers before
    it run once (for models whose later layers do not depend on the input's batch size)."""
    module = maskable(adapter.layer_module(layer), layer)
    if rows.dim() != 2 or rows.shape[1] != unit_count(module):
        raise ValueError(f"layer '{layer}' has {unit_count(module)} units; got a row mask of shape {tuple(rows.shape)}")
    dim = unit_dim(module)
    edit = _zero_hook(rows, dim) if factor == 0 else _scale_hook(rows, dim, factor)

    def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return edit(mod, inputs, output.repeat(repeat, *[1] * (output.dim() - 1)) if repeat > 1 else output)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def pruned_unit_max(adapter: TargetAdapter, pruned: Mapping[str, torch.Tensor], audio: torch.Tensor) -> dict[str, float]:
    """Per layer, the largest |value| of its pruned units (bool masks) on a batch, as the next layer reads
    them (`adapter.unit_view`, through the layer's activation): 0.0 when they are silenced."""
    seen: dict[str, float] = {}

    def capture(layer: str, mask: torch.Tensor):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            units = adapter.unit_view(layer, output, len(audio))[:, mask.to(output.device)]
            seen[layer] = float(units.abs().max()) if units.numel() else 0.0
        return hook

    handles = [adapter.layer_module(layer).register_forward_hook(capture(layer, mask))
               for layer, mask in pruned.items()]
    try:
        adapter(audio)
    finally:
        for h in handles:
            h.remove()
    return seen
