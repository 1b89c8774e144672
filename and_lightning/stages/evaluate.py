"""Stage 4 (evaluate) and the static-HTML part of stage 5 (report) as plain functions.

`evaluate_stage` runs the tasks listed in `evaluate.tasks` (conf/evaluate/default.yaml) on a finished
dissection and writes every table (CSV + Markdown) and plot (PNG) under `out_dir`, printing the per-layer
numbers; a task that does not apply to the dissection (e.g. last_layer when the output layer was not
dissected) is skipped with its reason logged and kept in `evaluation.json`. `html_report_stage` writes the
searchable static page. `needs_dissection` tells the caller whether any task reads the dissection (the CREPE
`pitch` task builds its own probing tones and needs none).
"""
from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from and_lightning.analysis.ground_truth import ground_truth_report
from and_lightning.analysis.html_report import build_html_report
from and_lightning.analysis.interpretability import (
    adjective_counts, adjectives_per_layer, cluster_captions, uninterpretable_fractions,
)
from and_lightning.analysis.last_layer_table import (
    TABLE_COLUMNS, ConceptScores, icl_row, paper_reference_rows, similarity_rows, skipped_row,
    unit_ground_truth, with_paper_columns,
)
from and_lightning.analysis.plots import (
    adjective_bar_chart, adjectives_per_layer_plot, real_vs_shuffled_plot, uninterpretable_plot,
)
from and_lightning.analysis.simulation import load_or_make_split, simulation_report
from and_lightning.analysis.tables import write_table
from and_lightning.describe.captioners.labels import NOT_COMPARABLE
from and_lightning.describe.closed_set import db_probs, icl_request, parse_icl_reply, tab_scores_matrix
from and_lightning.store.atomic import write_json

log = logging.getLogger(__name__)
TASKS = ("last_layer", "ground_truth", "simulation", "interpretability", "pitch")
STORE_FREE_TASKS = frozenset({"pitch"})


def needs_dissection(ecfg: Mapping[str, Any]) -> bool:
    """Whether any configured task reads the activations / captions / descriptions of a dissection."""
    return any(t not in STORE_FREE_TASKS for t in _tasks(ecfg))


def _tasks(ecfg: Mapping[str, Any]) -> list[str]:
    tasks = list(ecfg.get("tasks") or [])
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"evaluate.tasks: unknown task(s) {unknown}; expected some of {list(TASKS)}")
    return tasks


class TaskSkipped(Exception):
    """Raised by a task that does not apply to this dissection; the message says why."""


@dataclass
class EvaluateResult:
    """What stage 4 produced: flat metrics (W&B keys), written tables/files and plots (name -> path),
    per-neuron scores keyed by (layer, unit) (for the reports), and the skipped tasks (name -> reason)."""

    metrics: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)
    neuron_scores: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


class LayerActs(Mapping):
    """layer -> float32 [N, M] activations, read from the store one layer at a time (never all at once)."""

    def __init__(self, store: Any, layers: Sequence[str]):
        self.store, self.layers = store, list(layers)

    def __getitem__(self, layer: str) -> np.ndarray:
        if layer not in self.layers:
            raise KeyError(layer)
        return np.array(self.store.acts(layer), dtype=np.float32)

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)


def _need(task: str, **things: Any) -> None:
    missing = [k for k, v in things.items() if v is None]
    if missing:
        raise ValueError(f"evaluate task '{task}' needs {', '.join(missing)} (run the dissection stages first)")


def _fmt(v: float) -> str:
    return "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:5.3f}"


