"""`unlearn(cfg)` (stage 6): prune a trained model's neurons chosen from its dissection, measure what it forgot
on the held-out split, optionally retrain on the retained classes with the masks held, and log it all to W&B.

Phases: `before` (the clean, unpruned model: never pruned, spec §12.1 item 10), `pruned`, and `retrained`
when `prune.retrain_epochs > 0`. Run it as `python train.py mode=unlearn prune=<strategy> prune.target=<class>
prune.descriptions=<dissection>/descriptions.jsonl`.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Checkpoint
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader

from and_lightning.checkpoints import build, load_adapter, save_checkpoint
from and_lightning.data.clips import ClipDataset, ClipRecord
from and_lightning.lit.classifier import ClassifierModule
from and_lightning.models.base import TargetAdapter
from and_lightning.models.registry import resolve_layers
from and_lightning.prune.forgetting import SELECTIVITY, drop_chart, forgetting, phase_metrics
from and_lightning.prune.masks import UnitMasks, pruned_unit_max
from and_lightning.prune.selection import (
    Selection, check_against_model, descriptions_file, load_records, select_units,
)
from and_lightning.store.atomic import write_json
from and_lightning.tracking import build_loggers, finish_wandb, public_config

log = logging.getLogger(__name__)
RESULT_FILE = "unlearn_result.json"
UNITS_FILE = "pruned_units.json"
CHART_FILE = "per_class_drop.png"


@torch.no_grad()
def predict_logits(adapter: TargetAdapter, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """Logits [N, C] and labels [N] over a loader, in its order, with the model in eval mode."""
    adapter.eval()
    logits, labels = [], []
    for batch in loader:
        logits.append(adapter.run(batch["audio"], batch.get("length")).float())
        labels.append(batch["label"])
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def check_pairing(adapter: TargetAdapter, records: Sequence[dict], clips: Mapping[str, ClipRecord], head: str,
                  sample_rate: int, clip_seconds: float, source: str, units: int = 3) -> None:
    """Recompute a few output units' top activations (logits on their top clip) and compare them with the
    dissection's stored values: a dissection of another checkpoint is caught here, not in the results."""
    rows = [r for r in records if r["layer"] == head and r.get("top_clips") and r["top_clips"][0] in clips][:units]
    if not rows:
        log.warning("%s: no output-layer records with known clips; cannot check it describes this checkpoint", source)
        return
    data = ClipDataset([clips[r["top_clips"][0]] for r in rows], sample_rate, clip_seconds)
    adapter.eval()
    with torch.no_grad():
        batch = next(iter(DataLoader(data, batch_size=len(data))))
        logits = adapter.run(batch["audio"], batch["length"])
    for i, r in enumerate(rows):
        now, stored = float(logits[i, r["unit"]]), float(r["top_values"][0])
        if abs(now - stored) > 0.05 + 0.01 * abs(stored):  # stored as float16
            raise ValueError(f"{source} does not describe this checkpoint: {head}#{r['unit']} scored {stored:.4f} "
                             f"on {r['top_clips'][0]} in the dissection but {now:.4f} now (dissect this checkpoint, "
                             "or set prune.check_pairing=false)")


def retrain(adapter: TargetAdapter, cfg: DictConfig, node: Mapping[str, Any], datamodule: Any,
            target: int | None, loggers: list, config: dict) -> int:
    """Fine-tune every weight on the retained classes (clips whose label != target) with the masks in place,
    every module in training mode (dropout, BatchNorm statistics), with the configured callbacks but no
    checkpointing (the result is measured and exported by `unlearn`); returns the number of optimizer steps."""
    index = datamodule.index
    kept = {split: [r for r in index.folds(datamodule.folds[split]) if r.label != target] for split in ("train", "val")}
    if not kept["train"]:
        raise ValueError(f"retraining: no training clips outside class {target} in folds {datamodule.folds['train']}")
    loader = {split: DataLoader(ClipDataset(recs, datamodule.sample_rate, datamodule.clip_seconds),
                                batch_size=cfg.data.batch_size, shuffle=split == "train",
                                num_workers=cfg.data.num_workers)
              for split, recs in kept.items() if recs}
    module = ClassifierModule(adapter, len(index.class_names), instantiate(cfg.optimizer, lr=node["retrain_lr"]),
                              None, freeze_backbone=False, config=config)
    callbacks = [c for c in map(instantiate, (cfg.get("callbacks") or {}).values()) if not isinstance(c, Checkpoint)]
    trainer: L.Trainer = instantiate(cfg.trainer, max_epochs=int(node["retrain_epochs"]), logger=loggers or False,
                                     callbacks=callbacks, enable_checkpointing=False)
    trainer.fit(module, train_dataloaders=loader["train"], val_dataloaders=loader.get("val"))
    return int(trainer.global_step)


