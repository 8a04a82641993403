"""The safety layer: limits validated before anything connects; every command filtered."""

import numpy as np
import pytest

from real import make_env
from real.safety import SafeRobot, SafetyLimits, filter_action
from real.sim_driver import SimRobot

BOX = dict(workspace_low=(-0.2, 0.4, 0.05), workspace_high=(0.2, 0.8, 0.3))


@pytest.mark.parametrize(
    "cfg, match",
    [
        ({}, "workspace_low and safety.workspace_high are not set"),
        ({**BOX, "workspace_high": (0.2, 0.3, 0.3)}, "box is empty"),
        ({**BOX, "workspace_low": (0, 0)}, "3 numbers"),
        ({**BOX, "workspace_low": (0, float("nan"), 0)}, "finite"),
        ({**BOX, "max_step_m": 0}, "max_step_m must be a positive number"),
        ({**BOX, "max_step_m": None}, "max_step_m must be a positive number"),
        ({**BOX, "max_speed_mps": -1}, "max_speed_mps must be a positive"),
        ({**BOX, "gripper_low": 0.5, "gripper_high": 0.2}, "gripper_low"),
        ({**BOX, "gripper_high": 2.0}, "gripper_low"),
        ({**BOX, "disabled": ["brakes"]}, "unknown limits"),
        ({**BOX, "max_stepp_m": 0.1}, "unknown safety settings"),
    ],
)
def test_nonsensical_limits_are_refused_when_built(cfg, match):
    with pytest.raises(ValueError, match=match):
        SafetyLimits.from_config(cfg)


def test_turning_a_limit_off_needs_an_explicit_option():
    limits = SafetyLimits.from_config({"max_step_m": None, "disabled": ["workspace", "max_step"]})
    assert not limits.is_on("workspace") and not limits.is_on("max_step") and limits.is_on("max_speed")
    safe, events = filter_action(np.array([1, 1, 1, 0.0]), None, limits, ee_step_m=0.1, control_hz=10)
    assert events == ["clamped_speed"]  # the speed cap is still on: 0.25 m/s at 10 Hz = 2.5 cm
    assert np.linalg.norm(safe[:3] * 0.1) == pytest.approx(0.025, rel=1e-5)


def test_filter_clamps_each_limit_and_says_which():
    limits = SafetyLimits.from_config({**BOX, "max_step_m": 0.01, "max_speed_mps": 1.0, "gripper_low": -0.5, "gripper_high": 0.8})
    pos = np.array([0.0, 0.6, 0.1])
    safe, events = filter_action(np.array([0.5, 0, 0, 0]), pos, limits, ee_step_m=0.01, control_hz=20)
    assert events == [] and np.allclose(safe, [0.5, 0, 0, 0])
    safe, events = filter_action(np.array([3.0, 0, 0, 0.9]), pos, limits, ee_step_m=0.01, control_hz=20)
    assert events == ["clamped_range", "clamped_gripper"] and np.allclose(safe, [1, 0, 0, 0.8])
    safe, events = filter_action(np.array([1, 1, 1, 0]), pos, limits, ee_step_m=0.01, control_hz=20)
    assert events == ["clamped_step"] and np.linalg.norm(safe[:3] * 0.01) == pytest.approx(0.01, rel=1e-5)
    near_floor = np.array([0.0, 0.6, 0.055])
    safe, events = filter_action(np.array([0, 0, -1, 0]), near_floor, limits, ee_step_m=0.01, control_hz=20)
    assert events == ["clamped_workspace"] and near_floor[2] + safe[2] * 0.01 == pytest.approx(0.05)
    outside = np.array([0.0, 0.6, 0.5])  # above the box: may come back down, not go further up
    safe, events = filter_action(np.array([0, 0, 1, 0]), outside, limits, ee_step_m=0.01, control_hz=20)
    assert safe[2] == pytest.approx(0.0) and "clamped_workspace" in events
    safe, _ = filter_action(np.array([0, 0, -1, 0]), outside, limits, ee_step_m=0.01, control_hz=20)
    assert safe[2] == pytest.approx(-1.0)


