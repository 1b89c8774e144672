"""Ground-truth description accuracy: vocabulary matching, AUROC by hand, thresholds, P/R/F1, the layer report."""
from __future__ import annotations

import math

import numpy as np
import pytest

from and_lightning.analysis.ground_truth import (
    PRF, attribute_indicators, auroc_matrix, ground_truth_report, layer_scores, named_attributes, record_text,
    score_descriptions, true_attributes,
)
from and_lightning.data.synth import ATTRIBUTES, SOURCES
from and_lightning.describe.lexicon import tokens


@pytest.mark.parametrize("text, expected", [
    ("A shrill, high-pitched whistle", {"pitch=high"}),
    ("high pitched and LOUD", {"pitch=high", "loudness=loud"}),
    ("It is not loud but quiet", {"loudness=quiet"}),
    ("There is no background noise, and it isn't reverberant", {"background=clean"}),
    ("A steady pitch, pulsing 3 times a second", {"rhythm=pulsed"}),
    ("deep rumbling over a noisy background", {"pitch=low", "source=low_rumble", "background=noisy"}),
    ("high-quality recording of a falling chirp", {"source=falling_chirp"}),
    ("Most of them contain hz and pitch.", set()),
    # matched by lemma: inflections the vocabulary does not list
    ("Most of them are low rumbles.", {"source=low_rumble"}),
    ("louder, with hisses and deeper thuds", {"loudness=loud", "source=noise_hiss", "pitch=low",
                                              "source=percussive_hits"}),
    ("It lacks pulses; it hits hard", {"source=percussive_hits"}),
])
def test_named_attributes_maps_synonyms_phrases_and_negation(text, expected):
    assert named_attributes(text) == expected


def test_every_synth_source_name_maps_to_itself():
    assert tokens("noise_hiss, High-Pitched isn't") == ["noise", "hiss", ",", "high-pitched", "is", "n't"]
    for source in SOURCES:
        assert named_attributes(source) == {f"source={source}"}, source


def test_auroc_hand_computed_with_ties_and_degenerate_labels():
    acts = np.array([[1.0, 1.0], [2.0, 1.0], [3.0, 2.0], [4.0, 2.0]])
    Y = np.array([[0, 1, 1], [0, 0, 1], [1, 1, 1], [1, 0, 1]], bool)
    auc = auroc_matrix(acts, Y)
    # neuron 0: label 0 perfectly separated (1.0); label 1 = clips {0, 2} vs {1, 3}: pairs (1>2? no) (1>4? no)
    # (3>2 yes) (3>4 no) -> 1/4; neuron 1 has ties: label 1 pairs (1 vs 1 tie) (1 vs 2 no) (2 vs 1 yes) (2 vs 2 tie)
    assert auc[0, 0] == 1.0 and auc[0, 1] == 0.25 and auc[1, 1] == 0.5 and auc[1, 0] == 1.0
    assert np.isnan(auc[:, 2]).all()  # every clip positive: undefined
    with pytest.raises(ValueError, match="same N"):
        auroc_matrix(acts, Y[:3])


def test_true_attributes_threshold_and_direction():
    auc = np.array([[0.8, 0.75, 0.74, 0.2, np.nan]])
    names = ["a", "b", "c", "d", "e"]
    assert true_attributes(auc, names, 0.75) == [{"a", "b"}]
    assert true_attributes(auc, names, 0.75, "both") == [{"a", "b", "d"}]
    assert true_attributes(auc, names, 0.81) == [set()]
    with pytest.raises(ValueError, match="threshold"):
        true_attributes(auc, names, 0.4)
    with pytest.raises(ValueError, match="direction"):
        true_attributes(auc, names, 0.75, "low")


def test_precision_recall_f1_hand_computed():
    named = [{"a", "b"}, {"c"}, {"a"}]
    true = [{"a"}, {"c", "d"}, set()]  # the third neuron separates nothing: not scored
    prf = score_descriptions(named, true)
    assert (prf.tp, prf.named, prf.true) == (2, 3, 3)
    assert (prf.precision, prf.recall, prf.f1) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert math.isnan(PRF(0, 0, 0).f1) and PRF(0, 2, 0).precision == 0.0


def test_layer_scores_shuffled_baseline_is_lower_for_matching_descriptions():
    true = [{f"x={i}"} for i in range(6)] + [set()]
    scores = layer_scores(list(true), true, np.random.default_rng(0), shuffles=20)
    assert scores["f1"] == 1.0 and scores["f1_shuffled"] < 0.5
    assert scores["no_separable"] == pytest.approx(1 / 7) and scores["neurons"] == 7.0


def test_record_text_fields():
    r = {"layer": "l", "unit": 0, "description": "loud", "adjectives": ["quiet", "dry"],
         "closed_concepts": [{"concept": "noise_hiss", "score": 1.0}]}
    assert record_text(r, "adjectives") == "quiet dry" and record_text(r, "closed_concept") == "noise_hiss"
    with pytest.raises(KeyError, match="no field 'summary_high'"):
        record_text(r, "summary_high")


def test_report_on_neurons_built_from_known_attributes():
    rng = np.random.default_rng(0)
    attrs = [{name: str(rng.choice(values)) for name, values in ATTRIBUTES.items()} for _ in range(200)]
    names, Y = attribute_indicators(attrs, ATTRIBUTES)
    col = {n: i for i, n in enumerate(names)}
    noise = rng.normal(0, 0.1, (200, 4))
    # neuron 0: high pitch; 1: loud; 2: reverberant; 3: noise only
    acts = np.stack([Y[:, col["pitch=high"]], Y[:, col["loudness=loud"]], Y[:, col["reverb=reverberant"]],
                     np.zeros(200)], axis=1) + noise
    records = [{"layer": "L", "unit": u, "description": d, "summary_high": s}
               for u, (d, s) in enumerate([("shrill squeaks", "loud"), ("blaring", "loud"),
                                           ("echoing", "quiet"), ("a dry sound", "dry")])]
    rows, per_neuron, _ = ground_truth_report(records, {"L": acts}, attrs, ATTRIBUTES, threshold=0.75,
                                           fields=["description", "summary_high"], shuffles=10, seed=0)
    desc, high = rows
    assert (desc["field"], desc["precision"], desc["recall"], desc["f1"]) == ("description", 1.0, 1.0, 1.0)
    assert desc["f1_shuffled"] < 0.6 and desc["no_separable"] == 0.25
    assert high["precision"] == pytest.approx(1 / 3) and high["recall"] == pytest.approx(1 / 3)
    assert per_neuron[("L", 0)] == {"gt_f1": 1.0, "gt_true": ["pitch=high"], "gt_named": ["pitch=high"]}
    assert per_neuron[("L", 3)]["gt_true"] == [] and math.isnan(per_neuron[("L", 3)]["gt_f1"])  # nothing to name
