"""The `Robot` contract every driver implements (simulator, remote server, vendor arms).

Shape after LeRobot's ``Robot``: connect, observe, send an action and get back what was actually
applied, reset, close, and specs that say what observations and actions look like. Everything a
policy or reward model needs from a robot goes through this contract, so swapping the simulator
for hardware changes the driver and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

Observation = dict[str, Any]
"""``{"images": {camera: uint8 (H, W, 3)}, "proprio": float32 (P,), "state": float32 (S,)?}``;
``state`` is privileged and present only in simulation."""


@dataclass(frozen=True)
class ActionSpec:
    """Actions are float32 in [-1, 1]^dim; drivers scale them to hardware units.

    Attributes:
        dim: action dimension (4 for end-effector delta xyz + gripper).
        names: one name per dimension.
        ee_step_m: metres of end-effector travel per unit of action on each of the first three
            (xyz) dimensions in one control step. The safety layer works in metres through it;
            ``None`` for drivers whose actions are not end-effector deltas (then only the
            action-space limits apply).
        control_hz: the driver's nominal control rate (sim: its physics step rate).
    """

    dim: int
    names: tuple[str, ...] = ()
    low: float = -1.0
    high: float = 1.0
    ee_step_m: float | None = None
    control_hz: float | None = None


@dataclass(frozen=True)
class ObservationSpec:
    """What ``observe()`` returns.

    Attributes:
        cameras: camera names, in order.
        image_size: ``(height, width)`` of every image.
        proprio_dim: length of ``proprio``; for end-effector drivers the first three entries are
            the end-effector position in metres (``hand_x``, ``hand_y``, ``hand_z``) and the fourth
            the gripper opening in [0, 1].
        state_dim: length of the privileged ``state`` (``None`` on real robots).
        proprio_bounds: ``(low, high)`` per proprio entry where the robot's reach bounds them in fact
            (``None``: unbounded; the env's observation space then says -inf..inf).
        state_bounds: the same for the privileged state.
    """

    cameras: tuple[str, ...]
    image_size: tuple[int, int]
    proprio_dim: int
    state_dim: int | None = None
    proprio_names: tuple[str, ...] = field(default=())
    proprio_bounds: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    state_bounds: tuple[tuple[float, ...], tuple[float, ...]] | None = None


@runtime_checkable
class Robot(Protocol):
    """A robot the environment can drive: simulated, remote or real."""

    def connect(self) -> None:
        """Open connections (SDK, sockets, cameras). Idempotent."""

    def observe(self) -> Observation:
        """The current observation (see :data:`Observation`)."""

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Apply ``action`` (float32 (A,), in [-1, 1]) for one control step.

        Returns the action actually applied after clipping and safety limits, float32 (A,).
        """

    def reset(self, seed: int | None = None) -> Observation:
        """Bring the robot (and in simulation the scene) to a start state; return the observation."""

    def stop(self) -> None:
        """Controlled stop now: hold position / zero velocity, stay connected. Idempotent.

        Called by the watchdog and the deploy loop's stop paths; the robot moves again on the
        next ``send_action`` after the caller re-arms (see ``real.server``).
        """

    def close(self) -> None:
        """The driver's stop sequence, then release everything. Idempotent; runs in ``finally``."""

    @property
    def observation_spec(self) -> ObservationSpec:
        """What observations look like."""

    @property
    def action_spec(self) -> ActionSpec:
        """What actions look like."""


@runtime_checkable
class GroundTruth(Protocol):
    """Drivers that know the task outcome (the simulator) also implement this.

    Real robots do not: their success comes from a success detector (a reward model).
    """

    def task_signals(self) -> dict[str, float]:
        """``{"success": 0/1, ...}`` plus simulator-only signals under ``sim/`` keys."""


@runtime_checkable
class MultiTask(Protocol):
    """Drivers set up for several tasks in one continuing scene (a reset-free pair: open the drawer,
    close it) also implement this. Selecting a task changes what is being asked, never the scene.

    The privileged ``state`` and ``task_signals()`` (where the driver has them) judge the selected task.
    """

    @property
    def tasks(self) -> tuple[str, ...]:
        """The registered names of the tasks, in index order."""

    @property
    def instructions(self) -> tuple[str, ...]:
        """Each task's instruction, in index order."""

    @property
    def task_index(self) -> int:
        """The selected task."""

    def select_task(self, index: int) -> None:
        """Make task ``index`` the current one WITHOUT a reset: the scene continues from where it is.
        The next ``reset`` starts the selected task's own start state."""