# -------------------------------------------------------------------------------------------------- tasks
def last_layer_task(lcfg: Mapping[str, Any], out: Path, store: Any, captions: Mapping[str, str],
                    records: Sequence[Mapping[str, Any]], class_names: Sequence[str], concepts: Sequence[str],
                    head_layer: str, encoder: Any, llm: Any, audio_embed: Callable[[], Tensor] | None,
                    model_name: str, result: EvaluateResult, captions_note: str = "") -> None:
    """Paper Table 2 for the output layer: every method x similarity, next to the paper's AST numbers;
    `captions_note` marks every measured row (captions that name the classes)."""
    if head_layer not in store.layers:
        raise TaskSkipped(f"the output layer '{head_layer}' was not dissected (layers: {', '.join(store.layers)}); "
                          "add it to layers= for Table 2")
    acts = np.array(store.acts(head_layer), dtype=np.float32)
    unit_gt = unit_ground_truth(acts.shape[1], class_names, concepts)
    if not any(unit_gt):
        raise TaskSkipped("no output class of the model is in the concept set")
    scores: dict[str, ConceptScores] = {}
    rows: list[dict[str, Any]] = []
    for method in lcfg["methods"]:
        if method == "db":
            missing = [c for c in store.clip_ids if c not in captions]
            if missing:
                rows.append(skipped_row("db", f"{len(missing)} clips have no caption (DB needs every clip's)"))
                continue
            cap = encoder.encode([captions[c] for c in store.clip_ids])
            scores["db"] = ConceptScores(db_probs(cap, encoder.encode(list(concepts)), float(lcfg["scale"])), True)
        elif method == "tab":
            if audio_embed is None:
                rows.append(skipped_row("tab", "no CLAP audio side in the text encoder (TAB needs text_encoder=clap)"))
                continue
            scores["tab"] = ConceptScores(tab_scores_matrix(audio_embed(), encoder.encode(list(concepts))), False)
        elif method == "icl":
            if llm is None:
                rows.append(skipped_row("icl", "no LLM configured (llm=none)"))
                continue
            head = {r["unit"]: r for r in records if r["layer"] == head_layer}
            units = range(acts.shape[1])
            replies = llm.complete_many([icl_request(str(head[u]["summary_high"]), concepts) for u in units])
            picks = [parse_icl_reply(r, concepts, encoder) for r in replies]
            unusable = [p for p, g in zip(picks, unit_gt) if p.concept is None and g is not None]
            usable_gt = [g if p.concept is not None else None for p, g in zip(picks, unit_gt)]
            if not any(usable_gt):
                rows.append(skipped_row("icl", f"no usable LLM reply ({unusable[0].reason})" if unusable
                                        else "no output class of the model is in the concept set"))
                continue
            row = icl_row([p.concept or "" for p in picks], usable_gt, encoder)
            paths = Counter(p.path for p in picks)
            row["note"] += "; reply parse paths: " + ", ".join(f"{k} {v}" for k, v in sorted(paths.items()))
            if unusable:
                row["note"] += f"; {len(unusable)} units skipped, unusable reply (first: {unusable[0].reason})"
            rows.append(row)
        else:
            raise ValueError(f"evaluate.last_layer.methods: unknown method {method!r} (expected db, tab, icl)")
    rows[:0] = similarity_rows(torch.from_numpy(acts), unit_gt, concepts, scores, encoder, list(lcfg["similarities"]),
                               [bool(f) for f in lcfg["faithful"]])
    rows = with_paper_columns([{"model": model_name, **r} for r in rows])
    for r in rows:
        if captions_note and not r["note"].startswith("skipped"):
            r["note"] = "; ".join(filter(None, [r["note"], captions_note]))
    columns = TABLE_COLUMNS + ["paper_ast_top1", "paper_ast_top5", "paper_ast_cos"]
    title = f"Last-layer dissection accuracy ({model_name}, layer {head_layer})" + (
        f" - {captions_note}" if captions_note else "")
    written = write_table(rows, columns, out / "last_layer", title)
    result.files.update({f"last_layer_{k}": v for k, v in written.items()})
    print(f"last layer '{head_layer}': method / similarity: top-1 %, top-5 %, cos (paper AST)"
          + (f" - {captions_note}" if captions_note else ""))
    for r in rows:
        if r["note"].startswith("skipped"):
            print(f"  {r['method']:>4}: {r['note']}")
            continue
        tag = f"{r['method']}/{r['similarity']}" + ("/faithful" if r["faithful"] else "")
        print(f"  {tag:<28} {r['top1']:6.1f} {r['top5']:6.1f} {_fmt(r['cos'])}   "
              f"({r['paper_ast_top1']:.0f} {r['paper_ast_top5']:.0f} {r['paper_ast_cos']:.2f})")
        for k in ("top1", "top5", "cos"):
            result.metrics[f"eval/last_layer/{tag}/{k}"] = float(r[k])


