"""Any robot following LeRobot's ``Robot`` interface, behind this project's `Robot` contract.

LeRobot is not a dependency: the adapter duck-types its interface (``connect``, ``is_connected``,
``get_observation() -> dict``, ``send_action(dict) -> dict`` returning what was actually sent,
``disconnect``, ``observation_features``, ``action_features``). The config maps the 4-d action to
LeRobot action keys with an affine map, observation keys to the proprio, and camera keys to names.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from real.drivers import ACTION_NAMES, PROPRIO_NAMES, check_image_size, check_positive, check_vector, clip_action
from real.robot import ActionSpec, Observation, ObservationSpec

log = logging.getLogger(__name__)


class LeRobotAdapter:
    """A LeRobot robot driven by this project's actions and observed as this project's observations.

    Sent value of LeRobot key ``action_keys[i]`` = ``action_offsets[i] + action_scales[i] * action[i]``;
    proprio ``i`` = ``(observation[proprio_keys[i]] - proprio_offsets[i]) * proprio_scales[i]``
    (hand_x, hand_y, hand_z in metres, then the gripper opening in [0, 1] with 1 = open).

    Args:
        robot: a LeRobot-style robot object; or give ``robot_factory``.
        robot_factory: ``"module:callable"`` building the robot on ``connect()`` (lazy import).
        robot_kwargs: keyword arguments for ``robot_factory``.
        action_keys: the 4 LeRobot action keys for dx, dy, dz, gripper (+1 = close).
        action_scales: 4 multipliers from action units to the robot's units (negative flips a sign).
        action_offsets: 4 values added after scaling.
        proprio_keys: the 4 observation keys for hand_x, hand_y, hand_z, gripper opening.
        proprio_scales: 4 multipliers to metres / [0, 1].
        proprio_offsets: 4 values subtracted before scaling.
        camera_keys: ``observation key -> camera name``; frames are resized to ``image_size``.
        image_size: int or ``(height, width)``.
        control_hz: the deploy loop's rate (and the home move's step rate).
        ee_step_m: metres per action unit per step when the actions are end-effector deltas (the
            safety layer bounds motion through it); ``None`` otherwise, and then the safety
            layer's motion limits must be disabled explicitly.
        home_action: LeRobot action (key -> value) of the home pose; ``reset()`` interpolates to it
            from the observed values of the same keys. ``None``: ``reset()`` does not move.
        home_duration_s: duration of the home move.
        stop_action: LeRobot action that holds the robot (e.g. zero velocities). ``None``: ``stop()``
            sends nothing, right for position-controlled arms, which hold their last goal.
        calibrate: passed to the robot's ``connect(calibrate=...)``.
    """

    def __init__(
        self,
        robot: Any = None,
        robot_factory: str | None = None,
        robot_kwargs: Mapping[str, Any] | None = None,
        action_keys: Sequence[str] = ("delta_x", "delta_y", "delta_z", "gripper"),
        action_scales: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        action_offsets: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        proprio_keys: Sequence[str] | None = None,
        proprio_scales: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        proprio_offsets: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        camera_keys: Mapping[str, str] | None = None,
        image_size: int | Sequence[int] = 96,
        control_hz: float = 30.0,
        ee_step_m: float | None = None,
        home_action: Mapping[str, float] | None = None,
        home_duration_s: float = 3.0,
        stop_action: Mapping[str, float] | None = None,
        calibrate: bool = False,
    ) -> None:
        name = "LeRobotAdapter"
        if (robot is None) == (robot_factory is None):
            raise ValueError(
                "LeRobotAdapter: give exactly one of robot (an object) "
                "and robot_factory ('module:callable')"
            )
        if robot_factory is not None and (robot_factory.count(":") != 1 or not all(robot_factory.split(":"))):
            raise ValueError(f"LeRobotAdapter: robot_factory must be 'module:callable', got {robot_factory!r}")
        self._robot = robot
        self.robot_factory = robot_factory
        self.robot_kwargs = dict(robot_kwargs or {})
        self.action_keys = _check_keys("action_keys", action_keys)
        self.action_scales = np.array(check_vector(name, "action_scales", action_scales, 4, "one per action key"))
        if np.any(self.action_scales == 0):
            raise ValueError(
                f"LeRobotAdapter: action_scales has a zero ({list(action_scales)}); "
                "every key needs a non-zero scale"
            )
        self.action_offsets = np.array(check_vector(name, "action_offsets", action_offsets, 4, "one per action key"))
        if proprio_keys is None:
            raise ValueError(
                "LeRobotAdapter: proprio_keys is required: "
                "the 4 observation keys for hand_x, hand_y, hand_z, gripper opening"
            )
        self.proprio_keys = _check_keys("proprio_keys", proprio_keys)
        self.proprio_scales = np.array(check_vector(name, "proprio_scales", proprio_scales, 4, "one per proprio key"))
        self.proprio_offsets = np.array(
            check_vector(name, "proprio_offsets", proprio_offsets, 4, "one per proprio key")
        )
        self.camera_keys = {str(k): str(v) for k, v in (camera_keys or {}).items()}
        self.image_size = check_image_size(image_size)
        self.control_hz = check_positive(name, "control_hz", control_hz, "Hz")
        self.ee_step_m = (
            None if ee_step_m is None
            else check_positive(name, "ee_step_m", ee_step_m, "metres per action unit per step")
        )
        self.home_action = None if home_action is None else {str(k): float(v) for k, v in home_action.items()}
        self.home_duration_s = check_positive(name, "home_duration_s", home_duration_s, "s")
        self.stop_action = None if stop_action is None else {str(k): float(v) for k, v in stop_action.items()}
        self.calibrate = bool(calibrate)
        self._connected = False
        if robot is not None:
            self._check_features(robot)  # LeRobot features are readable before connecting

    def _check_features(self, robot: Any) -> None:
        """Every configured key must be one of the robot's features; a ValueError lists the ones it has."""
        acts, obs = dict(robot.action_features), dict(robot.observation_features)
        wanted = [
            ("action_keys", self.action_keys, acts, "action_features"),
            ("home_action", list(self.home_action or {}), acts, "action_features"),
            ("stop_action", list(self.stop_action or {}), acts, "action_features"),
            ("proprio_keys", self.proprio_keys, obs, "observation_features"),
            ("camera_keys", list(self.camera_keys), obs, "observation_features"),
            ("home_action", list(self.home_action or {}), obs, "observation_features"),
        ]
        for key, names, features, what in wanted:
            missing = [n for n in names if n not in features]
            if missing:
                raise ValueError(
                    f"LeRobotAdapter: {key} {missing} not in the robot's {what}; "
                    f"it has {sorted(features)}"
                )

    # --- connection -----------------------------------------------------------------------------

    def connect(self) -> None:
        """Build the robot (``robot_factory``) and connect it. Idempotent."""
        if self._robot is None:
            module, attr = self.robot_factory.split(":")
            try:
                factory = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as e:
                raise ImportError(
                    f"LeRobotAdapter: cannot load robot_factory {self.robot_factory!r} ({e}); "
                    "is lerobot installed (pip install lerobot)?"
                ) from e
            robot = factory(**self.robot_kwargs)
            self._check_features(robot)
            self._robot = robot
        if not self._robot.is_connected:
            self._robot.connect(calibrate=self.calibrate)
        self._connected = True

    def _require(self):
        if not self._connected:
            raise RuntimeError("LeRobotAdapter is not connected: call connect() (or use real.make_env)")
        return self._robot

    # --- observation ----------------------------------------------------------------------------

    def _proprio(self, raw: Mapping[str, Any]) -> np.ndarray:
        values = np.array([float(raw[k]) for k in self.proprio_keys])
        return ((values - self.proprio_offsets) * self.proprio_scales).astype(np.float32)

    def observe(self) -> Observation:
        """Mapped proprio, camera frames resized to ``image_size``, and ``t_robot`` (after the read)."""
        raw = self._require().get_observation()
        t_robot = time.monotonic()
        images = {name: self._frame(key, raw[key]) for key, name in self.camera_keys.items()}
        return {"images": images, "proprio": self._proprio(raw), "t_robot": t_robot}

    def _frame(self, key: str, frame: Any) -> np.ndarray:
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise RuntimeError(
                f"LeRobotAdapter: camera key {key!r} gave {frame.dtype} {frame.shape}, "
                "expected uint8 (H, W, 3) RGB"
            )
        h, w = self.image_size
        if frame.shape[:2] == (h, w):
            return frame
        try:
            import cv2
        except ImportError as e:
            raise ImportError(
                f"LeRobotAdapter: resizing {key!r} to {(h, w)} needs opencv: "
                "pip install 'stepwise[cameras]'"
            ) from e
        return cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)

    def ee_position(self) -> np.ndarray:
        """hand_x, hand_y, hand_z in metres, float64 (3,).

        LeRobot reads every sensor in ``get_observation()``, so this costs a full observation.
        """
        return self._proprio(self._require().get_observation())[:3].astype(np.float64)

    # --- action ---------------------------------------------------------------------------------

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Clip, map to the LeRobot action and send it; return the action the robot reports it sent.

        Keys the robot leaves out of its returned action are reported as sent. An exception from
        the robot runs ``stop()`` and is raised as RuntimeError.
        """
        applied = clip_action("LeRobotAdapter", action)
        robot = self._require()
        values = self.action_offsets + self.action_scales * applied.astype(np.float64)
        try:
            sent = robot.send_action({k: float(v) for k, v in zip(self.action_keys, values)}) or {}
        except Exception as e:
            try:
                self.stop()
            except Exception:
                log.exception("LeRobotAdapter: stop failed while handling an error")
            raise RuntimeError(f"LeRobotAdapter: the robot's send_action failed ({e}); it was stopped") from e
        for i, key in enumerate(self.action_keys):
            if key in sent:
                applied[i] = (float(sent[key]) - self.action_offsets[i]) / self.action_scales[i]
        return applied

    # --- episode --------------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> Observation:
        """Interpolate to ``home_action`` over ``home_duration_s`` (if set); return the observation.

        ``seed`` is ignored: a real scene is reset by hand.
        """
        self.connect()
        robot = self._robot
        if self.home_action is None:
            log.info("LeRobotAdapter: no home_action configured; reset() does not move the robot")
            return self.observe()
        raw = robot.get_observation()
        start = {k: float(raw[k]) for k in self.home_action}
        steps = max(1, round(self.home_duration_s * self.control_hz))
        for i in range(1, steps + 1):
            frac = i / steps
            robot.send_action({k: start[k] + frac * (v - start[k]) for k, v in self.home_action.items()})
            time.sleep(1.0 / self.control_hz)  # reset paces its own slow move; step() never sleeps
        return self.observe()

    def stop(self) -> None:
        """Send ``stop_action`` if configured (position-controlled arms hold without it). Idempotent."""
        if self._connected and self.stop_action is not None:
            self._robot.send_action(dict(self.stop_action))

    def close(self) -> None:
        """``stop()`` then ``disconnect()``, each attempted. Idempotent, never raises."""
        if not self._connected:
            return
        for label, step in (("stop", self.stop), ("disconnect", self._robot.disconnect)):
            try:
                step()
            except Exception:
                log.exception("LeRobotAdapter: %s failed during close", label)
        self._connected = False

    # --- specs ----------------------------------------------------------------------------------

    @property
    def observation_spec(self) -> ObservationSpec:
        """Cameras (the names of ``camera_keys``), image size and the 4-d proprio."""
        return ObservationSpec(
            cameras=tuple(self.camera_keys.values()), image_size=self.image_size, proprio_dim=4,
            state_dim=None, proprio_names=PROPRIO_NAMES,
        )

    @property
    def action_spec(self) -> ActionSpec:
        """4-d: dx, dy, dz, gripper in [-1, 1], mapped to ``action_keys``."""
        return ActionSpec(dim=4, names=ACTION_NAMES, ee_step_m=self.ee_step_m, control_hz=self.control_hz)


def _check_keys(key: str, value: Sequence[str]) -> tuple[str, ...]:
    names = () if isinstance(value, str) else tuple(str(n) for n in value)
    if len(names) != 4 or len(set(names)) != 4:
        raise ValueError(
            f"LeRobotAdapter: {key} must be 4 distinct keys "
            f"(for dx/hand_x, dy/hand_y, dz/hand_z, gripper), got {value!r}"
        )
    return names
