"""Reward models in anyone's RL loop: gymnasium wrappers around any env whose observations carry
camera images (``obs["images"] = {camera: uint8 (H, W, 3)}``, the Stepwise contract; another layout
goes through ``frames=``).

- :class:`ProgressShaping` adds potential-based shaping from a progress model,
  ``r' = r + weight * (gamma * Phi(s') - Phi(s))``, with the project's conventions: ``gamma`` is
  the agent's own discount, ``Phi(s') = 0`` when the step is a true terminal (``terminated``), the
  real ``Phi(s')`` at a time limit (``truncated``: the agent bootstraps there). The potential is a
  state-only perspective (``forward``: hop from the episode's first frame; ``backward``: hop from
  a reference demonstration's goal), never the history-dependent ``incremental``/``fused``, so the
  optimal policy is unchanged. Every term is logged apart in ``info``: ``env_reward``, ``phi``,
  ``phi_next``, ``shaping``.
- :class:`LearnedSuccess` ends episodes on a success classifier's verdict (``terminated``), for
  robots that have no ground truth; ``info`` gets ``learned_success`` and ``learned_success_prob``,
  and keeps the env's own ``success`` (the simulator's truth, when the env knows it) as
  ``true_success``.

Both score one frame per step (a reward must be known when ``step`` returns); a progress model
with the encoder API of ``StepPRM`` encodes the episode's first frame once and each new frame once.
For Stable-Baselines3 / CleanRL, put these wrappers first and filter the observation after::

    env = gymnasium.make("stepwise/drawer-close-v0")
    env = ProgressShaping(env, reward_models.load("general"), weight=5.0, gamma=0.99)
    env = gymnasium.wrappers.FlattenObservation(gymnasium.wrappers.FilterObservation(env, ["state"]))
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import gymnasium as gym
import numpy as np

from reward_models.shaping import STATE_ONLY_PERSPECTIVES

FramesFn = Callable[[Mapping[str, Any]], Mapping[str, np.ndarray]]


def _images(obs: Mapping[str, Any]) -> Mapping[str, np.ndarray]:
    """The Stepwise observation's ``images`` dict (camera -> uint8 (H, W, 3))."""
    if not isinstance(obs, Mapping) or not isinstance(obs.get("images"), Mapping) or not obs["images"]:
        raise ValueError(
            "the observation has no camera images (obs['images'] = {camera: uint8 (H, W, 3)}): make the env "
            "with cameras=[...], or pass frames=<function obs -> {camera: image}>"
        )
    return obs["images"]


