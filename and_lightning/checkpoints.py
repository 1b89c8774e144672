"""Model checkpoints are data: weights + the config that made them, read with `weights_only=True` (never
unpickled) into a model built from the RUN's own config; the stored config is only compared, never instantiated."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from and_lightning.models.generic import require_adapter
from and_lightning.store.atomic import atomic_path

# model-config keys naming where a model's initial weights come from: the checkpoint's weights replace them, and a
# path there may differ between the machine that trained and the one that loads
WEIGHT_SOURCES = ("pretrained", "checkpoint")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: not tensors and plain data, or made for another model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint file that does not exist."""


def save_checkpoint(path: str | os.PathLike, adapter: torch.nn.Module, config: dict, class_names: list[str]) -> Path:
    """Write {state_dict, config, class_names} atomically; `config` must be plain (dicts, lists, scalars)."""
    payload = {"state_dict": adapter.state_dict(), "config": config, "class_names": list(class_names)}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_weights_only(path: str | os.PathLike, field: str, missing_hint: str = "") -> Any:
    """`torch.load(..., weights_only=True)` on CPU, with one-line errors that name the config field and the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"{field}: checkpoint file not found: {path}{missing_hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found:
            raise CheckpointError(f"{field}: {path} holds a pickled Python object ({found.group(1)}); checkpoints "
                                  "are read as tensors and plain data only, never unpickled") from None
        first = " ".join(str(e).split())[:200]
        raise CheckpointError(f"{field}: {path} is not a loadable weights-only checkpoint ({type(e).__name__}: "
                              f"{first})") from None


def load_checkpoint(path: str | os.PathLike, field: str = "ckpt_path", missing_hint: str = "") -> dict[str, Any]:
    """{state_dict, config, class_names} of a file written by `save_checkpoint`, a Lightning checkpoint (weights
    under `model.`) or a bare state dict."""
    payload = load_weights_only(path, field, missing_hint or " (train one with `python train.py`)")
    if not isinstance(payload, dict):
        raise CheckpointError(f"{field}: {path} holds a {type(payload).__name__}, not a checkpoint dict")
    state = payload.get("state_dict", payload)
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)] if isinstance(state, dict) else ["?"]
    if not state or bad:
        raise CheckpointError(f"{field}: {path} has no state dict of tensors (e.g. entry {_short(bad[:1])})")
    if any(str(k).startswith("model.") for k in state):  # a Lightning .ckpt of ClassifierModule
        state = {k[len("model."):]: v for k, v in state.items() if str(k).startswith("model.")}
    hparams = payload.get("hyper_parameters")
    config = payload.get("config") or (hparams.get("config") if isinstance(hparams, dict) else None) or {}
    class_names = payload.get("class_names") or []
    if not isinstance(config, dict) or not isinstance(config.get("model") or {}, dict):
        raise CheckpointError(f"{field}: {path}: its 'config' entry is not a mapping with a 'model' mapping")
    if not isinstance(class_names, list) or not all(isinstance(c, str) for c in class_names):
        raise CheckpointError(f"{field}: {path}: its 'class_names' entry is not a list of strings")
    return {"state_dict": state, "config": config, "class_names": class_names}


def build(node: DictConfig | dict, **overrides: Any) -> Any:
    """Instantiate a node of the run's config tree that also carries descriptive keys (`name`, `num_classes`, ...).
    Never a config read from a file: its `_target_` could name any callable."""
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    plain.pop("name", None)
    plain.update(overrides)
    return instantiate(plain, _convert_="all")


def build_trainable(model_cfg: DictConfig) -> Any:
    """The adapter `model_cfg` describes, refusing fixed pretrained models (e.g. CREPE) that train.py cannot train."""
    adapter = require_adapter(build(model_cfg))
    if not adapter.trainable:
        raise ValueError(f"model={model_cfg.name} is a fixed pretrained model for dissection only; "
                         "train.py cannot train it (use it with dissect.py)")
    return adapter


def check_model_config(ckpt: dict[str, Any], model_cfg: DictConfig, source: str, settings: bool = True) -> None:
    """Refuse a checkpoint whose stored model config names another model class than the run's `model_cfg`, or
    (`settings`) differs from it in any other key both hold, WEIGHT_SOURCES aside. The stored config is only
    compared; a checkpoint without one is checked by its weights alone."""
    stored = ckpt["config"].get("model") or {}
    run = OmegaConf.to_container(model_cfg, resolve=True)
    if "_target_" in stored and not same_value(stored["_target_"], run.get("_target_")):
        raise CheckpointError(
            f"{source} holds model={_short(stored.get('name'))} ({_short(stored.get('_target_'))}) but this run has "
            f"model={run.get('name')} ({run.get('_target_')}); pass model={_short(stored.get('name'))} or a "
            f"checkpoint of {run.get('name')}")
    differ = _differences(stored, {k: v for k, v in run.items() if k not in WEIGHT_SOURCES}) if settings else []
    if differ:
        detail = "; ".join(f"model.{k}: checkpoint {_short(a)}, run {_short(b)}" for k, a, b in differ[:5])
        raise CheckpointError(f"{source} was trained with other settings of model={run.get('name')} ({detail}); "
                              "pass the checkpoint's settings on the command line or use another checkpoint")


def load_weights(adapter: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
                 fresh_head: bool = False) -> None:
    """Load `state` into `adapter`, every key and shape checked first (one-line CheckpointError naming `source`).
    `fresh_head`: the head may be absent or of another size (another class count); it then keeps its new weights."""
    own = adapter.state_dict()
    head = getattr(adapter, "head_path", "") + "." if fresh_head else None
    wrong = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if head:
        state = {k: v for k, v in state.items() if not (k in wrong and k.startswith(head))}
        wrong = [k for k in wrong if not k.startswith(head)]
    missing = [k for k in own if k not in state and not (head and k.startswith(head))]
    unexpected = [_short(k) for k in state if k not in own]
    if wrong or missing or unexpected:
        problems = [f"{k} has shape {tuple(state[k].shape)} in the checkpoint but {tuple(own[k].shape)} in the model"
                    for k in wrong[:3]]
        if missing:
            problems.append(f"missing {missing[:3]}")
        if unexpected:
            problems.append(f"unexpected {unexpected[:3]}")
        raise CheckpointError(f"{source} does not fit {type(adapter).__name__}: {'; '.join(problems)} (saved from "
                              "another model or other model settings)")
    adapter.load_state_dict(state, strict=not head)


def load_adapter(path: str | os.PathLike, model_cfg: DictConfig, field: str = "ckpt_path",
                 missing_hint: str = "") -> tuple[torch.nn.Module, dict[str, Any]]:
    """The run's model (`model_cfg`) with a checkpoint's weights, once the checkpoint's stored model config and
    every tensor shape agree with it; returns (adapter, load_checkpoint(path))."""
    ckpt = load_checkpoint(path, field, missing_hint)
    check_model_config(ckpt, model_cfg, f"{field}: {path}")
    adapter = build(model_cfg)
    load_weights(adapter, ckpt["state_dict"], f"{field}: {path}")
    return adapter, ckpt


def _differences(stored: dict, run: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, stored value, run value) for every key both configs hold whose values differ."""
    out = []
    for key in (k for k in run if k in stored):
        a, b = stored[key], run[key]
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif not same_value(a, "***") and not same_value(a, b):  # "***": a value masked by tracking.public_config
            out.append((f"{prefix}{key}", a, b))
    return out


def same_value(a: Any, b: Any) -> bool:
    """Equal plain values (lists, scalars); anything else (a tensor in a crafted file) is never equal."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(map(same_value, a, b))
    plain = (bool, int, float, str, type(None))
    return isinstance(a, plain) and isinstance(b, plain) and a == b


def _short(value: Any, limit: int = 80) -> str:
    """A value on one short line (a crafted checkpoint may hold long or multi-line strings)."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit] + "..."
