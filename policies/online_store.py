"""stepwise-train's online episodes as an episode store, ``<run>/online_episodes.hdf5`` (``keep_episodes``).

``keep_episodes=auto`` (the default) keeps them when the training env renders frames anyway (a
camera-based reward or the image policy); ``true`` also keeps them for a state-policy run whose reward
reads no frames (``reward.shaping=none|oracle`` with the simulator's success) by rendering the reward
rig for the store, which slows such a run several-fold; ``false`` keeps nothing.

Each online episode is stored as an `episodes.Episode` of ``kind="policy"``, like a scripted one:
the camera frames the env rendered (the reward model's rig, plus the image policy's cameras, at the
render size), proprio, the simulator state (state policy), the applied actions, the env's rewards,
``success`` (the simulator's ground truth, never the classifier's verdict), step keyframes from
`sim.keyframes.step_keyframes` on the simulator's signals, and per-step ``infos``: ``success``,
``dense_reward``, ``near_object``, ``grasp_success`` (and every other ``sim/`` signal without its
prefix), ``terminated``, ``shaped_reward`` and, with progress shaping, ``progress`` (Phi of the frame
after each action). Where it ended travels as attrs: ``ended`` (``terminated``: a true terminal, the
simulator's or the classifier's success; ``truncated``: the time limit), ``end_step`` (T),
``claimed_success`` (the env's success signal ended it), ``final_progress`` (NaN without a progress
model), ``online_episode`` (its index in the run) and ``split`` (the task variants: ``train``).

Resume: episodes are written as they finish (one atomic ``add`` each), checkpoints come every
``eval.every`` episodes; a run resumed from a checkpoint after ``k`` episodes first drops the stored
episodes ``>= k`` (rewriting the store without them, then renaming), so the store always holds the
episodes of the run's own history, each once.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from policies.config import TrainConfigError
from policies.episode import EpisodeRecord

STORE_NAME = "online_episodes.hdf5"
KIND = "policy"
KEEP_MODES = ("auto", "true", "false")


def keeps_episodes(cfg, renders: bool) -> bool:
    """Whether the run keeps its online episodes: ``keep_episodes=auto`` when the training env ``renders``
    frames anyway (a camera-based reward, the image policy), ``true`` always (a run that renders none then
    renders the reward rig for the store), ``false`` never."""
    mode = str(cfg.keep_episodes).lower()
    if mode not in KEEP_MODES:
        raise TrainConfigError(f"keep_episodes={cfg.keep_episodes!r} unknown: use one of {KEEP_MODES}")
    return mode == "true" or (mode == "auto" and renders)


def trim_store(path: Path, keep: int) -> int:
    """Drop the episodes of ``path`` whose ``online_episode`` is ``>= keep`` (those a resume runs again);
    returns how many stay. The kept ones are rewritten to a temporary store that then replaces ``path``."""
    from episodes import EpisodeStore, EpisodeWriter

    path = Path(path)
    tmp = path.with_name(f".{path.name}.trim")
    for stale in (tmp, tmp.with_name(tmp.name + ".journal")):
        stale.unlink(missing_ok=True)  # left by a kill during an earlier trim; the original is intact
    if not path.exists():
        return 0
    EpisodeWriter(path, env_args=None).close()  # replays a journal a killed writer left, before reading
    with EpisodeStore(path) as store:
        indices = [int(store.episode_attrs(i)["extra_attrs"].get("online_episode", -1)) for i in range(len(store))]
        if all(i < keep for i in indices):
            return len(indices)
        with EpisodeWriter(tmp, env_args=store.env_args) as writer:
            for i, online in enumerate(indices):
                if online < keep:
                    writer.add(store[i])
    os.replace(tmp, path)
    return sum(i < keep for i in indices)


def policy_episode(rec: EpisodeRecord, terms: dict, index: int, task: str, instruction: str,
                   min_step_frames: int = 5):
    """Online episode ``index`` (its record and reward terms) as an `episodes.Episode` of kind ``policy``."""
    from episodes import Episode
    from sim.keyframes import EVENT_SIGNALS, step_keyframes
    from sim.world import FPS

    T = len(rec.actions)
    sim = {k.removeprefix("sim/"): np.asarray(v, np.float32) for k, v in rec.signals.items()}
    sim.setdefault("success", np.zeros(T, np.float32))
    success = sim["success"] > 0.5
    infos = {**sim, "terminated": rec.terminated.astype(np.float32), "shaped_reward": terms["reward"]}
    if not math.isnan(terms["final_progress"]):
        infos["progress"] = np.asarray(terms["phi_next"], np.float32)
    dones = rec.terminated.copy()
    dones[-1] = True  # the episode ends here, as in stepwise-collect's stores
    ended = "truncated" if rec.truncated else "terminated"
    return Episode(
        images=dict(rec.kept_frames), proprio=rec.proprio, state=rec.obs, actions=rec.actions,
        rewards=rec.env_rewards, dones=dones, task=task, instruction=instruction, fps=FPS,
        success=bool(rec.success), infos=infos, seed=int(rec.seed), kind=KIND,
        keyframes=step_keyframes({k: sim[k] for k in EVENT_SIGNALS if k in sim}, success, min_step_frames),
        extra_attrs={"online_episode": int(index), "ended": ended, "end_step": T, "split": "train",
                     "claimed_success": bool(rec.terminated[-1]), "final_progress": float(terms["final_progress"])})


class OnlineEpisodeStore:
    """The run's ``online_episodes.hdf5``: trimmed to the ``episodes`` the checkpoint counts, then appended
    to after each online episode. ``cameras`` at ``image_size``: the frames the training env renders."""

    def __init__(self, run: Path, task: str, instruction: str, cameras: list[str], image_size: int,
                 episodes: int) -> None:
        from episodes import EpisodeWriter, StoreError

        self.path = Path(run) / STORE_NAME
        self.task, self.instruction = task, instruction
        self.cameras, self.image_size = list(cameras), int(image_size)
        if not cameras:
            raise StoreError(f"keep_episodes=true but the training env renders no camera for {self.path}; "
                             "pass keep_episodes=false")
        trim_store(self.path, episodes)
        env_args = {"task": task, "cameras": list(cameras), "image_size": int(image_size), "kind": KIND}
        try:
            self.writer = EpisodeWriter(self.path, env_args=env_args)
        except StoreError as err:
            raise StoreError(f"{err}\n{self.path} was written by a run of other settings: resume with the run's own "
                             "settings, or move the file away") from err

    def __len__(self) -> int:
        """Episodes stored."""
        return len(self.writer)

    def add(self, index: int, rec: EpisodeRecord, terms: dict) -> None:
        """Store online episode ``index``."""
        self.writer.add(policy_episode(rec, terms, index, self.task, self.instruction))

    def close(self) -> None:
        """Release the writer's lock (the file is closed after every add)."""
        self.writer.close()