def bake_and_verify(adapter: TargetAdapter, masks: UnitMasks, audio: torch.Tensor) -> dict[str, float]:
    """Move the masks from hooks into the weights and check, on one batch in eval mode, that the pruned units
    are exactly zero where the next layer reads them and the logits are unchanged. Leaves the model baked with
    no hooks."""
    adapter.eval()
    with torch.no_grad():
        hooked = adapter(audio)
    masks.remove()
    masks.bake()
    seen = pruned_unit_max(adapter, masks.pruned, audio)
    with torch.no_grad():
        baked = adapter(audio)
    zero = max(seen.values(), default=0.0)
    if zero != 0.0:
        raise RuntimeError(f"baked masks leave pruned units non-zero (max |value| {zero}) in "
                           f"{sorted(k for k, v in seen.items() if v)}")
    return {"prune/baked_max_abs_pruned_output": zero,
            "prune/baked_max_logit_diff": float((baked - hooked).abs().max())}


def _named_loggers(cfg: DictConfig, label: str, target: str | None) -> list:
    """The configured loggers; the W&B run is named for the strategy and target, job type `unlearn`."""
    cfg = copy.deepcopy(cfg)
    if cfg.get("logger") and cfg.logger.get("wandb"):
        with open_dict(cfg):
            cfg.logger.wandb.name = f"{cfg.run_name}-unlearn-{label}-{target or 'all'}"
            cfg.logger.wandb.job_type = "unlearn"
    return build_loggers(cfg)


def _unit_rows(selection: Selection, records: Sequence[dict]) -> list[dict[str, Any]]:
    by_unit = {(r["layer"], r["unit"]): r for r in records}
    rows = []
    for layer, unit in selection.units:
        r = by_unit[(layer, unit)]
        rows.append({"layer": layer, "unit": unit, "reason": selection.reasons[(layer, unit)],
                     "closed_top3": ", ".join(c["concept"] for c in (r.get("closed_concepts") or [])[:3]),
                     "open_concepts": ", ".join(r.get("open_concepts") or []),
                     "description": r.get("description", "")})
    return rows


@dataclass
class Inputs:
    """What a pruning run starts from: the model, its data, the dissection and the chosen units."""

    adapter: TargetAdapter
    ckpt: dict[str, Any]
    datamodule: Any
    class_names: list[str]
    target: int | None
    records: list[dict]
    source: Path
    selection: Selection


def load_inputs(cfg: DictConfig, node: dict[str, Any]) -> Inputs:
    """Load the checkpoint, data and dissection named by `cfg.prune`, check they belong together, select units."""
    for key in ("ckpt", "descriptions"):
        if not node.get(key):
            raise ValueError(f"prune.{key} is required (prune.descriptions: the descriptions.jsonl that "
                             "`python dissect.py` wrote for prune.ckpt)")
    adapter, ckpt = load_adapter(node["ckpt"], cfg.model, field="prune.ckpt")
    datamodule = build(cfg.data)
    datamodule.prepare_data()
    class_names = list(datamodule.class_names)
    if ckpt["class_names"] and list(ckpt["class_names"]) != class_names:
        raise ValueError(f"prune.ckpt {node['ckpt']} was trained on classes {ckpt['class_names']} but data="
                         f"{cfg.data.name} has {class_names}")
    target_name = node.get("target")
    if target_name is not None and target_name not in class_names:
        raise ValueError(f"prune.target={target_name} is not a class of data={cfg.data.name}: {class_names}")
    source = descriptions_file(node["descriptions"])
    records = load_records(source)
    check_against_model(records, adapter.layers(), str(source))
    head = resolve_layers(adapter, "last")[0]
    clips = {r.clip_id: r for r in datamodule.index.records}
    if node.get("check_pairing", True):
        check_pairing(adapter, records, clips, head, datamodule.sample_rate, datamodule.clip_seconds, str(source))
    selection = select_units(records, node, head, str(source), {c: class_names[r.label] for c, r in clips.items()})
    log.info("prune=%s target=%s: %d of %d units (%s) | %s", selection.strategy, target_name, len(selection),
             selection.prunable, {k: len(v) for k, v in selection.by_layer().items()}, selection.note)
    target = class_names.index(target_name) if target_name is not None else None
    return Inputs(adapter, ckpt, datamodule, class_names, target, records, source, selection)


