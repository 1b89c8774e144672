"""Run tracking helpers: W&B directories kept inside the run, loggers from config, secrets kept out."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

SECRET_WORDS = ("api_key", "apikey", "token", "secret", "password")


def point_wandb_into(run_dir: str | os.PathLike) -> None:
    """Keep W&B's run files, staged media and caches under `run_dir` unless the user chose otherwise."""
    run_dir = Path(run_dir)
    os.environ.setdefault("WANDB_MODE", "offline")
    for var, sub in (("WANDB_DATA_DIR", "wandb_data"), ("WANDB_CACHE_DIR", "wandb_cache"),
                     ("WANDB_CONFIG_DIR", "wandb_config")):
        os.environ.setdefault(var, str(run_dir / sub))
    os.environ.setdefault("WANDB_SILENT", "true")


def sweep_group() -> str | None:
    """The W&B group of a Hydra multirun (the sweep directory's name), else None."""
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    return f"{hc.job.name}-{Path(hc.sweep.dir).name}"


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """Instantiate every logger under `cfg.logger`; W&B runs of one multirun share a group."""
    loggers: list[Logger] = []
    for name, node in (cfg.get("logger") or {}).items():
        kwargs: dict[str, Any] = {}
        if "wandb" in name:
            Path(node.save_dir).mkdir(parents=True, exist_ok=True)
            point_wandb_into(node.save_dir)
            group = node.get("group") or sweep_group()
            kwargs["group"] = group
        loggers.append(instantiate(node, **kwargs))
    return loggers


def public_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain data, with any secret-looking value masked (keys come from env only)."""
    plain = OmegaConf.to_container(cfg, resolve=True)

    def secret(key: Any, value: Any) -> bool:  # `api_key_env` names a variable: not a secret itself
        k = str(key).lower()
        return value is not None and not k.endswith("_env") and any(w in k for w in SECRET_WORDS)

    def scrub(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: "***" if secret(k, v) else scrub(v) for k, v in x.items()}
        if isinstance(x, list):
            return [scrub(v) for v in x]
        return x

    return scrub(plain)


def finish_wandb() -> None:
    """Close the current W&B run, if any (multirun jobs must not share a run)."""
    import wandb

    if wandb.run is not None:
        wandb.finish()
