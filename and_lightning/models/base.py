"""The target-adapter interface every dissectable model implements.

An adapter takes a batch of mono waveforms [B, T] at `sample_rate` and returns class logits [B, C].
It names its dissectable layers with stable logical names mapped to module paths (resolved with
`get_submodule`, never `eval`), so hooks survive library renames.
"""
from __future__ import annotations

import torch
from torch import nn


class UnknownLayerError(KeyError):
    """A layer name that the model does not expose."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class TargetAdapter(nn.Module):
    """Base class: subclasses set `sample_rate`, build `self.net`, and fill `layer_paths()`."""

    sample_rate: int = 16000
    head_path: str = ""  # module path of the classification head (trained in the `frozen` strategy)
    trainable: bool = True  # False for fixed pretrained models that train.py must refuse (e.g. CREPE)

    def preprocess(self, wave: torch.Tensor, sr: int | None = None) -> torch.Tensor:
        """Waveforms [B, T] at `sr` (default: the model's rate) -> the network's input features."""
        raise NotImplementedError

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Waveforms [B, T] at `self.sample_rate` -> logits [B, C]."""
        raise NotImplementedError

    def layer_paths(self) -> dict[str, str]:
        """Logical layer name -> module path relative to this adapter (for `get_submodule`)."""
        raise NotImplementedError

    def layers(self) -> dict[str, int]:
        """Logical layer name -> number of units (output channels/features) in that layer."""
        return {name: unit_count(self.get_submodule(path)) for name, path in self.layer_paths().items()}

    def layer_module(self, name: str) -> nn.Module:
        """The module behind a logical layer name; a clear error for unknown names."""
        paths = self.layer_paths()
        if name not in paths:
            raise UnknownLayerError(
                f"unknown layer '{name}' for {type(self).__name__}; available: {', '.join(paths)}"
            )
        return self.get_submodule(paths[name])

    def head(self) -> nn.Module:
        return self.get_submodule(self.head_path)

    def unit_view(self, name: str, output: torch.Tensor, batch_size: int) -> torch.Tensor:
        """A hooked layer's output as [B, units, positions] (positions = time/tokens/freq cells).

        Linear outputs carry units last, conv outputs at dim 1; models that fold frames into the
        batch (CREPE) are unfolded back to one row per clip, frames becoming positions.
        """
        x = output.movedim(-1, 1) if isinstance(self.layer_module(name), nn.Linear) else output
        x = x.reshape(x.shape[0], x.shape[1], -1)
        if x.shape[0] != batch_size:
            n, u, p = x.shape
            x = x.reshape(batch_size, n // batch_size, u, p).permute(0, 2, 1, 3).reshape(batch_size, u, -1)
        return x


def unit_count(module: nn.Module) -> int:
    """Output width of a Linear / Conv module (the units a dissection sees)."""
    for attr in ("out_features", "out_channels"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    raise TypeError(f"cannot infer the unit count of {type(module).__name__}")