def ground_truth_task(gcfg: Mapping[str, Any], out: Path, acts: LayerActs, records: Sequence[Mapping[str, Any]],
                      clip_records: Sequence[Any], seed: int, result: EvaluateResult) -> None:
    """Description accuracy against the synthetic set's known attributes, per layer."""
    from and_lightning.data.synth import ATTRIBUTES, clip_attributes

    try:
        attrs = [clip_attributes(r) for r in clip_records]
    except ValueError as e:
        raise TaskSkipped(f"the probing set is not the synthetic set ({e})") from e
    rows, per_neuron = ground_truth_report(
        records, acts, attrs, ATTRIBUTES, threshold=float(gcfg["auroc_threshold"]), direction=gcfg["direction"],
        fields=list(gcfg["fields"]), shuffles=int(gcfg["shuffles"]), seed=seed)
    columns = ["layer", "field", "precision", "recall", "f1", "f1_shuffled", "no_separable", "neurons",
               "named_per_neuron"]
    title = f"Ground-truth attribute accuracy (AUROC >= {gcfg['auroc_threshold']}, direction {gcfg['direction']})"
    result.files.update({f"ground_truth_{k}": v for k, v in write_table(rows, columns, out / "ground_truth",
                                                                          title).items()})
    main = [r for r in rows if r["field"] == gcfg["fields"][0]]
    result.images["ground_truth_f1"] = real_vs_shuffled_plot(main, "f1", out / "ground_truth_f1.png",
                                                             f"F1 of '{gcfg['fields'][0]}'")
    print(f"ground truth (AUROC >= {gcfg['auroc_threshold']}): layer / field: precision recall F1 | shuffled F1 | "
          "no separable attribute")
    for r in rows:
        print(f"  {r['layer']:<14} {r['field']:<16} {_fmt(r['precision'])} {_fmt(r['recall'])} {_fmt(r['f1'])} | "
              f"{_fmt(r['f1_shuffled'])} | {r['no_separable']:.1%}")
        for k in ("precision", "recall", "f1", "f1_shuffled", "no_separable"):
            result.metrics[f"eval/gt/{r['field']}/{r['layer']}/{k}"] = float(r[k])
    _merge_neuron_scores(result, per_neuron)


def simulation_task(scfg: Mapping[str, Any], out: Path, split_dir: Path, acts: LayerActs, store: Any,
                    records: Sequence[Mapping[str, Any]], captions: Mapping[str, str], encoder: Any, llm: Any,
                    result: EvaluateResult) -> None:
    """Simulation score on the held-out score clips of a fixed, saved split, against shuffled descriptions."""
    split, split_path = load_or_make_split(split_dir, store.clip_ids, float(scfg["score_fraction"]),
                                           int(scfg["split_seed"]))
    result.files["simulation_split"] = str(split_path)
    predictor = scfg["predictor"]
    if predictor not in ("text", "llm"):
        raise ValueError(f"evaluate.simulation.predictor must be 'text' or 'llm', got {predictor!r}")
    if predictor == "llm" and llm is None:
        raise ValueError("evaluate.simulation.predictor=llm needs an LLM (llm=openai or llm=hf)")
    rows, per_neuron = simulation_report(
        records, acts, store.clip_ids, captions, split, encoder, field=scfg["field"], shuffles=int(scfg["shuffles"]),
        seed=int(scfg["split_seed"]), exclude_described=bool(scfg["exclude_described"]),
        llm=llm if predictor == "llm" else None, llm_clips=int(scfg["llm_clips"]), llm_chunk=int(scfg["llm_chunk"]),
        max_neurons_per_layer=scfg.get("max_neurons_per_layer"))
    columns = ["layer", "predictor", "pearson", "spearman", "pearson_shuffled", "spearman_shuffled", "neurons",
               "score_clips"]
    result.files.update({f"simulation_{k}": v for k, v in write_table(
        rows, columns, out / "simulation", f"Simulation score ({predictor} predictor, held-out clips)").items()})
    result.images["simulation_pearson"] = real_vs_shuffled_plot(rows, "pearson", out / "simulation_pearson.png",
                                                                "Pearson r (held-out clips)")
    print(f"simulation ({predictor}): layer: Pearson Spearman | shuffled Pearson Spearman")
    for r in rows:
        print(f"  {r['layer']:<14} {_fmt(r['pearson'])} {_fmt(r['spearman'])} | "
              f"{_fmt(r['pearson_shuffled'])} {_fmt(r['spearman_shuffled'])}")
        for k in ("pearson", "spearman", "pearson_shuffled", "spearman_shuffled"):
            result.metrics[f"eval/sim/{r['layer']}/{k}"] = float(r[k])
    _merge_neuron_scores(result, per_neuron)


