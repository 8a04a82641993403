"""Potential-based reward shaping (Ng, Harada and Russell 1999) from a reward model's progress.

    r'_t = r_t + weight * (gamma * Phi(s_{t+1}) - Phi(s_t)),   Phi(s_{t+1}) = 0 at true terminals

with ``gamma`` the agent's own discount. At truncations (time limits) the real Phi(s_{t+1}) is
used, since the agent bootstraps there. Shaping of this form leaves the optimal policy unchanged
only if Phi is a function of the state alone, so the potential uses a state-only progress
perspective (``forward``, or ``backward`` given a reference demonstration), never the
history-dependent ``incremental`` or ``fused``. Off-policy learners score a finished episode's
frames in one batched call (:func:`episode_potentials`) before its transitions enter replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

STATE_ONLY_PERSPECTIVES = ("forward", "backward")


@dataclass
class ShapedRewards:
    """Every term of shaped rewards, per transition, float32 (T,), for logging apart.

    Attributes:
        reward: r'_t, what the learner sees.
        env_reward: r_t.
        phi: Phi(s_t).
        phi_next: Phi(s_{t+1}) as used (0 at true terminals).
        shaping: weight * (gamma * phi_next - phi).
    """

    reward: np.ndarray
    env_reward: np.ndarray
    phi: np.ndarray
    phi_next: np.ndarray
    shaping: np.ndarray


def shape_rewards(
    rewards: np.ndarray, potentials: np.ndarray, terminated: np.ndarray, gamma: float, weight: float = 1.0
) -> ShapedRewards:
    """Shape one episode's rewards.

    Args:
        rewards: float (T,) environment rewards.
        potentials: float (T+1,) Phi of every frame (frame t+1 follows action t).
        terminated: bool (T,) true terminal after action t (not a time limit).
        gamma: the agent's discount.
        weight: lambda, the shaping scale.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    potentials = np.asarray(potentials, dtype=np.float64)
    terminated = np.asarray(terminated, dtype=bool)
    if potentials.shape != (len(rewards) + 1,) or terminated.shape != rewards.shape:
        raise ValueError(
            f"need potentials of shape (T+1,) and terminated of shape (T,) for T={len(rewards)} rewards, "
            f"got {potentials.shape} and {terminated.shape}"
        )
    if not np.all(np.isfinite(potentials)):
        raise ValueError("potentials contain NaN or inf: check the reward model's output")
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    phi = potentials[:-1]
    phi_next = np.where(terminated, 0.0, potentials[1:])
    shaping = weight * (gamma * phi_next - phi)
    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    return ShapedRewards(f32(rewards + shaping), f32(rewards), f32(phi), f32(phi_next), f32(shaping))


def episode_potentials(
    model: Any,
    frames: Mapping[str, np.ndarray],
    instruction: str,
    reference: Any = None,
    perspective: str | None = None,
) -> np.ndarray:
    """Phi of every frame of an episode, float32 (T+1,), from ONE batched reward-model call.

    ``perspective`` defaults to ``backward`` with a reference and ``forward`` without; the
    history-dependent ``incremental`` and ``fused`` are refused (they would change the optimal
    policy). Models without perspectives (``progress`` has no such argument) are used as they are.
    """
    import inspect

    if perspective is None:
        perspective = "backward" if reference is not None else "forward"
    if perspective not in STATE_ONLY_PERSPECTIVES:
        raise ValueError(
            f"perspective {perspective!r} depends on the history, so shaping with it is not "
            f"potential-based: use one of {STATE_ONLY_PERSPECTIVES}"
        )
    if "perspective" in inspect.signature(model.progress).parameters:
        return np.asarray(model.progress(frames, instruction, reference=reference, perspective=perspective), np.float32)
    return np.asarray(model.progress(frames, instruction, reference=reference), np.float32)
