"""The perceptual-feature reward (after Sermanet, Xu and Levine 2016, "Unsupervised Perceptual Rewards").

Fitted, not trained: from 1 to 10 demonstrations of ONE task and a frame encoder
(:mod:`reward_models.encoders`), in seconds on two CPU cores.

1. **Features.** Every camera goes through the same encoder, uint8 (T, H, W, 3) -> float32 (T, D);
   the views are fused by ``concat`` (T, V*D) or ``mean`` (T, D).
2. **Steps.** Each demonstration's features, z-normalised over all demo frames, are split into n
   contiguous steps minimising the mean over steps of the within-step feature standard deviation
   (mean over features of the per-feature std), each step at least max(``min_len``, ``min_frac``
   T) frames long. Solved exactly by dynamic programming over split points (:func:`segment`,
   O(n T^2) after an O(T^2 D) cost table from prefix sums of x and x^2); :func:`segment_bruteforce`
   is the reference. The paper's unweighted mean over steps (``segment_weighting="mean"``) rewards
   cutting off short quiet stretches (the robot at rest before or after the task); the default
   ``length`` weights each step's std by its share of the frames instead (the frame-averaged
   within-step std). Measured with the pixels encoder on 30 of the 40 training tasks (fit on one
   demo, VOC on five others): 0.85 with ``length`` against 0.83 with ``mean`` (0.91 vs 0.90 from
   five demos), and closer to the simulator's keyframes (``benchmarks/results/perceptual.md``).
   ``min_frac`` (0.2) keeps every step a substantial share of the demo.
   ``n_steps=None`` picks n automatically (:func:`choose_num_steps`): the smallest n >= ``n_min``
   whose next step improves the cost by less than ``auto_threshold`` (relative), capped at ``n_max``
   (on Meta-World demos it mostly lands on ``n_max`` = 4: extra steps keep paying).
3. **Feature selection per step.** Features are z-normalised over all training frames (std floored
   at ``std_floor``). For step i the positives are the FINAL part of step i in every demo (its last
   ``end_frac`` share of frames, at least one): the reward of step i is meant to say "step i is
   being completed", so it rises towards the step's end rather than being flat over the step.
   Negatives are all other demo frames. Each feature gets ``alpha |mu+ - mu-| - (sigma+ + sigma-)``
   (:func:`selection_scores`) and the top ``top_k`` (capped by D) are kept.
4. **Step reward.** The average per-feature Gaussian log-likelihood of the selected features under
   the positives' mean and std (diagonal, std floored at ``sigma_floor`` z-units), mapped to [0, 1]
   by a logistic ``sigmoid(a l + b)`` with ``a >= 0`` (monotone), fitted positives vs negatives on
   cross-fitted log-likelihoods: with several demos each demo is scored by statistics fitted
   without it; with one demo, odd frames by statistics of even frames and vice versa.
5. **Progress** (a function of the current frame alone, so it can serve as a shaping potential).
   Besides the n step detectors a start detector r_0 is fitted the same way (positives: the frames
   of step 1 before its positives). Rule ``anchored`` (default): the reward-weighted mean level
   ``progress = sum_{i=0..n} (i / n) r_i / (sum_i r_i + eps)``: each detector votes for its own
   level i / n (later steps weigh more) with its confidence r_i. Along a demonstration the
   detectors fire in order (start, end of step 1, ..., end of step n), so the vote moves from 0 to
   1 as the evidence passes from one anchor to the next, and it interpolates between two anchors
   as the frame moves from one to the other; frames that match no detector get a low value. On
   10 of the 40 training tasks (fit on one demo, scored on five others, pixels encoder) it gave VOC
   0.91 against 0.80 for ``furthest`` (max_i r_i (i - 1 + r_i) / n) and 0.80 for ``weighted``
   (sum_i i r_i / sum_i i, the paper's kind of weighted sum); see :data:`PROGRESS_RULES`.
6. **Success.** ``success_prob = sigmoid(a l_n + b)`` of the last step's log-likelihood, a 1-d
   logistic fitted on cross-fitted values: positives are demo frames from the demo's last keyframe
   on (the success onset; without keyframes, the last step's positives), negatives all earlier demo
   frames and every frame of the failure episodes given to :func:`fit`.

Multi-view: a "head" (normalisation, selected features, statistics, calibration) is fitted for
every non-empty subset of the rig's cameras on the shared segmentation, so ``progress(...,
cameras=[...])`` works with any subset, each camera alone included. ``instruction`` and
``reference`` are accepted for the interface and not used: the model is fitted for one task.
"""

from __future__ import annotations

import inspect
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from reward_models.base import CheckpointError, DataclassConfigModel, FramesError, check_frames, register
from reward_models.encoders import ENCODERS, FrameEncoder, build_encoder

FUSIONS = ("concat", "mean")
WEIGHTINGS = ("mean", "length")
PROGRESS_RULES = ("anchored", "furthest", "weighted")
"""How step rewards make progress (:func:`combine_progress`); the module docstring compares them."""
ANCHOR_EPS = 1e-3
"""Added to the ``anchored`` rule's denominator: a frame no detector recognises tends to 0, not to noise."""
"""``furthest``: max_i r_i (i - 1 + r_i) / n (default; see the module docstring). ``weighted``:
sum_i i r_i / sum_i i (later steps weigh more; cannot reach 1 while earlier steps' rewards fall)."""


# --------------------------------------------------------------------------- segmentation


