"""Detection score (EleutherAI Delphi's detection, for audio): from a unit's description and each held-out clip's
caption, a judge tells the clips that activate the unit from clips that do not. Needs no ground truth.

Per unit, a balanced sample of the held-out score clips it was not described from (`detection_sample`): positives
drawn evenly from the quantiles of its top `positive_fraction` clips by activation, as many negatives drawn at
random (or from the low-activation clips) below them. Judges:
- text (offline): cos(description, caption) of the text encoder, "yes" at a per-unit threshold calibrated on the
  explain clips (`calibrated_thresholds`: the best balanced accuracy on the same kind of sample drawn there);
- llm: a yes/no per clip from the configured LLM, in batches of `llm_chunk` captions (cached by the LLM client).
Reported per unit and per layer: AUPRC, F1 at the judge's threshold, recall per activation quantile, each against
the same scorer run on the descriptions shuffled among the layer's units.
"""
from __future__ import annotations

import logging
import math
import time
from functools import partial
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from and_lightning.analysis.judge_metrics import average_precision, best_threshold, f1_score, recall_per_quantile
from and_lightning.analysis.llm_clips import llm_per_clip, numbered_messages, parse_numbered
from and_lightning.analysis.plots import score_distribution_plot
from and_lightning.analysis.simulation import nanmean, text_predictions
from and_lightning.analysis.split import held_out_split, score_masks
from and_lightning.analysis.task import (EvalContext, ScorerResult, Task, TaskOutput, scored_layers, scorer_output,
    text_or_llm)

