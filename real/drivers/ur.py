"""Universal Robots e-series through ur-rtde: end-effector delta actions by ``servoL`` or ``speedL``.

Needs ``pip install 'stepwise[ur]'`` (ur-rtde 1.6.5) and the robot in Remote Control mode. The
deploy loop owns the control rate: ``send_action`` sends one command and returns without sleeping.
"""

from __future__ import annotations

import logging
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

MODES = ("servo", "speed")
GRIPPERS = ("none", "tool_digital_out", "standard_digital_out")
_TOOL_OUTPUT_BIT0 = 16  # RTDE actual_digital_output_bits: 0-7 standard, 8-15 configurable, 16-17 tool
_SERVO_SPEED = 0.5  # servoL's speed and acceleration are unused by ur-rtde 1.6.5 but must be in range
_SERVO_ACCELERATION = 0.5


class URRobot:
    """A UR e-series arm driven by end-effector deltas, with an optional digital-output gripper.

    Args:
        host: the robot's IP address.
        home_pose: ``[x, y, z, rx, ry, rz]``: TCP position in metres in the base frame and rotation
            vector in radians, as the teach pendant shows it; ``reset()`` moves here and the
            orientation is then held.
        mode: ``servo`` (``servoL`` to the current TCP pose plus the delta) or ``speed``
            (``speedL`` at delta * control_hz).
        control_hz: the deploy loop's rate; sets servo/speed command durations.
        ee_step_m: metres of end-effector travel per action unit per control step.
        home_speed: TCP speed of the home move in m/s (keep it slow).
        home_acceleration: TCP acceleration of the home move in m/s^2.
        speed_acceleration: ``speedL`` acceleration in m/s^2 (speed mode).
        servo_lookahead_time: ``servoL`` lookahead in seconds, in [0.03, 0.2] (larger is smoother).
        servo_gain: ``servoL`` proportional gain, in [100, 2000] (lower is softer).
        stop_deceleration: deceleration of ``servoStop`` / ``speedStop`` in m/s^2.
        gripper: ``none``, ``tool_digital_out`` or ``standard_digital_out`` (a binary gripper on a
            digital output, driven through ``rtde_io``).
        gripper_pin: the digital output's number.
        gripper_close_high: the output is high when the gripper is closed.
        cameras: ``name -> camera object or {type: ..., ...} spec`` (see ``real.cameras``).
        image_size: int or ``(height, width)`` of every camera frame.
        max_frame_age_ms: oldest camera frame ``observe()`` accepts.
    """

    def __init__(
        self,
        host: str,
        home_pose: Sequence[float] | None = None,
        mode: str = "servo",
        control_hz: float = 20.0,
        ee_step_m: float = 0.01,
        home_speed: float = 0.05,
        home_acceleration: float = 0.25,
        speed_acceleration: float = 0.5,
        servo_lookahead_time: float = 0.1,
        servo_gain: float = 300.0,
        stop_deceleration: float = 10.0,
        gripper: str = "none",
        gripper_pin: int = 0,
        gripper_close_high: bool = True,
        cameras: Mapping[str, Any] | None = None,
        image_size: int | Sequence[int] = 96,
        max_frame_age_ms: float | None = 100.0,
    ) -> None:
        name = "URRobot"
        if not host:
            raise ValueError("URRobot: host is empty; set host to the robot's IP address")
        self.host = str(host)
        self.mode = check_choice(name, "mode", mode, MODES)
        self.control_hz = check_positive(name, "control_hz", control_hz, "Hz")
        self.ee_step_m = check_positive(name, "ee_step_m", ee_step_m, "metres per action unit per step")
        if home_pose is None:
            raise ValueError(
                "URRobot: home_pose is required: [x, y, z, rx, ry, rz] in metres and "
                "radians (rotation vector), read off the pendant"
            )
        self.home_pose = check_vector(
            name, "home_pose", home_pose, 6, "x, y, z in metres and rx, ry, rz rotation vector in radians"
        )
        self.home_speed = check_range(name, "home_speed", home_speed, 1e-3, 0.25, "m/s")
        self.home_acceleration = check_positive(name, "home_acceleration", home_acceleration, "m/s^2")
        self.speed_acceleration = check_positive(name, "speed_acceleration", speed_acceleration, "m/s^2")
        self.servo_lookahead_time = check_range(name, "servo_lookahead_time", servo_lookahead_time, 0.03, 0.2, "s")
        self.servo_gain = check_range(name, "servo_gain", servo_gain, 100.0, 2000.0, "")
        self.stop_deceleration = check_positive(name, "stop_deceleration", stop_deceleration, "m/s^2")
        self.gripper = check_choice(name, "gripper", gripper, GRIPPERS)
        max_pin = 1 if self.gripper == "tool_digital_out" else 7
        if not (isinstance(gripper_pin, int) and 0 <= gripper_pin <= max_pin):
            raise ValueError(
                f"URRobot: gripper_pin must be an int in [0, {max_pin}] for gripper={self.gripper}, "
                f"got {gripper_pin!r}"
            )
        self.gripper_pin = gripper_pin
        self.gripper_close_high = bool(gripper_close_high)
        self.rig = CameraRig(cameras, image_size, max_frame_age_ms)
        self._control = self._receive = self._io = None
        self._held_rotvec = list(self.home_pose[3:])
        self._gripper_closed: bool | None = None  # last state written to the output (None: unknown)

    # --- connection -----------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the RTDE receive, control (and IO) interfaces and the cameras. Idempotent."""
        if self._control is not None:
            return
        try:
            import rtde_control
            import rtde_receive

            rtde_io = None
            if self.gripper != "none":
                import rtde_io
        except ImportError as e:
            raise ImportError("URRobot needs the ur-rtde SDK: pip install 'stepwise[ur]'") from e
        try:
            self._receive = rtde_receive.RTDEReceiveInterface(self.host)
            self._control = rtde_control.RTDEControlInterface(self.host)
            if rtde_io is not None:
                self._io = rtde_io.RTDEIOInterface(self.host)
            self._held_rotvec = list(self._receive.getActualTCPPose()[3:])
        except Exception as e:
            self._release()
            raise ConnectionError(
                f"URRobot: cannot connect to {self.host}: {e}. Check the IP, that the arm is powered "
                "on and in Remote Control mode on the pendant, and that no other program holds RTDE"
            ) from e
        try:
            self.rig.connect()
        except Exception:
            self.close()
            raise

    def _require(self):
        if self._control is None:
            raise RuntimeError("URRobot is not connected: call connect() (or use real.make_env)")
        return self._control, self._receive

    def _ensure_connected(self) -> None:
        """Reconnect a dropped RTDE interface once; a second failure is a ConnectionError."""
        self._require()
        for label, iface in (("receive", self._receive), ("control", self._control), ("io", self._io)):
            if iface is None or iface.isConnected():
                continue
            log.warning("URRobot: RTDE %s interface disconnected; reconnecting once", label)
            if not (iface.reconnect() and iface.isConnected()):
                raise ConnectionError(
                    f"URRobot: lost the RTDE {label} connection to {self.host} and reconnect() failed; "
                    "check the network and the pendant (protective stop, remote control), then close() and connect()"
                )

    # --- observation ----------------------------------------------------------------------------

    def ee_position(self) -> np.ndarray:
        """TCP position in metres in the base frame, float64 (3,) (the latest RTDE sample, no images)."""
        _, receive = self._require()
        return np.asarray(receive.getActualTCPPose()[:3], dtype=np.float64)

    def _gripper_opening(self) -> float:
        if self.gripper == "none":
            return 1.0  # no gripper: reported open, constant
        bit = self.gripper_pin + (_TOOL_OUTPUT_BIT0 if self.gripper == "tool_digital_out" else 0)
        high = bool((int(self._receive.getActualDigitalOutputBits()) >> bit) & 1)
        return 0.0 if high == self.gripper_close_high else 1.0

    def observe(self) -> Observation:
        """Camera frames, proprio ``[hand_x, hand_y, hand_z, gripper_opening]`` and ``t_robot``."""
        self._ensure_connected()
        pose = self._receive.getActualTCPPose()
        t_robot = time.monotonic()
        proprio = np.array([*pose[:3], self._gripper_opening()], dtype=np.float32)
        return {"images": self.rig.read(), "proprio": proprio, "t_robot": t_robot}

    # --- action ---------------------------------------------------------------------------------

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Clip, move the TCP by ``action[:3] * ee_step_m`` metres, set the gripper; return what was applied.

        The gripper is binary: ``action[3] > 0`` closes it and the applied value is reported as
        +1 / -1 (0 without a gripper). An SDK failure stops the arm and raises RuntimeError.
        """
        applied = clip_action("URRobot", action)
        self._ensure_connected()
        command = "servoL" if self.mode == "servo" else "speedL"
        try:
            delta = (applied[:3].astype(np.float64) * self.ee_step_m).tolist()
            dt = 1.0 / self.control_hz
            if self.mode == "servo":
                pos = self._receive.getActualTCPPose()[:3]
                target = [p + d for p, d in zip(pos, delta)] + list(self._held_rotvec)
                ok = self._control.servoL(
                    target, _SERVO_SPEED, _SERVO_ACCELERATION, dt, self.servo_lookahead_time, self.servo_gain
                )
            else:
                velocity = [d * self.control_hz for d in delta] + [0.0, 0.0, 0.0]
                ok = self._control.speedL(velocity, self.speed_acceleration, dt)
            if not ok:
                raise RuntimeError(f"{command} was refused by the controller")
            command = "gripper"
            applied[3] = self._apply_gripper(float(applied[3]))
        except Exception as e:
            self._stop_quietly()
            raise RuntimeError(
                f"URRobot: {command} failed ({e}); the arm was stopped. Check the pendant for a "
                "protective stop or a stopped program, clear it, then reset()"
            ) from e
        return applied

    def _apply_gripper(self, value: float) -> float:
        """Write the binary gripper output on a change; return the state now applied (+1 closed, -1 open)."""
        if self.gripper == "none":
            return 0.0
        close = value > 0.0
        if close != self._gripper_closed:
            level = close == self.gripper_close_high
            if self.gripper == "tool_digital_out":
                ok = self._io.setToolDigitalOut(self.gripper_pin, level)
            else:
                ok = self._io.setStandardDigitalOut(self.gripper_pin, level)
            if ok:
                self._gripper_closed = close
            else:
                log.warning("URRobot: the gripper output write was refused; the gripper keeps its state")
        if self._gripper_closed is None:
            return 0.0  # never written: state unknown
        return 1.0 if self._gripper_closed else -1.0

    # --- episode --------------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> Observation:
        """Stop, open the gripper, ``moveL`` to ``home_pose`` at ``home_speed`` (blocking); return the observation.

        ``seed`` is ignored: a real scene is reset by hand.
        """
        self.connect()
        self._ensure_connected()
        try:
            self.stop()
            if not self._control.moveL(list(self.home_pose), self.home_speed, self.home_acceleration):
                raise RuntimeError("moveL to home_pose was refused by the controller")
            self._held_rotvec = list(self.home_pose[3:])
            self._apply_gripper(-1.0)
        except Exception as e:
            self._stop_quietly()
            raise RuntimeError(
                f"URRobot: the home move failed ({e}); check home_pose is reachable and the pendant shows no stop"
            ) from e
        return self.observe()

    def stop(self) -> None:
        """Decelerate to rest (``servoStop`` or ``speedStop`` per mode) and stay connected. Idempotent."""
        if self._control is None:
            return
        if self.mode == "servo":
            self._control.servoStop(self.stop_deceleration)
        else:
            self._control.speedStop(self.stop_deceleration)

    def _stop_quietly(self) -> None:
        try:
            self.stop()
        except Exception:
            log.exception("URRobot: stop failed while handling an error")

    def close(self) -> None:
        """Stop, end the control script, disconnect every interface, close cameras. Idempotent, never raises."""
        if self._control is None and self._receive is None:
            return
        control = self._control
        steps = []
        if control is not None:
            stop = control.servoStop if self.mode == "servo" else control.speedStop
            steps += [
                ("stop", lambda: stop(self.stop_deceleration)),
                ("stopScript", control.stopScript),
                ("control.disconnect", control.disconnect),
            ]
        for label, iface in (("receive", self._receive), ("io", self._io)):
            if iface is not None:
                steps.append((f"{label}.disconnect", iface.disconnect))
        for label, step in steps:
            try:
                step()
            except Exception:
                log.exception("URRobot: %s failed during close", label)
        self.rig.close(log)
        self._control = self._receive = self._io = None
        self._gripper_closed = None

    def _release(self) -> None:
        """Disconnect whatever a failed connect() opened."""
        for iface in (self._control, self._receive, self._io):
            if iface is not None:
                try:
                    iface.disconnect()
                except Exception:
                    log.exception("URRobot: disconnect after a failed connect failed")
        self._control = self._receive = self._io = None

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
