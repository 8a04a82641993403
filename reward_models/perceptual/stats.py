"""Per-step feature selection, Gaussian statistics and logistic calibration (steps 3 and 4 of
:mod:`reward_models.perceptual`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


# --------------------------------------------------------------------------- per-step statistics


def selection_scores(z: np.ndarray, positive: np.ndarray, alpha: float = 5.0) -> np.ndarray:
    """The paper's feature score ``alpha |mu+ - mu-| - (sigma+ + sigma-)`` per feature.

    Args:
        z: z-normalised features, float (N, D).
        positive: bool (N,), the step's positive frames (the rest are negatives; both non-empty).
        alpha: weight of the mean gap against the spreads.
    Returns:
        float64 (D,); higher = more discriminative of the positives.
    """
    z = np.asarray(z, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        raise ValueError("feature selection needs both positive and negative frames")
    pos, neg = z[positive], z[~positive]
    return alpha * np.abs(pos.mean(0) - neg.mean(0)) - (pos.std(0) + neg.std(0))


def logistic_fit(x: np.ndarray, y: np.ndarray, ridge: float = 1e-2, iters: int = 50) -> tuple[float, float]:
    """(a, b) of P(y=1 | x) = sigmoid(a x + b), class-balanced, ridge on the standardised slope, a >= 0."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n_pos, n_neg = y.sum(), len(y) - y.sum()
    if n_pos == 0 or n_neg == 0:
        return 0.0, (8.0 if n_neg == 0 else -8.0)
    w = np.where(y > 0.5, 0.5 / n_pos, 0.5 / n_neg)  # balanced: both classes weigh the same
    m, s = float(x.mean()), float(x.std()) or 1.0
    u = (x - m) / s
    a, b = 0.0, 0.0
    for _ in range(iters):  # Newton on the convex penalised log-loss
        p = sigmoid(a * u + b)
        g = np.array([np.sum(w * (p - y) * u) + ridge * a, np.sum(w * (p - y))])
        h = w * p * (1 - p)
        hess = np.array([[np.sum(h * u * u) + ridge, np.sum(h * u)], [np.sum(h * u), np.sum(h) + 1e-9]])
        step = np.linalg.solve(hess, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-8:
            break
    if a < 0:  # a likelihood that is lower on positives carries no usable evidence: a constant 0.5
        a, b = 0.0, 0.0
    return float(a / s), float(b - a * m / s)


def sigmoid(v: np.ndarray) -> np.ndarray:
    """Logistic function, float64, stable for any input."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(v, dtype=np.float64)))  # stable for any v


@dataclass
class StepStats:
    """Selected features and positive statistics of every detector, for one camera subset.

    Rows: the start detector (row 0), then steps 1..n.

    Attributes:
        idx: int64 (n + 1, k) selected feature indices per detector.
        mu: float64 (n + 1, k) positive mean (z units); sigma: float64 (n + 1, k) positive std (floored).
    """

    idx: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray

    def loglik(self, z: np.ndarray, q_max: float | None = None) -> np.ndarray:
        """Average per-feature Gaussian log-likelihood under each detector, float64 (T, n + 1) from z (T, D).

        ``q_max``: each feature's squared deviation is capped at ``q_max**2`` stds, so that one
        far-off feature cannot veto a frame (None: the plain Gaussian).
        """
        zi = z[:, self.idx]  # (T, n, k)
        q2 = ((zi - self.mu) / self.sigma) ** 2
        if q_max is not None:
            q2 = np.minimum(q2, float(q_max) ** 2)
        return -0.5 * q2.mean(-1) - np.log(self.sigma).mean(-1) - 0.5 * math.log(2 * math.pi)


def fit_step_stats(z: np.ndarray, positives: np.ndarray, alpha: float, top_k: int, sigma_floor: float) -> StepStats:
    """Per-step feature selection and Gaussian statistics.

    Args:
        z: z-normalised features of all training frames, float (N, D).
        positives: bool (m, N), detector j's positive frames (negatives: every other frame).
        alpha, top_k: the selection score's weight and the kept count (capped by D).
        sigma_floor: smallest positive std, in z units (a feature constant on the positives would
            otherwise make the likelihood infinitely sharp).
    """
    k = min(int(top_k), z.shape[1])
    idx, mu, sigma = [], [], []
    for pos in positives:
        order = np.argsort(-selection_scores(z, pos, alpha), kind="stable")[:k]
        idx.append(order)
        mu.append(z[pos][:, order].mean(0))
        sigma.append(np.maximum(z[pos][:, order].std(0), sigma_floor))
    return StepStats(np.array(idx, dtype=np.int64), np.array(mu), np.array(sigma))
