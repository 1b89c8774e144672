"""Forgetting metrics on a held-out split (spec §10.3, Table 4, Fig. 10), in logit and probability units.

Per class k, the model's confidence is the mean over clips of class k of its logit (or softmax probability)
for k. ΔA = after − before for the target class; ΔR = the mean of after − before over the other classes,
each on its own clips (both negative when confidence drops, as in the paper's Table 4). The selectivity is
ΔR − ΔA: positive when the target lost more than the rest, the sign of the paper's figure (its Table 4 heads
that column "ΔA−ΔR" but reports ΔA −10.73, ΔR −6.83 as +3.90). It is labelled `SELECTIVITY` everywhere.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from and_lightning.analysis.plots import save_png

SELECTIVITY = "ΔR−ΔA"  # the label of `deltas(...)["selectivity"]` in tables, logs and charts


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def per_class_confidence(scores: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[C]: for each class k, the mean of scores[i, k] over the clips i labelled k (NaN if none)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    out = np.full(num_classes, np.nan)
    for k in range(num_classes):
        rows = labels == k
        if rows.any():
            out[k] = scores[rows, k].mean()
    return out


def deltas(before: np.ndarray, after: np.ndarray, target: int) -> dict[str, float]:
    """ΔA (target), ΔR (mean over the other classes that have clips) and selectivity = ΔR − ΔA (> 0: the
    target lost more confidence than the rest)."""
    change = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    if np.isnan(change[target]):
        raise ValueError(f"class {target} has no clips in the held-out split; cannot measure its forgetting")
    rest = np.delete(change, target)
    rest = rest[~np.isnan(rest)]
    if rest.size == 0:
        raise ValueError("no other class has clips in the held-out split; ΔR is undefined")
    delta_a, delta_r = float(change[target]), float(rest.mean())
    return {"delta_A": delta_a, "delta_R": delta_r, "selectivity": delta_r - delta_a}


def accuracies(logits: np.ndarray, labels: np.ndarray, target: int | None = None) -> dict[str, float]:
    """Top-1 accuracy overall, and on the target's clips vs the other clips when a target is given."""
    labels = np.asarray(labels)
    correct = np.asarray(logits).argmax(axis=1) == labels
    out = {"acc": float(correct.mean())}
    if target is not None:
        on_target = labels == target
        out["acc_target"] = float(correct[on_target].mean()) if on_target.any() else float("nan")
        out["acc_rest"] = float(correct[~on_target].mean()) if (~on_target).any() else float("nan")
    return out


def phase_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int,
                  target: int | None = None) -> tuple[dict[str, float], dict[str, list[float]]]:
    """One phase (before / pruned / retrained): accuracies, target and rest confidences, and the per-class
    confidences {"logit": [C], "prob": [C]} that `forgetting` compares between phases."""
    per_class = {"logit": per_class_confidence(logits, labels, num_classes),
                 "prob": per_class_confidence(softmax(np.asarray(logits, dtype=np.float64)), labels, num_classes)}
    metrics = accuracies(logits, labels, target)
    if target is not None:
        for unit, values in per_class.items():
            metrics[f"target_{unit}"] = float(values[target])
            metrics[f"rest_{unit}"] = float(np.nanmean(np.delete(values, target)))
    return metrics, {k: v.tolist() for k, v in per_class.items()}


def forgetting(before: dict[str, Sequence[float]], after: dict[str, Sequence[float]], target: int) -> dict[str, float]:
    """ΔA, ΔR and selectivity between two phases' per-class confidences, keyed `<name>_<logit|prob>`."""
    out = {}
    for unit in ("logit", "prob"):
        for name, value in deltas(np.asarray(before[unit], float), np.asarray(after[unit], float), target).items():
            out[f"{name}_{unit}"] = value
    return out


def drop_chart(per_class: dict[str, dict[str, Sequence[float]]], class_names: Sequence[str], target: int | None,
               path: str | os.PathLike, title: str = "") -> Path:
    """Paper Fig. 10: each class's confidence (own-class logit and probability) in every phase, classes
    sorted by their logit drop after pruning, the target in red. Written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = list(per_class)
    before = np.asarray(per_class[phases[0]]["logit"], float)
    after = np.asarray(per_class[phases[1] if len(phases) > 1 else phases[0]]["logit"], float)
    order = np.argsort(-(before - after))
    x = np.arange(len(order))
    width = 0.8 / len(phases)
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.6 * len(order) + 2), 7), sharex=True)
    for ax, unit in zip(axes, ("logit", "prob")):
        for i, phase in enumerate(phases):
            ax.bar(x + (i - (len(phases) - 1) / 2) * width, np.asarray(per_class[phase][unit], float)[order],
                   width, label=phase)
        ax.set_ylabel(f"mean own-class {'logit' if unit == 'logit' else 'probability'}")
        ax.axhline(0, color="black", linewidth=0.5)
    axes[0].legend()
    axes[0].set_title(title or "per-class confidence before / after pruning")
    axes[1].set_xticks(x)
    axes[1].set_xticklabels([class_names[i] for i in order], rotation=45, ha="right")
    if target is not None:
        for tick, i in zip(axes[1].get_xticklabels(), order):
            if i == target:
                tick.set_color("red")
                tick.set_fontweight("bold")
    fig.tight_layout()
    saved = Path(save_png(fig, path, dpi=100))
    plt.close(fig)
    return saved
