"""Vendor arm drivers (UR, xArm, LeRobot) against their SDK classes with only the connection replaced.

The fakes stand in for ``rtde_control.RTDEControlInterface`` / ``rtde_receive.RTDEReceiveInterface``
/ ``rtde_io.RTDEIOInterface`` and ``xarm.wrapper.XArmAPI``. They keep a simulated TCP that moves when
commanded, record every call, can be told to fail, and check each call against the REAL class: a
method it lacks, or arguments its signature does not accept, is recorded as misuse and fails the
test (ur-rtde's pybind signatures are parsed from their docstrings, xArm's read by ``inspect``).
"""

from __future__ import annotations

import inspect
import logging
import math
import numbers
import re
import sys
import time
import types

import numpy as np
import pytest
import rtde_control
import rtde_io
import rtde_receive
import xarm.wrapper

import real
from real.drivers import lerobot as lerobot_mod
from real.drivers import xarm as xarm_mod
from real.drivers.lerobot import LeRobotAdapter
from real.drivers.ur import URRobot
from real.drivers.xarm import XArmRobot

REAL_CONTROL = rtde_control.RTDEControlInterface
REAL_RECEIVE = rtde_receive.RTDEReceiveInterface
REAL_IO = rtde_io.RTDEIOInterface
REAL_XARM = xarm.wrapper.XArmAPI

UR_HOME = [0.45, -0.12, 0.30, 0.0, 3.1416, 0.0]
XARM_HOME = [0.30, 0.05, 0.25, 180.0, 0.0, 0.0]


# --- signature checks against the real SDK classes ------------------------------------------------