INTERPRETABILITY_PARTS = ("adjectives", "per_layer", "uninterpretable")


def interpretability_task(icfg: Mapping[str, Any], out: Path, layers: Sequence[str],
                          records: Sequence[Mapping[str, Any]], captions: Mapping[str, str], encoder: Any, seed: int,
                          result: EvaluateResult) -> None:
    """`icfg.parts` of: adjective distribution (Fig. 3), adjectives per layer with a linear fit and its slope
    p-value (Fig. 5), uninterpretable neurons per layer (Fig. 6)."""
    parts = list(icfg.get("parts") or INTERPRETABILITY_PARTS)
    unknown = [p for p in parts if p not in INTERPRETABILITY_PARTS]
    if unknown:
        raise ValueError(f"evaluate.interpretability.parts: unknown {unknown}; expected some of "
                         f"{list(INTERPRETABILITY_PARTS)}")
    if "adjectives" in parts:
        counts = adjective_counts(records, icfg["field"], icfg.get("merge") or {})
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: int(icfg["top_n"])]
        result.files.update({f"adjectives_{k}": v for k, v in write_table(
            [{"adjective": a, "neurons": n} for a, n in top], ["adjective", "neurons"], out / "adjectives",
            f"Top {icfg['top_n']} adjectives (neurons whose '{icfg['field']}' holds each)").items()})
        result.images["adjectives_top"] = adjective_bar_chart(counts, int(icfg["top_n"]), out / "adjectives_top.png")
        print(f"top adjectives (neurons): {', '.join(f'{a} ({n})' for a, n in top) or 'none'}")

    if "per_layer" in parts:
        stats = adjectives_per_layer(records, layers, icfg["field"])
        rows = [{"layer": k, "neurons": stats["counts"][k], "mean_adjectives": v} for k, v in stats["means"].items()]
        result.files.update({f"adjectives_per_layer_{k}": v for k, v in write_table(
            rows, ["layer", "neurons", "mean_adjectives"], out / "adjectives_per_layer",
            f"Adjectives per neuron (fit over neurons: slope {stats['slope']:.4f} per layer, "
            f"p = {stats['p_value']:.3g})").items()})
        result.images["adjectives_per_layer"] = adjectives_per_layer_plot(stats, out / "adjectives_per_layer.png")
        result.metrics.update({"eval/interp/adj_slope": stats["slope"], "eval/interp/adj_slope_p": stats["p_value"]})
        result.metrics.update({f"eval/interp/{k}/mean_adjectives": v for k, v in stats["means"].items()})
        print("adjectives per neuron: " + ", ".join(f"{k} {_fmt(v)}" for k, v in stats["means"].items())
              + f"; fit slope {stats['slope']:.4f} per layer (p = {stats['p_value']:.3g})")

    if "uninterpretable" in parts:
        clusters = cluster_captions(captions, encoder, int(icfg["clusters"]), seed)
        k_primes = [int(k) for k in icfg["k_primes"]]
        fractions = uninterpretable_fractions(records, clusters, layers, k_primes, int(icfg["k"]))
        urows = [{"layer": layer, **{f"k{kp}": v[kp] for kp in k_primes}} for layer, v in fractions.items()]
        result.files.update({f"uninterpretable_{k}": v for k, v in write_table(
            urows, ["layer", *[f"k{kp}" for kp in k_primes]], out / "uninterpretable",
            f"Uninterpretable neurons (share; {icfg['clusters']} K-means clusters of caption sentences, seed {seed}, "
            f"top-{icfg['k']} clips, no cluster shared by K' of them)").items()})
        result.images["uninterpretable"] = uninterpretable_plot(fractions, out / "uninterpretable.png")
        print("uninterpretable neurons: layer: " + " ".join(f"K'={kp}" for kp in k_primes))
        for layer, v in fractions.items():
            print(f"  {layer:<14} " + " ".join(f"{v[kp]:6.1%}" for kp in k_primes))
            for kp in k_primes:
                result.metrics[f"eval/interp/{layer}/uninterpretable_k{kp}"] = v[kp]


