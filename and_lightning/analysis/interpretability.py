"""Interpretability statistics of a dissection (spec §9.3-9.5).

- adjective distribution: in how many neurons' acoustic-adjective lists each adjective appears (Fig. 3/9);
- adjectives per neuron per layer with a least-squares line over PER-NEURON counts and its slope's
  two-sided t-test p-value (scipy.stats.linregress; Fig. 5's p-values were not in the released code);
- uninterpretable neurons: caption sentences are embedded and clustered with K-means (fixed seed, unlike
  the original); a neuron is uninterpretable when no cluster is shared by at least K' of its top-K clips.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy.stats import linregress
from sklearn.cluster import KMeans

from and_lightning.analysis.plots import adjective_bar_chart, adjectives_per_layer_plot, uninterpretable_plot
from and_lightning.analysis.task import EvalContext, Table, Task, TaskOutput, records_by_layer
from and_lightning.describe.sentences import is_junk_sentence, split_sentences


# ------------------------------------------------------------------------------------ adjective distribution
def adjective_counts(records: Iterable[Mapping[str, Any]], field: str = "adjectives",
                     merge: Mapping[str, str] | None = None) -> Counter:
    """Number of neurons whose `field` list contains each adjective (counted once per neuron). `merge` maps
    an adjective onto another before counting (the original's plots merged high -> high-quality)."""
    merge = dict(merge or {})
    counts: Counter = Counter()
    for r in records:
        counts.update({merge.get(a, a) for a in r.get(field, [])})
    return counts


# ------------------------------------------------------------------------------------ adjectives per layer
def adjectives_per_layer(records: Sequence[Mapping[str, Any]], layers: Sequence[str],
                         field: str = "adjectives") -> dict[str, Any]:
    """Mean adjectives per neuron in each layer, and a linear fit count ~ layer position (0, 1, ...) over
    the per-neuron counts: slope, intercept, r, p-value of the slope, its standard error."""
    position = {layer: i for i, layer in enumerate(layers)}
    xs, ys = [], []
    per_layer: dict[str, list[int]] = {layer: [] for layer in layers}
    for r in records:
        if r["layer"] in position:
            n = len(r.get(field, []))
            per_layer[r["layer"]].append(n)
            xs.append(position[r["layer"]])
            ys.append(n)
    means = {layer: float(np.mean(v)) if v else math.nan for layer, v in per_layer.items()}
    fit = {"slope": math.nan, "intercept": math.nan, "r": math.nan, "p_value": math.nan, "stderr": math.nan}
    if len(set(xs)) >= 2:
        res = linregress(np.asarray(xs, float), np.asarray(ys, float))
        fit = {"slope": float(res.slope), "intercept": float(res.intercept), "r": float(res.rvalue),
               "p_value": float(res.pvalue), "stderr": float(res.stderr)}
    return {"means": means, "counts": {k: len(v) for k, v in per_layer.items()}, **fit}


# ------------------------------------------------------------------------------------ uninterpretable neurons
def caption_sentences(captions: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(clip id per sentence, sentence): every caption split into sentences, junk (LLM chatter) dropped."""
    owners, sentences = [], []
    for cid, text in captions.items():
        for s in split_sentences(text):
            if s.strip() and not is_junk_sentence(s):
                owners.append(cid)
                sentences.append(s.strip())
    return owners, sentences


def kmeans_labels(embeddings: np.ndarray, n_clusters: int, seed: int, n_init: int = 10) -> np.ndarray:
    """K-means cluster id of each row, reproducible for a given seed (sklearn, k-means++ init). K is capped
    at the number of distinct rows."""
    X = np.asarray(embeddings, np.float64)
    k = min(int(n_clusters), len(np.unique(X, axis=0)))
    if k < 1:
        raise ValueError("k-means needs at least one embedding")
    return KMeans(n_clusters=k, random_state=int(seed), n_init=n_init).fit_predict(X)


def clip_clusters(owners: Sequence[str], labels: Sequence[int]) -> dict[str, set[int]]:
    """clip id -> the set of cluster ids of its sentences."""
    out: dict[str, set[int]] = {}
    for cid, lab in zip(owners, labels):
        out.setdefault(cid, set()).add(int(lab))
    return out


def is_uninterpretable(top_clips: Sequence[str], clusters: Mapping[str, set[int]], k_prime: int) -> bool:
    """True when no cluster is shared by at least `k_prime` of the clips (clips without sentences share none)."""
    counts = Counter(c for clip in top_clips for c in clusters.get(clip, ()))
    return not counts or max(counts.values()) < k_prime


def uninterpretable_fractions(records: Sequence[Mapping[str, Any]], clusters: Mapping[str, set[int]],
                              layers: Sequence[str], k_primes: Sequence[int], k: int) -> dict[str, dict[int, float]]:
    """layer -> {K': share of the layer's neurons whose top-k clips share no cluster K' times}."""
    out: dict[str, dict[int, float]] = {}
    by_layer = records_by_layer(records, by_unit=False)
    for layer in layers:
        recs = by_layer.get(layer, [])
        if recs:
            out[layer] = {kp: float(np.mean([is_uninterpretable(r["top_clips"][:k], clusters, kp) for r in recs]))
                          for kp in k_primes}
    return out


def cluster_captions(captions: Mapping[str, str], encoder: Any, n_clusters: int, seed: int) -> dict[str, set[int]]:
    """Embed every caption sentence with `encoder` and cluster them: clip id -> its sentences' cluster ids."""
    owners, sentences = caption_sentences(captions)
    if not sentences:
        raise ValueError("no caption sentences to cluster (are the captions empty?)")
    emb = encoder.encode(sentences)
    return clip_clusters(owners, kmeans_labels(np.asarray(emb, np.float64), n_clusters, seed))


PARTS = ("adjectives", "per_layer", "uninterpretable")


class Interpretability(Task):
    """`parts` of: adjective distribution (Fig. 3), adjectives per layer with a linear fit and its slope p-value
    (Fig. 5), uninterpretable neurons per layer (Fig. 6; K-means of caption sentences seeded with the run's seed)."""

    needs = ("records", "captions", "encoder")

    def run(self, ctx: EvalContext) -> TaskOutput:
        s, out = self.settings, TaskOutput()
        parts, field, top_n, k_primes = list(s["parts"] or PARTS), s["field"], s["top_n"], s["k_primes"]
        unknown = [p for p in parts if p not in PARTS]
        if unknown:
            raise ValueError(f"evaluate.interpretability.parts: unknown {unknown}; expected some of {list(PARTS)}")
        layers = list(ctx.store.layers) if ctx.store is not None else list(dict.fromkeys(r["layer"]
                                                                                         for r in ctx.records))
        if "adjectives" in parts:
            counts = adjective_counts(ctx.records, field, s["merge"])
            top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_n]
            out.tables.append(Table("adjectives", [{"adjective": a, "neurons": n} for a, n in top],
                                    ["adjective", "neurons"], f"Top {top_n} adjectives (neurons whose '{field}' holds "
                                                              "each)"))
            out.plots["adjectives_top"] = adjective_bar_chart(counts, top_n)
        if "per_layer" in parts:
            stats = adjectives_per_layer(ctx.records, layers, field)
            rows = [{"layer": k, "neurons": n, "mean_adjectives": stats["means"][k]} for k, n in stats["counts"].items()]
            out.tables.append(Table("adjectives_per_layer", rows, ["layer", "neurons", "mean_adjectives"],
                                    f"Adjectives per neuron (fit over neurons: slope {stats['slope']:.4f} per layer, "
                                    f"p = {stats['p_value']:.3g})"))
            out.plots["adjectives_per_layer"] = adjectives_per_layer_plot(stats)
            out.metrics.update({"eval/interp/adj_slope": stats["slope"], "eval/interp/adj_slope_p": stats["p_value"]})
            out.metrics.update({f"eval/interp/{k}/mean_adjectives": v for k, v in stats["means"].items()})
        if "uninterpretable" in parts:
            clusters = cluster_captions(ctx.captions, ctx.encoder, s["clusters"], ctx.seed)
            fractions = uninterpretable_fractions(ctx.records, clusters, layers, k_primes, s["k"])
            rows = [{"layer": layer, **{f"k{kp}": v[kp] for kp in k_primes}} for layer, v in fractions.items()]
            out.tables.append(Table("uninterpretable", rows, ["layer", *[f"k{kp}" for kp in k_primes]],
                                    f"Uninterpretable neurons (share; {s['clusters']} K-means clusters of caption "
                                    f"sentences, seed {ctx.seed}, top-{s['k']} clips, no cluster shared by K' of "
                                    "them)"))
            out.plots["uninterpretable"] = uninterpretable_plot(fractions)
            out.metrics.update({f"eval/interp/{layer}/uninterpretable_k{kp}": v[kp] for layer, v in fractions.items()
                                for kp in k_primes})
        return out
