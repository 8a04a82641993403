"""Stepwise's tasks as registered gymnasium environments: ``gymnasium.make("stepwise/drawer-open-v0")``.

Importing ``real`` registers ``stepwise/<task>-v0`` for every Meta-World task of the registry
(``sim.list_tasks("metaworld")``, 50 tasks), as gym-hil and Meta-World do with
``gymnasium.envs.registration.register``. The keyword arguments of ``gymnasium.make`` are those of
:func:`real.make_env` (the rig and the episode options)::

    import gymnasium as gym
    import real  # registers the ids (or: gym.make("real:stepwise/drawer-open-v0"))

    env = gym.make("stepwise/drawer-open-v0", cameras=["corner"], image_size=64, terminate_on_success=True)
    state_only = gym.make("stepwise/push-v0", cameras=[])   # no rendering: proprio + privileged state

``max_episode_steps`` of ``gymnasium.make`` sets gymnasium's TimeLimit; the env keeps its own limit
(the task's, 500 for Meta-World) as well, since Meta-World raises when stepped past it.
"""

from __future__ import annotations

from typing import Any

import gymnasium

NAMESPACE = "stepwise"
VERSION = 0


def env_id(task: str) -> str:
    """The gymnasium id of a registered task: ``metaworld/drawer-open`` -> ``stepwise/drawer-open-v0``."""
    return f"{NAMESPACE}/{task.split('/', 1)[-1]}-v{VERSION}"


def make_registered(task: str, render_mode: str | None = None, **kwargs: Any):
    """Entry point of the registered ids: :func:`real.make_env` of ``task`` with ``kwargs``.

    ``render_mode`` is None or ``rgb_array`` (``render()`` returns the first camera's image).
    """
    from real.env import make_env

    if render_mode not in (None, "rgb_array"):
        raise ValueError(f"render_mode={render_mode!r}: these envs render 'rgb_array' (the first camera) or nothing (None)")
    env = make_env(task, **kwargs)
    env.render_mode = render_mode
    return env if "images" in env.observation_space.spaces else _WithoutImages(env)


class _WithoutImages(gymnasium.ObservationWrapper):
    """A camera-less env's observations without their empty ``images`` dict, so that they match the
    observation space (gymnasium allows no empty Dict space)."""

    def observation(self, observation: dict) -> dict:
        """The observation less its empty ``images``."""
        return {k: v for k, v in observation.items() if k != "images"}


def register_envs() -> list[str]:
    """Register ``stepwise/<task>-v0`` for every Meta-World task (idempotent); returns the ids."""
    from gymnasium.envs.registration import register, registry

    from sim import get_task, list_tasks

    ids = []
    for task in list_tasks("metaworld"):
        gid = env_id(task)
        ids.append(gid)
        if gid in registry:
            continue
        register(
            id=gid,
            entry_point="real.registration:make_registered",
            max_episode_steps=get_task(task).max_episode_steps,
            kwargs={"task": task},
            disable_env_checker=False,
        )
    return ids
