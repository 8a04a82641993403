"""Training data of the success classifier: per-frame labels, labelled frame sets, episode splits,
balanced batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


def frame_labels(success: bool, keyframes: np.ndarray, num_frames: int, step_success: np.ndarray | None = None) -> np.ndarray:
    """Per-frame "done" labels uint8 (num_frames,) of one episode.

    With the per-step success signal ``step_success`` (T,) (``Episode.infos["success"]``: success after
    action t, so it labels frame t + 1; frame 0 is 0) that signal is used as is; otherwise the frames
    from the last keyframe on of a successful episode are positive and a failed episode is all negative.
    """
    labels = np.zeros(num_frames, dtype=np.uint8)
    if step_success is not None and len(step_success) == num_frames - 1:
        labels[1:] = np.asarray(step_success) > 0.5
    elif success:
        last = int(keyframes[-1]) if len(keyframes) else num_frames - 1
        labels[last:] = 1
    return labels


@dataclass
class FrameSet:
    """Labelled frames in memory.

    Attributes:
        images: uint8 (N, V, H, W, 3), cameras in the model's order.
        labels: uint8 (N,) 1 = done.
        episode: int64 (N,) index into ``episodes``.
        text: int64 (N,) index into ``instructions``.
        instructions: distinct instructions.
        episodes: per episode ``{"store", "index", "task", "kind", "success"}``.
    """

    images: np.ndarray
    labels: np.ndarray
    episode: np.ndarray
    text: np.ndarray
    instructions: list[str]
    episodes: list[dict]

    def subset(self, keep: np.ndarray) -> "FrameSet":
        """The frames where the bool mask ``keep`` (N,) holds (episode table unchanged)."""
        return FrameSet(self.images[keep], self.labels[keep], self.episode[keep], self.text[keep],
                        self.instructions, self.episodes)


def load_frame_set(data, cameras: Sequence[str], image_size: Sequence[int], max_successes_per_task: int | None = None,
                   negative_stride: int = 1, tasks: Sequence[str] | None = None) -> FrameSet:
    """Labelled frames of every episode in the stores of ``data`` (see :func:`frame_labels`).

    Args:
        data: a store file, a directory of stores, or a list of either.
        cameras: cameras to load, in the model's order (every store must have them).
        image_size: (H, W) the stores' frames must have.
        max_successes_per_task: keep at most this many successful episodes per task (failures all).
        negative_stride: keep every n-th negative frame (neighbouring frames are near duplicates);
            positive frames are all kept.
        tasks: only these tasks (None: all).
    """
    from episodes import EpisodeStore
    from reward_models.data import resolve_stores

    images, labels, ep_ids, texts, episodes, instructions = [], [], [], [], [], []
    per_task: dict[str, int] = {}
    for path in resolve_stores(data):
        with EpisodeStore(path, cameras=list(cameras)) as store:
            if len(store) and tuple(store.image_size) != tuple(image_size):
                raise ValueError(
                    f"{path} holds {store.image_size[0]}x{store.image_size[1]} frames but the model takes "
                    f"{image_size[0]}x{image_size[1]}: set reward.image_size={store.image_size[0]} or re-collect"
                )
            for i in range(len(store)):
                attrs = store.episode_attrs(i)
                if tasks is not None and attrs["task"] not in tasks:
                    continue
                if attrs["success"] and max_successes_per_task is not None:
                    if per_task.get(attrs["task"], 0) >= max_successes_per_task:
                        continue
                    per_task[attrs["task"]] = per_task.get(attrs["task"], 0) + 1
                ep = store[i]
                n = ep.num_steps + 1
                lab = frame_labels(ep.success, ep.keyframes, n, ep.infos.get("success"))
                keep = (lab == 1) | (np.arange(n) % max(int(negative_stride), 1) == 0)
                if ep.instruction not in instructions:
                    instructions.append(ep.instruction)
                images.append(np.stack([ep.images[c][keep] for c in cameras], axis=1))
                labels.append(lab[keep])
                ep_ids.append(np.full(int(keep.sum()), len(episodes), dtype=np.int64))
                texts.append(np.full(int(keep.sum()), instructions.index(ep.instruction), dtype=np.int64))
                episodes.append({"store": str(path), "index": i, "task": ep.task, "kind": ep.kind,
                                 "success": bool(ep.success)})
    if not episodes:
        raise ValueError(f"no episodes in {data}" + (f" for tasks {list(tasks)}" if tasks else ""))
    return FrameSet(np.concatenate(images), np.concatenate(labels), np.concatenate(ep_ids), np.concatenate(texts),
                    instructions, episodes)


def split_episodes(episodes: Sequence[dict], val_fraction: float, seed: int = 0) -> np.ndarray:
    """bool (num_episodes,): True for validation episodes, a ``val_fraction`` share drawn separately
    among successful and failed episodes (at least one of a group that has two or more)."""
    rng = np.random.default_rng(seed)
    val = np.zeros(len(episodes), dtype=bool)
    if val_fraction <= 0:
        return val
    for success in (True, False):
        idx = np.array([i for i, e in enumerate(episodes) if bool(e["success"]) == success], dtype=np.int64)
        if len(idx) >= 2:
            k = min(len(idx) - 1, max(1, int(round(val_fraction * len(idx)))))
            val[rng.choice(idx, size=k, replace=False)] = True
    return val


class BalancedSampler:
    """Frame indices for batches that are exactly half positives (``batch // 2``) and half negatives."""

    def __init__(self, labels: np.ndarray, seed: int = 0) -> None:
        labels = np.asarray(labels)
        self.positives = np.flatnonzero(labels == 1)
        self.negatives = np.flatnonzero(labels == 0)
        if not len(self.positives):
            raise ValueError("no positive (done) frames in the training data: give successful episodes")
        if not len(self.negatives):
            raise ValueError("no negative frames in the training data: collect failures "
                             "(stepwise-collect failures=1) or give successful episodes with early frames")
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size: int) -> np.ndarray:
        """int64 (batch_size,): ``batch_size // 2`` positives first, then the negatives."""
        half = batch_size // 2
        return np.concatenate([self.rng.choice(self.positives, size=half),
                               self.rng.choice(self.negatives, size=batch_size - half)]).astype(np.int64)
