"""Resuming a training run that was killed: its last epoch's Lightning checkpoint (weights, optimizer, scheduler,
loops and the random generators) is kept beside the checkpoint the run will export until that export is written.

A run is identified by its `export_ckpt` path; the settings stored in the checkpoint must equal the run's (where
it writes logs and what it does after training aside), else `resume=auto` trains from scratch and says why.
"""
from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from and_lightning.checkpoints import CheckpointError, load_weights_only, same_value

log = logging.getLogger(__name__)
LAST = "last.ckpt"
# top-level settings that say where a run writes or what it does after training, not what it trains
NOT_TRAINING = ("paths", "logger", "tags", "run_name", "task_name", "resume", "test", "then_dissect",
                "dissect_overrides", "optimized_metric")


def resume_dir(export_ckpt: str | Path) -> Path:
    """The folder holding the last epoch's checkpoint of the run that exports `export_ckpt`."""
    export = Path(export_ckpt)
    return export.with_name(f"{export.name}.resume")


class ResumeCheckpoint(L.Callback):
    """Writes the full Lightning checkpoint to `folder/last.ckpt` at the end of every training epoch (Lightning
    writes a temporary file and renames it), with the random generators' states, which a resumed run restores so
    it draws what the uninterrupted run would have drawn."""

    def __init__(self, folder: Path):
        self.folder = folder

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero and self.folder.is_dir():  # temporary files of a killed save
            for stale in (p for p in self.folder.iterdir() if p.name != LAST):
                stale.unlink()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.save_checkpoint(self.folder / LAST)

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return {"torch": torch.get_rng_state(), "python": random.getstate(),
                "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_to_resume(resume: str, folder: Path, config: dict[str, Any]) -> str | None:
    """The checkpoint a run with `config` (plain) resumes from: `resume=auto` the run's own last one if it holds the
    same settings, `never` none, else the given path (its settings may differ: they are listed)."""
    if resume == "never":
        return None
    path = folder / LAST if resume == "auto" else Path(resume)
    if resume == "auto" and not path.is_file():
        return None
    try:
        stored = load_weights_only(path, "resume")
        if not (isinstance(stored, dict) and "state_dict" in stored and isinstance(stored.get("epoch"), int)
                and isinstance(stored.get("global_step"), int)):
            raise CheckpointError(f"resume: {path} is not a Lightning checkpoint (expected state_dict, epoch, "
                                  "global_step)")
    except CheckpointError as e:
        if resume != "auto":
            raise
        log.warning("not resuming: %s; training from scratch", e)
        return None
    hparams = stored.get("hyper_parameters")
    saved = hparams.get("config") if isinstance(hparams, dict) else None
    differ = differences(saved if isinstance(saved, dict) else {}, config)
    if differ and resume == "auto":
        log.warning("not resuming from %s: it was written with other settings (%s); training from scratch",
                    path, ", ".join(differ[:5]))
        return None
    if differ:
        log.warning("resume=%s was written with other settings: %s", path, ", ".join(differ[:5]))
    log.info("resuming from %s: %d epoch(s) done, global step %d", path, stored["epoch"] + 1, stored["global_step"])
    return str(path)


def finished(folder: Path) -> None:
    """The run exported its checkpoint: nothing is left to resume."""
    shutil.rmtree(folder, ignore_errors=True)


def differences(stored: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Dotted keys of the training settings in which two run configs differ."""
    a, b = _training_settings(stored), _training_settings(config)
    return sorted(k for k in a.keys() | b.keys() if not same_value(a.get(k, "<unset>"), b.get(k, "<unset>")))


def _training_settings(config: dict[str, Any]) -> dict[str, Any]:
    """Flat {dotted key: value} without NOT_TRAINING, the run's own output folder written as `<output_dir>`."""
    out_dir = str((config.get("paths") or {}).get("output_dir") or "")
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            flat[prefix[:-1]] = node.replace(out_dir, "<output_dir>") if out_dir and isinstance(node, str) else node

    walk({k: v for k, v in config.items() if k not in NOT_TRAINING}, "")
    return flat