def segment_cost_table(x: np.ndarray) -> np.ndarray:
    """Cost of every contiguous segment of ``x``: C[a, b] = mean over features of the std of
    x[a:b] (population std), float64 (T + 1, T + 1); +inf where b <= a.

    Args:
        x: features, float (T, D).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"features must be (T, D) with T >= 1, got shape {x.shape}")
    x = x - x.mean(0)  # centring keeps E[x^2] - E[x]^2 free of cancellation
    t = len(x)
    c1 = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, 0)])
    c2 = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x * x, 0)])
    table = np.full((t + 1, t + 1), np.inf)
    for a in range(t):
        count = np.arange(1, t - a + 1, dtype=np.float64)[:, None]
        mean = (c1[a + 1:] - c1[a]) / count
        sq = (c2[a + 1:] - c2[a]) / count
        var = sq - mean * mean
        var[var <= 1e-12 * sq] = 0.0  # rounding residue, which sqrt would blow up to ~1e-8
        table[a, a + 1:] = np.sqrt(var).mean(1)
    return table


def effective_min_len(num_frames: int, min_len: int, min_frac: float = 0.0) -> int:
    """Shortest step for a demo of ``num_frames``: the larger of ``min_len`` frames and
    ``ceil(min_frac * num_frames)``."""
    return max(int(min_len), int(math.ceil(float(min_frac) * num_frames)), 1)


def _check_segmentable(t: int, n: int, min_len: int) -> None:
    if n < 1 or min_len < 1:
        raise ValueError(f"need n_steps >= 1 and min_len >= 1, got n_steps={n}, min_len={min_len}")
    if t < n * min_len:
        raise ValueError(
            f"cannot split {t} frames into {n} steps of at least min_len={min_len} frames "
            f"(needs {n * min_len}): use fewer steps (n_steps <= {t // min_len}), a smaller min_len, "
            "or a longer demonstration"
        )


def _dp_tables(table: np.ndarray, n: int, min_len: int) -> tuple[np.ndarray, np.ndarray]:
    """best[k, b]: least summed cost of k segments covering frames [0, b); arg: the last start."""
    t = table.shape[0] - 1
    best = np.full((n + 1, t + 1), np.inf)
    arg = np.zeros((n + 1, t + 1), dtype=np.int64)
    best[0, 0] = 0.0
    for k in range(1, n + 1):
        for b in range(k * min_len, t + 1):
            starts = np.arange((k - 1) * min_len, b - min_len + 1)
            vals = best[k - 1, starts] + table[starts, b]
            j = int(np.argmin(vals))
            best[k, b], arg[k, b] = vals[j], starts[j]
    return best, arg


def weighted_cost_table(x: np.ndarray, weighting: str = "mean") -> np.ndarray:
    """:func:`segment_cost_table` of ``x`` ready for the DP, float64 (T + 1, T + 1).

    ``mean`` (the paper): every step counts the same, the objective is the mean over steps of the
    step's mean feature std (the DP sums the table; :func:`segment` divides by n).
    ``length``: each step's std is weighted by its share of the frames, so cutting off a short,
    quiet stretch (the robot at rest) buys nothing by itself.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"segment weighting {weighting!r} unknown: use one of {WEIGHTINGS}")
    table = segment_cost_table(x)
    if weighting == "length":
        t = table.shape[0] - 1
        length = np.arange(t + 1)[None, :] - np.arange(t + 1)[:, None]
        with np.errstate(invalid="ignore"):  # inf * 0 below the diagonal, masked out
            table = np.where(length > 0, table * np.maximum(length, 0) / t, np.inf)
    return table


def _objective(total: float, n: int, weighting: str) -> float:
    return total / n if weighting == "mean" else total


