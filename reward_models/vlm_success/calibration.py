"""Calibration of the success classifier: temperature and Platt scaling, the decision threshold."""

from __future__ import annotations

import numpy as np

from reward_models.calibration import logistic_fit
from reward_models.metrics import auroc, binary_scores, choose_threshold, expected_calibration_error


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically safe logistic function, float64."""
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(x, dtype=np.float64), -60, 60)))


def binary_nll(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of logits (N,) against 0/1 labels (N,)."""
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.02, 50.0)) -> float:
    """The temperature T > 0 minimising the NLL of ``sigmoid(logits / T)`` against ``labels`` (both (N,)).

    A log-spaced grid then golden-section refinement (the NLL is smooth and unimodal in log T for
    ranking-consistent logits). Returns 1.0 when a class is absent (nothing to calibrate against).
    """
    z, y = np.asarray(logits, dtype=np.float64).ravel(), np.asarray(labels, dtype=np.float64).ravel()
    if len(z) == 0 or y.min() == y.max():
        return 1.0
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    grid = np.linspace(lo, hi, 81)
    losses = [binary_nll(z / np.exp(g), y) for g in grid]
    k = int(np.argmin(losses))
    a, b = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    phi = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        c, d = b - phi * (b - a), a + phi * (b - a)
        if binary_nll(z / np.exp(c), y) < binary_nll(z / np.exp(d), y):
            b = d
        else:
            a = c
    return float(np.exp((a + b) / 2))


def fit_platt(logits: np.ndarray, labels: np.ndarray, ridge: float = 1e-4) -> tuple[float, float]:
    """(T, b) minimising the NLL of ``sigmoid(logits / T + b)``: logistic regression on the logit (Newton).

    Returns (1.0, 0.0) when a class is absent, and falls back to a temperature alone when the fitted
    slope is not positive (a model that ranks backwards is not rescued by calibration).
    """
    z, y = np.asarray(logits, dtype=np.float64).ravel(), np.asarray(labels, dtype=np.float64).ravel()
    if len(z) == 0 or y.min() == y.max():
        return 1.0, 0.0
    slope, bias = logistic_fit(z, y, ridge=ridge)
    if not slope > 1e-6:
        return fit_temperature(z, y), 0.0
    return float(1.0 / slope), bias


def calibrate(logits: np.ndarray, labels: np.ndarray, threshold_metric: str = "accuracy", fit_bias: bool = False) -> dict:
    """Temperature scaling (with a bias when ``fit_bias``: Platt scaling) and the threshold choice on
    validation frames; returns the numbers to report.

    Keys: temperature, bias, threshold, ece_before, ece_after, nll_before, nll_after, auroc, accuracy,
    f1, fpr (false-positive rate at the threshold), tpr, frames, positives.
    """
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(labels).astype(np.float64)
    t, b = fit_platt(z, y) if fit_bias else (fit_temperature(z, y), 0.0)
    before, after = sigmoid(z), sigmoid(z / t + b)
    threshold = choose_threshold(after, y, threshold_metric)
    pred = after >= threshold
    acc, f1 = binary_scores(pred, y)
    neg, pos = y == 0, y == 1
    return {
        "temperature": t,
        "bias": b,
        "threshold": float(threshold),
        "ece_before": expected_calibration_error(before, y),
        "ece_after": expected_calibration_error(after, y),
        "nll_before": binary_nll(z, y) if len(z) else None,
        "nll_after": binary_nll(z / t + b, y) if len(z) else None,
        "auroc": auroc(z[pos], z[neg]),
        "accuracy": acc,
        "f1": f1,
        "fpr": float(pred[neg].mean()) if neg.any() else None,
        "tpr": float(pred[pos].mean()) if pos.any() else None,
        "frames": int(len(z)),
        "positives": int(pos.sum()),
    }
