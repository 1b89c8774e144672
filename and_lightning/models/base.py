"""The target-adapter interface every dissectable model implements.

An adapter takes a batch of mono waveforms [B, T] at `sample_rate` and returns class logits [B, C].
It names its dissectable layers with stable logical names mapped to module paths (resolved with
`get_submodule`, never `eval`), so hooks survive library renames.

A unit is what the next layer reads. A logical layer is a module whose output has one entry per unit (Linear,
Conv, BatchNorm), optionally followed by an activation with f(0) = 0 (`unit_activations`: the ReLU after a
conv block's BatchNorm, the GELU after a transformer MLP's first Linear). The unit's value is
activation(module output); recording applies the activation (`unit_view`), pruning zeroes the module's output
(so the activation passes exactly 0 on), and `pre_activation=True` records the module output itself (the
original AND code's pre-nonlinearity hooks, for faithful runs).
"""
from __future__ import annotations

from typing import Callable

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
    uses_lengths: bool = False  # True: forward(wave, lengths) leaves each clip's zero padding out (BEATs)

    def preprocess(self, wave: torch.Tensor, sr: int | None = None) -> torch.Tensor:
        """Waveforms [B, T] at `sr` (default: the model's rate) -> the network's input features."""
        raise NotImplementedError

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Waveforms [B, T] at `self.sample_rate` -> logits [B, C]."""
        raise NotImplementedError

    def run(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of clips zero-padded to one length; `lengths` [B]: each clip's samples before padding (a batch's
        "length"). Adapters that `uses_lengths` leave the padding out, so a clip's values are those it gets alone;
        the others see the padded clips, as they were trained."""
        return self(wave, lengths) if self.uses_lengths and lengths is not None else self(wave)

    def valid_positions(self, positions: int) -> torch.Tensor | None:
        """Inside a `run` with padding: bool [B, positions], False at the positions (tokens) of a layer's output
        that are padding, for layers whose positions the adapter masks; None when every position counts."""
        return None

    def layer_paths(self) -> dict[str, str]:
        """Logical layer name -> module path relative to this adapter (for `get_submodule`)."""
        raise NotImplementedError

    def unit_activations(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """Logical layer name -> the activation (f(0) = 0) between the layer's module and the next layer, for
        layers that have one; the others' units are the module output itself."""
        return {}

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

    def unit_view(self, name: str, output: torch.Tensor, batch_size: int,
                  pre_activation: bool = False) -> torch.Tensor:
        """A hooked layer's output as [B, units, positions] (positions = time/tokens/freq cells), through the
        layer's activation unless `pre_activation`: the values the next layer reads.

        Linear outputs carry units last, conv and BatchNorm outputs at dim 1; models that fold frames into the
        batch (CREPE) are unfolded back to one row per clip, frames becoming positions.
        """
        activation = None if pre_activation else self.unit_activations().get(name)
        if activation is not None:
            output = activation(output)
        x = output.movedim(-1, 1) if unit_dim(self.layer_module(name)) == -1 else output
        x = x.reshape(x.shape[0], x.shape[1], -1)
        if x.shape[0] != batch_size:
            n, u, p = x.shape
            x = x.reshape(batch_size, n // batch_size, u, p).permute(0, 2, 1, 3).reshape(batch_size, u, -1)
        return x

    def time_curve(self, name: str, output: torch.Tensor, batch_size: int, clip_seconds: float,
                   pre_activation: bool = False) -> tuple[torch.Tensor, float] | None:
        """A hooked layer's units over time: (float [B, units, frames], seconds per frame), frame i covering
        [i, i + 1) * seconds per frame of the clip, values as `unit_view` gives them; None for layers without a time
        axis (heads, pooled layers), whose exemplars stay whole clips.

        Here: a conv layer's output [B, C, (freq,) time] (time last, its frames evenly covering the `clip_seconds`
        clip), averaged over frequency; None otherwise. Adapters whose tokens or folded frames hold the time
        (AST, BEATs, CREPE) override this."""
        if unit_dim(self.layer_module(name)) != 1 or output.dim() < 3 or output.shape[0] != batch_size:
            return None
        frames = output.shape[-1]
        return per_frame(self.unit_view(name, output, batch_size, pre_activation), frames), clip_seconds / frames


def per_frame(view: torch.Tensor, frames: int, time_major: bool = False) -> torch.Tensor:
    """`unit_view` positions [B, units, cells] laid out on a (freq, time) grid (`time_major`: (time, freq)) with
    `frames` time steps -> the mean over frequency [B, units, frames]."""
    b, u, cells = view.shape
    if time_major:
        return view.reshape(b, u, frames, cells // frames).mean(dim=3)
    return view.reshape(b, u, cells // frames, frames).mean(dim=2)


# modules whose outputs are units (one weight row / channel each): what a logical layer names, what masks zero
UNIT_MODULES = (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)


def unit_dim(module: nn.Module) -> int:
    """The output dimension that indexes a layer's units: last for Linear, 1 (channels) otherwise, or the module's
    own `unit_dim` (an SAE's feature tap, `sae/splice.py`)."""
    return getattr(module, "unit_dim", -1 if isinstance(module, nn.Linear) else 1)


def unit_count(module: nn.Module) -> int:
    """Output width of a Linear / Conv / BatchNorm module (the units a dissection sees)."""
    for attr in ("out_features", "out_channels", "num_features"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    raise TypeError(f"cannot infer the unit count of {type(module).__name__}")
