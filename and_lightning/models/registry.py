"""Turn a `layers=` config value (`all`, `last`, a name, a glob, or a list of them) into an adapter's layer names."""
from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from and_lightning.models.base import TargetAdapter, UnknownLayerError
from and_lightning.models.generic import require_adapter

GLOB_CHARS = "*?["


def resolve_layers(adapter: TargetAdapter, spec: str | Iterable[str]) -> list[str]:
    """Logical layer names selected by `spec`, in the order given (model order for `all` and globs).

    - "all": every logical layer of the adapter;
    - "last": the output layer (the last logical layer: logits / pitch classifier);
    - a name or a list of names; names may be shell globs (`block1?.fc1`, `conv*`), expanded in model order.
    Unknown names and globs that match nothing raise UnknownLayerError listing the available names.
    """
    available = list(require_adapter(adapter).layer_paths())
    if isinstance(spec, str):
        if spec == "all":
            return available
        if spec == "last":
            return available[-1:]
        spec = [spec]
    chosen: list[str] = []
    for item in spec:
        name = str(item)
        if any(c in name for c in GLOB_CHARS):
            matches = [a for a in available if fnmatch.fnmatchcase(a, name)]
        else:
            matches = [name] if name in available else []
        if not matches:
            raise UnknownLayerError(
                f"unknown layer '{name}' for {type(adapter).__name__}; available: {', '.join(available)}"
            )
        chosen.extend(m for m in matches if m not in chosen)
    if not chosen:
        raise UnknownLayerError(f"no layers selected for {type(adapter).__name__} (empty layer list)")
    return chosen
