"""Concept erasure at equal numbers of units: neurons of a layer vs the features of its SAE (issue 16).

For each class, erase the `n` units of one layer whose closed-set concepts name the class best (rank of the class
among the unit's closed concepts, then its score), or `n` random units of the same layer (seeded baseline), and
measure on held-out clips how much softmax confidence the class lost (ΔA) against the other classes (ΔR), as the
unlearn stage does (prune/forgetting.py). Erasing an SAE feature removes its decoder contribution at every
position and keeps the SAE error term (sae/splice.py), so both kinds of unit act on the same spliced model.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from and_lightning.data.clips import ClipDataset, ClipRecord
from and_lightning.models.base import TargetAdapter
from and_lightning.prune.forgetting import forgetting, phase_metrics
from and_lightning.prune.masks import UnitMasks

COLUMNS = ["layer", "units_per_class", "classes", "selection", "delta_A_prob", "delta_R_prob", "selectivity_prob",
           "acc_target_after", "acc_rest_after"]


def units_for_class(records: Sequence[Mapping[str, Any]], layer: str, concept: str, n: int) -> list[int]:
    """The `n` units of `layer` that name `concept` best among their closed-set concepts (fewer if fewer do)."""
    ranked = []
    for r in records:
        if r["layer"] != layer:
            continue
        names = [c["concept"] for c in r.get("closed_concepts") or []]
        if concept in names:
            i = names.index(concept)
            ranked.append((i, -float(r["closed_concepts"][i].get("score", 0.0)), int(r["unit"])))
    return [u for *_, u in sorted(ranked)[:n]]


@torch.no_grad()
def logits_of(adapter: TargetAdapter, clips: Sequence[ClipRecord], clip_seconds: float, batch_size: int,
              erase: Mapping[str, Sequence[int]] | None = None) -> np.ndarray:
    adapter.eval()
    out = []
    with UnitMasks(adapter, erase or {}):
        for batch in DataLoader(ClipDataset(clips, adapter.sample_rate, clip_seconds), batch_size=batch_size):
            out.append(adapter.run(batch["audio"], batch.get("length")).float())
    return torch.cat(out).numpy()


def erasure_table(adapter: TargetAdapter, records: Sequence[Mapping[str, Any]], clips: Sequence[ClipRecord],
                  class_names: Sequence[str], layers: Sequence[str], n: int, clip_seconds: float,
                  batch_size: int = 32, seed: int = 0) -> list[dict[str, Any]]:
    """One row per (layer, selection = described | random): mean over classes of ΔA, ΔR and selectivity
    (probability units) and the accuracies after erasure; see COLUMNS."""
    labels = np.array([c.label for c in clips])
    before_logits = logits_of(adapter, clips, clip_seconds, batch_size)
    widths, rng = adapter.layers(), np.random.default_rng(seed)
    rows = []
    for layer in layers:
        for selection in ("described", "random"):
            found, per_class = [], []
            for k, name in enumerate(class_names):
                units = units_for_class(records, layer, name, n)
                if selection == "random":
                    units = sorted(rng.choice(widths[layer], size=len(units), replace=False).tolist())
                if not units:
                    continue
                found.append(len(units))
                _, before = phase_metrics(before_logits, labels, len(class_names), k)
                after_logits = logits_of(adapter, clips, clip_seconds, batch_size, {layer: units})
                metrics, after = phase_metrics(after_logits, labels, len(class_names), k)
                per_class.append({**forgetting(before, after, k), "acc_target_after": metrics["acc_target"],
                                  "acc_rest_after": metrics["acc_rest"]})
            mean = {key: float(np.mean([p[key] for p in per_class])) if per_class else float("nan")
                    for key in COLUMNS[4:]}
            rows.append({"layer": layer, "units_per_class": float(np.mean(found)) if found else 0.0,
                         "classes": len(per_class), "selection": selection, **mean})
    return rows