class _FrameScorer:
    """Shared by both wrappers: pick the model's cameras out of an observation, as (1, H, W, 3) arrays."""

    def __init__(self, model: Any, cameras, frames: FramesFn | None) -> None:
        self.cameras = tuple(cameras) if cameras is not None else tuple(model.cameras)
        self.frames_fn = frames or _images

    def frames(self, obs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        images = self.frames_fn(obs)
        missing = [c for c in self.cameras if c not in images]
        if missing:
            raise ValueError(
                f"the observation lacks camera(s) {missing} the reward model scores ({list(self.cameras)}); it has "
                f"{list(images)}: make the env with those cameras, or pass cameras=[a subset the model knows]"
            )
        return {c: np.asarray(images[c])[None] for c in self.cameras}


def _instruction(env: gym.Env, instruction: str | None) -> str:
    text = instruction if instruction is not None else getattr(env.unwrapped, "instruction", None)
    if not isinstance(text, str) or not text.strip():
        raise ValueError("no instruction: pass instruction='open the drawer' (the env has no .instruction)")
    return text


class ProgressShaping(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Potential-based shaping from a progress model; see the module docstring.

    Args:
        env: a gymnasium env with camera images in its observations.
        model: a ``reward_models.RewardModel`` (``reward_models.load("general")``).
        weight: lambda, the scale of the shaping term.
        gamma: the agent's discount (the SAME one the learner uses).
        perspective: ``forward`` (default; needs nothing) or ``backward`` (needs ``reference``).
        instruction: the task's instruction; default the env's ``instruction`` attribute.
        reference: a demonstration ``episodes.Episode`` (the backward perspective's goal anchor).
        cameras: score with this subset of the model's cameras (default all of them).
        frames: ``obs -> {camera: uint8 (H, W, 3)}`` for observations not in the Stepwise layout.
    """

    def __init__(self, env: gym.Env, model: Any, weight: float = 1.0, gamma: float = 0.99,
                 perspective: str = "forward", instruction: str | None = None, reference: Any = None,
                 cameras=None, frames: FramesFn | None = None) -> None:
        gym.utils.RecordConstructorArgs.__init__(  # gymnasium rebuilds wrapped envs from these (check_env does)
            self, model=model, weight=weight, gamma=gamma, perspective=perspective, instruction=instruction,
            reference=reference, cameras=cameras, frames=frames)
        super().__init__(env)
        if perspective not in STATE_ONLY_PERSPECTIVES:
            raise ValueError(f"perspective {perspective!r} depends on the history, so shaping with it is not "
                             f"potential-based: use one of {STATE_ONLY_PERSPECTIVES}")
        if perspective == "backward" and reference is None:
            raise ValueError("perspective='backward' needs reference=<a demonstration episode> (its goal anchor)")
        if not 0.0 <= float(gamma) <= 1.0:
            raise ValueError(f"gamma must be in [0, 1] (the agent's discount), got {gamma}")
        self.model, self.weight, self.gamma = model, float(weight), float(gamma)
        self.perspective, self.reference = perspective, reference
        self.instruction = _instruction(env, instruction)
        self._scorer = _FrameScorer(model, cameras, frames)
        self._fast = all(hasattr(model, a) for a in ("encode", "progress_from_states", "view_prior"))
        self._takes_perspective = "perspective" in inspect.signature(model.progress).parameters
        self._first: Any = None
        self._goal: Any = None
        self._prior: Any = None
        self._phi = 0.0

    def potential(self, obs: Mapping[str, Any]) -> float:
        """Phi(obs) in [0, 1]: progress of this frame from the episode's first frame (or towards the goal)."""
        frames = self._scorer.frames(obs)
        if self._fast:
            import torch

            cams = self._scorer.cameras
            state = self.model.encode(frames, cams)
            if self._first is None:
                self._first = state
            states = torch.cat([self._first, state])
            phi = self.model.progress_from_states(states, self.instruction, self._goal, self.perspective,
                                                  view_prior=self._prior)
            return float(phi[-1])
        if self._first is None:
            self._first = frames
        both = {c: np.concatenate([self._first[c], frames[c]]) for c in frames}
        kwargs = {"perspective": self.perspective} if self._takes_perspective else {}
        return float(np.asarray(self.model.progress(both, self.instruction, reference=self.reference, **kwargs))[-1])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Reset the env and score the first frame (Phi(s_0)); ``info["phi"]`` holds it."""
        obs, info = self.env.reset(seed=seed, options=options)
        self._first = None
        if self._fast and self.reference is not None and self._goal is None:
            from reward_models.step_prm import reference_goal_frames

            cams = self._scorer.cameras
            self._goal = self.model.encode(reference_goal_frames(self.reference, cams), cams)
            self._prior = self.model.view_prior(self.reference, self.instruction, cams)
        self._phi = self.potential(obs)
        info = dict(info)
        info["phi"] = self._phi
        return obs, info

    def step(self, action):
        """Step the env; the reward gains ``weight * (gamma * Phi(s') - Phi(s))``, Phi(s') = 0 at a true terminal."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        phi_obs = self.potential(obs)
        phi_next = 0.0 if terminated else phi_obs
        shaping = self.weight * (self.gamma * phi_next - self._phi)
        info = dict(info)
        info.update(env_reward=float(reward), phi=self._phi, phi_next=phi_next, shaping=shaping)
        self._phi = phi_obs
        return obs, float(reward) + shaping, terminated, truncated, info


class LearnedSuccess(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """End episodes when a success classifier says the task is done; see the module docstring.

    Args:
        env: a gymnasium env with camera images in its observations.
        classifier: a reward model with ``success_prob`` (``reward_models.load("vlm-general")``).
        threshold: P(done) at or above which the step is a success; default the classifier's own
            calibrated ``cfg.threshold`` (chosen on validation frames), else 0.5.
        success_reward: when set, the reward becomes this on a learned success and 0 otherwise (a
            sparse learned reward for robots without one); None keeps the env's reward.
        instruction, cameras, frames: as for :class:`ProgressShaping`.
    """

    def __init__(self, env: gym.Env, classifier: Any, threshold: float | None = None,
                 success_reward: float | None = None, instruction: str | None = None, cameras=None,
                 frames: FramesFn | None = None) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, classifier=classifier, threshold=threshold,
                                                 success_reward=success_reward, instruction=instruction,
                                                 cameras=cameras, frames=frames)
        super().__init__(env)
        if threshold is None:
            threshold = float(getattr(getattr(classifier, "cfg", None), "threshold", 0.5))
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"threshold must be a probability in (0, 1), got {threshold}")
        self.classifier, self.threshold = classifier, float(threshold)
        self.success_reward = None if success_reward is None else float(success_reward)
        self.instruction = _instruction(env, instruction)
        self._scorer = _FrameScorer(classifier, cameras, frames)

    def success_prob(self, obs: Mapping[str, Any]) -> float:
        """P(done) of this observation's frames."""
        p = self.classifier.success_prob(self._scorer.frames(obs), self.instruction)
        return float(np.asarray(p)[-1])

    def step(self, action):
        """Step the env; a learned success sets ``terminated`` (a true terminal)."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        p = self.success_prob(obs)
        done = p >= self.threshold
        info = dict(info)
        if "success" in info:
            info["true_success"] = bool(info["success"])
        info.update(learned_success=bool(done), learned_success_prob=p)
        if self.success_reward is not None:
            reward = self.success_reward if done else 0.0
        terminated = bool(terminated or done)
        return obs, float(reward), terminated, bool(truncated and not terminated), info
