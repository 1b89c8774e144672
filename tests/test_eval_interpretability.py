"""Interpretability statistics: adjective counts, per-layer fit with its p-value, seeded K-means, uninterpretable."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.cluster import KMeans

from and_lightning.analysis.interpretability import (
    adjective_counts, adjectives_per_layer, caption_sentences, clip_clusters, cluster_captions, is_uninterpretable,
    kmeans_labels, uninterpretable_fractions,
)
from and_lightning.analysis.plots import adjective_bar_chart, adjectives_per_layer_plot, save_png, uninterpretable_plot
from fakes import FakeBagOfWordsEncoder


def test_adjective_counts_once_per_neuron_with_merge(tmp_path):
    records = [{"adjectives": ["loud", "loud", "high"]}, {"adjectives": ["high-quality"]}, {"adjectives": []}]
    assert adjective_counts(records) == {"loud": 1, "high": 1, "high-quality": 1}
    assert adjective_counts(records, merge={"high": "high-quality"}) == {"loud": 1, "high-quality": 2}
    png = save_png(adjective_bar_chart(adjective_counts(records), 10), tmp_path / "a.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_adjectives_per_layer_fit_hand_computed(tmp_path):
    counts = {"a": [4, 2], "b": [3, 1], "c": [2, 0]}
    records = [{"layer": layer, "adjectives": ["x"] * n} for layer, ns in counts.items() for n in ns]
    records.append({"layer": "not-listed", "adjectives": ["x"] * 9})
    out = adjectives_per_layer(records, ["a", "b", "c"])
    # x = 0,0,1,1,2,2; y = 4,2,3,1,2,0: Sxx = 4, Sxy = -4 -> slope -1, intercept 3; residuals +-1 -> SSE 6,
    # s^2 = 6 / 4, se(slope) = sqrt(1.5 / 4), t = -1 / se, p = 2 * P(T_4 > |t|)
    se = math.sqrt(1.5 / 4)
    assert out["means"] == {"a": 3.0, "b": 2.0, "c": 1.0} and out["counts"] == {"a": 2, "b": 2, "c": 2}
    assert (out["slope"], out["intercept"], out["stderr"]) == pytest.approx((-1.0, 3.0, se))
    assert out["p_value"] == pytest.approx(2 * stats.t.sf(1 / se, 4))
    assert 0.17 < out["p_value"] < 0.18
    assert open(save_png(adjectives_per_layer_plot(out), tmp_path / "f.png"), "rb").read(4) == b"\x89PNG"
    flat = adjectives_per_layer([{"layer": "a", "adjectives": ["x"]}], ["a", "b"])
    assert math.isnan(flat["slope"]) and math.isnan(flat["means"]["b"])


def test_kmeans_is_seeded_and_reproducible():
    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(0, 0.1, (20, 3)), rng.normal(5, 0.1, (20, 3))])
    labels = kmeans_labels(blobs, 2, seed=0)
    assert len(set(labels[:20])) == 1 and len(set(labels[20:])) == 1 and labels[0] != labels[20]
    X = rng.normal(size=(60, 4))
    a, b = kmeans_labels(X, 6, seed=3, n_init=1), kmeans_labels(X, 6, seed=3, n_init=1)
    assert np.array_equal(a, b)
    assert np.array_equal(a, KMeans(n_clusters=6, random_state=3, n_init=1).fit_predict(X))
    assert len({tuple(kmeans_labels(X, 6, seed=s, n_init=1)) for s in range(6)}) > 1  # the seed matters
    assert sorted(set(kmeans_labels(np.array([[0.0], [0.0], [1.0]]), 11, seed=0))) == [0, 1]  # K capped


def test_uninterpretable_rule_by_hand():
    clusters = {"a": {0, 1}, "b": {0}, "c": {0, 2}, "d": {2}, "e": {3}}
    assert not is_uninterpretable(["a", "b", "c", "d", "e"], clusters, 3)  # cluster 0 shared by 3
    assert is_uninterpretable(["a", "b", "c", "d", "e"], clusters, 4)
    assert is_uninterpretable(["x", "y"], clusters, 1)  # clips without sentences share nothing
    records = [{"layer": "L1", "top_clips": ["a", "b", "c"]}, {"layer": "L1", "top_clips": ["d", "e", "a"]},
               {"layer": "L2", "top_clips": ["a", "c", "d"]}]
    out = uninterpretable_fractions(records, clusters, ["L1", "L2", "L3"], [2, 3], k=3)
    assert out == {"L1": {2: 0.5, 3: 0.5}, "L2": {2: 0.0, 3: 1.0}}


def test_caption_clustering_groups_similar_sentences(tmp_path):
    captions = {f"dog{i}": "A dog barks loudly. Sure, here are more details." for i in range(4)}
    captions.update({f"car{i}": "An engine hums in a car." for i in range(4)})
    owners, sentences = caption_sentences(captions)
    assert "Sure, here are more details." not in sentences and len(sentences) == 8
    clusters = cluster_captions(captions, FakeBagOfWordsEncoder(128), n_clusters=2, seed=0)
    assert len({frozenset(clusters[f"dog{i}"]) for i in range(4)}) == 1
    assert clusters["dog0"] != clusters["car0"]
    assert clip_clusters(["a", "a", "b"], [1, 2, 1]) == {"a": {1, 2}, "b": {1}}
    png = save_png(uninterpretable_plot({"L1": {3: 0.5}, "L2": {3: 0.1}}), tmp_path / "u.png")
    assert open(png, "rb").read(4) == b"\x89PNG"
