"""The reset-free training scene as a `Robot`: the pair's shared scene in process (``SimPairRobot`` behind
the safety layer) or the one behind a ``stepwise-robot-server`` (``robot=remote``), seen by the loop
through the interface of ``sim.task_pair.TaskPairScene``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from real.robot import GroundTruth, MultiTask, Robot
from sim.task_pair import ResetFreeConfigError, get_pair
from sim.world import StepSignals


class RobotPairScene:
    """A task pair served by a `MultiTask` robot that reports ground truth, as the reset-free loop's scene.

    The direction is the robot's selected task; a flip selects the other without a reset; the policy's
    observation is the privileged state and a one-hot of the direction (41,), as in process.

    Args:
        robot: the driver (connected here), e.g. ``make_safe_robot("sim_pair", pair=...)`` or a remote one.
        pair: the pair it must serve (its tasks are checked against it).
    """

    def __init__(self, robot: Robot, pair: str) -> None:
        names = get_pair(pair)
        robot.connect()
        if not isinstance(robot, MultiTask) or tuple(robot.tasks) != tuple(names):
            served = list(robot.tasks) if isinstance(robot, MultiTask) else "one task"
            raise ResetFreeConfigError(f"the robot serves {served}, not pair={pair}'s {list(names)}: start the server "
                                       f"with `stepwise-robot-server robot=sim_pair robot.pair={pair}`")
        if not isinstance(robot, GroundTruth):
            raise ResetFreeConfigError("stepwise-train-reset-free logs the simulator's success beside every verdict: it "
                                       "needs a robot that reports ground truth (the simulator, in process or served)")
        if robot.observation_spec.state_dim is None:
            raise ResetFreeConfigError("the reset-free policy reads the privileged state: serve the pair with "
                                       "robot.include_state=true")
        self.robot, self.pair = robot, pair
        self._obs = None

    @property
    def direction(self) -> int:
        """0 forward, 1 backward: the robot's selected task."""
        return int(self.robot.task_index)

    @property
    def instruction(self) -> str:
        """The current instruction."""
        return self.robot.instructions[self.direction]

    def _signals(self) -> StepSignals:
        sig = self.robot.task_signals()
        return StepSignals(bool(sig["success"]), float(sig.get("sim/dense_reward", 0.0)),
                           {k[4:]: float(v) for k, v in sig.items() if k.startswith("sim/") and k not in
                            ("sim/success", "sim/dense_reward")})

    def reset(self, seed: int, direction: int = 0) -> None:
        """Reset the scene with task ``direction`` drawing the variant from ``seed`` (re-arms a served robot)."""
        self.robot.select_task(int(direction))
        self._obs = self.robot.reset(seed=int(seed))

    def resume(self) -> None:
        """An attempt continues without a reset: a served robot that its watchdog stopped while the learner
        evaluated or saved is re-armed explicitly (the watchdog stays on during the attempt)."""
        if hasattr(self.robot, "arm"):
            self.robot.arm()

    def flip(self) -> StepSignals:
        """Select the other task without a reset; its ground truth of the current state."""
        self.robot.select_task(1 - self.direction)
        self._obs = self.robot.observe()
        return self._signals()

    def step(self, action: np.ndarray) -> StepSignals:
        """One action (4,) through the robot (and its safety layer); the ground truth after it."""
        self.robot.send_action(np.clip(np.asarray(action, np.float32), -1.0, 1.0))
        self._obs = self.robot.observe()
        return self._signals()

    def _current(self):
        if self._obs is None:
            self._obs = self.robot.observe()
        return self._obs

    def observation(self) -> np.ndarray:
        """float32 (41,): the selected task's state and a one-hot of the direction."""
        onehot = np.zeros(2, np.float32)
        onehot[self.direction] = 1.0
        return np.concatenate([np.asarray(self._current()["state"], np.float32), onehot])

    def render(self) -> dict[str, np.ndarray]:
        """camera -> uint8 (H, W, 3) of the current state (taken with the last observation)."""
        return self._current()["images"]

    def close(self) -> None:
        """Stop and release the robot (a served one: its client socket)."""
        self.robot.close()


def training_scene(robot_cfg: dict, pair: str, cameras: Sequence[str], image_size: int) -> RobotPairScene:
    """The scene the reset-free attempts run on, from the job's ``robot`` block: ``robot=sim`` builds the
    pair in process behind its safety block; ``robot=remote`` connects to a served pair, which must serve
    ``cameras`` at ``image_size``. Other drivers are refused (serve them and use robot=remote)."""
    from real.env import check_served, make_safe_robot

    cfg = dict(robot_cfg)
    driver = cfg.pop("driver", None)
    if driver == "sim":
        robot = make_safe_robot("sim_pair", cfg["safety"], pair=pair, cameras=list(cameras), image_size=int(image_size),
                                split="train", quality=cfg.get("quality", "fast"), include_state=True,
                                randomize=cfg.get("randomize"), randomize_seed=int(cfg.get("randomize_seed", 0)))
    elif driver == "remote":
        robot = make_safe_robot("remote", **cfg)
        check_served(robot, list(cameras), int(image_size))
    else:
        raise ResetFreeConfigError(f"robot={driver}: the reset-free job never imports a driver; serve the pair with "
                                   "`stepwise-robot-server robot=sim_pair` and use robot=remote, or robot=sim")
    return RobotPairScene(robot, pair)
