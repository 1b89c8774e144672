"""Last-layer dissection accuracy (paper Table 2): does each output unit's top concept name its own class?"""
from __future__ import annotations

from typing import Any, Sequence

from and_lightning.describe.closed_set import concept_cosine


def last_layer_accuracy(records: Sequence[dict[str, Any]], class_names: Sequence[str], encoder: Any) -> dict[str, float]:
    """Top-1 / top-5 hit rates and mean cosine(gt, top-1) over the output units whose class is a concept.

    `records` are one layer's neuron records (unit u = class u); a unit's ranked concepts are its
    `closed_concepts`. Units whose class name is not in the concept set are left out.
    """
    rows = [(r, class_names[r["unit"]]) for r in records if r["unit"] < len(class_names)]
    if not rows:
        raise ValueError("last_layer_accuracy: no output unit has a class name")
    ranked = [[c["concept"] for c in r["closed_concepts"]] for r, _ in rows]
    gts = [gt for _, gt in rows]
    return {
        "top1": sum(r[:1] == [g] for r, g in zip(ranked, gts)) / len(rows),
        "top5": sum(g in r[:5] for r, g in zip(ranked, gts)) / len(rows),
        "cos": concept_cosine([r[0] for r in ranked], gts, encoder),
        "units": float(len(rows)),
    }
