"""Last-layer dissection accuracy (paper Table 2): does each output unit's top concept name its own class?

`last_layer_accuracy` is the one computation of top-1 / top-5 / cos: of the concepts describe stored for the head
(dissection.py) and of every Module A method x similarity function recomputed from activations (`similarity_rows`,
the `LastLayer` evaluate task and the CREPE pitch task). For each output unit with a ground-truth concept (its class
name, or for CREPE its pitch), S = sim(P, A) is computed once per (method, similarity, faithful) over all probing
clips; a unit is a top-k hit when its gt concept is among its k best concepts, and "cos" is the mean cosine of the
text embeddings of the gt and the top-1 concept (spec §5.5). ICL gives one concept per unit, so it has top-1 and
cos but no top-5.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from and_lightning.analysis.task import EvalContext, ScorerResult, Table, Task, TaskOutput, TaskSkipped
from and_lightning.describe.captioners.labels import NOT_COMPARABLE
from and_lightning.describe.closed_set import (
    TextEncoderLike, concept_cosine, db_probs, icl_request, parse_icl_reply, scores_from_p, tab_scores_matrix,
    top_concepts,
)
from and_lightning.describe.similarity import TooFewClipsError

SIMILARITY_NAMES = ("cos", "cos_cubed", "wpmi", "soft_wpmi", "rank_reorder")

# Paper Table 2 (percent, percent, cosine), read off the repository's image (spec §9.1).
PAPER_TABLE2: dict[str, dict[str, tuple[float, float, float]]] = {
    "AST": {"icl": (72.0, 60.0, 0.83), "tab": (96.0, 100.0, 0.98), "db": (100.0, 100.0, 1.00)},
    "BEATs-ft": {"icl": (52.0, 56.0, 0.68), "tab": (74.0, 92.0, 0.82), "db": (76.0, 100.0, 0.83)},
    "BEATs-frozen": {"icl": (16.0, 16.0, 0.37), "tab": (46.0, 72.0, 0.60), "db": (58.0, 82.0, 0.69)},
}
# AST, every similarity (the Table-7 notebook re-run, spec §9.1); the TAB cos column there is the buggy one.
PAPER_AST_SIMILARITIES: dict[tuple[str, str], tuple[float, float, float]] = {
    ("db", "cos"): (80.0, 82.0, 0.849), ("db", "cos_cubed"): (100.0, 100.0, 1.000),
    ("db", "rank_reorder"): (86.0, 100.0, 0.933), ("db", "wpmi"): (88.0, 100.0, 0.947),
    ("db", "soft_wpmi"): (2.0, 10.0, 0.236),
    ("tab", "cos"): (2.0, 16.0, 0.286), ("tab", "cos_cubed"): (92.0, 98.0, 0.784),
    ("tab", "rank_reorder"): (84.0, 92.0, 0.779), ("tab", "wpmi"): (96.0, 100.0, 0.793),
    ("tab", "soft_wpmi"): (96.0, 98.0, 0.734),
}


@dataclass(frozen=True)
class ConceptScores:
    """P [N, C] of one Module A method: DB's caption-concept probabilities or TAB's CLAP cosines."""

    P: Tensor
    p_is_prob: bool


def unit_ground_truth(num_units: int, class_names: Sequence[str], concepts: Sequence[str]) -> list[str | None]:
    """Unit u's gt concept: class_names[u] when it is a concept, else None (left out of the metrics)."""
    known = set(concepts)
    return [class_names[u] if u < len(class_names) and class_names[u] in known else None for u in range(num_units)]