JUDGE_SCHEMA = {
    "title": "detection_judgements",
    "type": "object",
    "properties": {
        "judgements": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"clip": {"type": "integer"}, "fires": {"type": "boolean"}},
                "required": ["clip", "fires"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["judgements"],
    "additionalProperties": False,
}

log = logging.getLogger(__name__)


def detection_sample(acts: np.ndarray, allowed: np.ndarray, positive_fraction: float, quantiles: int,
                     per_quantile: int, negatives: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(indices, quantile) of one unit's balanced sample: up to `per_quantile` clips from each of `quantiles` equal
    bins of its top `positive_fraction` allowed clips by activation (quantile 0 = the top bin), and as many negatives
    (quantile -1) among the clips below every positive: at random, or the lowest `positive_fraction` (`low`).
    Clips tied with the positives' boundary are neither, so a constant unit has no sample."""
    pool = np.flatnonzero(allowed)
    pool = pool[np.argsort(-acts[pool], kind="stable")]
    n_top = int(math.ceil(positive_fraction * len(pool)))
    if n_top == 0 or n_top >= len(pool):
        return np.zeros(0, int), np.zeros(0, int)
    boundary = acts[pool[n_top - 1]]
    top = pool[:n_top][acts[pool[:n_top]] > acts[pool[n_top]]] if acts[pool[n_top]] == boundary else pool[:n_top]
    below = pool[acts[pool] < (acts[top].min() if len(top) else -np.inf)]
    if not len(top) or not len(below):
        return np.zeros(0, int), np.zeros(0, int)
    pos, quantile = [], []
    for q, part in enumerate(np.array_split(top, quantiles)):
        chosen = rng.choice(part, size=min(per_quantile, len(part)), replace=False)
        pos.extend(chosen.tolist())
        quantile.extend([q] * len(chosen))
    if negatives == "low":
        below = below[-max(n_top, len(pos)):]
    neg = rng.choice(below, size=min(len(pos), len(below)), replace=False)
    idx = np.array(pos + neg.tolist(), int)
    return idx, np.array(quantile + [-1] * len(neg), int)


def calibration_samples(acts_explain: np.ndarray, sample: Callable[..., Any],
                        rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per unit (column of acts_explain [n, M]), its sample of the explain clips the text judge is calibrated on
    (`sample(acts, allowed, rng)` -> (indices, quantile)); drawn once per layer, whichever descriptions are judged."""
    allowed = np.ones(acts_explain.shape[0], bool)
    return [sample(acts_explain[:, m], allowed, rng) for m in range(acts_explain.shape[1])]


def calibrated_thresholds(cos_explain: np.ndarray, samples: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """[M] the text judge's threshold per unit: `best_threshold` of cos_explain [M, n] on the unit's calibration
    sample (`calibration_samples`); NaN when it has no sample."""
    out = np.full(len(cos_explain), np.nan)
    for m, (idx, q) in enumerate(samples):
        if len(idx):
            out[m] = best_threshold(cos_explain[m, idx], q >= 0)
    return out


def calibration_subset(explain_ids: Sequence[str], n: int | None, seed: int) -> list[str]:
    """A seeded subset of `n` explain clips (in their order) to calibrate the text judge on; all when n is None."""
    if n is None or len(explain_ids) <= n:
        return list(explain_ids)
    keep = set(np.random.default_rng([seed, 11]).choice(len(explain_ids), n, replace=False).tolist())
    return [c for i, c in enumerate(explain_ids) if i in keep]


JUDGE_SYSTEM = (
    "You check explanations of units of an audio classifier. Given an explanation of what a unit responds to and "
    "numbered captions of audio clips, say for each clip whether the unit fires on it (true) or not (false). Reply "
    'with a JSON object {"judgements": [{"clip": <number>, "fires": <true|false>}, ...]} with one entry per clip.')


# (description, captions) -> chat messages asking whether the unit fires on each numbered caption (yes/no)
judge_messages = partial(numbered_messages, JUDGE_SYSTEM, "Unit explanation")
# (reply, n) -> 1.0 / 0.0 per clip; clips the reply leaves out (or numbers out of range) are NaN
parse_judgements = partial(parse_numbered, key="judgements", value=lambda item: 1.0 if item["fires"] else 0.0)


def llm_judgements(llm: Any, descriptions: Sequence[str], captions: Sequence[str],
                   samples: Sequence[np.ndarray], chunk: int) -> list[np.ndarray]:
    """Per unit, the LLM's 1/0 judgements of the captions at its sample's indices (`chunk` clips per request, all
    requests sent together through the client's batching and cache)."""
    return llm_per_clip(llm, descriptions, captions, samples, chunk, judge_messages, JUDGE_SCHEMA, parse_judgements)


def unit_scores(scores: np.ndarray, quantile: np.ndarray, threshold: float, quantiles: int) -> np.ndarray:
    """[3 + quantiles]: AUPRC, F1 at `threshold` ("yes" = score >= threshold), the positive share, recall per
    quantile; judgements that are NaN (an LLM reply that left a clip out) are dropped."""
    ok = np.isfinite(scores)
    s, q = scores[ok], quantile[ok]
    if not len(s) or not (q >= 0).any():
        return np.full(3 + quantiles, np.nan)
    yes = s >= threshold if np.isfinite(threshold) else np.zeros(len(s), bool)
    return np.concatenate([[average_precision(s, q >= 0), f1_score(yes, q >= 0), float((q >= 0).mean())],
                           recall_per_quantile(yes, q, quantiles)])


def detection_report(records: Sequence[Mapping[str, Any]], acts_by_layer: Mapping[str, np.ndarray],
                     clip_ids: Sequence[str], captions: Mapping[str, str], split: Mapping[str, Any], encoder: Any, *,
                     field: str = "description", positive_fraction: float = 0.2, quantiles: int = 4,
                     per_quantile: int = 5, negatives: str = "random", shuffles: int = 5, seed: int = 0,
                     exclude_described: bool = True, llm: Any = None, llm_chunk: int = 20,
                     max_neurons_per_layer: int | None = None, calibration_clips: int | None = 300,
                     ) -> ScorerResult:
    """Rows, per layer: mean over units of AUPRC, F1 and recall per quantile
    (`recall_q1` = the top quantile), real and with descriptions shuffled among the layer's units (mean over
    `shuffles` permutations; with an LLM, one). per_neuron[(layer, unit)] = {"det_auprc", "det_f1"};
    distributions[layer] = (real per-unit AUPRC, shuffled per-unit AUPRC) for the plot. The text judge is calibrated
    on a seeded subset of `calibration_clips` explain clips (None: all; their captions are embedded once)."""
    if negatives not in ("random", "low"):
        raise ValueError(f"evaluate.detection.negatives must be 'random' or 'low', got {negatives!r}")
    if not 0.0 < positive_fraction < 1.0 or quantiles < 1 or per_quantile < 1:
        raise ValueError("evaluate.detection: need 0 < positive_fraction < 1, quantiles >= 1, per_quantile >= 1; got "
                         f"{positive_fraction}, {quantiles}, {per_quantile}")
    row_of = {c: i for i, c in enumerate(clip_ids)}
    score_ids = [c for c in split["score"] if c in captions]
    explain_ids = calibration_subset([c for c in split["explain"] if c in captions], calibration_clips, seed)
    if len(score_ids) < 3:
        raise ValueError(f"detection needs captions of >= 3 score clips, found {len(score_ids)} "
                         "(caption every clip: describe.closed_set.method=db captions all of them)")

    def sample(acts: np.ndarray, allowed: np.ndarray, rng: np.random.Generator):
        return detection_sample(acts, allowed, positive_fraction, quantiles, per_quantile, negatives, rng)

    score_caps, explain_caps = [captions[c] for c in score_ids], [captions[c] for c in explain_ids]
    rows, per_neuron, dists = [], {}, {}
    for li, layer, acts, recs in scored_layers(records, acts_by_layer, max_neurons_per_layer):
        started = time.perf_counter()
        units = [r["unit"] for r in recs]
        acts = np.asarray(acts, np.float64)[:, units]
        actual = acts[[row_of[c] for c in score_ids]]
        masks = score_masks(recs, score_ids, exclude_described)
        descs = [str(r.get(field) or "") for r in recs]
        rng = np.random.default_rng([seed, li])
        samples = [sample(actual[:, m], masks[m], rng) for m in range(len(recs))]
        perms = [rng.permutation(len(recs)) for _ in range(1 if llm is not None else shuffles)]
        if llm is None:
            cos = text_predictions(descs, score_caps + explain_caps, encoder)
            cos_score, cos_explain = cos[:, :len(score_ids)], cos[:, len(score_ids):]
            explain = calibration_samples(acts[[row_of[c] for c in explain_ids]], sample,
                                          np.random.default_rng([seed, li, 1]))
            runs = []
            for order in [np.arange(len(recs)), *perms]:
                thresholds = calibrated_thresholds(cos_explain[order], explain)
                runs.append(np.array([unit_scores(cos_score[order[m], idx], q, thresholds[m], quantiles)
                                      for m, (idx, q) in enumerate(samples)]))
        else:
            runs = []
            for order in [np.arange(len(recs)), *perms]:
                judged = llm_judgements(llm, [descs[i] for i in order], score_caps, [s[0] for s in samples], llm_chunk)
                runs.append(np.array([unit_scores(j, q, 0.5, quantiles) for j, (_, q) in zip(judged, samples)]))
        real, shuffled = runs[0], runs[1:]
        row = {"layer": layer, "judge": "llm" if llm is not None else "text",
               "auprc": nanmean(real[:, 0]), "auprc_shuffled": nanmean([nanmean(s[:, 0]) for s in shuffled]),
               "f1": nanmean(real[:, 1]), "f1_shuffled": nanmean([nanmean(s[:, 1]) for s in shuffled]),
               "positive_share": nanmean(real[:, 2])}
        for k in range(quantiles):
            row[f"recall_q{k + 1}"] = nanmean(real[:, 3 + k])
            row[f"recall_q{k + 1}_shuffled"] = nanmean([nanmean(s[:, 3 + k]) for s in shuffled])
        row.update(neurons=len(recs), scored=int(np.isfinite(real[:, 0]).sum()),
                   clips_per_unit=float(np.mean([len(s[0]) for s in samples])))
        log.info("detection: layer %s, %.3f s per unit (timings are logged, not tabled: tables are deterministic)",
                 layer, (time.perf_counter() - started) / len(recs))
        rows.append(row)
        per_neuron.update({(layer, u): {"det_auprc": float(r[0]), "det_f1": float(r[1])} for u, r in zip(units, real)})
        dists[layer] = (real[:, 0], np.concatenate([s[:, 0] for s in shuffled]))
    return ScorerResult(rows, per_neuron, dists)


class Detection(Task):
    """Detection score (`detection_report`) on the shared held-out split, `judge` text (offline) or llm."""

    needs = ("store", "records", "captions", "encoder")

    def run(self, ctx: EvalContext) -> TaskOutput:
        s = self.settings
        text_or_llm("evaluate.detection.judge", s["judge"], ctx.llm)
        split, split_path, seed, exclude = held_out_split(ctx.split_dir, ctx.store.clip_ids, s.get("split"))
        result = detection_report(
            ctx.records, ctx.acts(), ctx.store.clip_ids, ctx.captions, split, ctx.encoder, field=s["field"],
            positive_fraction=s["positive_fraction"], quantiles=s["quantiles"], per_quantile=s["per_quantile"],
            negatives=s["negatives"], shuffles=s["shuffles"], seed=seed, exclude_described=exclude,
            llm=ctx.llm if s["judge"] == "llm" else None, llm_chunk=s["llm_chunk"],
            max_neurons_per_layer=s["max_neurons_per_layer"], calibration_clips=s["calibration_clips"])
        recall = [f"recall_q{k + 1}{x}" for k in range(s["quantiles"]) for x in ("", "_shuffled")]
        columns = ["layer", "judge", "auprc", "auprc_shuffled", "f1", "f1_shuffled", "positive_share", *recall,
                   "neurons", "scored", "clips_per_unit"]
        title = f"Detection score ({s['judge']} judge, held-out clips; AUPRC chance = positive_share)"
        plots = {"detection_auprc": score_distribution_plot(result.distributions, "per-unit detection AUPRC")}
        return scorer_output("detection", result, columns, title, plots, "det",
                             ("auprc", "auprc_shuffled", "f1", "f1_shuffled"), split_path)