def pitch_task(pcfg: Mapping[str, Any], out: Path, encoder: Any, seed: int, result: EvaluateResult) -> None:
    """CREPE tiny / full last-layer accuracy against note-name concepts on generated tones."""
    from and_lightning.analysis.pitch import note_concepts, pitch_table
    from and_lightning.describe.captioners.acoustic import AcousticCaptioner
    from and_lightning.models.crepe import CrepeAdapter

    concepts = note_concepts(pcfg["low_note"], pcfg["high_note"])
    adapters = {f"crepe-{c}": CrepeAdapter(c, hop_length=int(pcfg["hop_length"])) for c in pcfg["capacities"]}
    sources = list(pcfg["p_sources"])
    rows = pitch_table(adapters, concepts, encoder, tones_per_note=int(pcfg["tones_per_note"]),
                       seconds=float(pcfg["seconds"]), seed=seed, detune_cents=float(pcfg["detune_cents"]),
                       p_sources=sources, captioner=AcousticCaptioner() if "captions" in sources else None,
                       similarities=list(pcfg["similarities"]), progress=print)
    columns = ["model", "method", "similarity", "top1", "top5", "cos", "semitone_mae", "within_1", "units", "note"]
    result.files.update({f"pitch_{k}": v for k, v in write_table(
        rows + paper_reference_rows(), columns, out / "pitch",
        f"CREPE last layer vs note names {concepts[0]}-{concepts[-1]} (paper Table 2 rows below)").items()})
    print("CREPE last layer: model / P source / similarity: top-1 %, top-5 %, cos, |semitone error|")
    for r in rows:
        tag = f"{r['model']}/{r['method']}/{r['similarity']}"
        print(f"  {tag:<40} {r['top1']:6.1f} {r['top5']:6.1f} {_fmt(r['cos'])} {r['semitone_mae']:6.2f}")
        for k in ("top1", "top5", "cos", "semitone_mae"):
            result.metrics[f"eval/pitch/{tag}/{k}"] = float(r[k])


def _merge_neuron_scores(result: EvaluateResult, per_neuron: Mapping[tuple[str, int], Mapping[str, Any]]) -> None:
    for key, scores in per_neuron.items():
        result.neuron_scores.setdefault(key, {}).update(scores)


