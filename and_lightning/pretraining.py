"""Self-supervised pre-training of a backbone (strategy.pretrain), cached on disk by what it depends on.

The checkpoint path holds a hash of the data, model, pre-training settings, trainer and seed, so the strategies
that share one pre-trained backbone (`ssl`, `ssl_finetune`) train it once, and a changed setting never reuses
a stale one. The file is written atomically: a run killed during pre-training starts it again.
"""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from and_lightning.checkpoints import build, build_trainable, save_checkpoint
from and_lightning.lit.contrastive import ContrastiveModule
from and_lightning.ssl.augment import WaveAugment
from and_lightning.store.hashing import hash_obj
from and_lightning.tracking import public_config

log = logging.getLogger(__name__)
OBJECTIVES = ("contrastive",)


def ssl_checkpoint_path(cfg: DictConfig) -> Path:
    """Where the backbone pre-trained for this (data, model, pretrain, trainer, seed) lives."""
    trainer = {k: v for k, v in public_config(cfg.trainer).items() if k != "default_root_dir"}  # per-run folder
    key = hash_obj({"data": public_config(cfg.data), "model": public_config(cfg.model), "trainer": trainer,
                    "pretrain": public_config(cfg.strategy.pretrain), "seed": cfg.seed})
    return Path(cfg.paths.models_dir) / "ssl" / f"{cfg.data.name}-{cfg.model.name}-s{cfg.seed}-{key[:12]}.pt"


def pretrain(cfg: DictConfig, loggers: list[Any] | None = None) -> Path:
    """Pre-train `cfg.model` without labels on the training split of `cfg.data` (or reuse the cached result)."""
    path = ssl_checkpoint_path(cfg)
    if path.is_file():
        log.info("ssl: reusing the pre-trained backbone %s", path)
        return path
    p = cfg.strategy.pretrain
    if p.objective not in OBJECTIVES:
        raise ValueError(f"strategy.pretrain.objective={p.objective!r}: expected one of {OBJECTIVES}")
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build(cfg.data, batch_size=p.batch_size)
    datamodule.prepare_data()
    adapter = build_trainable(cfg.model)
    module = ContrastiveModule(
        adapter, partial(torch.optim.AdamW, lr=p.lr, weight_decay=p.weight_decay), WaveAugment(**p.augment),
        projection_dim=p.projection_dim, hidden_dim=p.hidden_dim, temperature=p.temperature,
        scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=p.epochs))
    trainer: L.Trainer = instantiate(cfg.trainer, max_epochs=p.epochs, logger=loggers or False, callbacks=[],
                                     enable_checkpointing=False)
    log.info("ssl: %s pre-training of %s for %d epochs -> %s", p.objective, cfg.model.name, p.epochs, path)
    trainer.fit(module, datamodule=datamodule)
    if trainer.interrupted:
        raise RuntimeError("ssl: pre-training was interrupted; nothing saved")
    save_checkpoint(path, adapter, public_config(cfg), datamodule.class_names)
    return path