def _split_top_level(text: str) -> list[str]:
    """Split a pybind parameter list on commas outside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[(<"
        depth -= ch in "])>"
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return parts + ([cur.strip()] if cur.strip() else [])


def pybind_overloads(cls: type, name: str) -> list[list[tuple[str, str, bool]]]:
    """Every overload of a pybind method as ``[(param, type, has_default), ...]`` (self dropped)."""
    doc = getattr(cls, name).__doc__ or ""
    overloads = []
    for line in doc.splitlines():
        m = re.match(rf"^(?:\d+\. )?{re.escape(name)}\((.*)\) -> .*$", line.strip())
        if m:
            params = []
            for p in _split_top_level(m.group(1))[1:]:
                decl, _, default = p.partition(" = ")
                pname, _, ptype = decl.partition(": ")
                params.append((pname.strip(), ptype.strip(), bool(default)))
            overloads.append(params)
    assert overloads, f"no signature parsed for {cls.__name__}.{name}"
    return overloads


def _type_ok(value, ptype: str) -> bool:
    if ptype == "float":
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ptype == "int":
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ptype == "bool":
        return isinstance(value, (bool, np.bool_))
    if ptype == "str":
        return isinstance(value, str)
    if ptype.startswith("list[") and ptype.endswith("]"):
        return isinstance(value, (list, tuple)) and all(_type_ok(v, ptype[5:-1]) for v in value)
    return True


def pybind_accepts(cls: type, name: str, args: tuple, kwargs: dict) -> bool:
    """Whether some overload of the real pybind method binds these arguments (names and types)."""
    for params in pybind_overloads(cls, name):
        if len(args) > len(params):
            continue
        positional, rest = params[: len(args)], params[len(args):]
        names = {p for p, _, _ in rest}
        if any(k not in names or re.fullmatch(r"arg\d+", k) for k in kwargs):
            continue  # pybind's argN parameters are positional-only
        if any(p not in kwargs and not has_default for p, _, has_default in rest):
            continue
        typed = list(zip(args, positional)) + [(kwargs[p], (p, t, d)) for p, t, d in rest if p in kwargs]
        if all(_type_ok(v, t) for v, (_, t, _) in typed):
            return True
    return False


def python_accepts(cls: type, name: str, args: tuple, kwargs: dict) -> bool:
    try:
        inspect.signature(getattr(cls, name)).bind(None, *args, **kwargs)
    except TypeError:
        return False
    return True


# --- UR fakes --------------------------------------------------------------------------------------


class URWorld:
    """The simulated UR controller behind the fake RTDE interfaces."""

    def __init__(self) -> None:
        self.pose = [0.40, -0.10, 0.35, 0.1, 3.0, -0.2]
        self.calls: list[tuple[str, str, tuple]] = []
        self.misuse: list[str] = []
        self.raise_on: dict[tuple[str, str], Exception] = {}
        self.return_on: dict[str, object] = {}
        self.connected = {"control": True, "receive": True, "io": True}
        self.reconnect_ok = True
        self.output_bits = 0

    def names(self, iface: str | None = None) -> list[str]:
        return [n if iface else f"{i}.{n}" for i, n, _ in self.calls if iface in (None, i)]

    def args_of(self, name: str) -> list[tuple]:
        return [a for _, n, a in self.calls if n == name]

    # handlers: (iface, *SDK args)
    def getActualTCPPose(self, iface):
        return list(self.pose)

    def getActualDigitalOutputBits(self, iface):
        return self.output_bits

    def servoL(self, iface, pose, speed, acc, t, lookahead, gain):
        self.pose = [float(v) for v in pose]
        return True

    def speedL(self, iface, xd, acceleration=0.25, t=0.0):
        self.pose[:3] = [p + v * t for p, v in zip(self.pose[:3], xd[:3])]
        return True

    def moveL(self, iface, pose, speed=0.25, acceleration=1.2, asynchronous=False):
        self.pose = [float(v) for v in pose]
        return True

    def servoStop(self, iface, a=10.0):
        return True

    def speedStop(self, iface, a=10.0):
        return True

    def stopScript(self, iface):
        return None

    def disconnect(self, iface):
        self.connected[iface] = False

    def isConnected(self, iface):
        return self.connected[iface]

    def reconnect(self, iface):
        self.connected[iface] = self.reconnect_ok
        return self.reconnect_ok

    def _set_bit(self, bit, level):
        self.output_bits = (self.output_bits | (1 << bit)) if level else (self.output_bits & ~(1 << bit))
        return True

    def setToolDigitalOut(self, iface, pin, level):
        return self._set_bit(16 + pin, level)

    def setStandardDigitalOut(self, iface, pin, level):
        return self._set_bit(pin, level)


def fake_rtde(real_cls: type, iface: str, world: URWorld) -> type:
    """A stand-in for one ur-rtde interface class: real names and signatures, simulated controller."""

    def call(name, args, kwargs, handler):
        if not pybind_accepts(real_cls, name, args, kwargs):
            world.misuse.append(f"{real_cls.__name__}.{name}{args}{kwargs}")
            raise TypeError(f"{name}(): incompatible arguments {args} {kwargs}")
        world.calls.append((iface, name, args + tuple(kwargs.values())))
        if (iface, name) in world.raise_on:
            raise world.raise_on[(iface, name)]
        result = handler(iface, *args, **kwargs)
        return world.return_on.get(name, result)

    class Fake:
        def __init__(self, *args, **kwargs):
            call("__init__", args, kwargs, lambda iface, *a, **k: None)

        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            if not hasattr(real_cls, name):
                world.misuse.append(f"{real_cls.__name__} has no {name!r}")
                raise AttributeError(f"{real_cls.__name__} has no attribute {name!r}")
            handler = getattr(world, name, None)
            if handler is None:
                raise NotImplementedError(f"the fake does not model {real_cls.__name__}.{name}")
            return lambda *args, **kwargs: call(name, args, kwargs, handler)

    Fake.__name__ = real_cls.__name__
    return Fake


@pytest.fixture
def ur(monkeypatch):
    world = URWorld()
    monkeypatch.setattr(rtde_control, "RTDEControlInterface", fake_rtde(REAL_CONTROL, "control", world))
    monkeypatch.setattr(rtde_receive, "RTDEReceiveInterface", fake_rtde(REAL_RECEIVE, "receive", world))
    monkeypatch.setattr(rtde_io, "RTDEIOInterface", fake_rtde(REAL_IO, "io", world))
    yield world
    assert world.misuse == [], "calls the real ur-rtde classes would reject"


def make_ur(**kwargs) -> URRobot:
    kwargs = {"host": "10.0.0.2", "home_pose": UR_HOME, **kwargs}
    robot = URRobot(**kwargs)
    robot.connect()
    return robot


# --- xArm fake -------------------------------------------------------------------------------------


class XArmWorld:
    """The simulated xArm controller behind the fake XArmAPI (positions in mm, angles in rad)."""

    def __init__(self) -> None:
        self.pose = [320.0, -40.0, 210.0, math.pi, 0.05, -0.1]
        self.mode, self.state = 0, 4
        self.connected = True
        self.error_code = self.warn_code = 0
        self.sticky_error = False
        self.gripper_pos = 850.0
        self.tgpio = [0, 0, 0, 0, 0]
        self.callbacks: list = []
        self.calls: list[tuple[str, tuple, dict]] = []
        self.misuse: list[str] = []
        self.codes: dict[str, int] = {}
        self.raise_on: dict[str, Exception] = {}

    def names(self) -> list[str]:
        return [n for n, _, _ in self.calls]

    def last(self, name: str) -> tuple[tuple, dict]:
        return [(a, k) for n, a, k in self.calls if n == name][-1]

    def fire(self, error_code: int = 0, warn_code: int = 0) -> None:
        """The SDK's report thread announcing a changed error / warning code."""
        self.error_code, self.warn_code = error_code, warn_code
        for cb in list(self.callbacks):
            cb({"error_code": error_code, "warn_code": warn_code})

    # handlers: the SDK's own parameters
    def register_error_warn_changed_callback(self, callback=None):
        self.callbacks.append(callback)
        return True

    def release_error_warn_changed_callback(self, callback=None):
        self.callbacks.remove(callback)
        return True

    def clean_warn(self):
        self.warn_code = 0
        return 0

    def clean_error(self):
        if not self.sticky_error:
            self.error_code = 0
        return 0

    def motion_enable(self, enable=True, servo_id=None):
        return 0

    def set_mode(self, mode=0, detection_param=0):
        self.mode = mode
        return 0

    def set_state(self, state=0):
        self.state = state
        return 0

    def emergency_stop(self):
        self.state = 4

    def get_position(self, is_radian=None):
        assert is_radian is True, "angles must be read in radians"
        return 0, list(self.pose)

    def set_servo_cartesian(self, mvpose, speed=None, mvacc=None, mvtime=0, is_radian=None, is_tool_coord=False, **kwargs):
        if self.mode != 1 or self.state != 0:
            return 9  # STATE_NOT_READY: servo commands need set_mode(1) + set_state(0)
        self.pose = [float(v) for v in mvpose]
        return 0

    def set_position(self, x=None, y=None, z=None, roll=None, pitch=None, yaw=None, speed=None, mvacc=None,
                     is_radian=None, wait=False, timeout=None, **kwargs):
        if self.mode != 0 or self.state != 0:
            return 9
        self.pose = [x, y, z, roll, pitch, yaw]
        return 0

    def set_gripper_mode(self, mode, **kwargs):
        return 0

    def set_gripper_enable(self, enable, **kwargs):
        return 0

    def set_gripper_speed(self, speed, **kwargs):
        return 0

    def set_gripper_position(self, pos, wait=False, speed=None, auto_enable=False, timeout=None, **kwargs):
        self.gripper_pos = float(pos)
        return 0

    def get_gripper_position(self, **kwargs):
        return 0, self.gripper_pos

    def open_lite6_gripper(self, sync=True):
        self.tgpio[:2] = [1, 0]
        return 0

    def close_lite6_gripper(self, sync=True):
        self.tgpio[:2] = [0, 1]
        return 0

    def get_tgpio_output_digital(self, ionum=None):
        return 0, self.tgpio[ionum]

    def disconnect(self):
        self.connected = False