def last_layer_accuracy(ranked: Sequence[Sequence[str]], unit_gt: Sequence[str | None], encoder: TextEncoderLike,
                        extra: Callable[[list[str], list[str]], Mapping[str, float]] | None = None,
                        n_concepts: int | None = None) -> dict[str, float]:
    """top1 / top5 (percent) and cos over the units with a gt (unit u's ranked concepts: ranked[u]). top5 is NaN
    when a unit has fewer than min(5, n_concepts) ranked concepts (ICL's single answer); with fewer than 5
    concepts it is over all."""
    rows = [(r, g) for r, g in zip(ranked, unit_gt) if g is not None]
    if not rows:
        raise ValueError("no unit has a ground-truth concept: are the class names in the concept set?")
    top1 = [r[0] for r, _ in rows]
    gts = [g for _, g in rows]
    out = {
        "top1": 100.0 * sum(p == g for p, g in zip(top1, gts)) / len(rows),
        "top5": 100.0 * sum(g in r[:5] for r, g in rows) / len(rows)
        if all(len(r) >= min(5, n_concepts or 5) for r, _ in rows) else math.nan,
        "cos": concept_cosine(top1, gts, encoder),
        "units": len(rows),
    }
    if extra is not None:
        out.update(extra(top1, gts))
    return out


def unit_hits(ranked: Sequence[Sequence[str]], unit_gt: Sequence[str | None], layer: str, key: str,
              ) -> dict[tuple[str, int], dict[str, float]]:
    """Per-unit scores of a Table-2 row: {(layer, u): {key: 1.0 when unit u's top concept is its gt, else 0.0}}
    for the units with a gt (ranked[u]: unit u's concepts, best first)."""
    return {(layer, u): {key: float(bool(r) and r[0] == g)} for u, (r, g) in enumerate(zip(ranked, unit_gt))
            if g is not None}


def metric_tag(method: str, similarity: str, faithful: bool) -> str:
    """A Table-2 row's name in metrics (`eval/last_layer/<tag>/top1`) and per-unit scores (`ll/<tag>/top1`)."""
    return f"{method}/{similarity}" + ("/faithful" if faithful else "")


def similarity_rows(acts: Tensor, unit_gt: Sequence[str | None], concepts: Sequence[str],
                    scores: Mapping[str, ConceptScores], encoder: TextEncoderLike,
                    similarities: Sequence[str] = SIMILARITY_NAMES, faithful: Sequence[bool] = (False,),
                    extra: Callable[[list[str], list[str]], Mapping[str, float]] | None = None,
                    params: Mapping[str, Mapping[str, Any]] | None = None, layer: str = "") -> ScorerResult:
    """One row per (method in `scores`, similarity, faithful flag): top1, top5, cos over the units with a gt;
    per_neuron[(layer, u)]["ll/<method>/<similarity>[/faithful]/top1"]: unit u's top-1 hit (`unit_hits`).

    `acts` [N, M] are the output layer's activations on the N clips of P; `params` maps a similarity name to
    keyword overrides (e.g. {"rank_reorder": {"top_fraction": 0.1}}). `faithful=True` changes only wpmi,
    soft_wpmi and rank_reorder, so cos / cos_cubed get no faithful row.
    """
    acts = acts.float()
    if acts.shape[1] != len(unit_gt):
        raise ValueError(f"unit_gt has {len(unit_gt)} entries for {acts.shape[1]} units")
    rows: list[dict[str, Any]] = []
    per_neuron: dict[tuple[str, int], dict[str, Any]] = {}
    for method, cs in scores.items():
        for sim in similarities:
            for flag in faithful:
                if flag and sim in ("cos", "cos_cubed"):
                    continue
                try:
                    S = scores_from_p(acts, cs.P, sim, p_is_prob=cs.p_is_prob, faithful=flag,
                                      **dict((params or {}).get(sim, {})))
                except TooFewClipsError as e:  # a small probing set: say so in the table, keep the other rows
                    rows.append({**skipped_row(method, str(e)), "similarity": sim, "faithful": bool(flag)})
                    continue
                ranked = [[c for c, _ in r] for r in top_concepts(S, concepts, k=5, faithful=flag)]
                acc = last_layer_accuracy(ranked, unit_gt, encoder, extra, n_concepts=len(concepts))
                rows.append({"method": method, "similarity": sim, "faithful": bool(flag), **acc, "note": ""})
                for key, hit in unit_hits(ranked, unit_gt, layer, f"ll/{metric_tag(method, sim, flag)}/top1").items():
                    per_neuron.setdefault(key, {}).update(hit)
    return ScorerResult(rows, per_neuron, {})


