"""Calibrating a model's ``success_prob`` (Platt scaling, Platt 1999): ``p' = sigmoid(a logit(p) + b)``.

The step-PRM's P(done) is the mass of its top forward-hop bin, a by-product of the hop loss and not
a calibrated probability (held-out ECE about 0.19 for ``general-v1``). Two numbers fitted by maximum
likelihood on per-frame success labels of episodes the model was NOT trained on (successes and
failures of training tasks: ``stepwise-collect task=train split=eval ...``) map it to one; with
``a > 0`` the map is monotonic, so every ranking metric (AUROC) is unchanged. The pair is stored in
the model's config (``success_calibration``) and applied by ``success_prob`` and ``score``.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import numpy as np

EPS = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def apply_platt(prob: np.ndarray, ab: Iterable[float] | None) -> np.ndarray:
    """``sigmoid(a logit(prob) + b)``, float32; ``ab`` None returns ``prob`` unchanged."""
    if ab is None:
        return np.asarray(prob, dtype=np.float32)
    a, b = (float(x) for x in ab)
    return (1.0 / (1.0 + np.exp(-(a * logit(prob) + b)))).astype(np.float32)


def logistic_fit(x: np.ndarray, y: np.ndarray, ridge: float = 1e-4, iters: int = 100) -> tuple[float, float]:
    """(slope, bias) maximising the Bernoulli likelihood of 0/1 ``y`` under ``sigmoid(slope x + bias)``:
    the 2-parameter logistic regression behind every Platt scaling here (Newton's method, a tiny
    ridge for separable data)."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    w = np.zeros(2)
    feats = np.stack([x, np.ones_like(x)], axis=1)
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(feats @ w)))
        grad = feats.T @ (p - y) / len(y) + ridge * w
        hess = (feats * (p * (1 - p))[:, None]).T @ feats / len(y) + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(w[0]), float(w[1])


def fit_platt(prob: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    """(a, b) of ``sigmoid(a logit(prob) + b)`` fitted to ``label`` (0/1) by :func:`logistic_fit`.
    Frames are weighted so that each class counts as in the data (no re-balancing)."""
    y = np.asarray(label, dtype=np.float64).ravel()
    if len(y) == 0 or y.min() == y.max():
        raise ValueError(f"calibration needs frames of both classes, got {len(y)} frames with {int(y.sum())} successes")
    return logistic_fit(logit(prob), y)


def frame_labels(episode: Any) -> np.ndarray:
    """Per-frame success (T+1,) from the simulator's signal: frame t >= 1 has the success after action t."""
    succ = episode.infos.get("success")
    if succ is None:
        raise ValueError(f"episode of {episode.task} has no per-step success signal to calibrate against")
    return np.concatenate([[0.0], np.asarray(succ, dtype=np.float64) > 0.5])


def calibrate(model: Any, data: str | os.PathLike | Iterable, max_episodes_per_task: int | None = None) -> dict:
    """Fit ``model.cfg.success_calibration`` of a step-PRM on every episode of the stores in ``data`` (its
    raw P(done), the top forward-hop mass, against the frames' success labels); returns the fit's summary (a, b, frames,
    ECE before and after on the fitting frames)."""
    from episodes import EpisodeStore
    from reward_models.data import resolve_stores
    from reward_models.metrics import expected_calibration_error

    probs, labels, per_task = [], [], {}
    for path in resolve_stores(data):
        with EpisodeStore(path, cameras=list(model.cameras)) as store:
            for i in range(len(store)):
                ep = store[i]
                if max_episodes_per_task is not None and per_task.get(ep.task, 0) >= max_episodes_per_task:
                    continue
                per_task[ep.task] = per_task.get(ep.task, 0) + 1
                raw = model.hops({c: ep.images[c] for c in model.cameras}, ep.instruction)["p_forward_top"]
                probs.append(np.clip(raw, 0, 1))  # the uncalibrated P(done)
                labels.append(frame_labels(ep))
    prob, label = np.concatenate(probs), np.concatenate(labels)
    a, b = fit_platt(prob, label)
    model.cfg.success_calibration = [a, b]
    return {"a": a, "b": b, "frames": int(len(prob)), "episodes": int(sum(per_task.values())), "tasks": len(per_task),
            "ece_before": expected_calibration_error(np.clip(prob, 0, 1), label),
            "ece_after": expected_calibration_error(apply_platt(prob, (a, b)), label)}
