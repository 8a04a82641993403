"""The safety layer every command passes through before it reaches a driver.

Limits are in metres in the robot's base frame and are validated when built, before anything
connects. Every limit is on unless named in ``disabled``: a missing workspace box is an error, not a
silent "no limit". The filter works on the action contract (end-effector delta xyz + gripper in
[-1, 1]) through the driver's ``action_spec.ee_step_m`` (metres per action unit per step):

1. non-finite actions are rejected: the robot holds position and keeps its last gripper command;
2. the action is clipped to [-1, 1];
3. the commanded target (position + delta) is clamped into the workspace box (a robot already
   outside the box may only move back towards it);
4. the displacement is scaled down to ``min(max_step_m, max_speed_mps / control_hz)``;
5. the gripper command is clamped to ``[gripper_low, gripper_high]``.

Steps 3 and 4 keep every commanded target inside the box: shrinking a move from a point inside a
box towards a target inside the box stays inside it (the box is convex). Clamps and rejections are
counted in :attr:`SafeRobot.stats` and logged.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import numpy as np

from real.robot import Observation, Robot

log = logging.getLogger(__name__)

LIMITS = ("workspace", "max_step", "max_speed", "gripper")
EVENTS = ("rejected_nonfinite", "clamped_range", "clamped_workspace", "clamped_step", "clamped_speed", "clamped_gripper")


@dataclass(frozen=True)
class SafetyLimits:
    """Per-robot limits (metres, metres per second, action units for the gripper).

    Attributes:
        workspace_low / workspace_high: the end-effector box, (3,) each.
        max_step_m: the largest end-effector displacement one command may ask for.
        max_speed_mps: the largest speed; one command moves at most ``max_speed_mps / control_hz``.
        gripper_low / gripper_high: the gripper command range within [-1, 1].
        disabled: limits turned off explicitly (``workspace``, ``max_step``, ``max_speed``,
            ``gripper``). A limit left unset and not named here is an error.
    """

    workspace_low: tuple[float, float, float] | None = None
    workspace_high: tuple[float, float, float] | None = None
    max_step_m: float | None = 0.01
    max_speed_mps: float | None = 0.25
    gripper_low: float = -1.0
    gripper_high: float = 1.0
    disabled: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        unknown = set(self.disabled) - set(LIMITS)
        if unknown:
            raise ValueError(f"safety.disabled has unknown limits {sorted(unknown)}: use names from {LIMITS}")
        if "workspace" not in self.disabled:
            if self.workspace_low is None or self.workspace_high is None:
                raise ValueError(
                    "safety.workspace_low and safety.workspace_high are not set: measure the box the "
                    "end effector may reach (metres, robot base frame) and set both, or turn the limit "
                    "off explicitly with safety.disabled=[workspace]"
                )
            low, high = np.asarray(self.workspace_low, float), np.asarray(self.workspace_high, float)
            if low.shape != (3,) or high.shape != (3,):
                raise ValueError(f"safety.workspace_low/high must be 3 numbers each (x, y, z in m), got {self.workspace_low} and {self.workspace_high}")
            if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
                raise ValueError("safety.workspace_low/high must be finite numbers")
            if np.any(high <= low):
                raise ValueError(
                    f"safety workspace box is empty: workspace_low {low.tolist()} must be below "
                    f"workspace_high {high.tolist()} on every axis"
                )
            object.__setattr__(self, "workspace_low", tuple(low.tolist()))
            object.__setattr__(self, "workspace_high", tuple(high.tolist()))
        for name, limit in (("max_step_m", "max_step"), ("max_speed_mps", "max_speed")):
            value = getattr(self, name)
            if limit in self.disabled:
                continue
            if value is None or not np.isfinite(value) or value <= 0:
                raise ValueError(f"safety.{name} must be a positive number (got {value}), or turn it off with safety.disabled=[{limit}]")
        if "gripper" not in self.disabled and not (-1.0 <= self.gripper_low <= self.gripper_high <= 1.0):
            raise ValueError(
                f"safety.gripper_low {self.gripper_low} and gripper_high {self.gripper_high} must satisfy "
                "-1 <= gripper_low <= gripper_high <= 1 (action units)"
            )

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | "SafetyLimits") -> "SafetyLimits":
        """Build from a config mapping (``configs/robot/<name>.yaml``'s ``safety`` block)."""
        if isinstance(cfg, SafetyLimits):
            return cfg
        if cfg is None:
            raise ValueError("no safety block given: every robot config needs one (see configs/robot/)")
        cfg = dict(cfg)
        known = {f.name for f in fields(cls)}
        unknown = set(cfg) - known
        if unknown:
            raise ValueError(f"unknown safety settings {sorted(unknown)}: known ones are {sorted(known)}")
        for key in ("workspace_low", "workspace_high"):
            if cfg.get(key) is not None:
                cfg[key] = tuple(float(v) for v in cfg[key])
        cfg["disabled"] = tuple(cfg.get("disabled") or ())
        return cls(**cfg)

    def is_on(self, limit: str) -> bool:
        """Whether ``limit`` (one of :data:`LIMITS`) is enforced."""
        return limit not in self.disabled

    def contains(self, position: np.ndarray, tol: float = 1e-9) -> bool:
        """Whether ``position`` (3,) lies in the workspace box (always true when it is disabled)."""
        if not self.is_on("workspace"):
            return True
        p = np.asarray(position, float)
        return bool(np.all(p >= np.asarray(self.workspace_low) - tol) and np.all(p <= np.asarray(self.workspace_high) + tol))


def filter_action(
    action: np.ndarray,
    position: np.ndarray | None,
    limits: SafetyLimits,
    ee_step_m: float | None,
    control_hz: float | None,
    last_gripper: float = 0.0,
) -> tuple[np.ndarray, list[str]]:
    """The safe version of ``action`` and the events that changed it (see the module docstring).

    Args:
        action: requested action, (A,) with xyz delta first and the gripper last.
        position: current end-effector position (3,) in metres; needed when the workspace, step
            or speed limit is on.
        limits: the robot's :class:`SafetyLimits`.
        ee_step_m: metres per action unit (the driver's ``action_spec.ee_step_m``).
        control_hz: the driver's control rate, for the speed cap.
        last_gripper: the gripper command to keep when a non-finite action is rejected.

    Returns:
        ``(safe float32 (A,), events)`` with events from :data:`EVENTS`.
    """
    a = np.array(action, dtype=np.float64, copy=True).reshape(-1)
    events: list[str] = []
    if not np.all(np.isfinite(a)):
        safe = np.zeros_like(a)
        safe[-1] = last_gripper
        return safe.astype(np.float32), ["rejected_nonfinite"]
    clipped = np.clip(a, -1.0, 1.0)
    if np.any(clipped != a):
        events.append("clamped_range")
    a = clipped
    moves = any(limits.is_on(k) for k in ("workspace", "max_step", "max_speed"))
    if moves and a.shape[0] >= 4:
        if ee_step_m is None:
            raise ValueError(
                "the driver's action_spec.ee_step_m is None, so the safety layer cannot bound its "
                "motion: give the driver an ee_step_m, or disable workspace/max_step/max_speed explicitly"
            )
        delta = a[:3] * ee_step_m
        if limits.is_on("workspace"):
            if position is None:
                raise ValueError("the workspace limit needs the end-effector position, and the driver gave none")
            pos = np.asarray(position, float)
            low = np.minimum(np.asarray(limits.workspace_low), pos)  # outside the box: only move back in
            high = np.maximum(np.asarray(limits.workspace_high), pos)
            target = np.clip(pos + delta, low, high)
            if np.any(np.abs(target - (pos + delta)) > 1e-12):
                events.append("clamped_workspace")
                delta = target - pos
        norm = float(np.linalg.norm(delta))
        step_cap = limits.max_step_m if limits.is_on("max_step") else np.inf
        speed_cap = np.inf
        if limits.is_on("max_speed"):
            if not control_hz:
                raise ValueError("the speed limit needs the driver's action_spec.control_hz")
            speed_cap = limits.max_speed_mps / control_hz
        cap = min(step_cap, speed_cap)
        if norm > cap:
            events.append("clamped_step" if step_cap <= speed_cap else "clamped_speed")
            delta = delta * (cap / norm)
        a[:3] = delta / ee_step_m
    if limits.is_on("gripper"):
        g = float(np.clip(a[-1], limits.gripper_low, limits.gripper_high))
        if g != a[-1]:
            events.append("clamped_gripper")
            a[-1] = g
    return a.astype(np.float32), events


class SafeRobot:
    """Wraps a driver so every ``send_action`` passes :func:`filter_action`; all else is forwarded.

    Attributes:
        stats: counts of commands and of each safety event.
        last_events: the events of the last command.
        last_target: the end-effector target (3,) the last command asked for, in metres (position
            the check used + the sent delta); ``None`` when no position is known.
    """

    def __init__(self, robot: Robot, limits: SafetyLimits | Mapping[str, Any]) -> None:
        self.robot = robot
        self.limits = SafetyLimits.from_config(limits)
        self.stats: Counter = Counter({"commands": 0, **{e: 0 for e in EVENTS}})
        self.last_events: list[str] = []
        self.last_target: np.ndarray | None = None
        self._position: np.ndarray | None = None
        self._gripper = 0.0

    def __getattr__(self, name: str) -> Any:
        # Forward driver extras (task_signals, expert_action, sim_task, ...); GroundTruth checks see them.
        if name == "robot":
            raise AttributeError(name)
        return getattr(self.robot, name)

    @property
    def observation_spec(self):
        """The wrapped driver's observation spec."""
        return self.robot.observation_spec

    @property
    def action_spec(self):
        """The wrapped driver's action spec."""
        return self.robot.action_spec

    def connect(self) -> None:
        """Connect the wrapped driver."""
        self.robot.connect()

    def _remember(self, obs: Observation) -> Observation:
        proprio = obs.get("proprio")
        if proprio is not None and len(proprio) >= 3:
            self._position = np.asarray(proprio[:3], float)
        return obs

    def observe(self) -> Observation:
        """The wrapped driver's observation (its proprio is the position the next check uses)."""
        return self._remember(self.robot.observe())

    def reset(self, seed: int | None = None) -> Observation:
        """Reset the wrapped driver."""
        self._gripper = 0.0
        return self._remember(self.robot.reset(seed=seed))

    def position(self) -> np.ndarray | None:
        """The end-effector position the next check uses: the driver's cheap read if it has one."""
        if hasattr(self.robot, "ee_position"):
            return np.asarray(self.robot.ee_position(), float)
        if self._position is None:
            self.observe()
        return self._position

    def check(self, action: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """What :meth:`send_action` would send for ``action`` and why; moves nothing (dry runs)."""
        return self._check(action)[:2]

    def _check(self, action: np.ndarray) -> tuple[np.ndarray, list[str], np.ndarray | None]:
        spec = self.robot.action_spec
        pos = self.position() if self.limits.is_on("workspace") or spec.ee_step_m else None
        safe, events = filter_action(action, pos, self.limits, spec.ee_step_m, spec.control_hz, self._gripper)
        target = None if pos is None or not spec.ee_step_m else pos + safe[:3].astype(np.float64) * spec.ee_step_m
        return safe, events, target

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Filter ``action`` through the limits, send it, return what the driver applied."""
        safe, events, self.last_target = self._check(action)
        self.stats["commands"] += 1
        for e in events:
            self.stats[e] += 1
            if self.stats[e] == 1 or self.stats[e] % 100 == 0:
                log.warning("safety: %s (%d so far); requested %s, sending %s", e, self.stats[e], np.asarray(action).tolist(), safe.tolist())
        self.last_events = events
        applied = self.robot.send_action(safe)
        self._gripper = float(np.asarray(applied)[-1])
        return applied

    def stop(self) -> None:
        """The wrapped driver's controlled stop."""
        self.robot.stop()

    def close(self) -> None:
        """The wrapped driver's stop sequence and release."""
        self.robot.close()

    def summary(self) -> dict[str, int]:
        """Counts of commands and safety events, for run summaries."""
        return dict(self.stats)
