"""Splice SAEs into a target model: `<layer>.sae` becomes a layer whose units are the SAE's features.

At a spliced layer the model computes out = x - decode_delta(codes - kept_codes): x is the layer module's output
(before the layer's activation, as `pre_activation` records it), codes = encode(x) per position (tokens: every
position's vector of units), and kept_codes are the codes after the `<layer>.sae` tap, where unit masks zero
erased features. That is reconstruction(kept_codes) + error, the error x - reconstruction(codes) passing through
unchanged, written so that with nothing erased the layer's output is x bit for bit. Erasing feature i removes
exactly its contribution codes_i * W_dec[i] from every position; no other feature's code changes.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn

from and_lightning.models.base import TargetAdapter, unit_dim
from and_lightning.sae.model import SparseAutoencoder

SUFFIX = ".sae"


class FeatureTap(nn.Identity):
    """The hook point of a splice: its output [..., features] (units last) is what collection records and what
    unit masks zero."""

    unit_dim = -1

    def __init__(self, features: int):
        super().__init__()
        self.out_features = features


class SAESplice(nn.Module):
    """Codes of a layer output's positions -> the layer output with erased features' contributions removed."""

    def __init__(self, sae: SparseAutoencoder, dim: int):
        super().__init__()
        self.sae = sae.eval()
        self.dim = dim  # the output dimension holding the host layer's units
        self.features = FeatureTap(sae.d_sae)

    def forward(self, output: torch.Tensor) -> torch.Tensor:
        x = output.movedim(self.dim, -1)
        codes = self.sae.encode(x)
        kept = self.features(codes)
        if kept is codes:  # nothing erased: the layer output itself
            return output
        return (x - self.sae.decode_delta(codes - kept).to(x.dtype)).movedim(-1, self.dim)


class SplicedAdapter(TargetAdapter):
    """`target` with `saes[layer]` spliced at its layers: logical layers are the target's plus `<layer>.sae`
    (right after `<layer>`); preprocessing, forward and positions are the target's. The splices hook `target`'s
    layer modules in place: build the spliced adapter on a model of its own."""

    def __init__(self, target: TargetAdapter, saes: Mapping[str, SparseAutoencoder]):
        super().__init__()
        self.target = target
        self.sample_rate, self.trainable, self.uses_lengths = target.sample_rate, False, target.uses_lengths
        self.head_path = f"target.{target.head_path}" if target.head_path else ""
        self.splices = nn.ModuleDict()
        self._keys: dict[str, str] = {}
        for layer, sae in saes.items():
            module = target.layer_module(layer)
            width = target.layers()[layer]
            if sae.settings["d_in"] != width:
                raise ValueError(f"sae: layer '{layer}' has {width} units but the SAE reads {sae.settings['d_in']}")
            key = f"s{len(self._keys)}"
            self._keys[layer] = key
            self.splices[key] = splice = SAESplice(sae, unit_dim(module))
            module.register_forward_hook(lambda m, args, out, s=splice: s(out))

    def preprocess(self, wave: torch.Tensor, sr: int | None = None) -> torch.Tensor:
        return self.target.preprocess(wave, sr)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.target(*args)

    def valid_positions(self, positions: int) -> torch.Tensor | None:
        return self.target.valid_positions(positions)

    def layer_paths(self) -> dict[str, str]:
        paths: dict[str, str] = {}
        for name, path in self.target.layer_paths().items():
            paths[name] = f"target.{path}"
            if name in self._keys:
                paths[name + SUFFIX] = f"splices.{self._keys[name]}.features"
        return paths

    def unit_activations(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        return self.target.unit_activations()

    def time_curve(self, name: str, output: torch.Tensor, batch_size: int, clip_seconds: float,
                   pre_activation: bool = False) -> tuple[torch.Tensor, float] | None:
        """The target's time axis; an SAE's features over time are read like its host layer's units (the codes,
        features last, are put where the host keeps its units; they pass no activation)."""
        if not is_sae_layer(name):
            return self.target.time_curve(name, output, batch_size, clip_seconds, pre_activation)
        host = name[:-len(SUFFIX)]
        codes = output.movedim(-1, unit_dim(self.target.layer_module(host)))
        return self.target.time_curve(host, codes, batch_size, clip_seconds, pre_activation=True)


def is_sae_layer(name: str) -> bool:
    return name.endswith(SUFFIX)