class FakeXArmAPI:
    """Stands in for ``xarm.wrapper.XArmAPI``; ``world`` is set by the fixture."""

    world: XArmWorld

    def __init__(self, *args, **kwargs):
        if not python_accepts(REAL_XARM, "__init__", args, kwargs):
            self.world.misuse.append(f"XArmAPI{args}{kwargs}")
        self.world.calls.append(("__init__", args, kwargs))
        if "__init__" in self.world.raise_on:
            raise self.world.raise_on["__init__"]
        self.world.connected = True

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        world = self.world
        static = inspect.getattr_static(REAL_XARM, name, None)
        if static is None:
            world.misuse.append(f"XArmAPI has no {name!r}")
            raise AttributeError(f"XArmAPI has no attribute {name!r}")
        if isinstance(static, property):
            return getattr(world, name)
        handler = getattr(world, name, None)
        if handler is None:
            raise NotImplementedError(f"the fake does not model XArmAPI.{name}")

        def method(*args, **kwargs):
            if not python_accepts(REAL_XARM, name, args, kwargs):
                world.misuse.append(f"XArmAPI.{name}{args}{kwargs}")
                raise TypeError(f"XArmAPI.{name} does not accept {args} {kwargs}")
            world.calls.append((name, args, kwargs))
            if name in world.raise_on:
                raise world.raise_on[name]
            result = handler(*args, **kwargs)
            return world.codes.get(name, result)

        return method


@pytest.fixture
def xa(monkeypatch):
    world = XArmWorld()
    monkeypatch.setattr(FakeXArmAPI, "world", world, raising=False)
    monkeypatch.setattr(xarm.wrapper, "XArmAPI", FakeXArmAPI)
    monkeypatch.setattr(xarm_mod, "_MODE_SWITCH_SETTLE_S", 0.0)
    yield world
    assert world.misuse == [], "calls the real XArmAPI would reject"


def make_xarm(**kwargs) -> XArmRobot:
    kwargs = {"host": "192.168.1.185", "home_pose": XARM_HOME, **kwargs}
    robot = XArmRobot(**kwargs)
    robot.connect()
    return robot


# --- cameras and LeRobot fakes ---------------------------------------------------------------------


class StaleFrame(Exception):
    pass


class FakeCamera:
    """The camera contract: connect, read_latest(max_age_ms) -> (uint8 frame, monotonic t), close."""

    def __init__(self, shape=(24, 32, 3), stale=False):
        self.shape, self.stale, self.calls = shape, stale, []

    def connect(self):
        self.calls.append("connect")

    def read_latest(self, max_age_ms):
        self.calls.append(("read_latest", max_age_ms))
        if self.stale:
            raise StaleFrame("frame is 250 ms old")
        return np.full(self.shape, 7, np.uint8), time.monotonic()

    def close(self):
        self.calls.append("close")