def unlearn(cfg: DictConfig) -> dict[str, Any]:
    """Select units by `cfg.prune`, measure before / pruned / (retrained), log, and return the metrics."""
    node = OmegaConf.to_container(cfg.prune, resolve=True)
    L.seed_everything(cfg.seed, workers=True)
    inp = load_inputs(cfg, node)
    adapter, selection, target, class_names = inp.adapter, inp.selection, inp.target, inp.class_names
    target_name = node.get("target")
    config = public_config(cfg)
    out_dir = Path(cfg.paths.output_dir)
    test_loader = DataLoader(inp.datamodule.dataset("test"), batch_size=cfg.data.batch_size, shuffle=False,
                             num_workers=cfg.data.num_workers)
    loggers = _named_loggers(cfg, selection.strategy, target_name)
    try:
        for lg in loggers:
            lg.log_hyperparams(config)
        logits: dict[str, np.ndarray] = {}
        logits["before"], labels = predict_logits(adapter, test_loader)
        masks = UnitMasks(adapter, selection.by_layer()).apply()
        logits["pruned"], _ = predict_logits(adapter, test_loader)
        metrics: dict[str, Any] = {"prune/n_pruned": len(selection), "prune/n_prunable": selection.prunable,
                                   "prune/pct_pruned": 100.0 * selection.fraction}
        step = 0
        if int(node.get("retrain_epochs") or 0) > 0:
            step = retrain(adapter, cfg, node, inp.datamodule, target, loggers, config)
            logits["retrained"], _ = predict_logits(adapter, test_loader)
        per_class = {}
        for phase, values in logits.items():
            phase_values, per_class[phase] = phase_metrics(values, labels, len(class_names), target)
            metrics.update({f"{phase}/{k}": v for k, v in phase_values.items()})
            if target is not None and phase != "before":
                metrics.update({f"{phase}/{k}": v for k, v in forgetting(per_class["before"], per_class[phase],
                                                                         target).items()})
        metrics.update(bake_and_verify(adapter, masks, next(iter(test_loader))["audio"]))
        if node.get("export_ckpt"):
            exported = save_checkpoint(node["export_ckpt"], adapter,
                                       {**inp.ckpt["config"], "unlearn": {"prune": node, "units": selection.units}},
                                       class_names)
            metrics["prune/export_ckpt"] = str(exported)

        rows = _unit_rows(selection, inp.records)
        title = f"{selection.strategy}: {target_name or 'all classes'} ({len(selection)} units pruned)"
        if target is not None:
            title += f", {SELECTIVITY} {metrics['pruned/selectivity_prob']:+.3f} (prob)"
        chart = drop_chart(per_class, class_names, target, out_dir / CHART_FILE, title)
        write_json(out_dir / UNITS_FILE, rows)
        wandb_info = _log(loggers, metrics, rows, chart, step)
        result = {"strategy": selection.strategy, "name": node["name"], "target": target_name,
                  "seed": node.get("seed"), "selection_note": selection.note, "class_names": class_names,
                  "metrics": metrics,
                  "per_class": per_class, "units_by_layer": selection.by_layer(), "ckpt": str(node["ckpt"]),
                  "descriptions": str(inp.source), **wandb_info}
        write_json(out_dir / RESULT_FILE, result)
        _print(metrics, target_name, selection)
        return metrics
    finally:
        finish_wandb()


def _log(loggers: list, metrics: dict[str, Any], rows: list[dict], chart: Path, step: int) -> dict[str, Any]:
    """Phase metrics, the pruned-unit table and the chart to every logger; returns the W&B group and run dir."""
    numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    info: dict[str, Any] = {"wandb_group": None, "wandb_run_dir": None}
    for lg in loggers:
        lg.log_metrics(numeric, step=step)
        if hasattr(lg, "log_table"):
            columns = list(rows[0]) if rows else ["layer", "unit", "reason"]
            lg.log_table(key="prune/units", columns=columns, data=[list(r.values()) for r in rows])
            lg.log_image(key="prune/per_class_drop", images=[str(chart)])
            lg.experiment.summary.update(numeric)
            info = {"wandb_group": lg.experiment.group or None, "wandb_run_dir": str(Path(lg.experiment.dir).parent)}
        lg.save()
    return info


def _print(metrics: dict[str, Any], target: str | None, selection: Selection) -> None:
    phases = [p for p in ("before", "pruned", "retrained") if f"{p}/acc" in metrics]
    print(f"pruned {len(selection)}/{selection.prunable} units ({selection.strategy}), target={target}: "
          f"{selection.note}")
    for p in phases:
        line = f"  {p:9s} acc {metrics[f'{p}/acc']:.3f}"
        if target is not None:
            line += f"  target acc {metrics[f'{p}/acc_target']:.3f}  rest acc {metrics[f'{p}/acc_rest']:.3f}"
            if p != "before":
                line += (f"  ΔA {metrics[f'{p}/delta_A_prob']:+.3f}  ΔR {metrics[f'{p}/delta_R_prob']:+.3f}  "
                         f"{SELECTIVITY} {metrics[f'{p}/selectivity_prob']:+.3f} (prob)  "
                         f"{metrics[f'{p}/selectivity_logit']:+.3f} (logit)")
        print(line)
