"""Polysemanticity: how many distinct classes (sound sources of the synthetic set, or the dataset's labels) a unit's
top-K clips come from, beside the same count for K clips drawn at random (the baseline). A unit that is constant
over the probing set (e.g. an SAE feature that never fires: its "top" clips are ties) is counted as such and left
out of the mean. Works for neurons and SAE features alike (issue 16)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from and_lightning.analysis.task import EvalContext, Table, Task, TaskOutput

COLUMNS = ["layer", "units", "constant", "distinct_classes", "single_class", "distinct_classes_random", "k"]


def polysemanticity(records: Sequence[Mapping[str, Any]], labels: Mapping[str, int], draws: int = 200,
                    seed: int = 0) -> list[dict[str, Any]]:
    """One row per layer (in record order); see COLUMNS."""
    rows: dict[str, dict[str, Any]] = {}
    for r in records:
        row = rows.setdefault(r["layer"], {"layer": r["layer"], "units": 0, "const": 0, "counts": [], "k": 0})
        row["units"] += 1
        row["k"] = max(row["k"], len(r["top_clips"]))
        if not r["top_clips"] or r["top_values"][0] <= (r.get("bottom_values") or [r["top_values"][-1]])[0]:
            row["const"] += 1
            continue
        row["counts"].append(len({labels[c] for c in r["top_clips"]}))
    every = np.array(list(labels.values()))
    rng = np.random.default_rng(seed)
    out = []
    for row in rows.values():
        k = row["k"]
        counts = np.array(row["counts"], float)
        random = np.mean([len(set(rng.choice(every, size=k, replace=False))) for _ in range(draws)]) if k else np.nan
        out.append({"layer": row["layer"], "units": row["units"], "constant": row["const"] / row["units"],
                    "distinct_classes": float(counts.mean()) if len(counts) else float("nan"),
                    "single_class": float((counts == 1).mean()) if len(counts) else float("nan"),
                    "distinct_classes_random": float(random), "k": k})
    return out


class Polysemanticity(Task):
    """Distinct classes among each unit's top clips, per layer (settings: `draws` of the random baseline)."""

    needs = ("records", "clips")

    def run(self, ctx: EvalContext) -> TaskOutput:
        labels = {cid: rec.label for cid, rec in ctx.clips.items()}
        rows = polysemanticity(ctx.records, labels, int(self.settings.get("draws", 200)), ctx.seed)
        metrics = {f"eval/poly/{r['layer']}/{k}": r[k] for r in rows
                   for k in ("distinct_classes", "single_class", "distinct_classes_random", "constant")}
        scores = {(r["layer"], int(r["unit"])): {"poly_classes": len({labels[c] for c in r["top_clips"]})}
                  for r in ctx.records}
        title = "Polysemanticity (distinct classes among each unit's top-K clips; constant units left out)"
        return TaskOutput(tables=[Table("polysemanticity", rows, COLUMNS, title)], metrics=metrics,
                          neuron_scores=scores)