class FakeLeRobot:
    """A LeRobot-style end-effector robot that clamps each delta to ``max_delta`` metres, as LeRobot's
    ``max_relative_target`` does, and returns the action actually sent."""

    def __init__(self, max_delta: float = 0.005, frame_hw=(48, 64)):
        self.max_delta, self.frame_hw = max_delta, frame_hw
        self.state = {"ee.x": 0.20, "ee.y": 0.00, "ee.z": 0.10, "gripper.pos": 100.0}
        self.calls: list = []
        self._connected = False

    @property
    def observation_features(self):
        return {"ee.x": float, "ee.y": float, "ee.z": float, "gripper.pos": float, "wrist": (*self.frame_hw, 3)}

    @property
    def action_features(self):
        return {"delta_x": float, "delta_y": float, "delta_z": float, "gripper.pos": float}

    @property
    def is_connected(self):
        return self._connected

    def connect(self, calibrate: bool = True):
        self.calls.append(("connect", calibrate))
        self._connected = True

    def get_observation(self):
        assert self._connected, "DeviceNotConnectedError"
        frame = np.zeros((*self.frame_hw, 3), np.uint8)
        frame[:, : self.frame_hw[1] // 2] = 255
        return {**self.state, "wrist": frame}

    def send_action(self, action):
        assert self._connected, "DeviceNotConnectedError"
        self.calls.append(("send_action", dict(action)))
        sent = {}
        for key, axis in (("delta_x", "ee.x"), ("delta_y", "ee.y"), ("delta_z", "ee.z")):
            if key in action:
                sent[key] = float(np.clip(action[key], -self.max_delta, self.max_delta))
                self.state[axis] += sent[key]
        if "gripper.pos" in action:
            sent["gripper.pos"] = float(np.clip(action["gripper.pos"], 0.0, 100.0))
            self.state["gripper.pos"] = sent["gripper.pos"]
        return sent

    def disconnect(self):
        self.calls.append(("disconnect",))
        self._connected = False


LEROBOT_MAP = dict(
    action_keys=["delta_x", "delta_y", "delta_z", "gripper.pos"],
    action_scales=[0.01, 0.01, 0.01, -50.0],  # 1 cm per unit; +1 (close) -> 0, -1 (open) -> 100
    action_offsets=[0.0, 0.0, 0.0, 50.0],
    proprio_keys=["ee.x", "ee.y", "ee.z", "gripper.pos"],
    proprio_scales=[1.0, 1.0, 1.0, 0.01],
    camera_keys={"wrist": "wrist_cam"},
    image_size=32,
    ee_step_m=0.01,
)


# --- the fakes themselves catch API misuse ---------------------------------------------------------


def test_the_fakes_reject_calls_the_real_sdks_would_reject(ur, xa):
    control = rtde_control.RTDEControlInterface("10.0.0.2")
    with pytest.raises(TypeError):
        control.servoL([0.0] * 6, 0.5, 0.5, 0.05, 0.1)  # gain missing
    with pytest.raises(TypeError):
        control.servoL([0.0] * 6, 0.5, 0.5, 0.05, 0.1, gain=300.0)  # positional-only in pybind
    with pytest.raises(AttributeError):
        control.servo_l([0.0] * 6)
    assert control.moveL([0.0] * 6, 0.1, 0.5) is True  # the pose overload
    arm = xarm.wrapper.XArmAPI("192.168.1.185", is_radian=True)
    with pytest.raises(TypeError):
        arm.set_state(state=4, wait=True)  # set_state takes no wait
    with pytest.raises(AttributeError):
        arm.set_stop()
    assert len(ur.misuse) == 3 and len(xa.misuse) == 2
    ur.misuse.clear()
    xa.misuse.clear()


# --- every driver: the contract --------------------------------------------------------------------


def test_every_driver_is_a_robot_without_ground_truth(ur, xa):
    robots = [
        URRobot("10.0.0.2", home_pose=UR_HOME, control_hz=25, ee_step_m=0.005),
        XArmRobot("192.168.1.185", home_pose=XARM_HOME, control_hz=25, ee_step_m=0.005),
        LeRobotAdapter(robot=FakeLeRobot(), control_hz=25, **{**LEROBOT_MAP, "ee_step_m": 0.005}),
    ]
    for robot in robots:
        assert isinstance(robot, real.Robot) and not isinstance(robot, real.GroundTruth), type(robot)
        assert not hasattr(robot, "task_signals")
        assert robot.action_spec == real.ActionSpec(dim=4, names=("dx", "dy", "dz", "gripper"), ee_step_m=0.005, control_hz=25.0)
        spec = robot.observation_spec
        assert spec.proprio_dim == 4 and spec.state_dim is None
        assert spec.proprio_names == ("hand_x", "hand_y", "hand_z", "gripper_opening")
    assert ur.calls == [] and xa.calls == []  # building a driver touches no hardware


DRIVER_PATHS = {
    "ur": "real.drivers.ur:URRobot",
    "xarm": "real.drivers.xarm:XArmRobot",
    "lerobot": "real.drivers.lerobot:LeRobotAdapter",
}


def load_robot_config(name: str) -> dict:
    from pathlib import Path

    from omegaconf import OmegaConf

    path = Path(__file__).parents[1] / "configs" / "robot" / f"{name}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path))


@pytest.mark.parametrize("name", sorted(DRIVER_PATHS))
def test_make_robot_builds_each_driver_from_its_shipped_config(name, monkeypatch, ur, xa):
    import real.env

    assert real.env.DRIVERS[name] == DRIVER_PATHS[name]  # registered in real/env.py
    from real.safety import SafeRobot
    from real.server import build_robot  # what stepwise-robot-server and stepwise-deploy call

    cfg = load_robot_config(name)
    if name == "lerobot":  # the shipped config leaves the factory for the user to fill in
        module = types.ModuleType("fake_lerobot_robots")
        module.make = lambda: FakeLeRobot()
        monkeypatch.setitem(sys.modules, "fake_lerobot_robots", module)
        cfg.update(robot_factory="fake_lerobot_robots:make", camera_keys={"wrist": "wrist"},
                   **{k: LEROBOT_MAP[k] for k in ("action_keys", "proprio_keys")})
    else:
        cfg["cameras"] = {}  # the shipped example is an OpenCV device
    driver, safety = build_robot(cfg)
    assert type(driver).__name__ == DRIVER_PATHS[name].split(":")[1]
    robot = SafeRobot(driver, safety)  # the shipped safety block is accepted by the safety layer
    robot.connect()
    obs = robot.reset()
    assert obs["proprio"].shape == (4,) and obs["proprio"].dtype == np.float32
    applied = robot.send_action(np.array([0.0, 0.0, -0.5, -1.0], np.float32))
    assert applied.shape == (4,) and applied.dtype == np.float32 and robot.summary()["commands"] == 1
    robot.close()


# --- UR --------------------------------------------------------------------------------------------


def test_ur_servo_moves_the_tcp_by_action_times_ee_step_in_metres(ur):
    robot = make_ur(ee_step_m=0.02, control_hz=10.0, servo_lookahead_time=0.05, servo_gain=500)
    start = list(ur.pose)
    applied = robot.send_action(np.array([0.5, -1.0, 0.25, 0.0], np.float32))
    target, speed, acc, t, lookahead, gain = ur.args_of("servoL")[-1]
    np.testing.assert_allclose(target[:3], np.add(start[:3], [0.01, -0.02, 0.005]), atol=1e-9)
    assert target[3:] == start[3:]  # orientation held at the pose captured on connect
    assert (t, lookahead, gain) == (pytest.approx(0.1), 0.05, 500.0)
    assert applied.dtype == np.float32 and applied.tolist() == [0.5, -1.0, 0.25, 0.0]  # no gripper: 0
    obs = robot.observe()
    assert obs["proprio"].dtype == np.float32
    np.testing.assert_allclose(obs["proprio"], [*target[:3], 1.0], atol=1e-6)
    np.testing.assert_allclose(robot.ee_position(), target[:3])
    assert robot.ee_position().dtype == np.float64
    assert abs(obs["t_robot"] - time.monotonic()) < 1.0 and obs["images"] == {}
    robot.close()


def test_ur_clips_the_action_and_reports_the_binary_gripper_it_applied(ur):
    robot = make_ur(gripper="tool_digital_out", gripper_pin=1)
    start = list(ur.pose)
    applied = robot.send_action(np.array([2.0, -3.0, 0.5, 0.3], np.float32))
    assert applied.tolist() == [1.0, -1.0, 0.5, 1.0]  # clipped; gripper 0.3 closes a binary gripper: +1
    np.testing.assert_allclose(ur.args_of("servoL")[-1][0][:3], np.add(start[:3], [0.01, -0.01, 0.005]))
    assert ur.args_of("setToolDigitalOut") == [(1, True)]
    assert robot.observe()["proprio"][3] == 0.0  # closed: the tool output bit 17 reads high
    assert robot.send_action(np.array([0, 0, 0, -0.2], np.float32))[3] == -1.0
    assert robot.send_action(np.array([0, 0, 0, -0.9], np.float32))[3] == -1.0
    assert ur.args_of("setToolDigitalOut") == [(1, True), (1, False)]  # written on a change only
    assert robot.observe()["proprio"][3] == 1.0
    ur.return_on["setToolDigitalOut"] = False  # the controller refuses the write
    assert robot.send_action(np.array([0, 0, 0, 1.0], np.float32))[3] == -1.0  # reports what is really applied
    with pytest.raises(ValueError, match="shape"):
        robot.send_action(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        robot.send_action(np.array([np.nan, 0, 0, 0], np.float32))
    robot.close()


def test_ur_speed_mode_sends_velocity_delta_times_hz(ur):
    robot = make_ur(mode="speed", control_hz=20.0, ee_step_m=0.01, speed_acceleration=0.4)
    robot.send_action(np.array([1.0, 0.0, -0.5, 0.0], np.float32))
    xd, acc, t = ur.args_of("speedL")[-1]
    np.testing.assert_allclose(xd, [0.2, 0.0, -0.1, 0.0, 0.0, 0.0])  # 1 cm/step at 20 Hz = 0.2 m/s
    assert (acc, t) == (0.4, pytest.approx(0.05))
    robot.stop()
    assert ur.names("control")[-1] == "speedStop" and "servoStop" not in ur.names()
    robot.close()
    assert ur.names("control")[-3:] == ["speedStop", "stopScript", "disconnect"]


def test_ur_reset_moves_home_slowly_and_then_holds_the_home_orientation(ur):
    robot = make_ur(home_speed=0.04, home_acceleration=0.2)
    obs = robot.reset(seed=3)
    moves = [n for n in ur.names("control") if n != "isConnected"]
    assert moves[-2:] == ["servoStop", "moveL"]  # servo stopped before the move
    assert ur.args_of("moveL")[-1] == (UR_HOME, 0.04, 0.2)
    np.testing.assert_allclose(obs["proprio"][:3], UR_HOME[:3], atol=1e-6)
    robot.send_action(np.array([0, 0, 1.0, 0], np.float32))
    target = ur.args_of("servoL")[-1][0]
    assert target[3:] == UR_HOME[3:] and target[2] == pytest.approx(UR_HOME[2] + 0.01)
    ur.return_on["moveL"] = False
    with pytest.raises(RuntimeError, match="home"):
        robot.reset()
    robot.close()


def test_ur_close_runs_every_step_in_order_even_when_one_fails_and_is_idempotent(ur, caplog):
    robot = make_ur(gripper="standard_digital_out", gripper_pin=3)
    ur.raise_on[("control", "servoStop")] = RuntimeError("RTDE control script not running")
    ur.calls.clear()
    with caplog.at_level(logging.ERROR, logger="real.drivers.ur"):
        robot.close()
    assert ur.names() == [
        "control.servoStop", "control.stopScript", "control.disconnect", "receive.disconnect", "io.disconnect",
    ]
    assert "servoStop" not in caplog.text and "stop failed during close" in caplog.text
    robot.close()
    assert len(ur.calls) == 5  # nothing more
    with pytest.raises(RuntimeError, match="not connected"):
        robot.observe()


def test_ur_sdk_failure_in_send_action_stops_then_raises(ur):
    robot = make_ur()
    ur.raise_on[("control", "servoL")] = RuntimeError("ur_rtde: RTDE control script is not running!")
    ur.calls.clear()
    with pytest.raises(RuntimeError, match=r"URRobot: servoL failed .*script is not running.*protective stop"):
        robot.send_action(np.array([0.1, 0, 0, 0], np.float32))
    assert ur.names("control")[-2:] == ["servoL", "servoStop"]
    del ur.raise_on[("control", "servoL")]
    ur.return_on["servoL"] = False  # refused rather than raised
    with pytest.raises(RuntimeError, match="refused"):
        robot.send_action(np.array([0.1, 0, 0, 0], np.float32))
    assert ur.names("control")[-1] == "servoStop"
    robot.close()


def test_ur_reconnects_a_dropped_interface_once_else_raises_connection_error(ur):
    robot = make_ur()
    ur.connected["control"] = False
    robot.send_action(np.array([0.2, 0, 0, 0], np.float32))
    assert ur.names("control")[-4:] == ["isConnected", "reconnect", "isConnected", "servoL"]
    ur.connected["receive"] = False
    ur.reconnect_ok = False
    n_servo = len(ur.args_of("servoL"))
    with pytest.raises(ConnectionError, match="receive.*reconnect"):
        robot.send_action(np.array([0.2, 0, 0, 0], np.float32))
    assert ur.names("receive").count("reconnect") == 1 and len(ur.args_of("servoL")) == n_servo
    robot.close()


def test_ur_connect_is_idempotent_and_a_failed_connect_releases_what_it_opened(ur):
    robot = make_ur()
    robot.connect()
    assert ur.names().count("control.__init__") == 1
    robot.close()
    ur.calls.clear()
    ur.raise_on[("control", "__init__")] = RuntimeError("ur_rtde: Failed to start control script")
    with pytest.raises(ConnectionError, match="Remote Control"):
        URRobot("10.0.0.2", home_pose=UR_HOME).connect()
    assert ur.names() == ["receive.__init__", "control.__init__", "receive.disconnect"]


def test_ur_missing_sdk_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "rtde_control", None)
    with pytest.raises(ImportError, match=r"pip install 'stepwise\[ur\]'"):
        URRobot("10.0.0.2", home_pose=UR_HOME).connect()


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"mode": "torque"}, "mode"),
        ({"control_hz": 0}, "control_hz"),
        ({"ee_step_m": -0.01}, "ee_step_m"),
        ({"home_pose": [0.4, 0.0, 0.3]}, "home_pose"),
        ({"home_pose": None}, "home_pose"),
        ({"servo_gain": 50}, "servo_gain"),
        ({"servo_lookahead_time": 0.5}, "servo_lookahead_time"),
        ({"home_speed": 1.0}, "home_speed"),
        ({"gripper": "vacuum"}, "gripper"),
        ({"gripper": "tool_digital_out", "gripper_pin": 2}, "gripper_pin"),
        ({"image_size": 0}, "image_size"),
        ({"cameras": {"wrist": 3}}, "wrist"),
    ],
)
def test_ur_bad_config_is_a_value_error_naming_the_key_before_connecting(ur, kwargs, key):
    with pytest.raises(ValueError, match=key):
        URRobot(**{"host": "10.0.0.2", "home_pose": UR_HOME, **kwargs})
    assert ur.calls == []


