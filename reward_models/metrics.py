"""Metrics of progress and success models: Spearman correlation, value-order correlation (VOC),
AUROC, expected calibration error, thresholds. Plain numpy on arrays; imports nothing of ours."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

THRESHOLD_METRICS = ("accuracy", "f1")  # what a decision threshold can be tuned for

def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x`` (1-d), ties given their average rank; float64 (n,)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    # average the ranks of each run of equal values
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman rank correlation of two equal-length 1-d sequences (average ranks for ties).

    Returns None with fewer than 2 points; 0.0 when either sequence is constant (no ordering
    information: a model that predicts a flat curve gets no credit, rather than an undefined value).
    """
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if len(x) != len(y):
        raise ValueError(f"spearman needs equal lengths, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return None
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx**2).sum() * (ry**2).sum())
    return 0.0 if denom == 0 else float((rx * ry).sum() / denom)


def voc(progress: np.ndarray) -> float | None:
    """Value-order correlation: Spearman between time index and ``progress`` float (n,)."""
    progress = np.asarray(progress)
    return spearman(np.arange(len(progress)), progress)


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties count 1/2); None if a class is empty.

    Args:
        positive: scores of the positive class (successful episodes), float (P,).
        negative: scores of the negative class (failed episodes), float (N,).
    """
    pos, neg = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return None
    ranks = rankdata(np.concatenate([pos, neg]))
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def expected_calibration_error(prob: np.ndarray, label: np.ndarray, bins: int = 10) -> float | None:
    """ECE over ``bins`` equal-width bins of [0, 1]: sum_b n_b/N |mean(prob_b) - mean(label_b)|.

    Args:
        prob: predicted probabilities, float (N,) in [0, 1].
        label: 0/1 ground truth, (N,).
    Returns None for N = 0.
    """
    prob, label = np.asarray(prob, dtype=np.float64).ravel(), np.asarray(label, dtype=np.float64).ravel()
    if len(prob) == 0:
        return None
    idx = np.clip((prob * bins).astype(np.int64), 0, bins - 1)  # prob == 1 falls in the last bin
    gap = np.abs(np.bincount(idx, weights=prob, minlength=bins) - np.bincount(idx, weights=label, minlength=bins))
    return float(gap.sum() / len(prob))  # sum_b |sum(prob_b) - sum(label_b)| / N == the weighted gap


def binary_scores(pred: np.ndarray, label: np.ndarray) -> tuple[float | None, float | None]:
    """(accuracy, F1) of bool predictions against 0/1 labels, both (N,); F1 None when undefined."""
    pred, label = np.asarray(pred, dtype=bool), np.asarray(label, dtype=bool)
    if len(pred) == 0:
        return None, None
    tp = int((pred & label).sum())
    denom = 2 * tp + int((pred & ~label).sum()) + int((~pred & label).sum())
    return float((pred == label).mean()), (None if denom == 0 else 2 * tp / denom)


def choose_threshold(prob: np.ndarray, label: np.ndarray, metric: str = "accuracy") -> float:
    """The threshold t (predict success where prob >= t) maximising ``metric`` on (prob, label).

    Candidates are the distinct predicted values (at most 257 quantiles of them) plus one above
    every prediction (predict no success anywhere). Returns 0.5 for empty input.
    """
    if metric not in THRESHOLD_METRICS:
        raise ValueError(f"threshold_metric={metric!r} unknown: use one of {THRESHOLD_METRICS}")
    prob, label = np.asarray(prob, dtype=np.float64).ravel(), np.asarray(label).ravel()
    if len(prob) == 0:
        return 0.5
    cands = np.unique(prob)
    if len(cands) > 257:
        cands = np.unique(np.quantile(prob, np.linspace(0, 1, 257)))
    cands = np.append(cands, np.nextafter(cands[-1], np.inf))
    best, best_t = -1.0, 0.5
    for t in cands:
        acc, f1 = binary_scores(prob >= t, label)
        value = acc if metric == "accuracy" else (f1 or 0.0)
        if value > best:
            best, best_t = value, float(t)
    return best_t


def error_rates(pred: np.ndarray, label: np.ndarray) -> tuple[float | None, float | None]:
    """(false-positive rate, false-negative rate) of bool predictions against 0/1 labels, both (N,).

    FPR = not-done frames predicted done / not-done frames; FNR = done frames predicted not done / done
    frames; each None when its class is absent.
    """
    pred, label = np.asarray(pred, dtype=bool), np.asarray(label, dtype=bool)
    fpr = float(pred[~label].mean()) if (~label).any() else None
    fnr = float((~pred[label]).mean()) if label.any() else None
    return fpr, fnr



def mean_of(values: Iterable[float | None]) -> float | None:
    """Mean of the finite values, None when there are none."""
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None