# ---------------------------------------------------------------------------------------------- the stages
def evaluate_stage(ecfg: Mapping[str, Any] | DictConfig, out_dir: str | os.PathLike, *, store: Any = None,
                   records: Sequence[Mapping[str, Any]] | None = None, captions: Mapping[str, str] | None = None,
                   clips: Mapping[str, Any] | None = None, class_names: Sequence[str] | None = None,
                   concepts: Sequence[str] | None = None, head_layer: str | None = None, encoder: Any = None,
                   llm: Any = None, split_dir: str | os.PathLike | None = None,
                   audio_embed: Callable[[], Tensor] | None = None, model_name: str = "", seed: int = 0,
                   label_captions: bool = False) -> EvaluateResult:
    """Run `ecfg.tasks` and write their tables / plots under `out_dir`; returns metrics, files, images and the
    skipped tasks with their reasons (also written to `out_dir/evaluation.json`).

    store: ActivationStore; records: descriptions.jsonl rows; captions: clip id -> caption; clips: clip id ->
    ClipRecord; split_dir: where the simulation's explain/score split is kept (the dissection folder, so every
    evaluation of one dissection scores the same clips; default out_dir); audio_embed: () -> CLAP audio
    embeddings of store.clip_ids, for TAB (its concept side is `encoder`, the same CLAP model); label_captions:
    the captions name each clip's class (captioner=labels): every metric is marked as such.
    """
    if OmegaConf.is_config(ecfg):
        ecfg = OmegaConf.to_container(ecfg, resolve=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = out / "evaluation.json"  # the completion marker: removed first, written last
    if not done.is_file() and any(out.glob("*.csv")):
        log.warning("evaluate: %s holds tables of a run cut off before its end (no %s): redoing it", out, done.name)
    done.unlink(missing_ok=True)
    result = EvaluateResult()
    tasks = _tasks(ecfg)
    acts = LayerActs(store, list(store.layers)) if store is not None else None
    for task in tasks:
        try:
            if task == "last_layer":
                _need(task, store=store, captions=captions, records=records, class_names=class_names,
                      concepts=concepts, head_layer=head_layer, encoder=encoder)
                last_layer_task(ecfg["last_layer"], out, store, captions, records, class_names, concepts, head_layer,
                                encoder, llm, audio_embed, model_name, result,
                                NOT_COMPARABLE if label_captions else "")
            elif task == "ground_truth":
                _need(task, store=store, records=records, clips=clips)
                ground_truth_task(ecfg["ground_truth"], out, acts, records, [clips[c] for c in store.clip_ids], seed,
                                  result)
            elif task == "simulation":
                _need(task, store=store, records=records, captions=captions, encoder=encoder)
                simulation_task(ecfg["simulation"], out, Path(split_dir or out), acts, store, records, captions,
                                encoder, llm, result)
            elif task == "interpretability":
                _need(task, records=records, captions=captions, encoder=encoder)
                layers = list(store.layers) if store is not None else list(dict.fromkeys(r["layer"] for r in records))
                interpretability_task(ecfg["interpretability"], out, layers, records, captions, encoder, seed, result)
            elif task == "pitch":
                _need(task, encoder=encoder)
                pitch_task(ecfg["pitch"], out, encoder, seed, result)
        except TaskSkipped as e:
            log.warning("evaluate: task '%s' skipped: %s", task, e)
            result.skipped[task] = str(e)
    marks = {"captions": "labels", "note": NOT_COMPARABLE} if label_captions else {}
    write_json(done, {**marks, "metrics": result.metrics, "files": result.files, "images": result.images,
                      "skipped": result.skipped})
    return result


def html_report_stage(hcfg: Mapping[str, Any] | DictConfig, out_dir: str | os.PathLike,
                      records: Sequence[Mapping[str, Any]], clips: Mapping[str, Any], captions: Mapping[str, str],
                      sample_rate: int, clip_seconds: float, *, metrics: Mapping[str, Any] | None = None,
                      neuron_scores: Mapping[tuple[str, int], Mapping[str, Any]] | None = None,
                      title: str = "AND dissection") -> Path:
    """Write the static HTML report (`out_dir/index.html` + audio/ + spec/); returns the page's path."""
    if OmegaConf.is_config(hcfg):
        hcfg = OmegaConf.to_container(hcfg, resolve=True)
    return build_html_report(records, {cid: str(r.path) for cid, r in clips.items()}, captions, out_dir, sample_rate,
                             clip_seconds, title=title, audio_per_neuron=int(hcfg["audio_per_neuron"]),
                             max_neurons=hcfg.get("max_neurons"), max_per_layer=hcfg.get("max_per_layer"),
                             metrics=metrics, neuron_scores=neuron_scores)
