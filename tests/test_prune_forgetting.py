"""Forgetting metrics against hand-computed values, and the per-class drop chart file."""
from __future__ import annotations

import math

import numpy as np
import pytest

from and_lightning.prune.forgetting import (
    SELECTIVITY, accuracies, deltas, drop_chart, forgetting, per_class_confidence, phase_metrics, softmax,
)

# 5 clips, 3 classes: labels 0, 0, 1, 2, 2
LABELS = np.array([0, 0, 1, 2, 2])
LOGITS = np.array([
    [2.0, 0.0, 0.0],   # class 0, predicted 0
    [4.0, 1.0, 0.0],   # class 0, predicted 0
    [0.0, 3.0, 1.0],   # class 1, predicted 1
    [0.0, 0.0, -1.0],  # class 2, predicted 0 (tie 0/1 -> argmax 0): wrong
    [0.0, 1.0, 5.0],   # class 2, predicted 2
])


def test_per_class_confidence_is_the_mean_own_class_score():
    got = per_class_confidence(LOGITS, LABELS, 3)
    assert got.tolist() == [3.0, 3.0, 2.0]  # (2+4)/2, 3, (-1+5)/2
    assert np.isnan(per_class_confidence(LOGITS, LABELS, 4)[3])  # a class with no clips


def test_softmax_hand_values():
    p = softmax(np.array([[0.0, math.log(3.0)], [1000.0, 1000.0]]))
    np.testing.assert_allclose(p, [[0.25, 0.75], [0.5, 0.5]])


def test_deltas_hand_computed():
    out = deltas(np.array([2.0, 1.0, 0.0]), np.array([0.0, 1.0, -1.0]), target=0)
    assert out == {"delta_A": -2.0, "delta_R": -0.5, "selectivity": 1.5}  # ΔR = mean(0, -1)
    # a class without clips (NaN) is left out of ΔR
    out = deltas(np.array([2.0, np.nan, 0.0]), np.array([1.0, np.nan, 0.5]), target=0)
    assert out == {"delta_A": -1.0, "delta_R": 0.5, "selectivity": 1.5}
    with pytest.raises(ValueError, match="class 1 has no clips"):
        deltas(np.array([2.0, np.nan]), np.array([1.0, np.nan]), target=1)


def test_selectivity_has_the_paper_sign_on_its_table4_numbers():
    """Paper Table 4, AST, OCP: ΔA −10.73, ΔR −6.83 and +3.90 in the selectivity column (headed ΔA−ΔR there):
    the target's confidence drop minus the others', i.e. ΔR − ΔA, labelled so."""
    before = np.array([5.0, 5.0, 5.0, 5.0])
    after = np.array([5.0 - 10.73, 5.0 - 4.83, 5.0 - 8.83, 5.0 - 6.83])  # the others lose 6.83 on average
    out = deltas(before, after, target=0)
    assert out["delta_A"] == pytest.approx(-10.73) and out["delta_R"] == pytest.approx(-6.83)
    assert out["selectivity"] == pytest.approx(3.90) and SELECTIVITY == "ΔR−ΔA"


def test_accuracies_target_vs_rest():
    assert accuracies(LOGITS, LABELS) == {"acc": 0.8}
    assert accuracies(LOGITS, LABELS, target=2) == {"acc": 0.8, "acc_target": 0.5, "acc_rest": 1.0}


def test_phase_metrics_and_forgetting_in_both_units():
    metrics, per_class = phase_metrics(LOGITS, LABELS, 3, target=0)
    assert metrics["target_logit"] == 3.0 and metrics["rest_logit"] == 2.5  # mean(3, 2)
    probs = softmax(LOGITS)
    own = [(probs[0, 0] + probs[1, 0]) / 2, probs[2, 1], (probs[3, 2] + probs[4, 2]) / 2]
    np.testing.assert_allclose(per_class["prob"], own)
    assert metrics["target_prob"] == pytest.approx(own[0]) and metrics["rest_prob"] == pytest.approx((own[1] + own[2]) / 2)

    after = LOGITS.copy()
    after[:2, 0] -= 2.0  # class 0's clips lose 2 logits on class 0; nothing else changes
    _, per_class_after = phase_metrics(after, LABELS, 3, target=0)
    f = forgetting(per_class, per_class_after, target=0)
    assert f["delta_A_logit"] == -2.0 and f["delta_R_logit"] == 0.0 and f["selectivity_logit"] == 2.0
    assert f["delta_A_prob"] < 0 and f["delta_R_prob"] == 0.0 and f["selectivity_prob"] == -f["delta_A_prob"]


def test_drop_chart_writes_a_png(tmp_path):
    per_class = {"before": {"logit": [3.0, 3.0, 2.0], "prob": [0.8, 0.7, 0.6]},
                 "pruned": {"logit": [1.0, 2.5, 2.0], "prob": [0.2, 0.6, 0.6]}}
    path = drop_chart(per_class, ["a", "b", "c"], 0, tmp_path / "fig" / "drop.png", "test")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
