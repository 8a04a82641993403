"""A task pair in one shared scene: two tasks (drawer open / close, door, window, faucet) that continue
ONE simulation, for reset-free learning (after RoboFuME).

Only the task of the current direction steps; a flip hands the physics state to the other task
(:meth:`sim.world.SimTask.adopt`), which judges it with its own success test. Resets place both
tasks in one scene variant (:meth:`sim.world.SimTask.reset_to_variant`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sim.tasks import get_task
from sim.world import STATE_DIM, SimTask, StepSignals

# pair name -> (forward task, backward task); both must be built on one model file (checked on build)
TASK_PAIRS: dict[str, tuple[str, str]] = {
    "drawer": ("metaworld/drawer-open", "metaworld/drawer-close"),
    "door": ("metaworld/door-open", "metaworld/door-close"),
    "window": ("metaworld/window-open", "metaworld/window-close"),
    "faucet": ("metaworld/faucet-open", "metaworld/faucet-close"),  # its scripted close expert fails from where
}                                                                      # faucet-open ends: no backward demos
OBS_DIM = STATE_DIM + 2  # the active task's state and a one-hot of the direction


class ResetFreeConfigError(ValueError):
    """A reset-free setting that cannot work (an unknown pair, two tasks that cannot share one scene, or
    a setting of ``stepwise-train-reset-free``); the message names it and the fix."""


def get_pair(pair: str) -> tuple[str, str]:
    """The (forward, backward) task names of a registered pair.

    Raises:
        ResetFreeConfigError: an unknown pair, naming the known ones.
    """
    if pair not in TASK_PAIRS:
        raise ResetFreeConfigError(
            f"pair={pair!r} is not a registered task pair: use one of {sorted(TASK_PAIRS)} "
            "(two tasks that share one scene, e.g. pair=drawer for drawer-open / drawer-close)"
        )
    return TASK_PAIRS[pair]


class TaskPairScene:
    """One continuing simulation shared by a forward and a backward task.

    Only the task of the current direction steps; a flip hands the physics state to the other. The
    policy's observation is the active task's 39-d state plus a one-hot of the direction (41,).

    Args:
        pair: a name of `TASK_PAIRS`.
        cameras: cameras to render (empty: state only, never renders).
        image_size: render size in pixels (int or ``(height, width)``).
        split: the seed split resets draw variants from (train / eval / demo).
        quality: render quality (``fast`` or ``high``, see ``sim.rendering``).
        randomize, randomize_seed: visual randomisation as for :class:`sim.world.SimTask` (default off);
            the active task draws each reset's look and the other task renders with the same one.
    """

    def __init__(self, pair: str, cameras: Sequence[str] = (), image_size: int | tuple[int, int] = 96,
                 split: str = "train", quality: str = "fast", randomize=None, randomize_seed: int = 0) -> None:
        self.pair = pair
        names = get_pair(pair)
        self.tasks = tuple(SimTask(n, cameras=list(cameras), image_size=image_size, quality=quality, split=split,
                                   randomize=randomize, randomize_seed=randomize_seed)
                           for n in names)
        models = {t.scene for t in self.tasks}
        if len(models) != 1:
            raise ResetFreeConfigError(f"pair={pair}: {names[0]} and {names[1]} are built on different scenes "
                                       f"({sorted(models)}); a reset-free pair must share one")
        self.instructions = tuple(get_task(n).instruction for n in names)
        self.direction = 0

    @property
    def active(self) -> SimTask:
        """The task of the current direction (the one that steps)."""
        return self.tasks[self.direction]

    @property
    def instruction(self) -> str:
        """The current instruction, e.g. ``open the drawer``."""
        return self.instructions[self.direction]

    def reset(self, seed: int, direction: int = 0) -> None:
        """Reset the scene: task ``direction`` draws the variant from ``seed`` and starts from its own
        initial state; the other task is reset to the same variant (so both judge one scene)."""
        self.direction = int(direction)
        self.active.reset(seed)
        other = self.tasks[1 - self.direction]
        other.reset_to_variant(self.active.variant, look=self.active.look)
        (m0, _), (m1, _) = self.active.physics, other.physics
        if not np.allclose(m0.body_pos, m1.body_pos):
            raise ResetFreeConfigError(f"pair={self.pair}: the two tasks place the scene differently for one variant; "
                                       "they cannot share one simulation")

    def flip(self) -> StepSignals:
        """Switch the instruction without a reset: the other task continues this simulation.
        Returns the new task's ground truth of the current state."""
        other = self.tasks[1 - self.direction]
        signals = other.adopt(self.active)
        self.direction = 1 - self.direction
        return signals

    def resume(self) -> None:
        """An attempt continues the scene as it is: in process nothing waits between actions (a robot
        behind a server is re-armed instead, see ``policies.reset_free.scene``)."""

    def step(self, action: np.ndarray) -> StepSignals:
        """One action (4,) in [-1, 1] on the active task; its ground-truth signals."""
        return self.active.step(np.clip(np.asarray(action, np.float32), -1.0, 1.0))

    def observation(self) -> np.ndarray:
        """float32 (41,): the active task's state and a one-hot of the direction."""
        onehot = np.zeros(2, np.float32)
        onehot[self.direction] = 1.0
        return np.concatenate([self.active.state, onehot])

    def render(self) -> dict[str, np.ndarray]:
        """camera -> uint8 (H, W, 3) of the current state."""
        return self.active.render()

    def close(self) -> None:
        """Free both tasks' renderers and simulators."""
        for t in self.tasks:
            t.close()
