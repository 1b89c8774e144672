"""Aggregating a Hydra multirun: every job's result file under the sweep folder, jobs grouped and averaged, tables
(markdown + csv) and figures written into the sweep folder and logged to the sweep's W&B group, and
`AggregateCallback`, which runs a study's `aggregate(sweep_dir, wandb_project)` when the multirun ends. The studies
(`analysis.strategies`, `prune.aggregate`) supply their rows, text and figures."""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from and_lightning.analysis.tables import csv_text
from and_lightning.store.atomic import write_text
from and_lightning.tracking import point_wandb_into

log = logging.getLogger(__name__)


def read_results(sweep_dir: str | os.PathLike, result_file: str, fields: Mapping[str, type]) -> list[dict[str, Any]]:
    """Every job's `result_file` under `sweep_dir` (any depth), in job order (numeric folder names), each with its
    "job_dir"; each must be a JSON object holding `fields` (name -> type; `object`: any)."""
    sweep_dir = Path(sweep_dir)
    paths = sorted(sweep_dir.rglob(result_file), key=lambda p: [int(s) if s.isdigit() else s for s in p.parts])
    if not paths:
        raise FileNotFoundError(f"{sweep_dir}: no {result_file} from any job (did the multirun run this study's "
                                f"jobs, and did they finish?)")
    results = []
    for p in paths:
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not valid JSON ({e})") from e
        missing = [k for k in fields if not isinstance(data, dict) or k not in data]
        if missing:
            raise ValueError(f"{p}: missing {', '.join(map(repr, missing))} (expected keys {list(fields)})")
        wrong = [f"{k!r} must be a {t.__name__}" for k, t in fields.items() if not isinstance(data[k], t)]
        if wrong:
            raise ValueError(f"{p}: {'; '.join(wrong)}")
        results.append(data | {"job_dir": str(p.parent)})
    return results


def by_key(results: Sequence[dict], key: str) -> dict[str, list[dict]]:
    """The results grouped by str(result[key]), groups in first-seen order."""
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(str(r[key]), []).append(r)
    return groups


def number(metrics: Mapping[str, Any], key: str) -> float:
    """A metric as float; missing, null or non-numeric values are NaN."""
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _finite(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    return arr[np.isfinite(arr)]


def mean(values: Sequence[float]) -> float:
    """Mean of the finite values; NaN without any."""
    vals = _finite(values)
    return float(vals.mean()) if vals.size else math.nan


def sd(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof=1) of the finite values; NaN with fewer than two."""
    vals = _finite(values)
    return float(vals.std(ddof=1)) if vals.size >= 2 else math.nan


@dataclass(frozen=True)
class Table:
    """One result table: written as <sweep>/<stem>.md (`markdown`, for people) and .csv (`columns` of `rows`)."""

    stem: str
    markdown: str
    rows: Sequence[dict]
    columns: Sequence[str]


def publish(sweep_dir: Path, results: Sequence[dict], tables: Mapping[str, Table], images: Mapping[str, str],
            wandb_project: str | None, job_type: str, text: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Write the tables into `sweep_dir` and print the first one's markdown; when `wandb_project` is given and every
    job ran in the same W&B group, log the tables, images and `text` (W&B key -> each) to a run of that group.
    Returns {"files": written paths, "jobs": n, "wandb_run_dir": (when logged)}."""
    files = []
    for table in tables.values():
        files += [sweep_dir / f"{table.stem}.md", sweep_dir / f"{table.stem}.csv"]
        write_text(files[-2], table.markdown)
        write_text(files[-1], csv_text(table.rows, table.columns))
    out: dict[str, Any] = {"files": [str(p) for p in files] + list(images.values()), "jobs": len(results)}
    groups = {r.get("wandb_group") for r in results}
    if wandb_project:
        if len(groups) == 1 and None not in groups:
            out["wandb_run_dir"] = _log_wandb(sweep_dir, groups.pop(), wandb_project, job_type, tables, images,
                                              text or {})
        else:
            log.warning("not logging to W&B: the jobs' wandb_group values are %s, not one group",
                        sorted(map(str, groups)))
    print(next(iter(tables.values())).markdown)
    return out


def _log_wandb(sweep_dir: Path, group: str, project: str, job_type: str, tables: Mapping[str, Table],
               images: Mapping[str, str], text: Mapping[str, str]) -> str:
    import wandb

    def cell(value: Any) -> Any:  # NaN as an empty cell
        return None if isinstance(value, float) and math.isnan(value) else value

    point_wandb_into(sweep_dir)
    run = wandb.init(project=project, group=group, job_type=job_type, name=f"{group}-{job_type}",
                     dir=str(sweep_dir), mode=os.environ.get("WANDB_MODE", "offline"), reinit="finish_previous")
    try:
        run.log({key: wandb.Table(columns=list(t.columns), data=[[cell(r[c]) for c in t.columns] for r in t.rows])
                 for key, t in tables.items()} | {key: wandb.Image(path) for key, path in images.items()})
        run.summary.update(dict(text))
        return str(Path(run.dir).parent)
    finally:
        run.finish()


class AggregateCallback(Callback):
    """Hydra callback: when a multirun ends, `aggregate(sweep_dir, wandb_project)` (a study's aggregate, e.g. with
    `_partial_: true` in the config) in its sweep folder, with the W&B project of `logger.wandb` if there is one."""

    def __init__(self, aggregate: Callable[..., dict[str, Any]]) -> None:
        self.aggregate = aggregate

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        wandb_cfg = (config.get("logger") or {}).get("wandb")
        result = self.aggregate(config.hydra.sweep.dir, wandb_cfg.get("project") if wandb_cfg else None)
        log.info("%d jobs aggregated: %s", result["jobs"], ", ".join(result["files"]))
