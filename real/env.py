"""`RobotEnv`: the gymnasium environment over any `Robot` driver, and `make_env` / `make_vec_env`.

The env owns the episode: the time limit (``truncated``), success (``info["success"]``), the
task reward, and termination at success when asked (``terminated``, a true terminal). Simulator
ground truth travels in ``info`` under ``sim/`` keys, for evaluation only.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import gymnasium as gym
import numpy as np

from real.robot import GroundTruth, Observation, Robot

# name -> "module:Class" (or a factory function); the vendor drivers import their SDKs lazily.
DRIVERS: dict[str, str] = {
    "sim": "real.sim_driver:SimRobot",
    "sim_pair": "real.sim_driver:SimPairRobot",  # a task pair's shared scene (reset-free learning)
    "remote": "real.remote:remote_robot",
    "ur": "real.drivers.ur:URRobot",
    "xarm": "real.drivers.xarm:XArmRobot",
    "lerobot": "real.drivers.lerobot:LeRobotAdapter",
}
# drivers whose safety layer runs elsewhere (the server applies it on the robot side)
SAFETY_ELSEWHERE = ("remote",)
REWARD_MODES = ("sparse", "sim_dense")


def make_robot(robot: str, **kwargs: Any) -> Robot:
    """Instantiate a registered driver by name (``sim``, ...) with its keyword arguments."""
    if robot not in DRIVERS:
        raise ValueError(f"unknown robot driver {robot!r}: use one of {sorted(DRIVERS)}")
    module, cls = DRIVERS[robot].split(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)


class RobotEnv(gym.Env):
    """A manipulation task on a `Robot`, with the observation and action contract of DESIGN.md.

    Args:
        robot: a driver implementing :class:`real.robot.Robot` (not yet connected is fine).
        instruction: the task's instruction (kept in ``self.instruction`` for reward models).
        max_episode_steps: time limit; reaching it sets ``truncated``.
        terminate_on_success: end the episode as a true terminal when the task succeeds.
        reward_mode: ``sparse`` (``success_reward`` on success steps, else 0) or ``sim_dense``
            (Meta-World's shaped reward; simulation only, for baselines).
        success_reward: reward of a success step in ``sparse`` mode.
        success_fn: ``observation -> bool`` for robots without ground truth (a success detector).
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        robot: Robot,
        instruction: str = "",
        max_episode_steps: int = 500,
        terminate_on_success: bool = False,
        reward_mode: str = "sparse",
        success_reward: float = 1.0,
        success_fn: Callable[[Observation], bool] | None = None,
    ) -> None:
        if reward_mode not in REWARD_MODES:
            raise ValueError(f"unknown reward_mode {reward_mode!r}: use one of {REWARD_MODES}")
        if int(max_episode_steps) < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        if success_fn is None and not isinstance(robot, GroundTruth):
            raise ValueError(
                f"{type(robot).__name__} reports no task success: pass success_fn "
                "(for example a reward model's success_prob thresholded)"
            )
        if reward_mode == "sim_dense" and not isinstance(robot, GroundTruth):
            raise ValueError("reward_mode='sim_dense' needs the simulator: use reward_mode='sparse'")
        self.robot = robot
        self.instruction = instruction
        self.max_episode_steps = int(max_episode_steps)
        self.terminate_on_success = terminate_on_success
        self.reward_mode = reward_mode
        self.success_reward = float(success_reward)
        self.success_fn = success_fn
        self.robot.connect()
        spec = robot.observation_spec
        act = robot.action_spec
        spaces: dict[str, gym.Space] = {"proprio": _box(spec.proprio_dim, spec.proprio_bounds)}
        if spec.cameras:
            h, w = spec.image_size
            spaces["images"] = gym.spaces.Dict(
                {c: gym.spaces.Box(0, 255, (h, w, 3), np.uint8) for c in spec.cameras}
            )
        if spec.state_dim is not None:
            spaces["state"] = _box(spec.state_dim, spec.state_bounds)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(act.low, act.high, (act.dim,), np.float32)
        self.render_mode = "rgb_array"
        self.metadata = {**self.metadata, "render_fps": act.control_hz}  # gymnasium's checker asks for it
        self._steps = 0
        self._last_obs: Observation | None = None
        self._done = True

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode; ``seed`` picks the task variant in simulation (deterministic)."""
        super().reset(seed=seed)
        obs = self.robot.reset(seed=seed)
        self._steps, self._last_obs, self._done = 0, obs, False
        info: dict[str, Any] = {"success": False}
        if isinstance(self.robot, GroundTruth):
            info.update({k: v for k, v in self.robot.task_signals().items() if k.startswith("sim/")})
        return obs, info

    def _check_action(self, action: Any) -> np.ndarray:
        a = np.asarray(action, dtype=np.float32)
        if a.shape != self.action_space.shape:
            raise ValueError(
                f"action has shape {a.shape}, expected {self.action_space.shape} "
                f"(end-effector delta xyz and gripper in [-1, 1])"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action contains NaN or inf: {a.tolist()}; check the policy's output")
        return a

    def step(self, action: np.ndarray):
        """Apply ``action``; returns ``(obs, reward, terminated, truncated, info)``.

        ``info`` has ``success``, ``applied_action`` (after clipping) and in simulation the
        ground truth under ``sim/`` keys.
        """
        if self._done:
            raise RuntimeError("step() on a finished episode: call reset() first")
        a = self._check_action(action)
        applied = self.robot.send_action(a)
        obs = self.robot.observe()
        self._steps += 1
        info: dict[str, Any] = {"applied_action": applied}
        if isinstance(self.robot, GroundTruth):
            signals = self.robot.task_signals()
            info.update({k: v for k, v in signals.items() if k.startswith("sim/")})
        success = bool(self.success_fn(obs)) if self.success_fn else bool(signals["success"])
        info["success"] = success
        if self.reward_mode == "sparse":
            reward = self.success_reward if success else 0.0
        else:
            reward = float(signals["sim/dense_reward"])
        terminated = success and self.terminate_on_success
        truncated = self._steps >= self.max_episode_steps and not terminated
        self._done = terminated or truncated
        self._last_obs = obs
        return obs, float(reward), terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """The first camera's current image, uint8 (H, W, 3)."""
        if self._last_obs is None or not self._last_obs.get("images"):
            return None
        return next(iter(self._last_obs["images"].values()))

    def close(self) -> None:
        """Stop the robot and free its resources."""
        self.robot.close()


