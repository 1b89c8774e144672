"""One job of a train-then-dissect sweep (the training-strategies study): train, dissect the exported model with
`dissect.yaml` on the same data, and write `study_result.json` for `and_lightning.analysis.strategies`."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra import compose
from omegaconf import DictConfig, OmegaConf, open_dict

from and_lightning.analysis.strategies import RESULT_FILE
from and_lightning.dissection import dissect
from and_lightning.store.atomic import write_json
from and_lightning.store.hashing import hash_obj
from and_lightning.tracking import public_config, sweep_group
from and_lightning.training import train

log = logging.getLogger(__name__)


def dissect_config(cfg: DictConfig, ckpt_path: str) -> DictConfig:
    """`dissect.yaml` for the model `cfg` trained: same data, paths, seed and logger; `cfg.dissect_overrides` on top.
    Its files go to <train run dir>/dissect. Composed with Hydra's compose API from the config path Hydra was
    initialised with: train.py's `@hydra.main` (every job of a multirun too), or a plain caller's
    `initialize_config_dir` (Hydra's documented requirement for `compose`)."""
    dcfg = compose("dissect", overrides=[f"data={cfg.data.name}", f"model={cfg.model.name}", f"seed={cfg.seed}",
                                         *(cfg.get("dissect_overrides") or [])])
    with open_dict(dcfg):
        dcfg.data, dcfg.model, dcfg.paths = (OmegaConf.create(OmegaConf.to_container(cfg[k], resolve=True))
                                             for k in ("data", "model", "paths"))
        dcfg.paths.output_dir = str(Path(cfg.paths.output_dir) / "dissect")
        dcfg.ckpt_path = ckpt_path
        dcfg.run_name = f"dissect-{cfg.run_name}"
        dcfg.tags = list(cfg.tags)
        dcfg.logger = cfg.logger
    return dcfg


def train_and_dissect(cfg: DictConfig) -> dict[str, Any]:
    """Train (train.yaml), dissect the result, and record both sets of metrics in the run folder; returns them.

    A job whose folder already holds the result of the same config is skipped, so rerunning an interrupted sweep
    with the same `hydra.sweep.dir` redoes only the unfinished jobs."""
    result_path = Path(cfg.paths.output_dir) / RESULT_FILE
    key = hash_obj(public_config(cfg))
    if result_path.is_file():
        done = json.loads(result_path.read_text(encoding="utf-8"))
        if done.get("config_key") == key:
            log.info("%s: already done for this config; skipped", result_path)
            return done["metrics"]
    metrics = train(cfg)
    dissected = dissect(dissect_config(cfg, metrics["checkpoint_path"]))
    wandb_on = bool(cfg.get("logger")) and any("wandb" in k for k in cfg.logger)
    metrics = {k: float(v) for k, v in {**metrics, **dissected["metrics"]}.items() if isinstance(v, (int, float))}
    write_json(result_path, {
        "strategy": cfg.strategy.name, "seed": int(cfg.seed), "model": cfg.model.name, "data": cfg.data.name,
        "wandb_group": sweep_group() if wandb_on else None, "config_key": key, "layers": list(dissected["layers"]),
        "metrics": metrics,
    })
    return metrics
