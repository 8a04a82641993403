"""A simulated manipulation task: physics, seeded task variants, cameras and ground-truth signals.

:class:`SimTask` is the simulator-side object the sim driver of ``real/`` wraps. It is not a
gymnasium env (``real.make_env`` builds that); it knows nothing of rewards for learning, only the
simulator's own signals, reported under ``sim/`` keys.

Seeds and variants. Meta-World ignores ``reset(seed=...)`` and cycles through 50 fixed variants.
Here the seed draws the variant (object and goal positions) itself, from a random stream keyed by
``(seed, split)``: the ``demo``, ``train`` and ``eval`` splits use independent streams, so the
same integer seed never gives the same variant in two splits, and evaluation never replays a
demonstration's scene.

Looks. With ``randomize=`` on, each seeded reset also draws a visual look (``sim.randomize``: lights,
camera jitter, colours, noise) from its own stream keyed by ``(randomize_seed, split, seed)``, never
from the variant stream: turning randomisation on leaves every object placement as it was.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from sim.randomize import Look, Randomization, draw_look, from_config
from sim.rendering import CameraRig, make_cameras_upright
from sim.tasks import TaskSpec, get_task

DEFAULT_CAMERAS: tuple[str, ...] = ("corner", "corner2", "gripperPOV")
SPLITS: dict[str, int] = {"demo": 1, "train": 2, "eval": 3}
PROPRIO_DIM = 4  # hand xyz (m) and gripper opening, as a real arm reports them
STATE_DIM = 39  # Meta-World's goal-observable state vector
ACTION_DIM = 4  # end-effector delta xyz and gripper, in [-1, 1]
FPS = 80.0  # Meta-World: timestep 2.5 ms x frame_skip 5 = 12.5 ms per step

# Meta-World's `info` keys, exported as `sim/<key>` ground truth (evaluation only, never learning).
_SIGNAL_KEYS = ("near_object", "grasp_success", "grasp_reward", "in_place_reward", "obj_to_target")


class UnknownSplitError(ValueError):
    """A seed split that is not demo, train or eval."""


def variant_rng(seed: int, split: str) -> np.random.Generator:
    """The random stream that draws task variants for ``seed`` within ``split``."""
    if split not in SPLITS:
        raise UnknownSplitError(f"unknown seed split {split!r}: use one of {list(SPLITS)}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS[split]]))


@dataclass
class StepSignals:
    """The simulator's ground truth after a step (evaluation and labelling only).

    Attributes:
        success: the task's own success test.
        dense_reward: Meta-World's shaped reward in [0, 10] (depends on the action too).
        extras: the other signals (near_object, grasp_success, ...), floats.
    """

    success: bool
    dense_reward: float
    extras: dict[str, float]

    def as_info(self) -> dict[str, float]:
        """Flat ``sim/<key>`` dict for an env's ``info``."""
        info = {f"sim/{k}": float(v) for k, v in self.extras.items()}
        info["sim/success"] = float(self.success)
        info["sim/dense_reward"] = float(self.dense_reward)
        return info


