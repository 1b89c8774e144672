"""`train(cfg)`: build data, model and strategy from config, fit, test, save a checkpoint, log to W&B."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from and_lightning.checkpoints import build, load_checkpoint, save_checkpoint
from and_lightning.lit.classifier import ClassifierModule
from and_lightning.tracking import build_loggers, finish_wandb, public_config

log = logging.getLogger(__name__)


def init_weights(adapter: Any, strategy: DictConfig) -> None:
    """Load the strategy's starting checkpoint into the adapter (all but a class-count-mismatched head)."""
    if not strategy.get("init_ckpt"):
        if strategy.get("require_init_ckpt"):
            raise ValueError(f"strategy={strategy.name} needs strategy.init_ckpt=<path to a checkpoint>")
        return
    state = load_checkpoint(strategy.init_ckpt, field="strategy.init_ckpt")["state_dict"]
    own = adapter.state_dict()
    head = adapter.head_path + "."
    kept = {k: v for k, v in state.items() if not (k.startswith(head) and own.get(k, v).shape != v.shape)}
    missing, unexpected = adapter.load_state_dict(kept, strict=False)
    bad = [k for k in missing if not k.startswith(head)] + list(unexpected)
    if bad:
        raise ValueError(f"strategy.init_ckpt={strategy.init_ckpt} does not fit model={type(adapter).__name__}: "
                         f"mismatched keys {bad[:5]}")
    log.info("initialised from %s (%d tensors)", strategy.init_ckpt, len(kept))


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and test one model; returns the final metrics (also logged), plus the checkpoint path."""
    if cfg.get("prune") and cfg.prune.name != "none":
        from and_lightning.prune.unlearn import unlearn

        return unlearn(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build(cfg.data)
    datamodule.prepare_data()
    adapter = build(cfg.model)
    if not adapter.trainable:
        raise ValueError(f"model={cfg.model.name} is a fixed pretrained model for dissection only; "
                         "train.py cannot train it (use it with dissect.py)")
    init_weights(adapter, cfg.strategy)
    config = public_config(cfg)
    module = ClassifierModule(adapter, cfg.data.num_classes, instantiate(cfg.optimizer),
                              instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
                              freeze_backbone=cfg.strategy.freeze_backbone, config=config)
    loggers = build_loggers(cfg)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    trainer: L.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    try:
        for lg in loggers:
            lg.log_hyperparams(config)
        trainer.fit(module, datamodule=datamodule)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if cfg.get("test", True):  # the final weights: the ones exported below
            trainer.test(module, datamodule=datamodule)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        ckpt = save_checkpoint(Path(cfg.export_ckpt), module.model, config, datamodule.class_names)
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