def _box(dim: int, bounds) -> gym.spaces.Box:
    """float32 Box of ``dim`` entries, finite where the driver states ``bounds`` = (low, high)."""
    if bounds is None:
        return gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)
    low, high = (np.asarray(b, np.float32).reshape(dim) for b in bounds)
    return gym.spaces.Box(low, high, (dim,), np.float32)


def make_env(
    task: str,
    robot: str = "sim",
    cameras: list[str] | tuple[str, ...] | None = None,
    image_size: int | tuple[int, int] = 96,
    max_episode_steps: int | None = None,
    terminate_on_success: bool = False,
    reward_mode: str = "sparse",
    success_reward: float = 1.0,
    split: str = "train",
    quality: str = "fast",
    include_state: bool = True,
    safety: Any = None,
    randomize: Any = None,
    randomize_seed: int = 0,
    **robot_kwargs: Any,
) -> RobotEnv:
    """Build the environment of ``task`` on the driver ``robot``.

    Args:
        task: registered task name, e.g. ``metaworld/drawer-open`` (see ``sim.list_tasks()``).
        robot: driver name (``sim``).
        cameras: camera names (default: ``corner``, ``corner2``, ``gripperPOV``); ``[]`` for none.
        image_size: int or ``(height, width)``.
        max_episode_steps: time limit (default: the task's own, 500 for Meta-World).
        terminate_on_success: success ends the episode as a true terminal.
        reward_mode: ``sparse`` or ``sim_dense``.
        success_reward: reward of a success step in ``sparse`` mode.
        split: seed split of task variants (``demo``, ``train``, ``eval``).
        quality: render quality (``fast`` or ``high``).
        include_state: add the privileged state to observations (simulation only).
        randomize: visual randomisation of each reset (simulation only; ``sim.randomize`` bounds, e.g.
            ``configs/randomize/corpus.yaml``); None (the default, right for RL) renders the scene as built.
        randomize_seed: keys the looks with the split and each reset's seed (simulation only).
        safety: the driver's limits (a ``real.safety.SafetyLimits`` or its config mapping); ``None``
            takes the driver's ``DEFAULT_SAFETY`` (the simulator's workspace); hardware drivers have
            none and need one. Remote robots are filtered by their server.
        **robot_kwargs: passed to the driver (``robot=remote``: ``host``, ``port``, ``token``).
    """
    from sim import get_task  # the registry: names and instructions

    spec = get_task(task)
    if robot == "sim":
        robot_kwargs.update(
            task=spec.name, cameras=cameras, image_size=image_size, quality=quality,
            split=split, include_state=include_state, randomize=randomize, randomize_seed=randomize_seed,
        )
    elif randomize is not None:
        raise ValueError(f"randomize= is a simulator option; robot={robot!r} renders what its cameras see "
                         "(for a served simulator, set robot.randomize on the server)")
    if robot == "remote":
        robot_kwargs.setdefault("task", spec.name)
    driver = make_safe_robot(robot, safety, **robot_kwargs)
    if robot == "remote":
        check_served(driver, cameras, image_size)
    return RobotEnv(
        driver,
        instruction=spec.instruction,
        max_episode_steps=max_episode_steps or spec.max_episode_steps,
        terminate_on_success=terminate_on_success,
        reward_mode=reward_mode,
        success_reward=success_reward,
    )


