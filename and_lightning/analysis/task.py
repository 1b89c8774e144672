"""The evaluation task interface. A task is one class named by `_target_` in its section of conf/evaluate/ (the
section's other keys are its constructor's arguments); `run` reads what a dissection produced (`EvalContext`) and
returns tables, plots, metrics and per-unit scores (`TaskOutput`), which stages/evaluate.py writes the same way for
every task (CSV + Markdown, PNG, evaluation.json, W&B through the report stage)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor


class TaskSkipped(Exception):
    """Raised by a task that does not apply to this dissection; the message says why."""


@dataclass
class EvalContext:
    """What a task may read. store: ActivationStore; records: descriptions.jsonl rows; captions: clip id -> caption;
    clips: clip id -> ClipRecord; captioner: the run's configured captioner; split_dir: where the scorers'
    explain/score split is kept (the dissection folder, so every evaluation of one dissection scores the same clips);
    audio_embed: () -> CLAP audio embeddings of store.clip_ids, for TAB (its concept side is `encoder`);
    label_captions: the captions name each clip's class (captioner=labels); model: the dissected target adapter (for
    scorers that edit its units)."""

    store: Any = None
    records: Sequence[Mapping[str, Any]] | None = None
    captions: Mapping[str, str] | None = None
    clips: Mapping[str, Any] | None = None
    class_names: Sequence[str] | None = None
    concepts: Sequence[str] | None = None
    head_layer: str | None = None
    encoder: Any = None
    llm: Any = None
    captioner: Any = None
    split_dir: Path | None = None
    audio_embed: Callable[[], Tensor] | None = None
    model_name: str = ""
    seed: int = 0
    label_captions: bool = False
    model: Any = None

    def acts(self) -> Mapping[str, np.ndarray]:
        """layer -> [N, M] activations (`LayerActs`)."""
        return LayerActs(self.store)


class LayerActs(Mapping[str, np.ndarray]):
    """layer -> [N, M] activations, memory-mapped from the store afresh on each access: a layer's pages are given
    back when its user drops it, so a scan over every layer never holds them all (AST-base at 2,000 clips: 0.44 GB)."""

    def __init__(self, store: Any):
        self._store = store

    def __getitem__(self, layer: str) -> np.ndarray:
        if layer not in self._store.layers:
            raise KeyError(layer)
        return self._store.acts(layer)

    def __iter__(self) -> Iterator[str]:
        return iter(self._store.layers)

    def __len__(self) -> int:
        return len(self._store.layers)


@dataclass
class Table:
    """Written as `<out>/<name>.csv` and `.md` (files `<name>_csv`, `<name>_md`)."""

    name: str
    rows: list[dict[str, Any]]
    columns: list[str]
    title: str


@dataclass
class TaskOutput:
    """tables; plots (name -> figure, written as `<out>/<name>.png`); metrics (W&B keys); neuron_scores keyed by
    (layer, unit) for the reports; files the task wrote itself."""

    tables: list[Table] = field(default_factory=list)
    plots: dict[str, Figure] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    neuron_scores: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


class ScorerResult(NamedTuple):
    """What every description scorer returns (ground truth, simulation, detection, intervention, last-layer concept
    matching), from the same inputs (the neuron records, each layer's activations [N, M], and the clips): rows of its
    table (one per layer, or per layer and variant); per_neuron[(layer, unit)] = the unit's scores (written into the
    run's descriptions.jsonl); distributions[layer] = (real, shuffled) per-unit scores for a plot ({}: none)."""

    rows: list[dict[str, Any]]
    per_neuron: dict[tuple[str, int], dict[str, Any]]
    distributions: dict[str, tuple[np.ndarray, np.ndarray]]


class Task:
    """`settings`: the task's section of conf/evaluate/ (documented there) without `_target_`; `needs`: the
    EvalContext fields that must be set (else a one-line error before the task runs)."""

    needs: tuple[str, ...] = ()

    def __init__(self, **settings: Any):
        self.settings = settings

    def run(self, ctx: EvalContext) -> TaskOutput:
        raise NotImplementedError


def records_by_layer(records: Sequence[Mapping[str, Any]], by_unit: bool = True) -> dict[str, list[Mapping[str, Any]]]:
    """layer -> its records, sorted by unit (else in record order), in one pass over the records (a scan per layer
    would cost layers x records)."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        out.setdefault(r["layer"], []).append(r)
    return {layer: sorted(recs, key=lambda r: r["unit"]) if by_unit else recs for layer, recs in out.items()}


def scored_layers(records: Sequence[Mapping[str, Any]], acts_by_layer: Mapping[str, Any],
                  max_per_layer: int | None = None) -> Iterator[tuple[int, str, Any, list[Mapping[str, Any]]]]:
    """(index of the layer in `acts_by_layer`, layer, its activations, its first `max_per_layer` records by unit)
    for every layer with records: the loop of a per-layer scorer (the index seeds the layer's draws)."""
    by_layer = records_by_layer(records)
    for index, (layer, acts) in enumerate(acts_by_layer.items()):
        recs = by_layer.get(layer, [])[:max_per_layer]
        if recs:
            yield index, layer, acts, recs


def scorer_output(name: str, result: ScorerResult, columns: list[str], title: str, plots: dict[str, Figure],
                  prefix: str, keys: Sequence[str], split_path: Path) -> TaskOutput:
    """What a per-layer held-out scorer's task returns: the table `name` of `result.rows`, its plots, metrics
    `eval/<prefix>/<layer>/<key>` for `keys`, the per-unit scores, and the shared split's file as files["split"]."""
    return TaskOutput(tables=[Table(name, result.rows, columns, title)], plots=plots,
                      metrics={f"eval/{prefix}/{r['layer']}/{k}": float(r[k]) for r in result.rows for k in keys},
                      neuron_scores=result.per_neuron, files={"split": str(split_path)})


def text_or_llm(setting: str, value: Any, llm: Any) -> str:
    """A scorer's judge: 'text' (the offline text encoder) or 'llm' (needs a configured LLM); one-line errors that
    name the setting (e.g. `evaluate.detection.judge`)."""
    if value not in ("text", "llm"):
        raise ValueError(f"{setting} must be 'text' or 'llm', got {value!r}")
    if value == "llm" and llm is None:
        raise ValueError(f"{setting}=llm needs an LLM (llm=openai or llm=hf)")
    return value
