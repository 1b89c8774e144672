"""`train(cfg)`: build data, model and strategy from config, fit, test, save a checkpoint, log to W&B."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from and_lightning.checkpoints import (
    build, build_trainable, check_model_config, load_checkpoint, load_weights, save_checkpoint,
)
from and_lightning.lit.classifier import ClassifierModule
from and_lightning.pretraining import pretrain
from and_lightning.resume import ResumeCheckpoint, checkpoint_to_resume, finished, resume_dir
from and_lightning.tracking import build_loggers, finish_wandb, public_config

log = logging.getLogger(__name__)


def init_checkpoint(strategy: DictConfig, ckpt: str | Path | None, model_cfg: DictConfig) -> dict[str, Any] | None:
    """The strategy's starting checkpoint (None: start from `model` as configured), read as data and checked to hold
    a model of the class `model_cfg` builds; its other settings may differ where the weights allow (a new head)."""
    if not ckpt:
        if strategy.get("require_init_ckpt"):
            raise ValueError(f"strategy={strategy.name} needs strategy.init_ckpt=<path to a checkpoint>")
        return None
    loaded = load_checkpoint(ckpt, field="strategy.init_ckpt")
    check_model_config(loaded, model_cfg, f"strategy.init_ckpt: {ckpt}", settings=False)
    return loaded


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and test one model; returns the final metrics (also logged), plus the checkpoint path."""
    config = public_config(cfg)
    loggers = build_loggers(cfg)
    try:
        init_ckpt = cfg.strategy.init_ckpt
        if cfg.strategy.get("pretrain"):  # ssl strategies: the pre-trained backbone is the starting point
            if init_ckpt:
                raise ValueError(f"strategy={cfg.strategy.name} pre-trains its own backbone; leave "
                                 f"strategy.init_ckpt empty (got {init_ckpt}) or use strategy=finetune / frozen")
            init_ckpt = config["strategy"]["init_ckpt"] = str(pretrain(cfg, loggers))
        init = init_checkpoint(cfg.strategy, init_ckpt, cfg.model)  # before the data: a bad one fails at once
        resume_folder = resume_dir(cfg.export_ckpt)
        resume_from = checkpoint_to_resume(str(cfg.get("resume") or "never"), resume_folder, config)
        L.seed_everything(cfg.seed, workers=True)  # the same from here whether pre-training ran or was cached
        datamodule = build(cfg.data)
        datamodule.prepare_data()
        adapter = build_trainable(cfg.model)
        if init:  # all but a head of another class count
            load_weights(adapter, init["state_dict"], f"strategy.init_ckpt: {init_ckpt}", fresh_head=True)
            log.info("initialised from %s", init_ckpt)
        module = ClassifierModule(adapter, cfg.data.num_classes, instantiate(cfg.optimizer),
                                  instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
                                  freeze_backbone=cfg.strategy.freeze_backbone, config=config)
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()] + [ResumeCheckpoint(resume_folder)]
        trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
        for lg in loggers:
            lg.log_hyperparams(config)
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if cfg.get("test", True):  # the final weights: the ones exported below
            trainer.test(module, datamodule=datamodule)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        ckpt = save_checkpoint(Path(cfg.export_ckpt), module.model, config, datamodule.class_names)
        finished(resume_folder)
        log.info("checkpoint: %s | test/acc=%.4f", ckpt, metrics.get("test/acc", float("nan")))
        for lg in loggers:
            lg.log_hyperparams({"checkpoint_path": str(ckpt)})
            if hasattr(lg, "experiment") and hasattr(lg.experiment, "summary"):
                lg.experiment.summary["checkpoint_path"] = str(ckpt)
                lg.experiment.summary.update({f"final/{k}": v for k, v in metrics.items()})
        metrics["checkpoint_path"] = str(ckpt)
        return metrics
    finally:
        finish_wandb()