def test_ur_cameras_are_read_with_the_age_bound_and_closed(ur):
    wrist, front = FakeCamera(), FakeCamera()
    robot = make_ur(cameras={"wrist": wrist, "front": front}, image_size=(24, 32), max_frame_age_ms=50)
    assert robot.observation_spec.cameras == ("wrist", "front") and robot.observation_spec.image_size == (24, 32)
    obs = robot.observe()
    assert set(obs["images"]) == {"wrist", "front"} and obs["images"]["wrist"].shape == (24, 32, 3)
    assert wrist.calls == ["connect", ("read_latest", 50.0)]
    front.stale = True
    with pytest.raises(StaleFrame):  # the camera's staleness error reaches the deploy loop unchanged
        robot.observe()
    robot.close()
    assert wrist.calls[-1] == "close" and front.calls[-1] == "close"
    bad = make_ur(cameras={"wrist": FakeCamera(shape=(48, 64, 3))}, image_size=(24, 32))
    with pytest.raises(RuntimeError, match="image_size"):
        bad.observe()
    bad.close()


def test_camera_specs_are_built_by_real_cameras_make_camera(ur, monkeypatch):
    built = []
    module = types.ModuleType("real.cameras")
    module.make_camera = lambda name, spec, image_size: built.append((name, spec, image_size)) or FakeCamera((24, 32, 3))
    monkeypatch.setitem(sys.modules, "real.cameras", module)
    robot = URRobot("10.0.0.2", home_pose=UR_HOME, cameras={"front": {"type": "opencv", "device": 0}}, image_size=(24, 32))
    assert built == [("front", {"type": "opencv", "device": 0}, (24, 32))] and ur.calls == []
    robot.connect()
    assert robot.observe()["images"]["front"].shape == (24, 32, 3)
    robot.close()


