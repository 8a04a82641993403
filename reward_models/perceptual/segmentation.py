"""Steps of a demonstration from its features (step 2 of :mod:`reward_models.perceptual`), and how
well a split matches the simulator's keyframes.

:func:`segment` splits features into n contiguous steps minimising the mean within-step feature
std, exactly, by dynamic programming over split points (:func:`segment_bruteforce` is the
reference); :func:`choose_num_steps` picks n; :func:`keyframe_bounds`, :func:`segmentation_jaccard`
and :func:`random_split_jaccard` score a split against ground truth.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np

WEIGHTINGS = ("mean", "length")


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


def check_segmentable(t: int, n: int, min_len: int) -> None:
    """Raise ValueError (naming the numbers and the fix) unless ``t`` frames split into ``n`` steps of ``min_len``."""
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
    check_segmentable(t, n, min_len)
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
    check_segmentable(t, n, min_len)
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
    check_segmentable(num_frames, n, min_len)
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
