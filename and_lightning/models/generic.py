"""Any `nn.Module` as a target: `model=custom model.net._target_=my_pkg.MyNet model.layers={conv1: ..., head: fc}`.

The net maps waveforms [B, T] at `sample_rate` to logits [B, C]. `layers` names its dissectable layers, in forward
order with the classification head last: logical name -> module path (in the net) of the module whose OUTPUT is
the unit, i.e. what the next layer reads. That module is either

- a Linear, Conv or BatchNorm module (its outputs are the units), or
- an activation module with f(0) = 0 (ReLU, GELU, ...) applied right after one (for a conv block: the ReLU after
  the BatchNorm): the units are its outputs; pruning zeroes the module before it, which the activation passes on
  as 0, and `pre_activation` recordings read that module's output.

The net is run once on a noise clip of `trace_seconds` (the data's clip length; eval mode, no gradients) to find
each activation's input module and check the layers: each runs once per forward pass, in the order given, and the
last has one unit per class.
Subclass `GenericAdapter` and override `preprocess` for a net that wants features rather than waveforms.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from hydra.utils import instantiate
from torch import nn

from and_lightning.data.audio_io import resample
from and_lightning.models.base import UNIT_MODULES, TargetAdapter, unit_count

class GenericAdapter(TargetAdapter):
    """Wraps `net` (an nn.Module, or a config mapping with its `_target_`) with the layers named in `layers`."""

    def __init__(self, net: nn.Module | Mapping[str, Any], layers: Mapping[str, str], num_classes: int | None = None,
                 sample_rate: int = 16000, trace_seconds: float = 1.0):
        super().__init__()
        self.net = net if isinstance(net, nn.Module) else build_net(net)
        if not isinstance(self.net, nn.Module):
            raise ValueError(f"model.net: {type(self.net).__name__} is not a torch.nn.Module")
        if not isinstance(layers, Mapping) or not layers:
            raise ValueError("model.layers: expected a mapping {logical name: module path in the net}, in forward "
                             "order with the head last, e.g. {conv1: features.2, head: fc}")
        self.named = {str(name): str(path) for name, path in layers.items()}  # a Sequential index may read as int
        known = dict(self.net.named_modules())
        unknown = {name: path for name, path in self.named.items() if not path or path not in known}
        if unknown:
            paths = [p for p in known if p]
            more = f" ... ({len(paths)} in all; print the net to see them)" if len(paths) > 30 else ""
            raise ValueError(f"model.layers: {unknown} name no module of {type(self.net).__name__}; its modules: "
                             f"{', '.join(paths[:30])}{more}")
        self.sample_rate = int(sample_rate)
        self.num_classes = num_classes
        self.trace_seconds = float(trace_seconds)
        self._resolution: dict[str, tuple[str, str | None]] | None = None

    def preprocess(self, wave: torch.Tensor, sr: int | None = None) -> torch.Tensor:
        """Waveforms [B, T] at `sr` (default: the model's rate) -> the net's input (the waveforms at its rate)."""
        if sr is not None and sr != self.sample_rate:
            wave = resample(wave, sr, self.sample_rate)
        return wave

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(wave))

    @property
    def head_path(self) -> str:  # the module the last layer's units come from
        return self.layer_paths()[list(self.named)[-1]]

    def layer_paths(self) -> dict[str, str]:
        return {name: f"net.{module}" for name, (module, _) in self._resolved().items()}

    def unit_activations(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        return {name: _out_of_place(self.net.get_submodule(act))
                for name, (_, act) in self._resolved().items() if act is not None}

    def _resolved(self) -> dict[str, tuple[str, str | None]]:
        """Logical name -> (path of the Linear/Conv/BatchNorm module, path of the activation after it or None),
        from one traced forward pass (on first use, once the net and any subclass state exist)."""
        if self._resolution is None:
            try:
                self._resolution = self._resolve()
            except AttributeError as e:  # inside the `head_path` property it would read as a missing attribute
                raise RuntimeError(f"tracing {type(self.net).__name__}: {e}") from e
        return self._resolution

    def _resolve(self) -> dict[str, tuple[str, str | None]]:
        calls, logits = self._trace()
        order = [path for path, _, _ in calls]
        resolved: dict[str, tuple[str, str | None]] = {}
        for name, path in self.named.items():
            runs = order.count(path)
            if runs != 1:
                raise ValueError(f"model.layers.{name}: '{path}' runs {runs} times in a forward pass of "
                                 f"{type(self.net).__name__}; name a module that runs exactly once")
            i = order.index(path)
            module = self.net.get_submodule(path)
            if isinstance(module, UNIT_MODULES):
                resolved[name] = (path, None)
                continue
            resolved[name] = (_input_module(calls, i, self.net, name), path)
            _check_zero_preserving(module, calls[i][1], name, path)
        seen = [order.index(path) for path in self.named.values()]
        if seen != sorted(seen):
            ran = sorted(self.named, key=lambda n: order.index(self.named[n]))
            raise ValueError(f"model.layers: list the layers in forward order (the head last); they run as {ran}")
        head = list(self.named)[-1]
        width = unit_count(self.net.get_submodule(resolved[head][0]))
        if logits.shape[-1] != width or (self.num_classes is not None and width != self.num_classes):
            raise ValueError(f"model.layers.{head}: the last layer must be the classification head; it has {width} "
                             f"units but {type(self.net).__name__} returns {logits.shape[-1]} logits (model."
                             f"num_classes={self.num_classes})")
        return resolved

    def _trace(self) -> tuple[list[tuple[str, torch.Tensor, Any]], torch.Tensor]:
        """One forward pass of the net on noise: (path, input, output) of every submodule call in completion
        order (tensors kept alive, so `is` compares them), and the logits."""
        calls: list[tuple[str, torch.Tensor, Any]] = []
        handles = [module.register_forward_hook(
                       lambda m, args, out, p=path: calls.append((p, args[0] if args else None, out)))
                   for path, module in self.net.named_modules() if path]
        modes = {m: m.training for m in self.modules()}
        param = next(self.parameters(), None)
        wave = torch.randn(2, round(self.trace_seconds * self.sample_rate),
                           generator=torch.Generator().manual_seed(0)) * 0.1
        if param is not None:
            wave = wave.to(param.device, param.dtype)
        self.eval()
        try:
            with torch.no_grad():
                logits = self(wave)
        finally:
            for h in handles:
                h.remove()
            for m, mode in modes.items():
                m.training = mode
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != 2:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"model.net: {type(self.net).__name__} must map waveforms [B, T] to logits [B, C]; "
                             f"it returned {got} for input [2, {wave.shape[1]}]")
        return calls, logits


def require_adapter(model: Any) -> TargetAdapter:
    """`model` if it is a target adapter; for anything else (a plain nn.Module) an error saying how to wrap it."""
    if isinstance(model, TargetAdapter):
        return model
    name = f"{type(model).__module__}.{type(model).__qualname__}"
    raise ValueError(f"model._target_ built {name}, not a target adapter; for a plain nn.Module (waveforms -> logits) "
                     f"use model=custom model.net._target_={name} 'model.layers={{<name>: <module path>, ..., "
                     "head: <head path>}' (README \"Your own model\")")


def build_net(node: Mapping[str, Any]) -> nn.Module:
    """Instantiate `model.net` (a mapping from the run's config with `_target_`)."""
    target = node.get("_target_")
    if not target or target == "???":
        raise ValueError("model.net._target_: set it to your network class (an nn.Module mapping waveforms [B, T] "
                         "to logits [B, C]), e.g. model.net._target_=and_lightning.models.examples.TinyAudioNet")
    return instantiate(dict(node), _convert_="all")


def _input_module(calls: list[tuple[str, Any, Any]], i: int, net: nn.Module, name: str) -> str:
    """The Linear / Conv / BatchNorm module whose output (the very tensor) call `i` took as input."""
    path, x, _ = calls[i]
    for earlier, _, out in reversed(calls[:i]):
        if out is x and isinstance(net.get_submodule(earlier), UNIT_MODULES):
            return earlier
    kind = type(net.get_submodule(path)).__name__
    raise ValueError(f"model.layers.{name}: '{path}' is a {kind}, neither a Linear, Conv or BatchNorm module nor an "
                     "activation applied right after one; name the module whose output is the unit")


def _check_zero_preserving(module: nn.Module, x: torch.Tensor, name: str, path: str) -> None:
    """An activation between the pruned module and the next layer must map 0 to 0 (else pruning leaks f(0))."""
    with torch.no_grad():
        silent = module(torch.zeros_like(x))
    if not isinstance(silent, torch.Tensor) or silent.abs().max() != 0:
        raise ValueError(f"model.layers.{name}: '{path}' ({type(module).__name__}) does not map 0 to 0, so zeroing "
                         "the module before it would not silence the unit; name that module instead")


def _out_of_place(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation on a copy (an in-place ReLU would otherwise rewrite the hooked tensor)."""
    return lambda x: module(x.clone())