# --- xArm ------------------------------------------------------------------------------------------


def test_xarm_connect_clears_errors_enables_motion_and_enters_servo_mode(xa):
    robot = make_xarm()
    args, kwargs = xa.last("__init__")
    assert args == ("192.168.1.185",) and kwargs == {"is_radian": True}
    names = xa.names()
    order = ["register_error_warn_changed_callback", "clean_warn", "clean_error", "motion_enable", "set_mode", "set_state"]
    assert [n for n in names if n in order] == order
    assert xa.last("set_mode")[0] == (1,) and xa.last("set_state")[0] == (0,)
    assert {"set_gripper_mode", "set_gripper_enable", "set_gripper_speed"} <= set(names)
    robot.connect()
    assert xa.names().count("__init__") == 1
    robot.close()


def test_xarm_moves_in_millimetres_and_reports_metres(xa):
    robot = make_xarm(ee_step_m=0.01)
    start = list(xa.pose)
    applied = robot.send_action(np.array([0.5, -1.0, 0.2, -0.6], np.float32))
    (target,), kwargs = xa.last("set_servo_cartesian")
    np.testing.assert_allclose(target[:3], np.add(start[:3], [5.0, -10.0, 2.0]), atol=1e-4)  # mm
    assert target[3:] == start[3:] and kwargs == {"is_radian": True}
    # gripper -0.6 -> 850 + 0.2 * (0 - 850) = 680 pulses (850 open, 0 closed)
    assert xa.last("set_gripper_position") == ((680,), {"wait": False})
    assert applied.tolist() == pytest.approx([0.5, -1.0, 0.2, -0.6])
    obs = robot.observe()
    np.testing.assert_allclose(obs["proprio"], [*(np.array(target[:3]) / 1000), 0.8], atol=1e-6)
    np.testing.assert_allclose(robot.ee_position(), np.array(target[:3]) / 1000)
    applied = robot.send_action(np.array([0, 0, 0, 0.3], np.float32))
    (pos,), _ = xa.last("set_gripper_position")  # 297.5 pulses rounds to a whole pulse ...
    assert pos in (297, 298) and applied[3] == pytest.approx(2 * (pos - 850) / -850 - 1)  # ... reported as sent
    applied = robot.send_action(np.array([3.0, -2.0, 0.0, 5.0], np.float32))
    assert applied.tolist() == [1.0, -1.0, 0.0, 1.0] and xa.gripper_pos == 0.0  # clipped: fully closed
    n = xa.names().count("set_gripper_position")
    robot.send_action(np.array([0, 0, 0, 1.0], np.float32))
    assert xa.names().count("set_gripper_position") == n  # same command: not resent
    xa.codes["set_gripper_position"] = 19  # refused: the applied gripper stays the last one that worked
    assert robot.send_action(np.array([0, 0, 0, -1.0], np.float32))[3] == 1.0
    robot.close()


def test_xarm_lite6_gripper_is_binary_and_reports_what_it_applied(xa):
    robot = make_xarm(gripper="lite6")
    assert "set_gripper_enable" not in xa.names()
    assert robot.send_action(np.array([0, 0, 0, 0.3], np.float32))[3] == 1.0
    assert xa.last("close_lite6_gripper") == ((), {"sync": False})
    assert robot.observe()["proprio"][3] == 0.0
    assert robot.send_action(np.array([0, 0, 0, -0.1], np.float32))[3] == -1.0
    robot.send_action(np.array([0, 0, 0, -0.9], np.float32))
    assert xa.names().count("open_lite6_gripper") == 1
    assert robot.observe()["proprio"][3] == 1.0
    robot.close()


def test_xarm_non_zero_code_stops_then_raises_and_the_next_action_re_arms(xa):
    robot = make_xarm()
    xa.codes["set_servo_cartesian"] = 31
    with pytest.raises(RuntimeError, match=r"XArmRobot: set_servo_cartesian failed .*code 31"):
        robot.send_action(np.array([0.1, 0, 0, 0], np.float32))
    assert xa.names()[-1] == "set_state" and xa.last("set_state")[0] == (4,) and xa.state == 4
    del xa.codes["set_servo_cartesian"]
    xa.calls.clear()
    robot.send_action(np.array([0.1, 0, 0, 0], np.float32))
    assert xa.names()[:3] == ["set_mode", "set_state", "get_position"] and "set_servo_cartesian" in xa.names()
    assert xa.mode == 1 and xa.state == 0  # the fake refuses servo commands unless re-armed
    robot.close()


