"""Aggregate a pruning multirun from each job's `unlearn_result.json`: paper Table 4 (strategy x Avg pruned,
ΔA, ΔR, ΔR−ΔA, in logit and probability units) and the Fig. 4 ablation curve (accuracy vs % pruned per
strategy), logged to the sweep's W&B group (`analysis.sweep`; its `AggregateCallback` runs `aggregate` when a Hydra
multirun ends).
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from and_lightning.analysis.plots import save_png
from and_lightning.analysis.sweep import Table, by_key, mean, number, publish, read_results
from and_lightning.analysis.tables import format_cell, markdown_table
from and_lightning.prune.forgetting import SELECTIVITY
from and_lightning.prune.unlearn import RESULT_FILE

CURVE_PNG = "ablation_curve.png"
# (column, metric key or None for computed ones, decimals)
COLUMNS = [
    ("Avg pruned", "prune/n_pruned", 1), ("% pruned", "prune/pct_pruned", 2),
    ("ΔA logit", "pruned/delta_A_logit", 3), ("ΔR logit", "pruned/delta_R_logit", 3),
    (f"{SELECTIVITY} logit", "pruned/selectivity_logit", 3),
    ("ΔA prob", "pruned/delta_A_prob", 4), ("ΔR prob", "pruned/delta_R_prob", 4),
    (f"{SELECTIVITY} prob", "pruned/selectivity_prob", 4),
    ("acc before", "before/acc", 3), ("acc pruned", "pruned/acc", 3),
    ("target acc pruned", "pruned/acc_target", 3), ("rest acc pruned", "pruned/acc_rest", 3),
    ("target acc retrained", "retrained/acc_target", 3), ("rest acc retrained", "retrained/acc_rest", 3),
    (f"{SELECTIVITY} prob retrained", "retrained/selectivity_prob", 4),
]
NOTE = ("ΔA, ΔR: after − before of the mean own-class logit / softmax probability on the held-out split (target "
        f"class; mean over the other classes, each on its own clips), averaged over targets. {SELECTIVITY} > 0: the "
        "target lost more than the rest (selective forgetting; the paper's Table 4 heads this column ΔA−ΔR).")


def table_rows(results: Sequence[dict]) -> list[dict[str, Any]]:
    """One row per strategy (in first-seen order): jobs, targets and the mean of every column over jobs."""
    rows = []
    for strategy, rs in by_key(results, "strategy").items():
        row: dict[str, Any] = {"strategy": strategy, "jobs": len(rs),
                               "targets": len({r["target"] for r in rs if r["target"] is not None})}
        for column, key, _ in COLUMNS:
            row[column] = mean([number(r["metrics"], key) for r in rs])
        rows.append(row)
    return rows


def selection_lines(results: Sequence[dict]) -> list[str]:
    """One line per job: strategy, target, units pruned and what the selection rests on (or why it is empty)."""
    return [f"- {r['strategy']} / {r['target']}: {r['metrics']['prune/n_pruned']} units; {r.get('selection_note', '')}"
            for r in results]


def table_markdown(rows: Sequence[dict], selections: Sequence[str] = ()) -> str:
    """The Table 4 layout as markdown (columns that are empty for every strategy are left out), then one
    line per job's selection."""
    cols = [(c, d) for c, _, d in COLUMNS if any(not np.isnan(r[c]) for r in rows)]
    view = [{"strategy": r["strategy"], "jobs": r["jobs"], "targets": r["targets"]}
            | {c: format_cell(r[c], d) for c, d in cols} for r in rows]
    text = markdown_table(view, ["strategy", "jobs", "targets", *(c for c, _ in cols)]) + "\n" + NOTE + "\n"
    return text + ("\nSelections:\n" + "\n".join(selections) + "\n" if selections else "")


def ablation_points(results: Sequence[dict]) -> dict[str, list[tuple[float, float]]]:
    """Fig. 4: per strategy, (% of prunable units pruned, test accuracy after pruning) averaged over the jobs
    at the same % (seeds, targets), with the unpruned accuracy as the 0 % point; sorted by %."""
    cells: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        m = r["metrics"]
        cells[r["strategy"]][round(m["prune/pct_pruned"], 1)].append(m["pruned/acc"])
        cells[r["strategy"]][0.0].append(m["before/acc"])
    return {s: sorted((pct, mean(accs)) for pct, accs in by_pct.items()) for s, by_pct in cells.items()}


def ablation_chart(points: dict[str, list[tuple[float, float]]], path: str | os.PathLike) -> str:
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.add_subplot()
    for strategy, pts in points.items():
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", label=strategy)
    ax.set_xlabel("% of hidden units pruned")
    ax.set_ylabel("test accuracy after pruning")
    ax.set_title("accuracy vs units pruned (paper Fig. 4)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path, dpi=100)


def aggregate(sweep_dir: str | os.PathLike, wandb_project: str | None = None) -> dict[str, Any]:
    """Write the table (markdown + csv) and the ablation curve into `sweep_dir`, log them to the sweep's W&B group
    when a project is given (`sweep.publish`). Returns the files, rows and number of jobs."""
    sweep_dir = Path(sweep_dir)
    results = read_results(sweep_dir, RESULT_FILE, {"strategy": object, "target": object, "metrics": dict})
    rows = table_rows(results)
    columns = ["strategy", "jobs", "targets", *(c for c, _, _ in COLUMNS)]
    table = Table("unlearning_table", table_markdown(rows, selection_lines(results)), rows, columns)
    curve = ablation_chart(ablation_points(results), sweep_dir / CURVE_PNG)
    out = publish(sweep_dir, results, {"unlearning/table": table}, {"unlearning/ablation_curve": curve}, wandb_project,
                  "aggregate")
    return out | {"rows": rows}