def icl_row(ctx: EvalContext, unit_gt: Sequence[str | None]) -> ScorerResult:
    """ICL's row: the LLM names one concept per unit from its summary_high (top-5 is n/a: the original ran a
    separate top-5 prompt); units whose reply is unusable are left out and counted in the note; per-unit
    `ll/icl/-/top1` of the units with a usable reply."""
    if ctx.llm is None:
        return ScorerResult([skipped_row("icl", "no LLM configured (llm=none)")], {}, {})
    head = {r["unit"]: r for r in ctx.records if r["layer"] == ctx.head_layer}
    concepts = list(ctx.concepts)
    replies = ctx.llm.complete_many([icl_request(str(head[u]["summary_high"]), concepts) for u in range(len(unit_gt))])
    picks = [parse_icl_reply(r, concepts, ctx.encoder) for r in replies]
    unusable = [p for p, g in zip(picks, unit_gt) if p.concept is None and g is not None]
    usable_gt = [g if p.concept is not None else None for p, g in zip(picks, unit_gt)]
    if not any(usable_gt):
        return ScorerResult([skipped_row("icl", f"no usable LLM reply ({unusable[0].reason})" if unusable
                                         else "no output class of the model is in the concept set")], {}, {})
    ranked = [[p.concept or ""] for p in picks]
    acc = last_layer_accuracy(ranked, usable_gt, ctx.encoder)
    paths = Counter(p.path for p in picks)
    note = "one LLM answer per unit; reply parse paths: " + ", ".join(f"{k} {v}" for k, v in sorted(paths.items()))
    if unusable:
        note += f"; {len(unusable)} units skipped, unusable reply (first: {unusable[0].reason})"
    row = {"method": "icl", "similarity": "-", "faithful": False, **acc, "note": note}
    return ScorerResult([row], unit_hits(ranked, usable_gt, ctx.head_layer, f"ll/{metric_tag('icl', '-', False)}/top1"),
                        {})


def skipped_row(method: str, reason: str) -> dict[str, Any]:
    """A row that says why a method was not run (no CLAP weights, no LLM, ...)."""
    return {"method": method, "similarity": "-", "faithful": False, "top1": math.nan, "top5": math.nan,
            "cos": math.nan, "units": math.nan, "note": f"skipped: {reason}"}