def test_xarm_python_exception_in_send_action_stops_without_emergency_stop(xa):
    robot = make_xarm()
    xa.raise_on["get_position"] = OSError("socket closed")
    with pytest.raises(RuntimeError, match="socket closed"):
        robot.send_action(np.array([0.1, 0, 0, 0], np.float32))
    assert "emergency_stop" not in xa.names() and xa.last("set_state")[0] == (4,)
    robot.close()


def test_xarm_error_callback_emergency_stops_then_raises_until_reconnected(xa):
    robot = make_xarm()
    xa.fire(error_code=22)  # C22: self-collision
    xa.calls.clear()
    with pytest.raises(RuntimeError, match="error 22.*emergency-stopped"):
        robot.send_action(np.array([0.1, 0, 0, 0], np.float32))
    assert xa.names() == ["emergency_stop"]  # nothing was commanded
    with pytest.raises(RuntimeError, match="error 22"):
        robot.reset()
    robot.close()
    robot.connect()  # clean_error on connect clears it
    robot.send_action(np.array([0.1, 0, 0, 0], np.float32))
    xa.fire(warn_code=23)  # warnings are logged, not fatal
    robot.send_action(np.array([0.1, 0, 0, 0], np.float32))
    robot.close()


def test_xarm_connect_fails_clearly_when_an_error_persists(xa):
    xa.error_code, xa.sticky_error = 10, True
    with pytest.raises(ConnectionError, match="error 10 persists"):
        make_xarm()
    assert xa.names()[-1] == "disconnect"


def test_xarm_reset_moves_home_in_position_mode_then_returns_to_servo(xa):
    robot = make_xarm(home_speed=0.05, home_acceleration=0.5, home_timeout_s=30)
    robot.send_action(np.array([0, 0, 0, 1.0], np.float32))  # close the gripper
    xa.calls.clear()
    obs = robot.reset()
    names = xa.names()
    i = names.index("set_position")
    assert names[i - 2: i] == ["set_mode", "set_state"] and xa.calls[i - 2][1] == (0,)
    _, kwargs = xa.last("set_position")
    assert kwargs["x"] == pytest.approx(300.0) and kwargs["y"] == pytest.approx(50.0) and kwargs["z"] == pytest.approx(250.0)
    assert kwargs["roll"] == pytest.approx(math.pi) and kwargs["is_radian"] is True
    assert kwargs["speed"] == pytest.approx(50.0) and kwargs["mvacc"] == pytest.approx(500.0)
    assert kwargs["wait"] is True and kwargs["timeout"] == 30.0
    assert xa.last("set_gripper_position")[0] == (850,)  # opened
    assert xa.mode == 1 and xa.state == 0
    np.testing.assert_allclose(obs["proprio"], [0.30, 0.05, 0.25, 1.0], atol=1e-6)
    robot.send_action(np.array([0, 0, 0, -1], np.float32))
    assert xa.last("set_servo_cartesian")[0][0][3:] == pytest.approx([math.pi, 0.0, 0.0])
    xa.codes["set_position"] = 100  # the move timed out
    with pytest.raises(RuntimeError, match="home move failed.*code 100"):
        robot.reset()
    assert xa.state == 4
    robot.close()


def test_xarm_close_runs_every_step_even_when_one_fails_and_is_idempotent(xa, caplog):
    robot = make_xarm()
    xa.raise_on["set_state"] = OSError("socket closed")
    xa.calls.clear()
    with caplog.at_level(logging.ERROR, logger="real.drivers.xarm"):
        robot.close()
    assert xa.names() == ["set_state", "release_error_warn_changed_callback", "disconnect"]
    assert "set_state(4) failed during close" in caplog.text and xa.callbacks == []
    robot.close()
    assert len(xa.calls) == 3


def test_xarm_missing_sdk_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "xarm.wrapper", None)
    with pytest.raises(ImportError, match=r"pip install 'stepwise\[xarm\]'"):
        XArmRobot("192.168.1.185", home_pose=XARM_HOME).connect()


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"control_hz": -5}, "control_hz"),
        ({"ee_step_m": 0}, "ee_step_m"),
        ({"home_pose": [0.3, 0.0, 0.2, 180.0, 0.0]}, "home_pose"),
        ({"home_pose": [0.3, 0.0, float("nan"), 180.0, 0.0, 0.0]}, "home_pose"),
        ({"gripper": "robotiq"}, "gripper"),
        ({"gripper_open": 0.0}, "gripper_open"),
        ({"host": ""}, "host"),
    ],
)
def test_xarm_bad_config_is_a_value_error_naming_the_key_before_connecting(xa, kwargs, key):
    with pytest.raises(ValueError, match=key):
        XArmRobot(**{"host": "192.168.1.185", "home_pose": XARM_HOME, **kwargs})
    assert xa.calls == []


# --- LeRobot ---------------------------------------------------------------------------------------


def test_lerobot_maps_actions_and_reports_what_the_robot_really_sent():
    fake = FakeLeRobot(max_delta=0.005)
    robot = LeRobotAdapter(robot=fake, **LEROBOT_MAP)
    robot.connect()
    assert fake.calls == [("connect", False)]
    applied = robot.send_action(np.array([0.3, -2.0, 1.0, 1.0], np.float32))
    sent = fake.calls[-1][1]
    assert sent == pytest.approx({"delta_x": 0.003, "delta_y": -0.01, "delta_z": 0.01, "gripper.pos": 0.0})
    # the robot clamped dy and dz to 5 mm: reported as 0.5 action units; dy was clipped to -1 first
    np.testing.assert_allclose(applied, [0.3, -0.5, 0.5, 1.0], atol=1e-6)
    assert applied.dtype == np.float32
    obs = robot.observe()
    np.testing.assert_allclose(obs["proprio"], [0.203, -0.005, 0.105, 0.0], atol=1e-6)
    img = obs["images"]["wrist_cam"]
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8 and img[:, 0].min() == 255 and img[:, -1].max() == 0
    np.testing.assert_allclose(robot.ee_position(), [0.203, -0.005, 0.105], atol=1e-9)
    robot.send_action(np.array([0, 0, 0, -1.0], np.float32))
    assert fake.calls[-1][1]["gripper.pos"] == 100.0 and robot.observe()["proprio"][3] == pytest.approx(1.0)
    robot.close()


