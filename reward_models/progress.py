"""Step-discretized progress labels, hops, hop bins, and the three progress reconstructions.

After Robo-Dopamine's General Reward Model. A task is cut into N steps at keyframes; progress
rises linearly inside each step and each step is worth 1/N. Between a BEFORE state p and an AFTER
state q the model predicts the hop

    H(p, q) = (Phi_q - Phi_p) / (1 - Phi_p)   if Phi_q >= Phi_p   (progress, share of what was left)
    H(p, q) = (Phi_q - Phi_p) / Phi_p         otherwise            (regress, share of what was done)

which lies in [-1, 1] and keeps every reconstruction inside [0, 1]:

* incremental: Phi_t = Phi_{t-1} + (1 - Phi_{t-1}) h_t (h >= 0) or Phi_{t-1} + Phi_{t-1} h_t (h < 0),
  BEFORE = the previous frame. Depends on the whole history: NOT a function of the current state.
* forward-anchored: Phi_t = h(start, s_t), BEFORE = the start anchor (Phi = 0 there).
  A function of the current state (given the fixed start anchor): usable as a shaping potential.
* backward-anchored: Phi_t = 1 + h(goal, s_t), BEFORE = the goal anchor (Phi = 1 there).
  A function of the current state (given the fixed goal anchor): usable as a shaping potential.
"""

from __future__ import annotations

import numpy as np

PERSPECTIVES = ("incremental", "forward", "backward")
STATE_PERSPECTIVES = ("forward", "backward")
"""Perspectives whose progress depends on the current state alone (potential-based shaping)."""


def step_progress(keyframes: np.ndarray, num_frames: int) -> np.ndarray:
    """Ground-truth progress of every frame of an episode, float64 (num_frames,) in [0, 1].

    Args:
        keyframes: int (N,) strictly increasing frame indices where each step ends.
        num_frames: frames in the episode (T + 1 for T actions).

    Frame 0 has progress 0, keyframe k has progress (k + 1) / N, frames in between are linear,
    and frames after the last keyframe (post-success) have progress 1.
    """
    keyframes = np.asarray(keyframes, dtype=np.int64)
    if keyframes.ndim != 1 or len(keyframes) == 0:
        raise ValueError(f"keyframes must be a non-empty 1-d array, got {keyframes!r}")
    if np.any(np.diff(keyframes) <= 0) or keyframes[0] <= 0:
        raise ValueError(f"keyframes must be strictly increasing and > 0, got {keyframes.tolist()}")
    n = len(keyframes)
    knots_t = np.concatenate([[0], keyframes]).astype(np.float64)
    knots_phi = np.arange(n + 1, dtype=np.float64) / n
    return np.interp(np.arange(num_frames, dtype=np.float64), knots_t, knots_phi)


def hop(phi_p: np.ndarray, phi_q: np.ndarray) -> np.ndarray:
    """The hop H(p, q) in [-1, 1] (see the module docstring); 0 where it is undefined (0/0)."""
    phi_p = np.asarray(phi_p, dtype=np.float64)
    phi_q = np.asarray(phi_q, dtype=np.float64)
    delta = phi_q - phi_p
    up = np.divide(delta, 1.0 - phi_p, out=np.zeros_like(delta), where=(delta >= 0) & (phi_p < 1.0))
    down = np.divide(delta, phi_p, out=np.zeros_like(delta), where=(delta < 0) & (phi_p > 0.0))
    return np.clip(np.where(delta >= 0, up, down), -1.0, 1.0)


def bin_centers(num_bins: int) -> np.ndarray:
    """Centres of ``num_bins`` equal bins over [-1, 1] (odd counts have a bin centred on 0)."""
    if num_bins < 3:
        raise ValueError(f"need at least 3 hop bins, got {num_bins}")
    edges = np.linspace(-1.0, 1.0, num_bins + 1)
    return (edges[:-1] + edges[1:]) / 2


def hop_to_bin(h: np.ndarray, num_bins: int) -> np.ndarray:
    """Index of the bin each hop falls in, int64."""
    idx = np.floor((np.asarray(h, dtype=np.float64) + 1.0) / 2.0 * num_bins).astype(np.int64)
    return np.clip(idx, 0, num_bins - 1)


def incremental(hops: np.ndarray, phi0: float = 0.0) -> np.ndarray:
    """Progress from consecutive hops h_t = H(s_{t-1}, s_t), t = 1..T; returns (T+1,) from phi0."""
    phi = np.empty(len(hops) + 1)
    phi[0] = phi0
    for t, h in enumerate(np.asarray(hops, dtype=np.float64), start=1):
        prev = phi[t - 1]
        phi[t] = prev + (1.0 - prev) * h if h >= 0 else prev + prev * h
    return np.clip(phi, 0.0, 1.0)


def forward(hops_from_start: np.ndarray) -> np.ndarray:
    """Progress from hops H(start, s_t): Phi_t = h (negative hops clip to 0)."""
    return np.clip(np.asarray(hops_from_start, dtype=np.float64), 0.0, 1.0)


def backward(hops_from_goal: np.ndarray) -> np.ndarray:
    """Progress from hops H(goal, s_t): Phi_t = 1 + h (h <= 0)."""
    return np.clip(1.0 + np.asarray(hops_from_goal, dtype=np.float64), 0.0, 1.0)
