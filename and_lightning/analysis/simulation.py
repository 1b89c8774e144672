"""Simulation score: predict a neuron's activation on held-out clips from its description alone, then
correlate the prediction with the real activation (Pearson and Spearman), per layer, against the same
descriptions shuffled among the layer's neurons.

Held out: the one explain/score split of analysis/split.py (shared with detection and intervention); a neuron is
scored on the score clips that were NOT among the top-k / bottom-k clips its description was written from.
Predictors:
- offline (`text_predictions`): cosine of the text embeddings of the description and each clip's caption;
- LLM (`llm_predictions`): a 0-10 rating of each clip's caption given the description, as a JSON reply.
"""
from __future__ import annotations

import math
from itertools import chain
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from and_lightning.analysis.judge_metrics import pearson, spearman
from and_lightning.analysis.llm_clips import llm_per_clip, numbered_messages, parse_numbered
from and_lightning.analysis.plots import real_vs_shuffled_plot
from and_lightning.analysis.split import held_out_split, score_masks
from and_lightning.analysis.task import (EvalContext, ScorerResult, Task, TaskOutput, scored_layers, scorer_output,
    text_or_llm)
from and_lightning.store.activations import top_clip_index

RATING_SCHEMA = {
    "title": "simulated_activations",
    "type": "object",
    "properties": {
        "ratings": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"clip": {"type": "integer"}, "rating": {"type": "integer", "minimum": 0, "maximum": 10}},
                "required": ["clip", "rating"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["ratings"],
    "additionalProperties": False,
}


# ---------------------------------------------------------------------------------------------- correlation
def _masked_pearson_rows(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of x, y [M, n] over the entries where w [M, n] is True (NaN if degenerate)."""
    n = w.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        dx = np.where(w, x - np.where(w, x, 0).sum(axis=1, keepdims=True) / n, 0.0)
        dy = np.where(w, y - np.where(w, y, 0).sum(axis=1, keepdims=True) / n, 0.0)
        den = np.sqrt((dx * dx).sum(axis=1) * (dy * dy).sum(axis=1))
        r = (dx * dy).sum(axis=1) / den
    r[(den <= 0) | (n[:, 0] < 2)] = np.nan
    return r


def correlations_of_many(predictions: Iterable[np.ndarray], actual: np.ndarray, masks: np.ndarray) -> list[np.ndarray]:
    """Per prediction [M, n] (e.g. the real and the shuffled ones), [M, 2] (pearson, spearman) against actual [n, M]
    over each neuron's mask [M, n], vectorised over neurons; the activations' ranks are computed once (masked
    entries are ranked last, so they never shift the kept entries' ranks)."""
    y = np.asarray(actual, np.float64).T
    w = np.asarray(masks, bool)
    ry = rankdata(np.where(w, y, np.inf), axis=1)
    out = []
    for predicted in predictions:
        x = np.asarray(predicted, np.float64)
        rx = rankdata(np.where(w, x, np.inf), axis=1)
        out.append(np.stack([_masked_pearson_rows(x, y, w), _masked_pearson_rows(rx, ry, w)], axis=1))
    return out


# ------------------------------------------------------------------------------------------------ predictors
def text_predictions(descriptions: Sequence[str], captions: Sequence[str], encoder: Any) -> np.ndarray:
    """[M, n] cosine of each description's and each caption's text embedding (the offline simulator)."""
    d = F.normalize(encoder.encode([t or " " for t in descriptions]).float(), dim=-1)
    c = F.normalize(encoder.encode([t or " " for t in captions]).float(), dim=-1)
    return (d @ c.T).numpy()


RATING_SYSTEM = (
    "You simulate one neuron of an audio classifier. Given an explanation of what the neuron responds to and "
    "numbered captions of audio clips, predict how strongly the neuron activates on each clip, from 0 (not at all) "
    'to 10 (as strongly as it ever does). Reply with a JSON object {"ratings": [{"clip": <number>, "rating": '
    "<0-10>}, ...]} with one entry per clip.")


def rating_messages(description: str, captions: Sequence[str]) -> list[dict]:
    """Chat messages asking for a 0-10 activation rating of every numbered caption given a description."""
    return numbered_messages(RATING_SYSTEM, "Neuron explanation", description, captions)


def parse_ratings(reply: Any, n: int) -> np.ndarray:
    """Ratings [n] from a structured reply; clips the reply leaves out (or numbers out of range) are NaN."""
    return parse_numbered(reply, n, "ratings", lambda item: float(item["rating"]))


def llm_clip_choice(actual: np.ndarray, allowed: np.ndarray, n_clips: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the clips one neuron is rated on: its n_clips // 2 most-activating allowed clips plus
    random other allowed clips (as automated-interpretability's top-and-random scoring), shuffled."""
    pool = np.flatnonzero(allowed)
    n = min(n_clips, len(pool))
    top = pool[top_clip_index(torch.from_numpy(actual[pool, None]), n // 2)[:, 0].numpy()]
    rest = np.setdiff1d(pool, top)
    chosen = np.concatenate([top, rng.choice(rest, size=n - len(top), replace=False)])
    return rng.permutation(chosen)


def llm_predictions(llm: Any, descriptions: Sequence[str], captions: Sequence[str],
                    choices: Sequence[np.ndarray], chunk: int = 20) -> list[np.ndarray]:
    """Per neuron, the LLM's ratings of the captions at its chosen indices (one request per `chunk` clips)."""
    return llm_per_clip(llm, descriptions, captions, choices, chunk, rating_messages, RATING_SCHEMA, parse_ratings)


# ---------------------------------------------------------------------------------------------- the report
def nanmean(x: Any) -> float:
    """Mean of the finite values; NaN when there are none."""
    x = np.asarray(x, np.float64)
    finite = x[np.isfinite(x)]
    return float(finite.mean()) if finite.size else math.nan


def simulation_report(records: Sequence[Mapping[str, Any]], acts_by_layer: Mapping[str, np.ndarray],
                      clip_ids: Sequence[str], captions: Mapping[str, str], split: Mapping[str, Any], encoder: Any,
                      *, field: str = "description", shuffles: int = 5, seed: int = 0,
                      exclude_described: bool = True, llm: Any = None, llm_clips: int = 20, llm_chunk: int = 20,
                      max_neurons_per_layer: int | None = None) -> ScorerResult:
    """Rows, per layer: mean over neurons of Pearson / Spearman (prediction vs activation on held-out score
    clips), and the same with descriptions shuffled among the layer's neurons (mean over `shuffles` permutations;
    with an LLM, one permutation). per_neuron[(layer, unit)] = {"sim_pearson", "sim_spearman"};
    distributions[layer] = (real, shuffled) per-unit Pearson r. `acts_by_layer[layer]` is [N, M] in `clip_ids` order; `max_neurons_per_layer` keeps the
    first units of each layer (a cost cap for LLM scoring)."""
    row_of = {c: i for i, c in enumerate(clip_ids)}
    score_ids = [c for c in split["score"] if c in captions]
    if len(score_ids) < 3:
        raise ValueError(f"simulation needs captions of >= 3 score clips, found {len(score_ids)} "
                         "(caption every clip: describe.closed_set.method=db captions all of them)")
    rows_idx = np.array([row_of[c] for c in score_ids])
    cap_texts = [captions[c] for c in score_ids]
    rows, per_neuron, dists = [], {}, {}
    for li, layer, acts, recs in scored_layers(records, acts_by_layer, max_neurons_per_layer):
        units = [r["unit"] for r in recs]
        actual = np.asarray(acts, np.float64)[rows_idx][:, units]  # [n, M]
        masks = score_masks(recs, score_ids, exclude_described)
        descs = [str(r.get(field) or "") for r in recs]
        rng = np.random.default_rng([seed, li])
        perms = [rng.permutation(len(recs)) for _ in range(1 if llm is not None else shuffles)]
        if llm is None:
            pred = text_predictions(descs, cap_texts, encoder)
            real, *shuffled = correlations_of_many(chain([pred], (pred[p] for p in perms)), actual, masks)
        else:
            choices = [llm_clip_choice(actual[:, m], masks[m], llm_clips, rng) for m in range(len(recs))]
            real = _llm_correlations(llm, descs, cap_texts, choices, actual, llm_chunk)
            shuffled = [_llm_correlations(llm, [descs[i] for i in p], cap_texts, choices, actual, llm_chunk)
                        for p in perms]
        rows.append({"layer": layer, "predictor": "llm" if llm is not None else "text",
                     "pearson": nanmean(real[:, 0]), "spearman": nanmean(real[:, 1]),
                     "pearson_shuffled": nanmean([nanmean(c[:, 0]) for c in shuffled]),
                     "spearman_shuffled": nanmean([nanmean(c[:, 1]) for c in shuffled]),
                     "neurons": len(recs), "score_clips": float(masks.sum(axis=1).mean())})
        per_neuron.update({(layer, u): {"sim_pearson": float(c[0]), "sim_spearman": float(c[1])}
                           for u, c in zip(units, real)})
        dists[layer] = (real[:, 0], np.concatenate([c[:, 0] for c in shuffled]))
    return ScorerResult(rows, per_neuron, dists)


def _llm_correlations(llm: Any, descs: Sequence[str], captions: Sequence[str], choices: Sequence[np.ndarray],
                      actual: np.ndarray, chunk: int) -> np.ndarray:
    ratings = llm_predictions(llm, descs, captions, choices, chunk)
    out = np.full((len(descs), 2), np.nan)
    for m, (idx, r) in enumerate(zip(choices, ratings)):
        ok = np.isfinite(r)
        out[m] = pearson(r[ok], actual[idx[ok], m]), spearman(r[ok], actual[idx[ok], m])
    return out


class Simulation(Task):
    """Simulation score on the held-out score clips of the shared split (analysis/split.py), against
    shuffled descriptions (`simulation_report`); `predictor`: text (offline) or llm (0-10 ratings)."""

    needs = ("store", "records", "captions", "encoder")

    def run(self, ctx: EvalContext) -> TaskOutput:
        s = self.settings
        text_or_llm("evaluate.simulation.predictor", s["predictor"], ctx.llm)
        split, split_path, seed, exclude = held_out_split(ctx.split_dir, ctx.store.clip_ids, s.get("split"))
        result = simulation_report(
            ctx.records, ctx.acts(), ctx.store.clip_ids, ctx.captions, split, ctx.encoder, field=s["field"],
            shuffles=s["shuffles"], seed=seed, exclude_described=exclude,
            llm=ctx.llm if s["predictor"] == "llm" else None, llm_clips=s["llm_clips"], llm_chunk=s["llm_chunk"],
            max_neurons_per_layer=s["max_neurons_per_layer"])
        columns = ["layer", "predictor", "pearson", "spearman", "pearson_shuffled", "spearman_shuffled", "neurons",
                   "score_clips"]
        title = f"Simulation score ({s['predictor']} predictor, held-out clips)"
        out = scorer_output(
            "simulation", result, columns, title,
            {"simulation_pearson": real_vs_shuffled_plot(result.rows, "pearson", "Pearson r (held-out clips)")},
            "sim", ("pearson", "spearman", "pearson_shuffled", "spearman_shuffled"), split_path)
        out.files["simulation_split"] = str(split_path)
        return out
