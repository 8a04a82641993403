"""The simulator behind the `Robot` contract (the only place ``real/`` touches ``sim/``)."""

from __future__ import annotations

import numpy as np

from real.robot import ActionSpec, Observation, ObservationSpec

# Meta-World's own bounds of the hand position (SawyerXYZEnv._HAND_SPACE) and gripper entry ([-1, 1]).
HAND_LOW, HAND_HIGH = (-0.525, 0.348, -0.0525), (0.525, 1.025, 0.7)
# The 39-d state: hand (3), gripper (1), objects (14: positions and quaternions), the same 18 of the
# previous step, goal (3). Meta-World leaves the objects unbounded; they stay in the scene (a few metres
# around the table; quaternion entries in [-1, 1]), so +-5 bounds them in fact; the goal lies on the table.
_OBJ = 5.0
_STATE_BOUNDS = (
    (HAND_LOW + (-1.0,) + (-_OBJ,) * 14) * 2 + (-_OBJ,) * 3,
    (HAND_HIGH + (1.0,) + (_OBJ,) * 14) * 2 + (_OBJ,) * 3,
)


class SimRobot:
    """A Meta-World task driven as a robot: end-effector delta xyz + gripper in [-1, 1].

    Args:
        task: registered task name, e.g. ``metaworld/drawer-open``.
        cameras: camera names (default: two corner views and the wrist view); empty for state-only.
        image_size: int or ``(height, width)``.
        quality: render quality, ``fast`` or ``high``.
        split: seed split for task variants: ``demo``, ``train`` or ``eval``.
        include_state: add the privileged simulator state to observations.
        randomize: visual randomisation of every reset (``sim.randomize``: a ``Randomization``, its
            mapping, e.g. ``configs/randomize/corpus.yaml``, or None, the default: the scene as built).
        randomize_seed: keys the looks with the split and each reset's seed.
    """

    # The union of Meta-World's mocap limits over the 50 tasks (the simulator clips the hand to its
    # task's own box anyway); a step moves at most 1 cm per axis (1.7 cm diagonally), 80 steps/s.
    DEFAULT_SAFETY = {
        "workspace_low": (-0.5, 0.35, -0.15),
        "workspace_high": (0.5, 1.0, 0.5),
        "max_step_m": 0.02,
        "max_speed_mps": 2.0,
    }

    def __init__(
        self,
        task: str,
        cameras: list[str] | tuple[str, ...] | None = None,
        image_size: int | tuple[int, int] = 96,
        quality: str = "fast",
        split: str = "train",
        include_state: bool = True,
        randomize=None,
        randomize_seed: int = 0,
    ) -> None:
        from sim import DEFAULT_CAMERAS, check_image_size, get_task, variant_rng
        from sim.randomize import from_config

        self._spec = get_task(task)  # fail fast, before any simulator is built
        variant_rng(0, split)
        self._kwargs = dict(
            cameras=tuple(DEFAULT_CAMERAS if cameras is None else cameras),
            image_size=check_image_size(image_size),
            quality=quality,
            split=split,
            randomize=from_config(randomize),  # bad bounds fail here, before a simulator is built
            randomize_seed=randomize_seed,
        )
        self.include_state = include_state
        self._task = None

    @property
    def task_name(self) -> str:
        """The registered task name."""
        return self._spec.name

    @property
    def instruction(self) -> str:
        """The task's natural-language instruction."""
        return self._spec.instruction

    def connect(self) -> None:
        """Build the simulator and renderer (idempotent)."""
        if self._task is None:
            from sim import SimTask

            self._task = SimTask(self._spec, **self._kwargs)
            self._has_episode = False

    def _require(self):
        if self._task is None:
            raise RuntimeError("SimRobot is not connected: call connect() (or use real.make_env)")
        return self._task

    def observe(self) -> Observation:
        """Images of every camera, proprio and (optionally) the privileged state.

        Before the first reset the scene is the split's first variant (a robot at rest has a pose)."""
        task = self._require()
        if not self._has_episode:
            task.reset(0)
            self._has_episode = True
        obs: Observation = {
            "images": task.render() if task.rig is not None else {},
            "proprio": task.proprio,
        }
        if self.include_state:
            obs["state"] = task.state
        return obs

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Clip to [-1, 1], step the physics once, return the applied action."""
        applied = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        self._require().step(applied)
        return applied

    def reset(self, seed: int | None = None) -> Observation:
        """New episode; ``seed`` picks the task variant within this driver's split."""
        self.connect()
        self._task.reset(seed)
        self._has_episode = True
        return self.observe()

    def task_signals(self) -> dict[str, float]:
        """Success and simulator ground truth after the last action."""
        sig = self._require().signals
        info = sig.as_info()
        info["success"] = float(sig.success)
        return info

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the current state (simulation only)."""
        return self._require().expert_action()

    @property
    def sim_task(self):
        """The underlying ``sim.SimTask`` (simulation tools only)."""
        return self._require()

    def stop(self) -> None:
        """Hold position: the simulation only advances on ``send_action``, so nothing moves."""
        self.stops = getattr(self, "stops", 0) + 1

    def ee_position(self) -> np.ndarray:
        """The end-effector set point in metres, float64 (3,): Meta-World's mocap target, which an
        action moves by ``action * ee_step_m`` and the hand follows with a lag (as a servo target)."""
        _, data = self._require().physics
        return np.array(data.mocap_pos[0], dtype=np.float64)

    def close(self) -> None:
        """Free the simulator (idempotent)."""
        if self._task is not None:
            self._task.close()
            self._task = None

    @property
    def observation_spec(self) -> ObservationSpec:
        """Cameras, image size, proprio and state sizes."""
        from sim.world import PROPRIO_DIM, STATE_DIM

        return ObservationSpec(
            cameras=self._kwargs["cameras"],
            image_size=self._kwargs["image_size"],
            proprio_dim=PROPRIO_DIM,
            state_dim=STATE_DIM if self.include_state else None,
            proprio_names=("hand_x", "hand_y", "hand_z", "gripper_opening"),
            proprio_bounds=(HAND_LOW + (-1.0,), HAND_HIGH + (1.0,)),
            state_bounds=_STATE_BOUNDS if self.include_state else None,
        )

    @property
    def action_spec(self) -> ActionSpec:
        """4-d: end-effector delta xyz and gripper (close > 0)."""
        # Meta-World moves the mocap by action * 1/100 m per step; 5 substeps of 2.5 ms = 80 Hz.
        return ActionSpec(dim=4, names=("dx", "dy", "dz", "gripper"), ee_step_m=0.01, control_hz=80.0)


class SimPairRobot(SimRobot):
    """A task pair's shared scene (``sim.task_pair``: drawer open / close, door, window, faucet) as ONE
    robot that serves both tasks (`real.robot.MultiTask`): `select_task` changes what is asked without a
    reset, the scene continues, and the privileged state and `task_signals` judge the selected task. The
    reset-free learner drives it in process or behind ``stepwise-robot-server robot=sim_pair``.

    Args:
        pair: a registered pair name (``sim.task_pair.TASK_PAIRS``).
        cameras, image_size, quality, split, include_state, randomize, randomize_seed: as for
            :class:`SimRobot` (one look per reset, shared by both tasks).
    """

    def __init__(
        self,
        pair: str = "drawer",
        cameras: list[str] | tuple[str, ...] | None = None,
        image_size: int | tuple[int, int] = 96,
        quality: str = "fast",
        split: str = "train",
        include_state: bool = True,
        randomize=None,
        randomize_seed: int = 0,
    ) -> None:
        from sim import get_task
        from sim.task_pair import get_pair

        names = get_pair(pair)  # an unknown pair fails before anything is built
        super().__init__(names[0], cameras, image_size, quality, split, include_state, randomize, randomize_seed)
        self.pair = pair
        self._names = tuple(names)
        self._instructions = tuple(get_task(n).instruction for n in names)
        self._scene = None
        self._index = 0

    @property
    def tasks(self) -> tuple[str, ...]:
        """(forward, backward) task names."""
        return self._names

    @property
    def instructions(self) -> tuple[str, ...]:
        """Both tasks' instructions."""
        return self._instructions

    @property
    def task_index(self) -> int:
        """The selected task (0 forward, 1 backward)."""
        return self._index

    @property
    def task_name(self) -> str:
        """The selected task's registered name."""
        return self._names[self._index]

    @property
    def instruction(self) -> str:
        """The selected task's instruction."""
        return self._instructions[self._index]

    def connect(self) -> None:
        """Build the shared scene (both tasks' simulators, the renderer of the active one); idempotent."""
        if self._scene is None:
            from sim.task_pair import TaskPairScene

            k = self._kwargs
            self._scene = TaskPairScene(self.pair, cameras=k["cameras"], image_size=k["image_size"],
                                        split=k["split"], quality=k["quality"], randomize=k["randomize"],
                                        randomize_seed=k["randomize_seed"])
            self._scene.direction = self._index
            self._task = self._scene.active
            self._has_episode = False

    def select_task(self, index: int) -> None:
        """Ask for task ``index`` from here on, without a reset (the physics continues; before the first
        reset only the choice is kept). Raises ValueError for an index that is not 0 or 1."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= int(index) < len(self._names):
            raise ValueError(f"task index {index!r}: this robot serves {list(self._names)} (index 0 or 1)")
        index = int(index)
        if index == self._index:
            return
        if self._scene is not None and self._has_episode:
            self._scene.flip()  # the other task adopts the physics and judges it
        elif self._scene is not None:
            self._scene.direction = index
        self._index = index
        if self._scene is not None:
            self._task = self._scene.active

    def observe(self) -> Observation:
        """As :meth:`SimRobot.observe`, of the selected task (before the first reset: its seed-0 variant)."""
        self._require()
        if not self._has_episode:
            self._scene.reset(0, direction=self._index)
            self._has_episode = True
        return super().observe()

    def reset(self, seed: int | None = None) -> Observation:
        """Reset the shared scene: the selected task draws the variant from ``seed`` and starts from its
        own start state; the other task is placed in the same variant."""
        self.connect()
        self._scene.reset(seed, direction=self._index)
        self._task = self._scene.active
        self._has_episode = True
        return self.observe()

    def close(self) -> None:
        """Free both tasks' simulators (idempotent)."""
        if self._scene is not None:
            self._scene.close()
            self._scene = None
            self._task = None