def test_nan_is_rejected_and_the_robot_holds_with_its_gripper():
    limits = SafetyLimits.from_config(BOX)
    safe, events = filter_action(np.array([np.nan, 0.3, np.inf, 0.1]), np.array([0, 0.6, 0.1]), limits, 0.01, 20, last_gripper=0.7)
    assert events == ["rejected_nonfinite"] and np.allclose(safe, [0, 0, 0, 0.7])


def test_fuzzed_commands_never_leave_the_box():
    """Random, huge, NaN and rapidly sign-flipping actions from positions in and near the box: every
    commanded target stays in the box (or, from outside, no further out) and every move under the caps."""
    rng = np.random.default_rng(0)
    limits = SafetyLimits.from_config({**BOX, "max_step_m": 0.01, "max_speed_mps": 0.15})
    low, high = np.array(BOX["workspace_low"]), np.array(BOX["workspace_high"])
    pos, outside_box, gripper = np.array([0.0, 0.6, 0.1]), 0, 0.0
    for i in range(20000):
        kind = i % 5
        if kind == 0:
            a = rng.uniform(-1, 1, 4)
        elif kind == 1:
            a = rng.normal(0, 1e6, 4)
        elif kind == 2:
            a = np.where(rng.random(4) < 0.5, np.nan, rng.normal(0, 5, 4))
        elif kind == 3:
            a = np.full(4, 1e9 * (-1) ** i)
        else:
            a = np.array([np.inf, -np.inf, 1.0, 0.0])
        if i % 1000 == 0:  # teleport (a robot moved by hand) sometimes outside the box
            pos = rng.uniform(low - 0.05, high + 0.05)
        safe, _ = filter_action(a, pos, limits, ee_step_m=0.05, control_hz=10, last_gripper=gripper)
        assert np.all(np.isfinite(safe)) and np.all(np.abs(safe) <= 1.0)
        delta = safe[:3].astype(np.float64) * 0.05
        assert np.linalg.norm(delta) <= 0.01 + 1e-6
        target = pos + delta
        inside_before = np.all(pos >= low) and np.all(pos <= high)
        if inside_before:
            assert np.all(target >= low - 1e-6) and np.all(target <= high + 1e-6), (pos, a, safe)
        else:
            outside_box += 1
            dist = lambda p: np.linalg.norm(np.maximum(low - p, 0) + np.maximum(p - high, 0))  # noqa: E731
            assert dist(target) <= dist(pos) + 1e-6
        pos, gripper = target, float(safe[-1])
    assert outside_box > 0


def test_safe_robot_counts_and_forwards_to_the_sim():
    robot = SafeRobot(SimRobot("metaworld/drawer-open", cameras=[]), SimRobot.DEFAULT_SAFETY)
    robot.connect()
    robot.reset(seed=0)
    assert hasattr(robot, "task_signals") and hasattr(robot, "expert_action")  # GroundTruth passes through
    robot.send_action(np.array([np.nan, 0, 0, 0], np.float32))
    robot.send_action(np.array([0, 0, 5, 0], np.float32))
    assert robot.summary()["commands"] == 2
    assert robot.summary()["rejected_nonfinite"] == 1 and robot.summary()["clamped_range"] == 1
    robot.close()


def test_the_sim_default_limits_never_bind_on_expert_episodes():
    env = make_env("metaworld/drawer-open", cameras=[], terminate_on_success=True, max_episode_steps=300)
    for seed in range(3):
        env.reset(seed=seed)
        done = False
        while not done:
            _, _, term, trunc, _ = env.step(np.clip(env.robot.expert_action(), -1, 1))
            done = term or trunc
    stats = env.robot.summary()
    assert stats["commands"] > 100 and sum(v for k, v in stats.items() if k != "commands") == 0
    env.close()


def test_hardware_drivers_need_explicit_limits():
    with pytest.raises(ValueError, match="has no default safety limits"):
        make_env("metaworld/drawer-open", robot="ur", cameras={}, host="192.0.2.1", home_pose=[0.4, -0.1, 0.3, 0, 3.14, 0])