class SimTask:
    """One Meta-World task with seeded variants, a camera rig and the scripted expert.

    Args:
        task: registered name (``metaworld/drawer-open``) or a :class:`TaskSpec`.
        cameras: camera names to render (default: two corner views and the wrist view).
            Pass an empty list to build a state-only task that never renders.
        image_size: int or ``(height, width)``.
        quality: ``fast`` (default) or ``high`` render settings (see ``sim.rendering``).
        split: which variant stream seeds draw from: ``demo``, ``train`` or ``eval``.
        randomize: visual randomisation bounds (a :class:`sim.randomize.Randomization` or a mapping of
            them, see ``sim.randomize.from_config``); None (the default) renders the scene as built. A
            task without cameras never draws a look.
        randomize_seed: keys the look stream together with the split and each episode's seed; a
            fresh one gives fresh looks of the same variants (e.g. for a robustness benchmark).
    """

    def __init__(
        self,
        task: str | TaskSpec,
        cameras: list[str] | tuple[str, ...] | None = DEFAULT_CAMERAS,
        image_size: int | tuple[int, int] = 96,
        quality: str = "fast",
        split: str = "train",
        randomize: Randomization | Mapping | None = None,
        randomize_seed: int = 0,
    ) -> None:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

        self.spec = task if isinstance(task, TaskSpec) else get_task(task)
        variant_rng(0, split)  # validates the split name early
        self.split = split
        self.randomization = from_config(randomize)
        if not isinstance(randomize_seed, (int, np.integer)) or isinstance(randomize_seed, bool) or randomize_seed < 0:
            raise ValueError(f"randomize_seed must be a non-negative int, got {randomize_seed!r}")
        self.randomize_seed = int(randomize_seed)
        self._look_key: tuple[int, int] | None = None  # (last seed, unseeded resets since)
        env_cls = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{self.spec.env_id}-goal-observable"]
        self._env = env_cls()
        # This object owns the time limit; Meta-World must never raise at its own.
        self._env.max_path_length = np.iinfo(np.int64).max
        make_cameras_upright(self._env.model, self._env.data)
        self.rig = (
            CameraRig(self._env.model, cameras, image_size, quality) if cameras else None
        )
        self._expert = None
        self._state = None
        self._signals: StepSignals | None = None
        self._episode_rng: np.random.Generator | None = None
        self.variant: np.ndarray | None = None

    # --- episode control -------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> None:
        """Start an episode. ``seed`` picks the variant (and everything random) deterministically.

        Without a seed the variant is the next one of the stream started by the last seed (or a
        fresh random stream if there never was one), as gymnasium envs behave. With randomisation on,
        the look is drawn from ``(randomize_seed, split, seed)`` (an unseeded reset: from the last
        seed and how many unseeded resets followed it).
        """
        if seed is not None:
            self._episode_rng = variant_rng(seed, self.split)
            self._look_key = (int(seed), 0)
        elif self._episode_rng is None:
            fresh = int(np.random.SeedSequence().entropy % 2**63)
            self._episode_rng = variant_rng(fresh, self.split)
            self._look_key = (fresh, 0)
        else:
            self._look_key = (self._look_key[0], self._look_key[1] + 1)
        if self.rig is not None and self.randomization.enabled:
            key = (self.randomize_seed, SPLITS[self.split], *self._look_key)
            self.rig.apply_look(draw_look(self.randomization, key, self.rig.look_targets))
        env = self._env
        # Draw the variant from our stream through Meta-World's own (rejection-sampling) reset.
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env.np_random = np.random.default_rng(self._episode_rng.integers(2**63))
        obs, _ = env.reset()
        env._freeze_rand_vec = True
        self.variant = np.array(env._last_rand_vec, dtype=np.float64)
        self._state = obs
        self._signals = StepSignals(False, 0.0, {k: 0.0 for k in _SIGNAL_KEYS})

    def reset_to_variant(self, variant: np.ndarray, look: Look | Mapping | None = None) -> None:
        """Reset to the scene variant ``variant`` (object placement, e.g. another task's ``variant``).

        Two tasks built on one scene (see :attr:`scene`) reset to one variant place the scene alike,
        so that either can judge it (``sim.task_pair``). The look stays as it is unless ``look`` (a
        :class:`sim.randomize.Look` or its dict, e.g. another task's :attr:`look`) is given; a task
        pair's looks meet in :meth:`adopt`, which takes the other task's look with its simulation.
        """
        if look is not None:
            self._put_look(look)
        env = self._env
        env._last_rand_vec = np.array(variant, dtype=np.float64)
        env._freeze_rand_vec = True  # Meta-World's reset then places the scene from _last_rand_vec
        obs, _ = env.reset()
        self.variant = np.array(env._last_rand_vec, dtype=np.float64)
        self._state = obs
        self._signals = StepSignals(False, 0.0, {k: 0.0 for k in _SIGNAL_KEYS})

    def adopt(self, other: SimTask) -> StepSignals:
        """Continue ``other``'s simulation (a task on the same :attr:`scene`): copy its physics state
        (joints, velocities, mocap, controls), then judge it with this task's own success test.
        The look continues too: this task renders with ``other``'s look (none if it has none).
        Returns this task's signals of that state (dense reward 0: no action was taken)."""
        import mujoco

        if self.rig is not None:
            self.rig.apply_look(None if other.look is None else Look.from_dict(other.look))
        (_, src), (model, dst) = other.physics, self.physics
        for name in ("qpos", "qvel", "act", "ctrl", "mocap_pos", "mocap_quat"):
            getattr(dst, name)[:] = getattr(src, name)
        dst.time = src.time
        mujoco.mj_forward(model, dst)
        env = self._env
        env._prev_obs = env._get_curr_obs_combined_no_goal()  # no frame-stacked history from before the flip
        obs = np.clip(env._get_obs(), env.sawyer_observation_space.low, env.sawyer_observation_space.high)
        self._state = obs
        _, info = env.evaluate_state(obs, np.zeros(4))
        self._signals = StepSignals(bool(info["success"]), 0.0,
                                    {k: float(info.get(k, 0.0)) for k in _SIGNAL_KEYS})
        return self._signals

    def step(self, action: np.ndarray) -> StepSignals:
        """Apply one action (float, shape (4,), already clipped to [-1, 1]) and advance physics."""
        if self._state is None:
            raise RuntimeError("SimTask.step() before reset(): call reset(seed=...) first")
        obs, reward, _, _, info = self._env.step(np.asarray(action, dtype=np.float64))
        self._state = obs
        self._signals = StepSignals(
            bool(info["success"]),
            float(reward),
            {k: float(info.get(k, 0.0)) for k in _SIGNAL_KEYS},
        )
        return self._signals

    # --- observation -----------------------------------------------------------------------
    def render(self) -> dict[str, np.ndarray]:
        """Images of the current state: camera -> uint8 (H, W, 3)."""
        if self.rig is None:
            raise RuntimeError(f"task {self.spec.name} was built without cameras; pass cameras=[...]")
        return self.rig.render(self._env.data)

    def _put_look(self, look: Look | Mapping) -> None:
        if self.rig is not None:
            self.rig.apply_look(look if isinstance(look, Look) else Look.from_dict(look))

    @property
    def look(self) -> dict | None:
        """The current look as a JSON-serialisable dict (``sim.randomize.Look.to_dict``); None when
        frames are rendered as built (randomisation off, or no cameras)."""
        look = None if self.rig is None else self.rig.look
        return None if look is None else look.to_dict()

    @property
    def state(self) -> np.ndarray:
        """Privileged simulator state, float32 (39,): hand, gripper, objects, goal."""
        return self._state.astype(np.float32)

    @property
    def proprio(self) -> np.ndarray:
        """What a real arm reports, float32 (4,): hand position (m) and gripper opening."""
        return self._state[:PROPRIO_DIM].astype(np.float32)

    @property
    def signals(self) -> StepSignals:
        """Ground truth after the last step (all zero right after reset)."""
        return self._signals

    @property
    def scene(self) -> str:
        """The model file the task is built on; tasks on one scene can continue one simulation."""
        return str(self._env.model_name)

    @property
    def physics(self):
        """``(model, data)`` of the simulation, for tools that need raw MuJoCo access."""
        return self._env.model, self._env.data

    # --- scripted expert -------------------------------------------------------------------
    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the current state, clipped to [-1, 1], float32 (4,)."""
        if self._expert is None:
            from metaworld.policies import ENV_POLICY_MAP

            self._expert = ENV_POLICY_MAP[self.spec.env_id]()
        with warnings.catch_warnings():  # Meta-World warns that its experts exceed [-1, 1]: we clip
            warnings.simplefilter("ignore", UserWarning)
            action = self._expert.get_action(self._state)
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def close(self) -> None:
        """Free the renderer and the simulator."""
        if self.rig is not None:
            self.rig.close()
            self.rig = None
        self._env.close()
