"""Step keyframes: the rule that cuts a task into N >= 2 steps, from the simulator's own signals.

One rule for every task: a signal (``near_object``, ``grasp_success``) that is off on the first
step and later switches on marks the end of a step at the frame where it first does; the success
frame ends the last step. Events closer than ``min_step_frames`` to the start, to each other or to
the success frame are dropped. When no event survives, the midpoint between start and success
splits the episode in two. Keyframes are frame indices (frame 0 is the reset observation, frame t
the observation after the t-th action); failed episodes keep the events they reached and end at
their last frame.

Used by demonstration collection (``sim.collect``) and by every other writer of episodes that
carry keyframes (the reset-free job's demonstration chains).
"""

from __future__ import annotations

import numpy as np

# The simulator signals whose switching on ends a step (Meta-World `info` keys).
EVENT_SIGNALS = ("near_object", "grasp_success")


def step_keyframes(
    events: dict[str, np.ndarray], success: np.ndarray, min_step_frames: int = 5
) -> np.ndarray:
    """Keyframes from per-step signals (see the module docstring for the rule).

    Args:
        events: signal name -> (T,) values after each action (truthy = on).
        success: (T,) success after each action.
        min_step_frames: the shortest step allowed, in frames.

    Returns:
        int64 (N,) strictly increasing frame indices in [1, T], N >= 2 when T >= 2.
    """
    success = np.asarray(success, dtype=bool)
    num_steps = len(success)
    end = int(np.argmax(success)) + 1 if success.any() else num_steps
    times = []
    for values in events.values():
        on = np.asarray(values) > 0.5
        if len(on) and not on[0] and on.any():
            times.append(int(np.argmax(on)) + 1)
    keyframes: list[int] = []
    for t in sorted(set(times)):
        last = keyframes[-1] if keyframes else 0
        if t - last >= min_step_frames and end - t >= min_step_frames:
            keyframes.append(t)
    if not keyframes and end >= 2:
        keyframes.append(max(1, end // 2))
    keyframes.append(end)
    return np.asarray(keyframes, dtype=np.int64)