def segment(x: np.ndarray, n: int, min_len: int = 1, weighting: str = "mean",
            table: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Exact split of ``x`` into ``n`` steps minimising the mean within-step feature std.

    Args:
        x: features, float (T, D).
        n: number of steps.
        min_len: shortest step, in frames.
        weighting: ``mean`` (mean over steps, the paper) or ``length`` (steps weighted by their
            share of frames); see :func:`weighted_cost_table`.
        table: optional precomputed :func:`weighted_cost_table` of ``x`` for ``weighting``.

    Returns:
        ``(bounds, cost)``: int64 (n + 1,) with bounds[0] = 0, bounds[n] = T (step i is frames
        bounds[i]:bounds[i+1]), and the objective's value.

    Raises:
        ValueError: when T < n * min_len (names the numbers and the fix).
    """
    x = np.asarray(x)
    t = len(x)
    _check_segmentable(t, n, min_len)
    table = weighted_cost_table(x, weighting) if table is None else table
    best, arg = _dp_tables(table, n, min_len)
    bounds = [t]
    for k in range(n, 0, -1):
        bounds.append(int(arg[k, bounds[-1]]))
    return np.array(bounds[::-1], dtype=np.int64), _objective(float(best[n, t]), n, weighting)


def segment_bruteforce(x: np.ndarray, n: int, min_len: int = 1, weighting: str = "mean") -> tuple[np.ndarray, float]:
    """:func:`segment` by trying every split with ``np.std`` (reference for tests; exponential in n)."""
    x = np.asarray(x, dtype=np.float64)
    t = len(x)
    _check_segmentable(t, n, min_len)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"segment weighting {weighting!r} unknown: use one of {WEIGHTINGS}")
    best_bounds, best_cost = None, np.inf
    for cuts in itertools.combinations(range(1, t), n - 1):
        bounds = (0, *cuts, t)
        spans = list(zip(bounds[:-1], bounds[1:]))
        if min(b - a for a, b in spans) < min_len:
            continue
        stds = np.array([x[a:b].std(0).mean() for a, b in spans])
        share = np.array([(b - a) / t for a, b in spans])
        cost = float(stds.mean() if weighting == "mean" else (stds * share).sum())
        if cost < best_cost - 1e-12:
            best_bounds, best_cost = bounds, cost
    return np.array(best_bounds, dtype=np.int64), best_cost


def segmentation_costs(x: np.ndarray, n_max: int, min_len: int = 1, weighting: str = "mean") -> np.ndarray:
    """Optimal objective of :func:`segment` for n = 1..n_max steps, float64 (n_max,); +inf where infeasible."""
    best, _ = _dp_tables(weighted_cost_table(x, weighting), n_max, min_len)
    return np.array([_objective(float(best[k, len(x)]), k, weighting) for k in range(1, n_max + 1)])


def choose_num_steps(costs: np.ndarray, n_min: int = 2, threshold: float = 0.1) -> int:
    """The number of steps from optimal costs per n (``costs[n-1]`` for n steps).

    Rule: the smallest n >= ``n_min`` such that one more step improves the mean within-step std by
    less than ``threshold`` of its value (``costs[n] > (1 - threshold) costs[n-1]``); the largest
    feasible n when every extra step still pays.
    """
    costs = np.asarray(costs, dtype=np.float64)
    feasible = int(np.isfinite(costs).sum())
    if feasible == 0:
        raise ValueError("no feasible number of steps: the demonstration is shorter than min_len")
    n_min = min(max(1, n_min), feasible)
    for n in range(n_min, feasible):
        if costs[n] > (1.0 - threshold) * costs[n - 1]:
            return n
    return feasible


# --------------------------------------------------------------------------- segmentation quality


def keyframe_bounds(keyframes: Sequence[int], num_frames: int, n: int) -> np.ndarray | None:
    """Ground-truth n-step bounds from simulator keyframes (obs indices where each step ENDS).

    Rule: split after each of the first n - 1 keyframes (a keyframe is the last frame of its step);
    everything after forms the last step (so with 2 keyframes and n = 3 the frames after the
    final keyframe, the robot holding the goal, are the third step). Returns int64 (n + 1,) like
    :func:`segment`, or None when the episode has fewer than n - 1 keyframes before its last frame.
    """
    cuts = [int(k) + 1 for k in keyframes if 0 < int(k) + 1 < num_frames][: n - 1]
    if len(cuts) < n - 1:
        return None
    return np.array([0, *cuts, num_frames], dtype=np.int64)


def segmentation_jaccard(bounds: Sequence[int], true_bounds: Sequence[int]) -> np.ndarray:
    """Per-step Jaccard overlap |S_i ∩ G_i| / |S_i ∪ G_i| of two n-step splits of the same frames.

    Args:
        bounds: int (n + 1,) discovered split (see :func:`segment`).
        true_bounds: int (n + 1,) ground-truth split, same n and same number of frames.
    Returns:
        float64 (n,).
    """
    b, g = np.asarray(bounds, dtype=np.int64), np.asarray(true_bounds, dtype=np.int64)
    if b.shape != g.shape or b[0] != g[0] or b[-1] != g[-1]:
        raise ValueError(f"splits differ in steps or frames: {b.tolist()} vs {g.tolist()}")
    inter = np.maximum(0, np.minimum(b[1:], g[1:]) - np.maximum(b[:-1], g[:-1]))
    union = (b[1:] - b[:-1]) + (g[1:] - g[:-1]) - inter
    return inter / union


def random_bounds(num_frames: int, n: int, min_len: int, rng: np.random.Generator) -> np.ndarray:
    """An ordered-random n-step split: uniform over all splits whose steps are >= ``min_len``."""
    _check_segmentable(num_frames, n, min_len)
    slack = num_frames - n * min_len  # frames beyond the minimum, shared out by stars and bars
    bars = np.sort(rng.choice(slack + n - 1, size=n - 1, replace=False)) if n > 1 else np.zeros(0, np.int64)
    extra = np.diff(np.concatenate([[-1], bars, [slack + n - 1]])) - 1
    return np.concatenate([[0], np.cumsum(min_len + extra)]).astype(np.int64)


def random_split_jaccard(true_bounds: Sequence[int], min_len: int, draws: int = 200, seed: int = 0) -> np.ndarray:
    """Expected per-step Jaccard of :func:`random_bounds` against ``true_bounds``, float64 (n,)."""
    g = np.asarray(true_bounds, dtype=np.int64)
    rng = np.random.default_rng(seed)
    n, t = len(g) - 1, int(g[-1])
    return np.mean([segmentation_jaccard(random_bounds(t, n, min_len, rng), g) for _ in range(draws)], axis=0)


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


def _logistic_fit(x: np.ndarray, y: np.ndarray, ridge: float = 1e-2, iters: int = 50) -> tuple[float, float]:
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
        p = _sigmoid(a * u + b)
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


def _sigmoid(v: np.ndarray) -> np.ndarray:
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


# --------------------------------------------------------------------------- the model


@dataclass
class PerceptualConfig:
    """Everything that builds a :class:`PerceptualReward` besides its fitted statistics.

    Attributes:
        cameras: camera names, in the order of the rig.
        image_size: (height, width) of input frames.
        encoder: ``{"name": ..., **kwargs}`` rebuilding the encoder with ``build_encoder``.
        fusion: ``concat`` (views side by side) or ``mean`` (average of the views' features).
        n_steps: steps per demonstration (None: chosen by :func:`choose_num_steps`).
        n_min, n_max, auto_threshold: the automatic rule's bounds and relative threshold.
        min_len: shortest step, frames.
        min_frac: shortest step as a share of each demo's length (the larger of the two applies).
        segment_weighting: ``mean`` (the paper) or ``length``; see :func:`weighted_cost_table`.
        alpha, top_k: feature selection (score weight, kept features per step).
        end_frac: share of each step's final frames used as its positives.
        std_floor: floor of the per-feature std in z-normalisation (feature units).
        sigma_floor: floor of the positives' std (z units).
        q_max: per-feature deviation cap of the log-likelihood, in stds (None: uncapped).
        progress_rule: see :data:`PROGRESS_RULES`.
        device: ``auto`` / ``cpu`` / ``cuda``, passed to encoders that take a device.
        task, instruction: of the demonstrations it was fitted on (informative).
        fit_info: demos, frames, per-demo bounds, seconds (informative).
    """

    cameras: tuple[str, ...] = ("corner", "corner2", "gripperPOV")
    image_size: tuple[int, int] = (96, 96)
    encoder: dict = field(default_factory=lambda: {"name": "pixels"})
    fusion: str = "concat"
    n_steps: int | None = None
    n_min: int = 2
    n_max: int = 4
    auto_threshold: float = 0.1
    min_len: int = 5
    min_frac: float = 0.2
    segment_weighting: str = "length"
    alpha: float = 5.0
    top_k: int = 32
    end_frac: float = 0.5
    std_floor: float = 1e-3
    sigma_floor: float = 0.3
    q_max: float | None = None
    progress_rule: str = "anchored"
    device: str = "auto"
    task: str = ""
    instruction: str = ""
    fit_info: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ValueError naming a bad field and its allowed values."""
        self.cameras, self.image_size = tuple(self.cameras), tuple(int(s) for s in self.image_size)
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras must be distinct camera names, got {list(self.cameras)}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion={self.fusion!r} unknown: use one of {FUSIONS}")
        if self.segment_weighting not in WEIGHTINGS:
            raise ValueError(f"segment_weighting={self.segment_weighting!r} unknown: use one of {WEIGHTINGS}")
        if self.progress_rule not in PROGRESS_RULES:
            raise ValueError(f"progress_rule={self.progress_rule!r} unknown: use one of {PROGRESS_RULES}")
        if not 0.0 < float(self.end_frac) <= 1.0:
            raise ValueError(f"end_frac={self.end_frac} must be in (0, 1]")
        if int(self.top_k) < 1 or int(self.min_len) < 1 or int(self.n_max) < 1:
            raise ValueError(f"top_k, min_len and n_max must be >= 1, got {self.top_k}, {self.min_len}, {self.n_max}")
        if not isinstance(self.encoder, Mapping) or "name" not in self.encoder:
            raise ValueError(f"encoder must be a dict with a 'name' (one of {sorted(ENCODERS)}), got {self.encoder!r}")


@dataclass
class Head:
    """What one camera subset needs: z-normalisation, per-step statistics, calibrations.

    Attributes:
        mean, std: float64 (D,) z-normalisation of the subset's fused features.
        stats: the per-detector :class:`StepStats` (row 0 the start, then steps 1..n).
        calib: float64 (n + 1, 2) logistic (a, b) mapping detector i's log-likelihood to its reward.
        success: float64 (2,) logistic (a, b) on the last step's log-likelihood.
    """

    mean: np.ndarray
    std: np.ndarray
    stats: StepStats
    calib: np.ndarray
    success: np.ndarray


ENCODER_SEED = 0
"""Torch seed under which encoders are built (random-weight encoders must rebuild identically)."""


def resolve_device(device: str | None) -> str:
    """``auto`` / None -> ``cuda`` when torch sees a GPU, else ``cpu``; anything else unchanged."""
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def _build_encoder(spec: Mapping[str, Any], device: str | None) -> FrameEncoder:
    """``build_encoder`` from a config dict, under :data:`ENCODER_SEED`; encoders that take a
    ``device`` (a named parameter or ``**kwargs``) get ``device`` resolved on THIS machine, so a
    model fitted on a GPU loads on a CPU."""
    spec = dict(spec)
    name = spec.pop("name")
    factory = ENCODERS.get(name)
    if factory is not None:
        try:
            params = inspect.signature(factory).parameters.values()
            accepts = any(p.name == "device" or p.kind == p.VAR_KEYWORD for p in params)
        except (TypeError, ValueError):
            accepts = False
        if accepts:
            spec["device"] = resolve_device(device)
    import torch

    # a fixed seed, kept local: an encoder with random weights (no weights file) is rebuilt identically on load
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ENCODER_SEED)
        return build_encoder(name, **spec)


@register("perceptual")
class PerceptualReward(DataclassConfigModel):
    """Perceptual-feature progress and success model of one task; see the module docstring."""

    version = 1

    def __init__(self, cfg: PerceptualConfig, heads: dict[str, Head], encoder: FrameEncoder | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.heads = heads
        self.encoder = encoder if encoder is not None else _build_encoder(cfg.encoder, cfg.device)
        self.n_steps = int(next(iter(heads.values())).calib.shape[0]) - 1 if heads else 0  # row 0: the start

    # --- RewardModel plumbing --------------------------------------------------------------
    def config(self) -> dict:
        cfg = super().config()
        cfg["encoder"] = dict(self.encoder.config())
        return cfg

    def _save_weights(self, directory: Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        for key, h in self.heads.items():
            arrays.update({f"{key}/mean": h.mean, f"{key}/std": h.std, f"{key}/idx": h.stats.idx,
                           f"{key}/mu": h.stats.mu, f"{key}/sigma": h.stats.sigma,
                           f"{key}/calib": h.calib, f"{key}/success": h.success})
        np.savez(directory / "stats.npz", **arrays)

    @classmethod
    def _from_checkpoint(cls, directory: Path, config: dict, device: str | None) -> "PerceptualReward":
        try:
            cfg = PerceptualConfig(**config)
        except TypeError as err:  # keys this code does not know: a checkpoint of another release
            raise CheckpointError(f"{directory}/config.json does not fit this code's perceptual config: {err}") from err
        if device is not None:
            cfg.device = device
        try:
            with np.load(directory / "stats.npz") as f:
                arrays = {k: f[k] for k in f.files}
        except FileNotFoundError as err:
            raise CheckpointError(f"{directory} has no stats.npz: re-save or re-fit the model") from err
        except Exception as err:  # numpy raises several kinds on a damaged file
            raise CheckpointError(f"{directory}/stats.npz is damaged: {err}") from err
        heads = {}
        try:
            for key in sorted({k.rsplit("/", 1)[0] for k in arrays}):
                a = lambda name: arrays[f"{key}/{name}"]  # noqa: E731
                heads[key] = Head(a("mean"), a("std"), StepStats(a("idx"), a("mu"), a("sigma")), a("calib"), a("success"))
        except KeyError as err:
            raise CheckpointError(f"{directory}/stats.npz lacks {err}: re-save or re-fit the model") from err
        if _head_key(cfg.cameras) not in heads:
            raise CheckpointError(f"{directory}/stats.npz has no statistics for the rig {list(cfg.cameras)}")
        return cls(cfg, heads)

    # --- features --------------------------------------------------------------------------
    def _check_cameras(self, cameras: Sequence[str] | str | None) -> tuple[str, ...]:
        if cameras is None:
            return self.cfg.cameras
        cameras = (cameras,) if isinstance(cameras, str) else tuple(cameras)
        unknown = [c for c in cameras if c not in self.cfg.cameras]
        if unknown or not cameras or len(set(cameras)) != len(cameras):
            raise FramesError(
                f"cameras {list(cameras)} are not distinct cameras of this model's rig {list(self.cfg.cameras)}: "
                "score with a subset of the rig"
            )
        return tuple(c for c in self.cfg.cameras if c in cameras)  # rig order: heads are keyed by it

    def camera_features(self, frames: Mapping[str, np.ndarray], cameras: Sequence[str] | str | None = None) -> dict[str, np.ndarray]:
        """Encoder features per camera, camera -> float32 (T, D): ONE batched pass per camera.

        Frames are checked with :func:`~reward_models.base.check_frames` (cameras, dtype, shape).
        """
        cams = self._check_cameras(cameras)
        check_frames(frames, cams, self.image_size, known=self.cfg.cameras)
        return {c: encode_frames(self.encoder, frames[c]) for c in cams}

    def step_logliks(self, feats: Mapping[str, np.ndarray]) -> np.ndarray:
        """Average per-feature log-likelihood of every frame under every detector, float64 (T, n + 1)
        (column 0 the start detector, column i step i), from :meth:`camera_features` output."""
        cams = tuple(c for c in self.cfg.cameras if c in feats)
        head = self.heads.get(_head_key(cams))
        if head is None:
            raise FramesError(f"no statistics for cameras {list(cams)}; this model has {sorted(self.heads)}")
        x = fuse(feats, cams, self.cfg.fusion)
        return head.stats.loglik((x - head.mean) / head.std, self.cfg.q_max)

    def step_rewards_from_features(self, feats: Mapping[str, np.ndarray]) -> np.ndarray:
        """Calibrated rewards in [0, 1], float64 (T, n + 1): column 0 the start state, column i step i."""
        head = self.heads[_head_key(tuple(c for c in self.cfg.cameras if c in feats))]
        return _sigmoid(self.step_logliks(feats) * head.calib[:, 0] + head.calib[:, 1])

    def outputs_from_features(self, feats: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``(progress float32 (T,), success_prob float32 (T,))`` from :meth:`camera_features`."""
        head = self.heads[_head_key(tuple(c for c in self.cfg.cameras if c in feats))]
        ll = self.step_logliks(feats)
        rewards = _sigmoid(ll * head.calib[:, 0] + head.calib[:, 1])
        success = _sigmoid(ll[:, -1] * head.success[0] + head.success[1])
        return combine_progress(rewards, self.cfg.progress_rule).astype(np.float32), success.astype(np.float32)

    # --- the RewardModel interface ---------------------------------------------------------
    def step_rewards(self, frames: Mapping[str, np.ndarray], instruction: str = "", reference: Any = None,
                     cameras: Sequence[str] | str | None = None) -> np.ndarray:
        """Step rewards r_1..r_n in [0, 1] of every frame, float64 (T, n) (the start detector left out)."""
        return self.step_rewards_from_features(self.camera_features(frames, cameras))[:, 1:]

    def progress(self, frames: Mapping[str, np.ndarray], instruction: str, reference: Any = None,
                 cameras: Sequence[str] | str | None = None) -> np.ndarray:
        """Progress float32 (T,) in [0, 1], a function of each frame alone.

        Args:
            frames: camera -> uint8 (T, H, W, 3) for the cameras used.
            instruction, reference: accepted for the interface; unused (the model is per task).
            cameras: score with this subset of the rig (any non-empty subset; default all).
        """
        return self.outputs_from_features(self.camera_features(frames, cameras))[0]

    def success_prob(self, frames: Mapping[str, np.ndarray], instruction: str, reference: Any = None,
                     cameras: Sequence[str] | str | None = None) -> np.ndarray:
        """P(task done) per frame, float32 (T,) in [0, 1], from the last step's log-likelihood."""
        return self.outputs_from_features(self.camera_features(frames, cameras))[1]

    def score(self, frames: Mapping[str, np.ndarray], instruction: str, reference: Any = None,
              cameras: Sequence[str] | str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(progress, success_prob)`` from ONE encoder pass over the frames."""
        return self.outputs_from_features(self.camera_features(frames, cameras))


def _head_key(cameras: Sequence[str]) -> str:
    return "+".join(cameras)


def encode_frames(encoder: FrameEncoder, frames: np.ndarray, batch: int = 256) -> np.ndarray:
    """``encoder.encode`` in chunks of ``batch`` frames: uint8 (T, H, W, 3) -> float32 (T, D)."""
    out = [np.asarray(encoder.encode(frames[i:i + batch]), dtype=np.float32) for i in range(0, len(frames), batch)]
    feats = np.concatenate(out) if out else np.zeros((0, encoder.feature_dim), np.float32)
    if feats.ndim != 2 or len(feats) != len(frames):
        raise ValueError(f"encoder {encoder.name!r} returned {feats.shape} for {len(frames)} frames: expected (T, D)")
    return feats


def fuse(feats: Mapping[str, np.ndarray], cameras: Sequence[str], fusion: str) -> np.ndarray:
    """Fused features of ``cameras``: concat -> (T, V*D), mean -> (T, D); float64."""
    parts = [np.asarray(feats[c], dtype=np.float64) for c in cameras]
    return np.concatenate(parts, axis=1) if fusion == "concat" else np.mean(parts, axis=0)


def combine_progress(rewards: np.ndarray, rule: str = "anchored") -> np.ndarray:
    """Progress float64 (T,) in [0, 1] by ``rule`` (:data:`PROGRESS_RULES`).

    Args:
        rewards: float (T, n + 1) in [0, 1]: column 0 the start-state detector, column i step i's reward.
    """
    r_all = np.clip(np.asarray(rewards, dtype=np.float64), 0.0, 1.0)
    r = r_all[:, 1:]
    n = r.shape[1]
    steps = np.arange(1, n + 1, dtype=np.float64)
    if rule == "anchored":
        levels = np.arange(n + 1, dtype=np.float64) / n
        return (r_all @ levels) / (r_all.sum(1) + ANCHOR_EPS)
    if rule == "furthest":
        return np.max(r * (steps - 1 + r) / n, axis=1)
    if rule == "weighted":
        return r @ steps / steps.sum()
    raise ValueError(f"progress rule {rule!r} unknown: use one of {PROGRESS_RULES}")


# --------------------------------------------------------------------------- fitting


def _subsets(cameras: Sequence[str]) -> list[tuple[str, ...]]:
    return [c for k in range(len(cameras), 0, -1) for c in itertools.combinations(cameras, k)]


def _normaliser(x: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(0), np.maximum(x.std(0), floor)


def _positive_masks(bounds: list[np.ndarray], end_frac: float) -> np.ndarray:
    """bool (n + 1, N) over the concatenated demo frames: row 0 the frames of step 1 before its
    positives (the start state; at least one), row i the final ``end_frac`` of step i."""
    n = len(bounds[0]) - 1
    masks = []
    for b in bounds:
        m = np.zeros((n + 1, int(b[-1])), dtype=bool)
        m[0, :max(1, int(math.floor((1.0 - end_frac) * int(b[1]))))] = True
        for i in range(n):
            length = int(b[i + 1] - b[i])
            m[i + 1, int(b[i + 1]) - max(1, int(math.ceil(end_frac * length))):int(b[i + 1])] = True
        masks.append(m)
    return np.concatenate(masks, axis=1)


def _success_labels(demos: Sequence[Any], bounds: list[np.ndarray], positives_last: np.ndarray) -> np.ndarray:
    """bool (N,): frames from each demo's last keyframe on (the success onset), else the last step's positives."""
    labels, offset = [], 0
    for ep, b in zip(demos, bounds):
        t = int(b[-1])
        keyframes = np.asarray(getattr(ep, "keyframes", None) if getattr(ep, "keyframes", None) is not None else [], dtype=np.int64)
        if len(keyframes) and 0 < int(keyframes[-1]) < t:
            labels.append(np.arange(t) >= int(keyframes[-1]))
        else:
            labels.append(positives_last[offset:offset + t])
        offset += t
    return np.concatenate(labels)


def _fit_head(x: np.ndarray, folds: np.ndarray, positives: np.ndarray, success_pos: np.ndarray,
              failures: np.ndarray | None, cfg: PerceptualConfig) -> Head:
    """Fit one camera subset's head on demo features x (N, D) (see the module docstring)."""
    mean, std = _normaliser(x, cfg.std_floor)
    z = (x - mean) / std
    stats = fit_step_stats(z, positives, cfg.alpha, cfg.top_k, cfg.sigma_floor)
    # cross-fitted log-likelihoods: every demo frame scored by statistics that did not see it
    ll = np.empty((len(x), positives.shape[0]))
    for f in np.unique(folds):
        held = folds == f
        train_pos = positives[:, ~held]
        usable = train_pos.any(1).all() and (~train_pos).any(1).all()
        # a fold leaving some step without positives (or negatives) is scored by the full fit
        sub = fit_step_stats(z[~held], train_pos, cfg.alpha, cfg.top_k, cfg.sigma_floor) if usable else stats
        ll[held] = sub.loglik(z[held], cfg.q_max)
    calib = np.array([_logistic_fit(ll[:, i], positives[i]) for i in range(positives.shape[0])])
    ll_last, labels = ll[:, -1], success_pos
    if failures is not None and len(failures):
        ll_last = np.concatenate([ll_last, stats.loglik((failures - mean) / std, cfg.q_max)[:, -1]])
        labels = np.concatenate([labels, np.zeros(len(failures), dtype=bool)])
    success = np.array(_logistic_fit(ll_last, labels))
    return Head(mean, std, stats, calib, success)


def _episode_frames(ep: Any, cameras: Sequence[str], image_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """A demonstration's frames of ``cameras``, checked: camera -> uint8 (T, H, W, 3)."""
    images = getattr(ep, "images", None)
    if images is None:
        raise ValueError(f"fit needs episodes.Episode objects (with .images), got {type(ep).__name__}")
    missing = [c for c in cameras if c not in images]
    if missing:
        raise FramesError(f"a demonstration lacks camera(s) {missing} (it has {list(images)}): "
                          f"fit with cameras={list(images)} or record those cameras")
    frames = {c: images[c] for c in cameras}
    size = tuple(frames[cameras[0]].shape[1:3])
    if size != tuple(image_size):
        raise FramesError(f"demonstration frames are {size[0]}x{size[1]} but image_size is {image_size[0]}x{image_size[1]}: "
                          f"set image_size={size[0]} (reward.image_size={size[0]} on the command line)")
    check_frames(frames, cameras, image_size)
    return frames


def fit(
    episodes: Sequence[Any],
    encoder: FrameEncoder | str = "pixels",
    n_steps: int | None = None,
    cameras: Sequence[str] | None = None,
    failures: Sequence[Any] = (),
    encoder_kwargs: Mapping[str, Any] | None = None,
    **config: Any,
) -> PerceptualReward:
    """Fit a :class:`PerceptualReward` from 1 to 10 demonstrations of one task.

    Args:
        episodes: successful demonstrations (``episodes.Episode``; frames of ``cameras``).
        encoder: an encoder name built with ``encoder_kwargs`` (and the config's ``device`` where
            the encoder takes one), or a :class:`~reward_models.encoders.FrameEncoder`. A checkpoint
            rebuilds the encoder from its ``config()``: pass a name (or an instance with a weights
            file) when the model will be saved, since an instance with random weights built
            elsewhere cannot be rebuilt identically.
        n_steps: steps per demonstration (None: automatic, see :func:`choose_num_steps`).
        cameras: the rig (default: the first demo's cameras).
        failures: failed episodes of the task: extra negatives for the success calibration.
        **config: further :class:`PerceptualConfig` fields (fusion, min_len, alpha, top_k, ...).

    Raises:
        ValueError: no demos, a demo too short for the steps asked, bad config, an unknown encoder.
        FramesError: a demo lacking a camera, or frames not of ``image_size``.
        FileNotFoundError: an encoder weights file that does not exist (raised by the encoder).
    """
    started = time.perf_counter()
    episodes = list(episodes)
    if not episodes:
        raise ValueError("fit needs at least one demonstration episode")
    cameras = tuple(cameras) if cameras else tuple(episodes[0].images)
    image_size = tuple(config.pop("image_size", None) or episodes[0].image_size)
    cfg = PerceptualConfig(cameras=cameras, image_size=image_size, n_steps=n_steps, **config)
    cfg.validate()  # a bad option fails before any encoder is built
    if isinstance(encoder, str):
        enc = _build_encoder({"name": encoder, **dict(encoder_kwargs or {})}, cfg.device)
    else:
        enc = encoder
    cfg.encoder = dict(enc.config())
    cfg.validate()
    cfg.task = str(getattr(episodes[0], "task", ""))
    cfg.instruction = str(getattr(episodes[0], "instruction", ""))

    demo_feats = [{c: encode_frames(enc, f) for c, f in _episode_frames(ep, cameras, cfg.image_size).items()} for ep in episodes]
    fail_feats = [{c: encode_frames(enc, f) for c, f in _episode_frames(ep, cameras, cfg.image_size).items()} for ep in failures]
    lengths = [len(next(iter(f.values()))) for f in demo_feats]

    # one segmentation, on the whole rig's fused features, shared by every camera subset
    full = [fuse(f, cameras, cfg.fusion) for f in demo_feats]
    mean, std = _normaliser(np.concatenate(full), cfg.std_floor)
    z_demos = [(x - mean) / std for x in full]
    min_lens = [effective_min_len(t, cfg.min_len, cfg.min_frac) for t in lengths]
    if n_steps is None:
        n_cap = min(int(cfg.n_max), *(t // m for t, m in zip(lengths, min_lens)))
        if n_cap < 1:
            k = int(np.argmin([t // m for t, m in zip(lengths, min_lens)]))
            _check_segmentable(lengths[k], 1, min_lens[k])
        costs = np.mean([segmentation_costs(z, n_cap, m, cfg.segment_weighting) for z, m in zip(z_demos, min_lens)], axis=0)
        n = choose_num_steps(costs, int(cfg.n_min), float(cfg.auto_threshold))
    else:
        n = int(n_steps)
    for t, m in zip(lengths, min_lens):
        _check_segmentable(t, n, m)  # raises, naming the numbers and the fix
    bounds = [segment(z, n, m, cfg.segment_weighting)[0] for z, m in zip(z_demos, min_lens)]

    positives = _positive_masks(bounds, float(cfg.end_frac))
    success_pos = _success_labels(episodes, bounds, positives[-1])
    if len(episodes) > 1:
        folds = np.concatenate([np.full(t, k) for k, t in enumerate(lengths)])
    else:
        folds = np.arange(lengths[0]) % 2  # odd frames scored by statistics of even frames, and back
    heads = {}
    for subset in _subsets(cameras):
        x = np.concatenate([fuse(f, subset, cfg.fusion) for f in demo_feats])
        fx = np.concatenate([fuse(f, subset, cfg.fusion) for f in fail_feats]) if fail_feats else None
        heads[_head_key(subset)] = _fit_head(x, folds, positives, success_pos, fx, cfg)
    cfg.n_steps = n
    cfg.fit_info = {"demos": len(episodes), "failures": len(fail_feats), "frames": int(sum(lengths)),
                    "bounds": [b.tolist() for b in bounds], "seconds": round(time.perf_counter() - started, 3)}
    return PerceptualReward(cfg, heads, encoder=enc)


# --------------------------------------------------------------------------- config and CLI

CONFIG_FIELDS = ("fusion", "n_min", "n_max", "auto_threshold", "min_len", "min_frac", "segment_weighting", "alpha",
                 "top_k", "end_frac", "std_floor", "sigma_floor", "q_max", "progress_rule", "device")
"""Keys of ``configs/reward/perceptual.yaml`` passed to :func:`fit` as :class:`PerceptualConfig` fields."""


def fit_kwargs(reward_cfg: Mapping[str, Any], strict: bool = True) -> dict:
    """:func:`fit` keyword arguments from a ``configs/reward/perceptual.yaml`` mapping.

    ``cameras``, ``image_size`` (an int side or [H, W]), ``n_steps``, ``encoder_kwargs`` and the
    :data:`CONFIG_FIELDS` present. Unknown keys raise ValueError naming them when ``strict``;
    ``strict=False`` ignores them (``stepwise-train`` merges this file into its own ``reward``
    block, whose shaping keys are not the model's).
    """
    known = {"kind", "encoder", "cameras", "image_size", "n_steps", "encoder_kwargs", *CONFIG_FIELDS}
    unknown = sorted(set(reward_cfg) - known)
    if unknown and strict:
        raise ValueError(f"reward config keys {unknown} are unknown to the perceptual reward: use {sorted(known)}")
    size = reward_cfg.get("image_size", 96)
    size = (int(size), int(size)) if isinstance(size, (int, float, str)) else tuple(int(s) for s in size)
    out = {k: reward_cfg[k] for k in CONFIG_FIELDS if k in reward_cfg}
    out.update(cameras=list(reward_cfg.get("cameras") or []) or None, image_size=size,
               n_steps=None if reward_cfg.get("n_steps") in (None, "null", "auto") else int(reward_cfg["n_steps"]),
               encoder_kwargs=dict(reward_cfg.get("encoder_kwargs") or {}))
    return out


def load_task_episodes(data: Any, cameras: Sequence[str] | None, max_demos: int | None = 10,
                       max_failures: int = 10) -> tuple[list[Any], list[Any]]:
    """Successful expert demos and failed episodes of ONE task from stores (file, directory or list).

    Returns ``(demos, failures)`` in store order, at most ``max_demos`` / ``max_failures``.
    Raises ValueError when the stores hold several tasks (the model is per task) or no success.
    """
    from episodes import EpisodeStore
    from reward_models.evaluate import resolve_stores

    demos, failures, tasks = [], [], set()
    for path in resolve_stores(data):
        with EpisodeStore(path, cameras=list(cameras) if cameras else None) as store:
            for i in range(len(store)):
                attrs = store.episode_attrs(i)
                tasks.add(attrs["task"])
                if attrs["success"] and attrs["kind"] == "expert":
                    if max_demos is None or len(demos) < max_demos:
                        demos.append(store[i])
                elif not attrs["success"] and len(failures) < max_failures:
                    failures.append(store[i])
    if len(tasks) > 1:
        raise ValueError(f"data holds {len(tasks)} tasks {sorted(tasks)}: the perceptual reward is fitted per task, "
                         "give one task's store (e.g. data=data/demos/drawer-open.hdf5)")
    if not demos:
        raise ValueError(f"data {data!r} holds no successful expert demonstration to fit on: collect some with stepwise-collect")
    return demos, failures


def fit_from_config(cfg: Any) -> PerceptualReward:
    """The ``stepwise-train-rm reward=perceptual encoder=<name> data=<store> out=<dir>`` trainer.

    Reads ``cfg.encoder`` (an encoder name; else ``cfg.reward.encoder``), ``cfg.reward``
    (``configs/reward/perceptual.yaml``),
    ``cfg.data`` (one task's store(s)), ``cfg.max_episodes_per_task`` (demos used, default up to
    10) and ``cfg.out``; fits, saves to ``cfg.out`` and returns the model.
    """
    import logging

    from omegaconf import OmegaConf

    log = logging.getLogger(__name__)
    try:
        import torch

        torch.set_num_threads(int(cfg.get("num_threads", 1) or 1))
    except ImportError:  # pragma: no cover - torch is a dependency; numpy-only encoders need none
        pass
    reward = OmegaConf.to_container(cfg.reward, resolve=True) if OmegaConf.is_config(cfg.reward) else dict(cfg.reward)
    encoder = cfg.get("encoder") or reward.get("encoder")
    if not encoder:
        raise ValueError(f"reward=perceptual needs encoder=<name> (or reward.encoder=<name>): one of {sorted(ENCODERS)}")
    kwargs = fit_kwargs(reward)
    data = OmegaConf.to_container(cfg.data) if OmegaConf.is_config(cfg.data) else cfg.data
    cap = cfg.get("max_episodes_per_task")
    demos, failures = load_task_episodes(data, kwargs["cameras"], max_demos=int(cap) if cap else 10)
    model = fit(demos, str(encoder), failures=failures, **kwargs)
    model.save(cfg.out)
    log.info("fitted a %d-step perceptual reward (%s) on %d demos (+%d failures) in %.1f s -> %s", model.n_steps,
             encoder, len(demos), len(failures), model.cfg.fit_info["seconds"], cfg.out)
    return model