def with_paper_columns(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows with the paper's AST numbers for the same method and similarity beside ours (Table 2 / Table 7).
    The paper's DB wpmi / soft_wpmi numbers come from the original's double softmax: such rows say so."""
    out = []
    for r in rows:
        ref = PAPER_AST_SIMILARITIES.get((r["method"], r["similarity"]))
        if ref is None and r["method"] == "icl":
            ref = PAPER_TABLE2["AST"]["icl"]
        row = {**r, "paper_ast_top1": ref[0] if ref else math.nan, "paper_ast_top5": ref[1] if ref else math.nan,
               "paper_ast_cos": ref[2] if ref else math.nan}
        if (r["method"], r["similarity"]) in (("db", "wpmi"), ("db", "soft_wpmi")) and not r.get("faithful"):
            row["note"] = (r.get("note") or "") + "paper value: double softmax (the faithful row)"
        out.append(row)
    return out


def paper_reference_rows() -> list[dict[str, Any]]:
    """Paper Table 2 as rows of the same table (model = the paper's model)."""
    return [{"model": f"{model} (paper)", "method": method, "similarity": "cos_cubed" if method == "db"
             else "soft_wpmi" if method == "tab" else "-", "faithful": True, "top1": v[0], "top5": v[1], "cos": v[2],
             "units": 50.0, "note": "paper Table 2"}
            for model, methods in PAPER_TABLE2.items() for method, v in methods.items()]


class LastLayer(Task):
    """Paper Table 2 for the output layer: every method in `methods` (db, tab, icl) x similarity (x faithful flag),
    next to the paper's AST numbers; with captions that name the classes (captioner=labels) every measured row
    says so. DB's P = softmax(scale * cos(caption, concept))."""

    needs = ("store", "captions", "records", "class_names", "concepts", "head_layer", "encoder")

    def run(self, ctx: EvalContext) -> TaskOutput:
        unknown = [m for m in self.settings["methods"] if m not in ("db", "tab", "icl")]
        if unknown:
            raise ValueError(f"evaluate.last_layer.methods: unknown method(s) {unknown} (expected db, tab, icl)")
        store, head, concepts, encoder = ctx.store, ctx.head_layer, list(ctx.concepts), ctx.encoder
        if head not in store.layers:
            raise TaskSkipped(f"the output layer '{head}' was not dissected (layers: {', '.join(store.layers)}); "
                              "add it to layers= for Table 2")
        acts = torch.tensor(np.asarray(store.acts(head), np.float32))
        unit_gt = unit_ground_truth(acts.shape[1], ctx.class_names, concepts)
        if not any(unit_gt):
            raise TaskSkipped("no output class of the model is in the concept set")
        scores: dict[str, ConceptScores] = {}
        rows: list[dict[str, Any]] = []
        per_neuron: dict[tuple[str, int], dict[str, Any]] = {}
        missing = [c for c in store.clip_ids if c not in ctx.captions]
        for method in self.settings["methods"]:
            if method == "icl":
                icl = icl_row(ctx, unit_gt)
                rows += icl.rows
                per_neuron.update(icl.per_neuron)
            elif method == "db" and missing:
                rows.append(skipped_row("db", f"{len(missing)} clips have no caption (DB needs every clip's)"))
            elif method == "db":
                P = db_probs(encoder.encode([ctx.captions[c] for c in store.clip_ids]), encoder.encode(concepts),
                             self.settings["scale"])
                scores["db"] = ConceptScores(P, True)
            elif ctx.audio_embed is None:
                rows.append(skipped_row("tab", "no CLAP audio side in the text encoder (TAB needs text_encoder=clap)"))
            else:
                scores["tab"] = ConceptScores(tab_scores_matrix(ctx.audio_embed(), encoder.encode(concepts)), False)
        matched = similarity_rows(acts, unit_gt, concepts, scores, encoder, self.settings["similarities"],
                                  self.settings["faithful"], layer=head)
        rows[:0] = matched.rows
        for key, hits in matched.per_neuron.items():
            per_neuron.setdefault(key, {}).update(hits)
        note = NOT_COMPARABLE if ctx.label_captions else ""
        rows = with_paper_columns([{"model": ctx.model_name, **r} for r in rows])
        metrics = {}
        for r in (r for r in rows if not r["note"].startswith("skipped")):
            r["note"] = "; ".join(filter(None, [r["note"], note]))
            tag = metric_tag(r["method"], r["similarity"], r["faithful"])
            metrics.update({f"eval/last_layer/{tag}/{k}": float(r[k]) for k in ("top1", "top5", "cos")})
        title = f"Last-layer dissection accuracy ({ctx.model_name}, layer {head})" + (f" - {note}" if note else "")
        columns = ["model", "method", "similarity", "faithful", "top1", "top5", "cos", "units", "note",
                   "paper_ast_top1", "paper_ast_top5", "paper_ast_cos"]
        return TaskOutput(tables=[Table("last_layer", rows, columns, title)], metrics=metrics,
                          neuron_scores=per_neuron)
