"""Unit masks by neuron INDEX: forward hooks that zero chosen output units of Linear / Conv layers.

Hooks leave the weights untouched, are removed with `remove()`, and also hold during training: the zeroed
outputs pass no gradient, so the pruned units' weights get none. `bake()` writes the same masks into the
weights (zero weight rows and bias entries, as the original AND did with `custom_from_mask`) for export.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from and_lightning.models.base import TargetAdapter

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def unit_dim(module: nn.Module, name: str = "") -> int:
    """The output dimension that indexes units: last for Linear, 1 (channels) for Conv."""
    if isinstance(module, nn.Linear):
        return -1
    if isinstance(module, _CONV):
        return 1
    raise TypeError(f"layer '{name}' is a {type(module).__name__}; unit masks apply to Linear and Conv1d/2d/3d")


class UnitMasks:
    """Zero `units[layer]` (indices into the layer's output units) of an adapter's logical layers."""

    def __init__(self, adapter: TargetAdapter, units: Mapping[str, Sequence[int]]):
        self.adapter = adapter
        self.pruned: dict[str, torch.Tensor] = {}  # layer -> bool [width], True = zeroed
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for layer, idx in units.items():
            module = adapter.layer_module(layer)
            unit_dim(module, layer)
            width = module.out_features if isinstance(module, nn.Linear) else module.out_channels
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
                self._handles.append(module.register_forward_hook(_zero_hook(mask, unit_dim(module, layer))))
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
        """Zero the pruned units' weight rows and bias entries in place (same outputs as the hooks)."""
        for layer, mask in self.pruned.items():
            module = self.adapter.layer_module(layer)
            module.weight[mask.to(module.weight.device)] = 0
            if module.bias is not None:
                module.bias[mask.to(module.bias.device)] = 0


def _zero_hook(mask: torch.Tensor, dim: int):
    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        shape = [1] * output.dim()
        shape[dim] = -1
        return output.masked_fill(mask.to(output.device).view(shape), 0)

    return hook