def make_safe_robot(robot: str, safety: Any = None, **robot_kwargs: Any) -> Robot:
    """The driver ``robot`` (see `make_robot`) behind its safety layer (`real.safety.SafeRobot`):
    ``safety`` (``SafetyLimits`` or its mapping), or the driver's ``DEFAULT_SAFETY`` when ``None``;
    hardware drivers have none and need one. A remote robot is returned as it is: its server filters
    every command on the robot side."""
    from real.safety import SafeRobot

    driver = make_robot(robot, **robot_kwargs)
    if robot in SAFETY_ELSEWHERE:
        return driver
    if safety is None:
        safety = getattr(type(driver), "DEFAULT_SAFETY", None)
        if safety is None:
            raise ValueError(f"robot={robot!r} has no default safety limits: pass safety=... (see configs/robot/{robot}.yaml)")
    return SafeRobot(driver, safety)


def check_served(driver: Robot, cameras, image_size) -> None:
    """A remote robot must serve the cameras and image size the caller asked for (ValueError naming
    the server setting that fixes it)."""
    spec = driver.observation_spec
    if cameras is not None:
        missing = [c for c in cameras if c not in spec.cameras]
        if missing:
            raise ValueError(
                f"the robot server serves cameras {list(spec.cameras)}, not {missing}: start it with "
                f"robot.cameras=[{','.join(cameras)}] or ask for the cameras it has"
            )
    if cameras:
        from sim import check_image_size

        if tuple(check_image_size(image_size)) != tuple(spec.image_size):
            raise ValueError(
                f"the robot server's images are {tuple(spec.image_size)}, not {image_size}: start it with "
                f"robot.image_size={image_size} or ask for its size"
            )


def make_vec_env(
    task: str, num_envs: int = 2, asynchronous: bool = True, **kwargs: Any
) -> gym.vector.VectorEnv:
    """``num_envs`` copies of :func:`make_env` in subprocesses (gymnasium's AsyncVectorEnv).

    Workers start with ``spawn`` so each creates its own GL context (a forked EGL context is not
    usable). Seed with ``vec.reset(seed=s)``: env i gets seed ``s + i``.
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    fns = [_EnvFactory(task, kwargs) for _ in range(num_envs)]
    if asynchronous:
        return gym.vector.AsyncVectorEnv(fns, context="spawn", autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    return gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


class _EnvFactory:
    """Picklable env constructor for vector-env workers."""

    def __init__(self, task: str, kwargs: dict[str, Any]) -> None:
        self.task, self.kwargs = task, kwargs

    def __call__(self) -> RobotEnv:
        return make_env(self.task, **self.kwargs)


def build_robot(robot_cfg: dict, task: str | None = None) -> tuple[Robot, dict]:
    """A driver and its safety block from a ``configs/robot/<name>.yaml`` mapping.

    The ``sim`` driver gets ``task``; ``sim_pair`` names its two tasks by its ``pair``; other drivers
    ignore it. Returns ``(driver, safety)``.
    """
    cfg = dict(robot_cfg)
    driver = cfg.pop("driver", None)
    if driver is None:
        raise ValueError("robot config has no `driver` key (see configs/robot/)")
    safety = cfg.pop("safety", None)
    if safety is None:
        raise ValueError(f"robot config for {driver!r} has no safety block: every robot needs one (see configs/robot/{driver}.yaml)")
    if driver == "sim":
        if not task:
            raise ValueError("robot=sim needs task=<name> (e.g. task=metaworld/drawer-open)")
        cfg["task"] = task
    return make_robot(driver, **cfg), safety
