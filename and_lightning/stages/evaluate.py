"""Stage 4 (evaluate) and the static-HTML part of stage 5 (report) as plain functions.

`evaluate_stage` runs the tasks listed in `evaluate.tasks` (analysis/task.py) and writes (and prints) their tables,
plots and metrics; a task that does not apply to the dissection (e.g. last_layer when the output layer was not
dissected) is skipped with its reason logged and kept in `evaluation.json`. `html_report_stage` writes the
searchable static page. `needs_dissection`: whether any task reads the dissection (CREPE `pitch` needs none).
The run's per-unit scores are written beside the tables as `descriptions.jsonl`: the dissection's records, each
with `scores` from this evaluation (the dissection folder's descriptions.jsonl is describe's output and stays as
written: it is shared by every run of the same dissection, whatever their evaluate settings).
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from and_lightning.analysis.html_report import build_html_report
from and_lightning.analysis.plots import save_png
from and_lightning.analysis.tables import write_table
from and_lightning.analysis.task import EvalContext, Task, TaskSkipped
from and_lightning.describe.captioners.labels import NOT_COMPARABLE
from and_lightning.describe.exemplars import record_windows, top_clip_curves
from and_lightning.store.atomic import write_json, write_text

log = logging.getLogger(__name__)
DISSECTION = frozenset({"store", "records", "captions", "clips"})


def build_tasks(ecfg: Mapping[str, Any]) -> dict[str, Task]:
    """name -> task for every name in `ecfg.tasks`, built from its section's `_target_` and settings."""
    known = [k for k, v in ecfg.items() if isinstance(v, Mapping) and "_target_" in v]
    names = list(ecfg.get("tasks") or [])
    unknown = [t for t in names if t not in known]
    if unknown:
        raise ValueError(f"evaluate.tasks: unknown task(s) {unknown}; expected some of {known}")
    return {t: instantiate(ecfg[t], _convert_="all") for t in names}


def needs_dissection(ecfg: Mapping[str, Any]) -> bool:
    """Whether any configured task reads the activations / captions / descriptions of a dissection."""
    return any(DISSECTION & set(task.needs) for task in build_tasks(_plain(ecfg)).values())


def _plain(cfg: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)


@dataclass
class EvaluateResult:
    """What stage 4 produced: flat metrics (W&B keys), written tables/files and plots (name -> path),
    per-neuron scores keyed by (layer, unit) (for the reports), and the skipped tasks (name -> reason)."""

    metrics: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)
    neuron_scores: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def evaluate_stage(ecfg: Mapping[str, Any] | DictConfig, out_dir: str | os.PathLike, *,
                   split_dir: str | os.PathLike | None = None, **inputs: Any) -> EvaluateResult:
    """Run `ecfg.tasks` on `inputs` (the fields of analysis.task.EvalContext; split_dir defaults to out_dir) and
    write their tables / plots under `out_dir`; returns metrics, files, images and the skipped tasks with their
    reasons (also written to `out_dir/evaluation.json`)."""
    ecfg = _plain(ecfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = out / "evaluation.json"  # the completion marker: removed first, written last
    if not done.is_file() and any(out.glob("*.csv")):
        log.warning("evaluate: %s holds tables of a run cut off before its end (no %s): redoing it", out, done.name)
    done.unlink(missing_ok=True)
    ctx = EvalContext(split_dir=Path(split_dir or out), **inputs)
    result = EvaluateResult()
    for name, task in build_tasks(ecfg).items():
        missing = [k for k in task.needs if getattr(ctx, k) is None]
        if missing:
            raise ValueError(f"evaluate task '{name}' needs {', '.join(missing)} (run the dissection stages first)")
        try:
            output = task.run(ctx)
        except TaskSkipped as e:
            log.warning("evaluate: task '%s' skipped: %s", name, e)
            result.skipped[name] = str(e)
            continue
        result.files.update(output.files)
        for t in output.tables:
            written = write_table(t.rows, t.columns, out / t.name, t.title)
            result.files.update({f"{t.name}_{k}": v for k, v in written.items()})
            print(Path(written["md"]).read_text(encoding="utf-8"))
        result.images.update({k: save_png(fig, out / f"{k}.png") for k, fig in output.plots.items()})
        result.metrics.update(output.metrics)
        for key, scores in output.neuron_scores.items():
            result.neuron_scores.setdefault(key, {}).update(scores)
    if ctx.records is not None:
        path = out / "descriptions.jsonl"
        write_text(path, (json.dumps(r) + "\n" for r in scored_records(ctx.records, result.neuron_scores)))
        result.files["descriptions"] = str(path)
    marks = {"captions": "labels", "note": NOT_COMPARABLE} if ctx.label_captions else {}
    write_json(done, {**marks, "metrics": result.metrics, "files": result.files, "images": result.images,
                      "skipped": result.skipped})
    return result


def scored_records(records: Sequence[Mapping[str, Any]],
                   neuron_scores: Mapping[tuple[str, int], Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """`records` with `scores` (describe's empty placeholder, or an earlier evaluation's) set to their unit's
    `neuron_scores`: `{}` when no task scored the unit; a score that is not finite, e.g. the AUPRC of a unit
    without positive clips, is null."""
    def plain(v: Any) -> Any:
        return None if isinstance(v, float) and not math.isfinite(v) else v

    return ({**r, "scores": {k: plain(v) for k, v in neuron_scores.get((r["layer"], r["unit"]), {}).items()}}
            for r in records)


def html_report_stage(hcfg: Mapping[str, Any] | DictConfig, out_dir: str | os.PathLike,
                      records: Sequence[Mapping[str, Any]], clips: Mapping[str, Any], captions: Mapping[str, str],
                      sample_rate: int, clip_seconds: float, *, metrics: Mapping[str, Any] | None = None,
                      neuron_scores: Mapping[tuple[str, int], Mapping[str, Any]] | None = None,
                      title: str = "AND dissection", exemplar_curves: tuple[Any, bool] | None = None) -> Path:
    """Write the static HTML report (`out_dir/index.html` + audio/ + spec/); returns the page's path.

    `exemplar_curves` (exemplars=window): (the dissected adapter, whether units were recorded before their
    activation); the page then gets each record's top windows and the unit's activation curve over each of its top
    clips (`describe/exemplars.py`). This is the one place the window report is wired."""
    hcfg = _plain(hcfg)
    extra = {}
    if exemplar_curves is not None:
        shown = [r for r in records if "top_windows" in r]
        extra = {"windows": record_windows(shown),
                 "curves": top_clip_curves(exemplar_curves[0], shown, clips, clip_seconds, exemplar_curves[1])}
    return build_html_report(records, {cid: str(r.path) for cid, r in clips.items()}, captions, out_dir, sample_rate,
                             clip_seconds, title=title, audio_per_neuron=int(hcfg["audio_per_neuron"]),
                             max_neurons=hcfg.get("max_neurons"), max_per_layer=hcfg.get("max_per_layer"),
                             metrics=metrics, neuron_scores=neuron_scores, **extra)
