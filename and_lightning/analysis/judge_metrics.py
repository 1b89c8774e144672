"""The math of the description scorers as small pure functions (NumPy, one unit at a time): average precision
(AUPRC), F1 at a judge's threshold, the threshold of best balanced accuracy, recall per activation quantile, Pearson
and Spearman correlation, and the intervention's effect correlation. Each returns NaN when its inputs leave it
undefined (no positives, nothing sampled)."""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUPRC as average precision, sum over distinct score thresholds t (high to low) of (R_t - R_prev) * P_t,
    predicting "yes" for score >= t (tied scores enter together, so a constant judge gets the positive rate)."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels, bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"average_precision needs two 1-D arrays of one length, got {s.shape} and {y.shape}")
    positives = int(y.sum())
    if positives == 0:
        return math.nan
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[s[1:] != s[:-1], True]  # the last index of each run of tied scores
    tp = np.cumsum(y)[last]
    seen = np.flatnonzero(last) + 1
    recall = tp / positives
    precision = tp / seen
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def f1_score(predicted: np.ndarray, labels: np.ndarray) -> float:
    """F1 of yes/no predictions against the labels: 2 TP / (2 TP + FP + FN); NaN when both are all "no"."""
    p, y = np.asarray(predicted, bool), np.asarray(labels, bool)
    tp, fp, fn = int((p & y).sum()), int((p & ~y).sum()), int((~p & y).sum())
    return 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else math.nan


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold t (one of the scores; "yes" = score >= t) with the highest balanced accuracy (TPR + TNR) / 2
    on these labels, the highest such t on ties; NaN when there are no scores or no positives. (The text judge's
    calibration on explain clips; F1 would favour saying "yes" to every clip, which scores 2/3 on a balanced set.)"""
    s, y = np.asarray(scores, np.float64), np.asarray(labels, bool)
    if not s.size or not y.any():
        return math.nan
    candidates = np.unique(s)[::-1]
    yes = s[None, :] >= candidates[:, None]
    tnr = (~yes[:, ~y]).mean(axis=1) if (~y).any() else np.zeros(len(candidates))
    return float(candidates[int(np.argmax(yes[:, y].mean(axis=1) + tnr))])


def recall_per_quantile(predicted: np.ndarray, quantile: np.ndarray, quantiles: int) -> np.ndarray:
    """[quantiles] share of the positives of each activation quantile (quantile[i] in 0..quantiles-1, 0 = the top;
    -1 = a negative) judged "yes"; NaN for a quantile with no clips."""
    p, q = np.asarray(predicted, bool), np.asarray(quantile, int)
    positive = (q >= 0) & (q < quantiles)
    clips = np.bincount(q[positive], minlength=quantiles)
    said_yes = np.bincount(q[positive & p], minlength=quantiles)
    with np.errstate(invalid="ignore"):
        return np.where(clips > 0, said_yes / np.maximum(clips, 1), np.nan)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r; NaN when either side is constant or has fewer than 2 values."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"pearson needs two 1-D arrays of one length, got {x.shape} and {y.shape}")
    if len(x) < 2:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    den = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy) / den if den > 0 else math.nan


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rho = Pearson r of the average ranks (ties share their mean rank)."""
    return pearson(rankdata(x), rankdata(y))


def effect_correlation(judged: np.ndarray, change: np.ndarray) -> float:
    """Spearman rho between a judge's score of each clip (e.g. cos(description, caption)) and the model's output
    change on it when the unit is edited: > 0 when the unit matters more to the output where the description says
    it fires. A judge that scores every clip alike says nothing: 0.0 (chance); NaN when the change is the same on
    every clip (nothing to predict) or n < 2."""
    x, y = np.asarray(judged, np.float64), np.asarray(change, np.float64)
    if x.shape == y.shape and x.ndim == 1 and len(y) >= 2 and np.all(x == x[0]) and np.any(y != y[0]):
        return 0.0
    return spearman(x, y)
