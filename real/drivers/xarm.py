"""UFactory xArm 5/6/7 and Lite6 through xarm-python-sdk: end-effector delta actions in servo mode.

Needs ``pip install 'stepwise[xarm]'`` (xarm-python-sdk 1.18.4). The SDK works in millimetres;
this driver's config, actions and observations are in metres. ``send_action`` sends one
``set_servo_cartesian`` target and returns without sleeping: the deploy loop owns the rate.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from real.drivers import (
    ACTION_NAMES,
    PROPRIO_NAMES,
    CameraRig,
    check_choice,
    check_positive,
    check_range,
    check_vector,
    clip_action,
)
from real.robot import ActionSpec, Observation, ObservationSpec

log = logging.getLogger(__name__)

GRIPPERS = ("xarm", "lite6", "none")
MM_PER_M = 1000.0
SERVO_MODE, POSITION_MODE = 1, 0
READY_STATE, STOP_STATE = 0, 4
_MODE_SWITCH_SETTLE_S = 0.1  # UFactory's examples wait this long after set_mode/set_state before moving


class XArmError(RuntimeError):
    """An xArm SDK call returned a non-zero code (see UFactory's API code table)."""


class XArmRobot:
    """A UFactory xArm or Lite6 driven by end-effector deltas through ``set_servo_cartesian``.

    Args:
        host: the controller's IP address.
        home_pose: ``[x, y, z, roll, pitch, yaw]``: TCP position in metres in the base frame and
            orientation in degrees, as UFactory Studio shows it (Studio shows mm: divide by 1000);
            ``reset()`` moves here and the orientation is then held.
        control_hz: the deploy loop's rate.
        ee_step_m: metres of end-effector travel per action unit per control step.
        home_speed: TCP speed of the home move in m/s (keep it slow).
        home_acceleration: TCP acceleration of the home move in m/s^2.
        home_timeout_s: longest the home move may take before it counts as failed.
        gripper: ``xarm`` (the xArm Gripper, position-controlled), ``lite6`` (the Lite6 gripper,
            open/close only) or ``none``.
        gripper_open: xArm Gripper position (pulses) when fully open.
        gripper_closed: xArm Gripper position (pulses) when fully closed.
        gripper_speed: xArm Gripper speed in r/min.
        cameras: ``name -> camera object or {type: ..., ...} spec`` (see ``real.cameras``).
        image_size: int or ``(height, width)`` of every camera frame.
        max_frame_age_ms: oldest camera frame ``observe()`` accepts.
    """

    def __init__(
        self,
        host: str,
        home_pose: Sequence[float] | None = None,
        control_hz: float = 20.0,
        ee_step_m: float = 0.01,
        home_speed: float = 0.05,
        home_acceleration: float = 0.5,
        home_timeout_s: float = 60.0,
        gripper: str = "xarm",
        gripper_open: float = 850.0,
        gripper_closed: float = 0.0,
        gripper_speed: float = 2000.0,
        cameras: Mapping[str, Any] | None = None,
        image_size: int | Sequence[int] = 96,
        max_frame_age_ms: float | None = 100.0,
    ) -> None:
        name = "XArmRobot"
        if not host:
            raise ValueError("XArmRobot: host is empty; set host to the controller's IP address")
        self.host = str(host)
        self.control_hz = check_positive(name, "control_hz", control_hz, "Hz")
        self.ee_step_m = check_positive(name, "ee_step_m", ee_step_m, "metres per action unit per step")
        if home_pose is None:
            raise ValueError(
                "XArmRobot: home_pose is required: [x, y, z, roll, pitch, yaw] in metres and "
                "degrees, read off UFactory Studio"
            )
        self.home_pose = check_vector(
            name, "home_pose", home_pose, 6, "x, y, z in metres and roll, pitch, yaw in degrees"
        )
        self.home_speed = check_range(name, "home_speed", home_speed, 1e-3, 0.25, "m/s")
        self.home_acceleration = check_positive(name, "home_acceleration", home_acceleration, "m/s^2")
        self.home_timeout_s = check_positive(name, "home_timeout_s", home_timeout_s, "s")
        self.gripper = check_choice(name, "gripper", gripper, GRIPPERS)
        self.gripper_open = float(gripper_open)
        self.gripper_closed = float(gripper_closed)
        if self.gripper == "xarm" and self.gripper_open == self.gripper_closed:
            raise ValueError(
                f"XArmRobot: gripper_open and gripper_closed are both {gripper_open}; "
                "set them to the open and closed positions (default 850 and 0)"
            )
        self.gripper_speed = check_positive(name, "gripper_speed", gripper_speed, "r/min")
        self.rig = CameraRig(cameras, image_size, max_frame_age_ms)
        self._arm = None
        self._held_rpy = [math.radians(v) for v in self.home_pose[3:]]
        self._armed = False  # in servo mode and ready; False after stop() until the next send_action
        self._pending_error: int | None = None  # controller error code from the report callback
        self._gripper_sent: float | None = None  # last gripper command that succeeded, in action units

    # --- connection -----------------------------------------------------------------------------

    def connect(self) -> None:
        """Connect, clear warnings and errors, enable motion, enter servo mode, open cameras. Idempotent."""
        if self._arm is not None:
            return
        try:
            from xarm.wrapper import XArmAPI
        except ImportError as e:
            raise ImportError("XArmRobot needs the xArm SDK: pip install 'stepwise[xarm]'") from e
        try:
            arm = XArmAPI(self.host, is_radian=True)
        except Exception as e:
            raise ConnectionError(
                f"XArmRobot: cannot connect to {self.host}: {e}. "
                "Check the IP and that the controller is on"
            ) from e
        if not arm.connected:
            try:
                arm.disconnect()  # stop the SDK's reconnect and report threads
            except Exception:
                log.exception("XArmRobot: disconnect after a failed connect failed")
            raise ConnectionError(
                f"XArmRobot: no connection to {self.host}; "
                "check the IP and that the controller is on"
            )
        self._arm = arm
        try:
            arm.register_error_warn_changed_callback(self._on_error_warn)
            self._pending_error = None
            _check(arm.clean_warn(), "clean_warn()")
            _check(arm.clean_error(), "clean_error()")
            if arm.error_code:
                raise XArmError(
                    f"controller error {arm.error_code} persists after clean_error(); "
                    "fix its cause (UFactory Studio shows it)"
                )
            _check(arm.motion_enable(True), "motion_enable(True)")
            self._enter_servo_mode()
            if self.gripper == "xarm":
                _check(arm.set_gripper_mode(0), "set_gripper_mode(0)")
                _check(arm.set_gripper_enable(True), "set_gripper_enable(True)")
                _check(arm.set_gripper_speed(self.gripper_speed), "set_gripper_speed")
            self._held_rpy = self._read_pose()[3:]
            self.rig.connect()
        except Exception as e:
            self.close()
            raise ConnectionError(
                f"XArmRobot: setting up {self.host} failed: {e} "
                "(gripper errors: set gripper: none if none is mounted)"
            ) from e

    def _require(self):
        if self._arm is None:
            raise RuntimeError("XArmRobot is not connected: call connect() (or use real.make_env)")
        return self._arm

    def _on_error_warn(self, data: Mapping[str, Any]) -> None:
        """SDK report thread: record a controller error (the next command raises), log warnings."""
        error, warn = int(data.get("error_code") or 0), int(data.get("warn_code") or 0)
        if error and self._pending_error is None:
            self._pending_error = error
            log.error("XArmRobot: controller error %d reported", error)
        if warn:
            log.warning("XArmRobot: controller warning %d reported", warn)

    def _raise_pending_error(self) -> None:
        """A hardware error was reported: emergency-stop and raise (sticky until connect() again)."""
        if self._pending_error is None:
            return
        try:
            self._arm.emergency_stop()
        except Exception:
            log.exception("XArmRobot: emergency_stop failed")
        self._armed = False
        raise RuntimeError(
            f"XArmRobot: the controller reported error {self._pending_error}; the arm was emergency-stopped. "
            "Fix the cause (UFactory Studio shows the error), then close() and connect() to clear it"
        )

    def _enter_servo_mode(self) -> None:
        arm = self._arm
        _check(arm.set_mode(SERVO_MODE), "set_mode(1)")
        _check(arm.set_state(READY_STATE), "set_state(0)")
        time.sleep(_MODE_SWITCH_SETTLE_S)
        self._armed = True

    # --- observation ----------------------------------------------------------------------------

    def _read_pose(self) -> list[float]:
        """``[x, y, z (mm), roll, pitch, yaw (rad)]`` from the controller."""
        code, pose = self._arm.get_position(is_radian=True)
        _check(code, "get_position()")
        return [float(v) for v in pose[:6]]

    def ee_position(self) -> np.ndarray:
        """TCP position in metres in the base frame, float64 (3,) (one controller query, no images)."""
        self._require()
        return np.asarray(self._read_pose()[:3], dtype=np.float64) / MM_PER_M

    def _gripper_opening(self) -> float:
        """Opening in [0, 1] (1 = open) read from the gripper; the last command if the read fails."""
        commanded = 1.0 if self._gripper_sent is None else (1.0 - self._gripper_sent) / 2.0
        if self.gripper == "none":
            return 1.0
        if self.gripper == "lite6":
            code, closing = self._arm.get_tgpio_output_digital(1)  # close_lite6_gripper drives tool output 1 high
            return commanded if code != 0 else (0.0 if closing else 1.0)
        code, pos = self._arm.get_gripper_position()
        if code != 0 or pos is None:
            log.warning("XArmRobot: get_gripper_position() returned code %s; reporting the last command", code)
            return commanded
        return float(np.clip((pos - self.gripper_closed) / (self.gripper_open - self.gripper_closed), 0.0, 1.0))

    def observe(self) -> Observation:
        """Camera frames, proprio ``[hand_x, hand_y, hand_z (m), gripper_opening]`` and ``t_robot``."""
        self._require()
        pose = self._read_pose()
        t_robot = time.monotonic()
        proprio = np.array([*(v / MM_PER_M for v in pose[:3]), self._gripper_opening()], dtype=np.float32)
        return {"images": self.rig.read(), "proprio": proprio, "t_robot": t_robot}

    # --- action ---------------------------------------------------------------------------------

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Clip, servo the TCP by ``action[:3] * ee_step_m`` metres, set the gripper; return what was applied.

        A non-zero SDK code or an exception stops the arm (``set_state(4)``) and raises; a
        controller error reported by the SDK's callback emergency-stops it and raises.
        """
        applied = clip_action("XArmRobot", action)
        arm = self._require()
        self._raise_pending_error()
        step = "set_servo_cartesian"
        try:
            if not self._armed:  # after stop(): back into servo mode (a one-off settle wait)
                step = "re-entering servo mode"
                self._enter_servo_mode()
                step = "set_servo_cartesian"
            pose = self._read_pose()
            delta_mm = applied[:3].astype(np.float64) * self.ee_step_m * MM_PER_M
            target = [p + d for p, d in zip(pose[:3], delta_mm.tolist())] + list(self._held_rpy)
            _check(arm.set_servo_cartesian(target, is_radian=True), "set_servo_cartesian")
            step = "gripper"
            applied[3] = self._apply_gripper(float(applied[3]))
        except Exception as e:
            self._stop_quietly()
            raise RuntimeError(
                f"XArmRobot: {step} failed ({e}); the arm was stopped. "
                "Check UFactory Studio for errors, then reset()"
            ) from e
        return applied

    def _apply_gripper(self, value: float) -> float:
        """Command the gripper on a change; return what is applied in action units (+1 closed)."""
        if self.gripper == "none":
            return 0.0
        arm = self._arm
        if self.gripper == "lite6":
            target = 1.0 if value > 0.0 else -1.0  # open/close only
            if target != self._gripper_sent:
                code = arm.close_lite6_gripper(sync=False) if target > 0 else arm.open_lite6_gripper(sync=False)
                self._gripper_result(code, target)
        else:
            pos = round(self.gripper_open + (value + 1.0) / 2.0 * (self.gripper_closed - self.gripper_open))
            target = 2.0 * (pos - self.gripper_open) / (self.gripper_closed - self.gripper_open) - 1.0
            if target != self._gripper_sent:
                self._gripper_result(arm.set_gripper_position(pos, wait=False), target)
        return 0.0 if self._gripper_sent is None else self._gripper_sent

    def _gripper_result(self, code: int, target: float) -> None:
        if code == 0:
            self._gripper_sent = target
        else:
            log.warning("XArmRobot: gripper command returned code %s; the gripper keeps its last command", code)

    # --- episode --------------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> Observation:
        """Move slowly to ``home_pose`` in position mode (blocking), open the gripper, back to servo mode.

        ``seed`` is ignored: a real scene is reset by hand.
        """
        self.connect()
        arm = self._require()
        self._raise_pending_error()
        x, y, z = (v * MM_PER_M for v in self.home_pose[:3])
        roll, pitch, yaw = (math.radians(v) for v in self.home_pose[3:])
        try:
            self._armed = False
            _check(arm.set_mode(POSITION_MODE), "set_mode(0)")
            _check(arm.set_state(READY_STATE), "set_state(0)")
            time.sleep(_MODE_SWITCH_SETTLE_S)
            code = arm.set_position(
                x=x, y=y, z=z, roll=roll, pitch=pitch, yaw=yaw, speed=self.home_speed * MM_PER_M,
                mvacc=self.home_acceleration * MM_PER_M, is_radian=True, wait=True, timeout=self.home_timeout_s,
            )
            _check(code, "set_position(home_pose)")
            self._held_rpy = [roll, pitch, yaw]
            self._gripper_sent = None  # command the open even if it was the last command
            self._apply_gripper(-1.0)
            self._enter_servo_mode()
        except Exception as e:
            self._stop_quietly()
            raise RuntimeError(
                f"XArmRobot: the home move failed ({e}); "
                "check home_pose is reachable and Studio shows no error"
            ) from e
        self._raise_pending_error()
        return self.observe()

    def stop(self) -> None:
        """Stop motion and hold (``set_state(4)``), stay connected; the next ``send_action`` re-arms. Idempotent."""
        if self._arm is None:
            return
        self._armed = False
        _check(self._arm.set_state(STOP_STATE), "set_state(4)")

    def _stop_quietly(self) -> None:
        try:
            self.stop()
        except Exception:
            log.exception("XArmRobot: stop failed while handling an error")

    def close(self) -> None:
        """Stop (``set_state(4)``), release the callback, disconnect, close cameras. Idempotent, never raises."""
        arm = self._arm
        if arm is None:
            return
        steps = [
            ("set_state(4)", lambda: _check(arm.set_state(STOP_STATE), "set_state(4)")),
            ("release_error_warn_changed_callback",
             lambda: arm.release_error_warn_changed_callback(self._on_error_warn)),
            ("disconnect", arm.disconnect),
        ]
        for label, step in steps:
            try:
                step()
            except Exception:
                log.exception("XArmRobot: %s failed during close", label)
        self.rig.close(log)
        self._arm = None
        self._armed = False
        self._gripper_sent = None

    # --- specs ----------------------------------------------------------------------------------

    @property
    def observation_spec(self) -> ObservationSpec:
        """Cameras, image size and the 4-d end-effector proprio."""
        return ObservationSpec(
            cameras=self.rig.names, image_size=self.rig.image_size, proprio_dim=4,
            state_dim=None, proprio_names=PROPRIO_NAMES,
        )

    @property
    def action_spec(self) -> ActionSpec:
        """4-d: end-effector delta xyz (``ee_step_m`` metres per unit) and gripper (close > 0)."""
        return ActionSpec(dim=4, names=ACTION_NAMES, ee_step_m=self.ee_step_m, control_hz=self.control_hz)


def _check(code: Any, call: str) -> None:
    """Raise XArmError for a non-zero SDK return code."""
    if code != 0:
        raise XArmError(f"{call} returned code {code} (see UFactory's API code table)")
