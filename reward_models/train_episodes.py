"""A step-PRM trainer's episodes in memory: successful demonstrations with step-progress labels
(:func:`load_episodes`) and failed episodes without labels (:func:`load_failures`), read from episode
stores at the encoder's input size. :mod:`reward_models.pairs` draws training pairs from them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reward_models.data import resolve_stores
from reward_models.frames import resize_frames
from reward_models.progress import step_progress


@dataclass
class TrainEpisode:
    """One successful demonstration in memory.

    Attributes:
        images: uint8 (T+1, V, H, W, 3), cameras in the model's order.
        phi: float64 (T+1,) ground-truth step progress.
        goal_index: frame of the last keyframe (the goal state).
        task: task name; instruction: its instruction.
        keyframes: the demonstration's keyframe indices (None: unknown, e.g. a failure).
    """

    images: np.ndarray
    phi: np.ndarray
    goal_index: int
    task: str
    instruction: str
    keyframes: np.ndarray | None = None


FAILURE_KINDS = ("noise", "stall", "near_miss", "reversal", "policy")
"""Episode kinds read as failures: ``sim.collect``'s scripted failures and stepwise-train's policy episodes."""


def _succeeded(attrs: dict, policy_success: str) -> bool:
    """An episode's success label: the store's ``success`` (the simulator's test), or for a learning
    run's own episodes with ``policy_success="claimed"`` the signal that ended it (``claimed_success``:
    the success signal the run learned from, a classifier's verdict under ``reward.source=success_prob``)."""
    if policy_success == "claimed" and attrs["kind"] == "policy":
        return bool(attrs["extra_attrs"].get("claimed_success", attrs["success"]))
    return bool(attrs["success"])


def _read_images(ep, cameras, resize_to):
    images = np.stack([ep.images[c] for c in cameras], axis=1)
    return resize_frames(images, resize_to) if resize_to is not None else images


def load_failures(data, cameras: tuple[str, ...], tasks=None, kinds=FAILURE_KINDS, max_per_task: int | None = None,
                  resize_to: int | None = None, newest_first: bool = False, policy_success: str = "sim") -> list[TrainEpisode]:
    """Failed episodes (success false) of ``kinds`` from the stores in ``data``, of ``tasks`` only when
    given; as :class:`TrainEpisode` with no labels (``phi`` empty, ``goal_index`` -1). May be empty.

    ``max_per_task`` keeps the first N per task in store order, or with ``newest_first`` the last N
    (the last store's last episodes first): a learning run's most recent failures, whose reading then
    costs the same at every refresh however long the run. ``policy_success``: see :func:`_succeeded`."""
    from episodes import EpisodeStore

    out: list[TrainEpisode] = []
    per_task: dict[str, int] = {}
    stores = resolve_stores(data)
    for path in (reversed(stores) if newest_first else stores):
        with EpisodeStore(path, cameras=list(cameras)) as store:
            for i in (reversed(range(len(store))) if newest_first else range(len(store))):
                attrs = store.episode_attrs(i)
                if (_succeeded(attrs, policy_success) or attrs["kind"] not in kinds
                        or (tasks is not None and attrs["task"] not in tasks)):
                    continue
                if max_per_task is not None and per_task.get(attrs["task"], 0) >= max_per_task:
                    continue
                ep = store[i]
                out.append(TrainEpisode(_read_images(ep, cameras, resize_to), np.zeros(0), -1, ep.task, ep.instruction))
                per_task[ep.task] = per_task.get(ep.task, 0) + 1
    return out


def load_episodes(data, cameras: tuple[str, ...], max_per_task: int | None = None, kinds=("expert",),
                  resize_to: int | None = None, policy_success: str = "sim") -> list[TrainEpisode]:
    """Successful episodes of ``kinds`` from the stores in ``data``, with step-progress labels;
    ``max_per_task`` caps the expert demonstrations per task (a learning run's successes are not capped).
    ``policy_success``: what counts as a learning run's success (:func:`_succeeded`); the last keyframe
    of a run's episode is where it ended, so an episode a classifier ended is labelled done there.

    ``resize_to`` stores frames at the encoder's input size (saves memory and a resize per step).
    """
    from episodes import EpisodeStore

    out: list[TrainEpisode] = []
    per_task: dict[str, int] = {}
    for path in resolve_stores(data):
        with EpisodeStore(path, cameras=list(cameras)) as store:
            for i in range(len(store)):
                attrs = store.episode_attrs(i)
                if not _succeeded(attrs, policy_success) or attrs["kind"] not in kinds:
                    continue
                capped = attrs["kind"] == "expert"  # the cap counts demonstrations
                if capped and max_per_task is not None and per_task.get(attrs["task"], 0) >= max_per_task:
                    continue
                ep = store[i]
                images = _read_images(ep, cameras, resize_to)
                out.append(TrainEpisode(images, step_progress(ep.keyframes, len(images)), int(ep.keyframes[-1]), ep.task,
                                        ep.instruction, np.asarray(ep.keyframes, dtype=int)))
                per_task[ep.task] = per_task.get(ep.task, 0) + int(capped)
    if not out:
        raise ValueError(f"no successful expert episodes with cameras {list(cameras)} in {data}")
    return out
