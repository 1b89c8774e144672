"""Model checkpoints: weights + the config that made them, loaded with `weights_only=True` (no pickles)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from and_lightning.store.atomic import atomic_path


class CheckpointError(FileNotFoundError):
    """A checkpoint that is missing or not in a format we can load safely."""


def save_checkpoint(path: str | os.PathLike, adapter: torch.nn.Module, config: dict, class_names: list[str]) -> Path:
    """Write {state_dict, config, class_names} atomically; `config` must be plain (dicts, lists, scalars)."""
    payload = {"state_dict": adapter.state_dict(), "config": config, "class_names": list(class_names)}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_weights_only(path: str | os.PathLike, field: str, missing_hint: str = "") -> Any:
    """`torch.load(..., weights_only=True)` on CPU, with errors that name the config field and the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{field}: checkpoint file not found: {path}{missing_hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{field}: {path} is not a loadable weights-only checkpoint ({e})") from e


def load_checkpoint(path: str | os.PathLike, field: str = "ckpt_path") -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` or by Lightning (state_dict under `model.`)."""
    payload = load_weights_only(path, field, " (train one with `python train.py`)")
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise CheckpointError(f"{field}: {path} has no 'state_dict' entry")
    state = payload["state_dict"]
    if any(k.startswith("model.") for k in state):  # a Lightning .ckpt of ClassifierModule
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    config = payload.get("config") or payload.get("hyper_parameters", {}).get("config", {})
    return {"state_dict": state, "config": config, "class_names": payload.get("class_names", [])}


def build(node: DictConfig | dict, **overrides: Any) -> Any:
    """Instantiate a config node that also carries descriptive keys (`name`, `num_classes`, ...)."""
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    plain.pop("name", None)
    plain.update(overrides)
    return instantiate(plain, _convert_="all")


def build_trainable(model_cfg: DictConfig) -> Any:
    """The adapter `model_cfg` describes, refusing fixed pretrained models (e.g. CREPE) that train.py cannot train."""
    adapter = build(model_cfg)
    if not adapter.trainable:
        raise ValueError(f"model={model_cfg.name} is a fixed pretrained model for dissection only; "
                         "train.py cannot train it (use it with dissect.py)")
    return adapter


def load_adapter(path: str | os.PathLike, field: str = "ckpt_path") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the adapter a checkpoint was trained with and load its weights strictly."""
    ckpt = load_checkpoint(path, field)
    model_cfg = ckpt["config"].get("model")
    if not model_cfg:
        raise CheckpointError(f"{field}: {path} carries no model config; cannot rebuild the model")
    adapter = build(model_cfg)
    adapter.load_state_dict(ckpt["state_dict"])
    return adapter, ckpt
