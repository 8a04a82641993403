"""The Robot contract, the sim driver and the gymnasium environment built by `real.make_env`."""

import gymnasium as gym
import numpy as np
import pytest

import real
from real.sim_driver import SimRobot


@pytest.fixture
def env():
    e = real.make_env("metaworld/drawer-open", image_size=32, max_episode_steps=200)
    yield e
    e.close()


def test_sim_driver_implements_the_robot_contract():
    robot = SimRobot("metaworld/reach", image_size=32)
    assert isinstance(robot, real.Robot) and isinstance(robot, real.GroundTruth)
    robot.connect()
    obs = robot.reset(seed=0)
    spec = robot.observation_spec
    assert spec.cameras == ("corner", "corner2", "gripperPOV") and spec.image_size == (32, 32)
    assert set(obs["images"]) == set(spec.cameras) and obs["proprio"].shape == (spec.proprio_dim,)
    applied = robot.send_action(np.array([2.0, -3.0, 0.5, 0.0], np.float32))
    np.testing.assert_array_equal(applied, [1.0, -1.0, 0.5, 0.0])  # clipped, and reported so
    assert robot.action_spec.dim == 4
    robot.close()
    robot.close()  # idempotent


def test_observations_follow_the_contract(env):
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert info["success"] is False
    for cam, img in obs["images"].items():
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8, cam
    assert obs["proprio"].dtype == np.float32 and obs["state"].dtype == np.float32
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs)
    assert {"success", "applied_action", "sim/dense_reward", "sim/success"} <= set(info)
    assert reward == 0.0 and not terminated and not truncated


def test_gymnasium_env_checker_passes():
    from gymnasium.utils.env_checker import check_env

    e = real.make_env("metaworld/reach", cameras=["corner"], image_size=16)
    check_env(e, skip_render_check=True)
    e.close()


def test_success_ends_the_episode_as_terminal_with_the_success_reward():
    e = real.make_env("metaworld/drawer-open", cameras=[], terminate_on_success=True, success_reward=10.0)
    e.reset(seed=1)
    for _ in range(300):
        obs, reward, terminated, truncated, info = e.step(e.robot.expert_action())
        if terminated or truncated:
            break
    assert terminated and not truncated and info["success"] and reward == 10.0
    with pytest.raises(RuntimeError, match="reset"):
        e.step(np.zeros(4, np.float32))
    e.close()


def test_env_owns_the_time_limit_even_beyond_metaworlds_500_steps():
    e = real.make_env("metaworld/reach", cameras=[], max_episode_steps=520)
    e.reset(seed=0)
    zeros = np.zeros(4, np.float32)
    for t in range(520):
        _, _, terminated, truncated, _ = e.step(zeros)
        assert truncated == (t == 519) and not terminated
    e.close()
    short = real.make_env("metaworld/reach", cameras=[], max_episode_steps=3)
    short.reset(seed=0)
    flags = [short.step(zeros)[3] for _ in range(3)]
    assert flags == [False, False, True]
    short.close()


def test_bad_actions_are_clear_errors(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([np.nan, 0, 0, 0], np.float32))
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3, np.float32))
    _, _, _, _, info = env.step(np.array([5, 0, 0, -5], np.float32))
    np.testing.assert_array_equal(info["applied_action"], [1, 0, 0, -1])


def test_unknown_task_and_driver_are_clear_errors():
    with pytest.raises(KeyError, match="metaworld/drawer-open"):
        real.make_env("metaworld/drawer-opne")
    with pytest.raises(ValueError, match="robot driver.*sim"):
        real.make_env("metaworld/reach", robot="ur5")


def test_same_seed_same_episode_and_splits_differ():
    a = real.make_env("metaworld/push", cameras=["corner"], image_size=16)
    b = real.make_env("metaworld/push", cameras=["corner"], image_size=16)
    ev = real.make_env("metaworld/push", cameras=["corner"], image_size=16, split="eval")
    oa, _ = a.reset(seed=7)
    ob, _ = b.reset(seed=7)
    oe, _ = ev.reset(seed=7)
    np.testing.assert_array_equal(oa["state"], ob["state"])
    np.testing.assert_array_equal(oa["images"]["corner"], ob["images"]["corner"])
    assert not np.allclose(oa["state"], oe["state"]), "eval split must not replay train variants"
    for e in (a, b, ev):
        e.close()


def test_async_vector_env_renders_and_matches_single_envs():
    kwargs = dict(cameras=["corner", "gripperPOV"], image_size=16, max_episode_steps=5)
    vec = real.make_vec_env("metaworld/reach", num_envs=2, **kwargs)
    try:
        obs, _ = vec.reset(seed=3)
        assert obs["images"]["corner"].shape == (2, 16, 16, 3)
        single = real.make_env("metaworld/reach", **kwargs)
        for i in range(2):
            o, _ = single.reset(seed=3 + i)
            np.testing.assert_array_equal(obs["state"][i], o["state"])
            np.testing.assert_array_equal(obs["images"]["gripperPOV"][i], o["images"]["gripperPOV"])
        single.close()
        for _ in range(5):
            obs, reward, terminated, truncated, info = vec.step(np.zeros((2, 4), np.float32))
        assert truncated.all() and reward.shape == (2,)
        assert isinstance(vec.single_action_space, gym.spaces.Box)
    finally:
        vec.close()