def test_lerobot_reports_keys_the_robot_leaves_out_as_sent_and_stops_on_a_robot_error():
    fake = FakeLeRobot()
    robot = LeRobotAdapter(robot=fake, stop_action={"delta_x": 0.0}, **LEROBOT_MAP)
    robot.connect()
    real_send = fake.send_action
    fake.send_action = lambda action: real_send(action) and {"shoulder_pan.pos": 12.0}  # joint-space reply
    np.testing.assert_allclose(robot.send_action(np.array([0.2, 0, 0, 2.0], np.float32)), [0.2, 0, 0, 1.0])

    def broken(action):
        fake.calls.append(("send_action", dict(action)))
        if "gripper.pos" in action:
            raise OSError("serial port gone")

    fake.send_action = broken
    with pytest.raises(RuntimeError, match="serial port gone.*stopped"):
        robot.send_action(np.zeros(4, np.float32))
    assert fake.calls[-1] == ("send_action", {"delta_x": 0.0})  # the stop action followed the failure
    robot.close()


def test_lerobot_reset_interpolates_slowly_to_the_home_action(monkeypatch):
    sleeps = []
    monkeypatch.setattr(lerobot_mod.time, "sleep", sleeps.append)
    fake = FakeLeRobot()
    fake.state["gripper.pos"] = 20.0
    robot = LeRobotAdapter(robot=fake, home_action={"gripper.pos": 80.0}, home_duration_s=0.5, control_hz=10.0, **LEROBOT_MAP)
    obs = robot.reset(seed=0)
    targets = [c[1]["gripper.pos"] for c in fake.calls if c[0] == "send_action"]
    assert targets == pytest.approx([32.0, 44.0, 56.0, 68.0, 80.0]) and sleeps == [0.1] * 5
    assert obs["proprio"][3] == pytest.approx(0.8)
    robot.close()


def test_lerobot_stop_and_close(caplog):
    fake = FakeLeRobot()
    stop = {"delta_x": 0.0, "delta_y": 0.0, "delta_z": 0.0}
    robot = LeRobotAdapter(robot=fake, stop_action=stop, **LEROBOT_MAP)
    robot.stop()  # not connected: nothing to stop
    assert fake.calls == []
    robot.connect()
    robot.stop()
    assert fake.calls[-1] == ("send_action", stop)
    fake.send_action = lambda action: (_ for _ in ()).throw(OSError("serial port gone"))
    with caplog.at_level(logging.ERROR, logger="real.drivers.lerobot"):
        robot.close()
    assert fake.calls[-1] == ("disconnect",) and "stop failed during close" in caplog.text
    robot.close()
    assert fake.calls.count(("disconnect",)) == 1
    with pytest.raises(RuntimeError, match="not connected"):
        robot.observe()


def test_lerobot_builds_the_robot_lazily_from_a_factory(monkeypatch):
    module = types.ModuleType("fake_lerobot_robots")
    built = []
    module.make = lambda **kw: built.append(kw) or FakeLeRobot(**kw)
    monkeypatch.setitem(sys.modules, "fake_lerobot_robots", module)
    robot = LeRobotAdapter(robot_factory="fake_lerobot_robots:make", robot_kwargs={"max_delta": 0.002}, calibrate=True, **LEROBOT_MAP)
    assert built == []
    robot.connect()
    robot.connect()
    assert built == [{"max_delta": 0.002}] and robot._robot.calls == [("connect", True)]
    robot.close()
    with pytest.raises(ImportError, match="lerobot"):
        LeRobotAdapter(robot_factory="no_such_module_xyz:make", **LEROBOT_MAP).connect()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"action_keys": ["delta_x", "delta_y", "delta_z", "gripper"]}, r"action_keys \['gripper'\].*gripper\.pos"),
        ({"proprio_keys": ["ee.x", "ee.y"]}, "proprio_keys must be 4"),
        ({"camera_keys": {"front": "front"}}, "camera_keys"),
        ({"action_scales": [0.01, 0.01, 0.0, 1.0]}, "action_scales"),
        ({"control_hz": 0}, "control_hz"),
        ({"robot_factory": "lerobot.robots"}, "exactly one"),
    ],
)
def test_lerobot_bad_config_is_a_value_error_naming_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LeRobotAdapter(**{"robot": FakeLeRobot(), **LEROBOT_MAP, **kwargs})
    with pytest.raises(ValueError, match="module:callable"):
        LeRobotAdapter(robot_factory="lerobot.robots.so100", **LEROBOT_MAP)


# --- configs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, cls", [("ur", URRobot), ("xarm", XArmRobot), ("lerobot", LeRobotAdapter)])
def test_robot_configs_name_every_constructor_argument_and_a_safety_block(name, cls):
    cfg = load_robot_config(name)
    assert cfg.pop("driver") == name
    safety = cfg.pop("safety")
    low, high = np.array(safety["workspace_low"]), np.array(safety["workspace_high"])
    assert low.shape == high.shape == (3,) and np.all(low < high)
    assert 0 < safety["max_step_m"] and 0 < safety["max_speed_mps"] and -1 <= safety["gripper_low"] < safety["gripper_high"] <= 1
    # LeRobotAdapter's `robot` is an object: only Python code can pass it
    params = set(inspect.signature(cls.__init__).parameters) - {"self"} - ({"robot"} if name == "lerobot" else set())
    assert set(cfg) == params, set(cfg) ^ params
    assert safety["max_step_m"] <= cfg["ee_step_m"] + 1e-9  # never more than one full action step
    if name != "lerobot":
        robot = cls(**cfg)  # the shipped defaults are valid; the camera spec is built (not opened)
        assert robot.observation_spec.cameras == tuple(cfg["cameras"])
    else:
        cls(**{**cfg, "robot_factory": None, "robot": FakeLeRobot(), **{k: LEROBOT_MAP[k] for k in ("action_keys", "proprio_keys", "camera_keys")}})
