"""Aggregate a pruning multirun from each job's `unlearn_result.json`: paper Table 4 (strategy x Avg pruned,
ΔA, ΔR, ΔR−ΔA, in logit and probability units) and the Fig. 4 ablation curve (accuracy vs % pruned per
strategy). `AggregateCallback` runs it when a Hydra multirun ends and logs both to the sweep's W&B group.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from and_lightning.prune.forgetting import SELECTIVITY
from and_lightning.prune.unlearn import RESULT_FILE
from and_lightning.analysis.plots import save_png
from and_lightning.store.atomic import write_text
from and_lightning.tracking import point_wandb_into

log = logging.getLogger(__name__)
TABLE_MD = "unlearning_table.md"
TABLE_CSV = "unlearning_table.csv"
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


def read_results(sweep_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every job's result under `sweep_dir`, in job order."""
    paths = sorted(Path(sweep_dir).rglob(RESULT_FILE), key=lambda p: [int(s) if s.isdigit() else s for s in p.parts])
    return [json.loads(p.read_text(encoding="utf-8")) | {"job_dir": str(p.parent)} for p in paths]


def _mean(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def table_rows(results: Sequence[dict]) -> list[dict[str, Any]]:
    """One row per strategy (in first-seen order): jobs, targets and the mean of every column over jobs."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        groups[r["strategy"]].append(r)
    rows = []
    for strategy, rs in groups.items():
        row: dict[str, Any] = {"strategy": strategy, "jobs": len(rs),
                               "targets": len({r["target"] for r in rs if r["target"] is not None})}
        for column, key, _ in COLUMNS:
            row[column] = _mean([r["metrics"].get(key, float("nan")) for r in rs])
        rows.append(row)
    return rows


def _fmt(value: Any, decimals: int) -> str:
    if isinstance(value, float):
        return "n/a" if np.isnan(value) else f"{value:.{decimals}f}"
    return str(value)


def selection_lines(results: Sequence[dict]) -> list[str]:
    """One line per job: strategy, target, units pruned and what the selection rests on (or why it is empty)."""
    return [f"- {r['strategy']} / {r['target']}: {r['metrics']['prune/n_pruned']} units; {r.get('selection_note', '')}"
            for r in results]


def table_markdown(rows: Sequence[dict], selections: Sequence[str] = ()) -> str:
    """The Table 4 layout as markdown (columns that are empty for every strategy are left out), then one
    line per job's selection."""
    cols = [(c, d) for c, _, d in COLUMNS if any(not np.isnan(r[c]) for r in rows)]
    head = ["strategy", "jobs", "targets", *(c for c, _ in cols)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["strategy"], str(r["jobs"]), str(r["targets"]),
                                        *(_fmt(r[c], d) for c, d in cols)]) + " |")
    text = "\n".join(lines) + "\n\n" + NOTE + "\n"
    return text + ("\nSelections:\n" + "\n".join(selections) + "\n" if selections else "")


def table_csv(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["strategy"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def ablation_points(results: Sequence[dict]) -> dict[str, list[tuple[float, float]]]:
    """Fig. 4: per strategy, (% of prunable units pruned, test accuracy after pruning) averaged over the jobs
    at the same % (seeds, targets), with the unpruned accuracy as the 0 % point; sorted by %."""
    cells: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        m = r["metrics"]
        cells[r["strategy"]][round(m["prune/pct_pruned"], 1)].append(m["pruned/acc"])
        cells[r["strategy"]][0.0].append(m["before/acc"])
    return {s: sorted((pct, float(np.mean(accs))) for pct, accs in by_pct.items()) for s, by_pct in cells.items()}


def ablation_chart(points: dict[str, list[tuple[float, float]]], path: str | os.PathLike) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for strategy, pts in points.items():
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", label=strategy)
    ax.set_xlabel("% of hidden units pruned")
    ax.set_ylabel("test accuracy after pruning")
    ax.set_title("accuracy vs units pruned (paper Fig. 4)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    saved = Path(save_png(fig, path, dpi=100))
    plt.close(fig)
    return saved


def aggregate(sweep_dir: str | os.PathLike, wandb_project: str | None = None) -> dict[str, Any]:
    """Write the table (markdown + csv) and the ablation curve into `sweep_dir`; log them to the sweep's W&B
    group when the jobs had one and a project is given. Returns the paths and the rows."""
    sweep_dir = Path(sweep_dir)
    results = read_results(sweep_dir)
    if not results:
        raise FileNotFoundError(f"{sweep_dir}: no {RESULT_FILE} from any job (did the multirun run unlearn jobs?)")
    rows = table_rows(results)
    markdown = table_markdown(rows, selection_lines(results))
    write_text(sweep_dir / TABLE_MD, markdown)
    write_text(sweep_dir / TABLE_CSV, table_csv(rows))
    curve = ablation_chart(ablation_points(results), sweep_dir / CURVE_PNG)
    out: dict[str, Any] = {"table": str(sweep_dir / TABLE_MD), "csv": str(sweep_dir / TABLE_CSV),
                           "curve": str(curve), "rows": rows, "jobs": len(results)}
    groups = {r.get("wandb_group") for r in results} - {None}
    if wandb_project and len(groups) == 1:
        out["wandb_run_dir"] = _log_wandb(rows, curve, groups.pop(), wandb_project, sweep_dir)
    print(markdown)
    return out


def _log_wandb(rows: list[dict], curve: Path, group: str, project: str, sweep_dir: Path) -> str:
    import wandb

    point_wandb_into(sweep_dir)
    run = wandb.init(project=project, group=group, job_type="aggregate", name=f"{group}-aggregate",
                     dir=str(sweep_dir), mode=os.environ.get("WANDB_MODE", "offline"), reinit="finish_previous")
    try:
        columns = list(rows[0])
        run.log({"unlearning/table": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows]),
                 "unlearning/ablation_curve": wandb.Image(str(curve))})
        return str(Path(run.dir).parent)
    finally:
        run.finish()


class AggregateCallback(Callback):
    """Hydra callback: when a multirun ends, aggregate its jobs' results in the sweep directory."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        wandb_cfg = (config.get("logger") or {}).get("wandb")
        result = aggregate(config.hydra.sweep.dir, wandb_cfg.project if wandb_cfg else None)
        log.info("unlearning table: %s (%d jobs)", result["table"], result["jobs"])
