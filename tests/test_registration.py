"""Registered gymnasium ids: ``gymnasium.make("stepwise/<task>-v0")`` for the 50 Meta-World tasks,
passing gymnasium's own env checker without a warning (finite bounds where the scene bounds them)."""

import os
import warnings

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import real  # noqa: F401  (registers the ids)
from real.registration import env_id
from sim import list_tasks


def test_every_metaworld_task_is_registered():
    ids = sorted(k for k in gym.registry if k.startswith("stepwise/"))
    assert len(list_tasks("metaworld")) == 50 and len(ids) == 50
    assert env_id("metaworld/drawer-open") == "stepwise/drawer-open-v0" and "stepwise/drawer-open-v0" in ids
    assert gym.spec("stepwise/drawer-open-v0").max_episode_steps == 500


def test_drawer_open_passes_check_env_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any gymnasium warning (inf bounds, render fps, ...) fails
        env = gym.make("stepwise/drawer-open-v0", cameras=["corner", "gripperPOV"], image_size=32)
        check_env(env.unwrapped)
        obs, info = env.reset(seed=3)
        assert env.observation_space.contains(obs) and info["success"] is False
        assert obs["images"]["corner"].shape == (32, 32, 3) and env.render().shape == (32, 32, 3)
        space = env.observation_space["proprio"]
        assert np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))
        assert np.all(np.isfinite(env.observation_space["state"].high))
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs) and reward == 0.0 and not terminated
        env.close()


def test_time_limit_and_options_pass_through():
    env = gym.make("stepwise/reach-v0", cameras=[], max_episode_steps=7, reward_mode="sim_dense")
    env.reset(seed=0)
    steps, truncated, rewards = 0, False, []
    while not truncated:
        _, r, _, truncated, _ = env.step(np.zeros(4, np.float32))
        steps, rewards = steps + 1, rewards + [r]
    assert steps == 7 and max(rewards) > 0  # gymnasium's TimeLimit, and the dense reward was asked for
    assert "images" not in env.observation_space.spaces and "images" not in env.reset(seed=0)[0]
    env.close()
    with pytest.raises(ValueError, match="render_mode"):
        gym.make("stepwise/reach-v0", cameras=[], render_mode="human")


def test_every_task_builds_resets_and_steps_inside_its_space():
    """dm_control's habit: every registered task, state-only, a few random steps inside the space."""
    rng = np.random.default_rng(0)
    for task in list_tasks("metaworld"):
        env = gym.make(env_id(task), cameras=[])
        obs, _ = env.reset(seed=1)
        for _ in range(3):
            obs, *_ = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
        assert env.observation_space.contains(obs), task
        env.close()
