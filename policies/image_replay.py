"""Replay for image-based SAC: a uint8 frame ring that stores each observation once, offline/online
mixing, and demonstrations (multi-view pixels + proprio) loaded from an episode store.

Batch contract of `policies.image_sac.ImageSAC.update` (torch tensors on the requested device):
    obs        {"images": uint8 (n, V, H, W, 3), "proprio": float32 (n, P)}
    action     float32 (n, A) in [-1, 1]
    reward     float32 (n,)
    next_obs   {"images": uint8 (n, V, H, W, 3), "proprio": float32 (n, P)}
    terminated float32 (n,) 1.0 only at true terminals (a time-limit truncation is stored as 0)
    mc_return  float32 (n,) Monte-Carlo return-to-go, Cal-QL's lower bound; -inf where unknown (no bound)
    demo       float32 (n,) 1.0 on offline rows; only from `MixedImageReplay`
Views V follow the buffer's ``cameras`` order; images stay channels-last uint8 as the env gives
them, so a batch travels to the GPU at a quarter of float32's size (the agent converts there).

Memory: frames are stored once. Row i holds the observation before transition i and row i+1
(mod capacity) the observation after it, so an episode of T steps takes T+1 rows instead of 2T.
One row costs V*H*W*3 bytes plus a few floats: 100k rows of 3 cameras at 64 px are 3.7 GB
(2 cameras: 2.5 GB; at 32 px a quarter of that). The arrays are allocated lazily by the OS, so
unused capacity costs no memory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from policies.replay import MixedReplay, store_files

__all__ = ["ImageReplayBuffer", "MixedImageReplay", "load_offline_images", "resize_frames", "image_hw"]

_ROW_FIELDS = ("images", "proprio", "action", "reward", "terminated", "mc_return", "valid")


def image_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``64`` or ``(64, 64)`` -> (H, W), checked positive."""
    hw = (int(image_size), int(image_size)) if np.ndim(image_size) == 0 else tuple(int(s) for s in image_size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"image_size must be a positive int or (height, width), got {image_size!r}")
    return hw  # type: ignore[return-value]


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (N, H, W, 3) -> uint8 (N, h, w, 3), bilinear with antialiasing (area-like when shrinking)."""
    if frames.shape[1:3] == tuple(size):
        return frames
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


class ImageReplayBuffer:
    """Fixed-capacity FIFO of image transitions; each observation frame is stored once (see module doc).

    Args:
        cameras: camera names, in the order of the V axis of stored images.
        image_size: H = W, or (H, W).
        proprio_dim: P, length of the proprioception vector.
        act_dim: A, length of an action.
        capacity: frame rows kept (>= 2); an episode of T steps takes T+1 rows. When full the
            oldest rows are overwritten and the transitions that used them are dropped.

    `add` takes env observation dicts (``images`` keyed by camera, ``proprio``; ``state`` is ignored).
    When ``obs`` equals the previous ``next_obs`` (consecutive steps of one episode) their frame is
    shared; otherwise (a new episode, or interleaved vector envs) ``obs`` gets a row of its own.
    """

    def __init__(self, cameras: Sequence[str], image_size: int | Sequence[int], proprio_dim: int, act_dim: int,
                 capacity: int) -> None:
        if isinstance(cameras, str) or not cameras or len(set(cameras)) != len(cameras):
            raise ValueError(f"cameras must be a non-empty list of distinct names, got {cameras!r}")
        if proprio_dim < 1 or act_dim < 1 or capacity < 2:
            raise ValueError(
                f"need proprio_dim, act_dim >= 1 and capacity >= 2, got {proprio_dim}, {act_dim}, {capacity}")
        self.cameras = [str(c) for c in cameras]
        self.image_size = image_hw(image_size)
        self.proprio_dim, self.act_dim, self.capacity = int(proprio_dim), int(act_dim), int(capacity)
        h, w = self.image_size
        self.images = np.zeros((capacity, len(self.cameras), h, w, 3), np.uint8)
        self.proprio = np.zeros((capacity, proprio_dim), np.float32)
        self.action = np.zeros((capacity, act_dim), np.float32)  # rows: the transition leaving frame i
        self.reward = np.zeros((capacity,), np.float32)
        self.terminated = np.zeros((capacity,), np.float32)
        self.mc_return = np.full((capacity,), -np.inf, np.float32)  # -inf: unknown, no Cal-QL bound
        self.valid = np.zeros((capacity,), bool)  # row i is a transition whose next frame is row i+1
        self.pos = 0  # next row to write
        self.filled = 0  # rows written so far, at most capacity
        self.size = 0  # valid transitions
        self._last: int | None = None  # row of the latest next_obs, which the next add() may continue from

    def __len__(self) -> int:
        """Number of transitions that can be sampled."""
        return self.size

    @property
    def nbytes(self) -> int:
        """Bytes of the preallocated arrays at full capacity."""
        return sum(getattr(self, k).nbytes for k in _ROW_FIELDS)

    # -- writing ----------------------------------------------------------------------------

    def _frame(self, obs: Mapping, name: str) -> tuple[np.ndarray, np.ndarray]:
        """An env observation dict -> (uint8 (V, H, W, 3), float32 (P,)), checked."""
        if not isinstance(obs, Mapping) or "images" not in obs or "proprio" not in obs:
            raise TypeError(f"{name} must be the env's observation dict with 'images' and 'proprio'")
        images = check_views(obs["images"], self.cameras, self.image_size, name, batched=False)
        proprio = np.asarray(obs["proprio"], np.float32)
        if proprio.shape != (self.proprio_dim,):
            raise ValueError(f"{name}['proprio'] has shape {proprio.shape}, the buffer stores ({self.proprio_dim},)")
        return images, proprio

    def _write_frames(self, images: np.ndarray, proprio: np.ndarray) -> np.ndarray:
        """Write n <= capacity frames at the ring's head; returns their rows."""
        rows = (self.pos + np.arange(len(images))) % self.capacity
        self.size -= int(self.valid[rows].sum())  # transitions starting at overwritten rows are gone
        self.valid[rows] = False
        self.mc_return[rows] = -np.inf
        self.images[rows] = images
        self.proprio[rows] = proprio
        self.pos = int((self.pos + len(images)) % self.capacity)
        self.filled = min(self.filled + len(images), self.capacity)
        return rows

    def add(self, obs: Mapping, action: np.ndarray, reward: float, next_obs: Mapping, terminated: bool,
            mc_return: float = -np.inf) -> None:
        """Add one transition. ``terminated``: true terminal only (pass False on time-limit truncation);
        ``mc_return``: its Monte-Carlo return-to-go if known (Cal-QL's bound), else -inf."""
        images, proprio = self._frame(obs, "obs")
        next_images, next_proprio = self._frame(next_obs, "next_obs")
        action = check_action(action, self.act_dim, "action")
        last = self._last
        if last is not None and np.array_equal(self.proprio[last], proprio) and np.array_equal(self.images[last], images):
            i = last  # obs is the previous next_obs: share its frame
        else:
            i = int(self._write_frames(images[None], proprio[None])[0])
        self.action[i], self.reward[i], self.terminated[i] = action, reward, float(terminated)
        self.mc_return[i] = mc_return
        self._last = int(self._write_frames(next_images[None], next_proprio[None])[0])  # row i+1
        self.valid[i] = True
        self.size += 1

    def add_episode(self, images: Mapping[str, np.ndarray] | np.ndarray, proprio: np.ndarray, actions: np.ndarray,
                    rewards: np.ndarray, terminated: np.ndarray, mc_return: np.ndarray | None = None) -> None:
        """Add a whole episode of T transitions.

        Args:
            images: camera -> uint8 (T+1, H, W, 3), or uint8 (T+1, V, H, W, 3) in the buffer's camera order.
            proprio: float (T+1, P). actions: float (T, A). rewards: float (T,).
            terminated: (T,) bool or 0/1, true terminals only.
            mc_return: float (T,) Monte-Carlo returns-to-go (Cal-QL's lower bound), or None: unknown (-inf).
        If T+1 > capacity only the newest ``capacity`` frames (and their transitions) are kept.
        """
        images = check_views(images, self.cameras, self.image_size, "images", batched=True)
        proprio = np.asarray(proprio, np.float32)
        T = len(images) - 1
        cols = {"actions": (np.asarray(actions, np.float32), (T, self.act_dim)),
                "rewards": (np.asarray(rewards, np.float32), (T,)),
                "terminated": (np.asarray(terminated, np.float32), (T,)),
                "mc_return": (np.full(T, -np.inf, np.float32) if mc_return is None
                              else np.asarray(mc_return, np.float32), (T,)),
                "proprio": (proprio, (T + 1, self.proprio_dim))}
        for name, (v, want) in cols.items():
            if v.shape != want:
                raise ValueError(f"add_episode: {name} has shape {v.shape}, expected {want} for {T + 1} frames")
        actions = check_action(cols["actions"][0], self.act_dim, "actions", batched=True)
        rewards, terminated = cols["rewards"][0], cols["terminated"][0]
        if T < 1:
            return
        drop = max(0, T + 1 - self.capacity)
        rows = self._write_frames(images[drop:], proprio[drop:])
        self.action[rows[:-1]], self.reward[rows[:-1]] = actions[drop:], rewards[drop:]
        self.terminated[rows[:-1]] = terminated[drop:]
        self.mc_return[rows[:-1]] = cols["mc_return"][0][drop:]
        self.valid[rows[:-1]] = True
        self.size += len(rows) - 1
        self._last = int(rows[-1])

    # -- reading ----------------------------------------------------------------------------

    def sample(self, n: int, rng: np.random.Generator, device: str | torch.device = "cpu") -> dict:
        """n transitions drawn uniformly with replacement, in the batch contract, on ``device``."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty ImageReplayBuffer: add transitions first")
        valid = np.flatnonzero(self.valid)
        idx = valid[rng.integers(0, len(valid), size=n)]
        nxt = (idx + 1) % self.capacity
        t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
        return {
            "obs": {"images": t(self.images[idx]), "proprio": t(self.proprio[idx])},
            "action": t(self.action[idx]),
            "reward": t(self.reward[idx]),
            "next_obs": {"images": t(self.images[nxt]), "proprio": t(self.proprio[nxt])},
            "terminated": t(self.terminated[idx]),
            "mc_return": t(self.mc_return[idx]),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the ring's written rows (uncompressed .npz: frames barely compress and gzip is slow at GBs).

        Rows are written from 0 upwards until the ring wraps, so rows [filled, capacity) were never
        written and are not saved: a mostly empty buffer of large capacity saves small. A path without
        ``.npz`` gets it appended (numpy's rule)."""
        meta = {"cameras": np.array(self.cameras), "image_size": np.array(self.image_size),
                "capacity": np.array(self.capacity),
                "ring": np.array([self.pos, self.filled, self.size, -1 if self._last is None else self._last])}
        np.savez(path, **meta, **{k: getattr(self, k)[: self.filled] for k in _ROW_FIELDS})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ImageReplayBuffer":
        """Read a buffer written by `save`; sampling continues exactly where it was."""
        with np.load(path) as z:
            missing = [k for k in (*_ROW_FIELDS, "cameras", "image_size", "ring") if k not in z and k != "mc_return"]
            if missing:
                raise ValueError(f"{str(path)!r} lacks {missing}: not written by ImageReplayBuffer.save")
            # older files hold the whole ring and no capacity; older ones also no mc_return (stays -inf)
            capacity = int(z["capacity"]) if "capacity" in z else len(z["valid"])
            buf = cls(z["cameras"].tolist(), z["image_size"].tolist(), z["proprio"].shape[1], z["action"].shape[1],
                      capacity)
            for k in _ROW_FIELDS:
                if k in z:
                    getattr(buf, k)[: len(z[k])] = z[k]
            buf.pos, buf.filled, buf.size, last = (int(v) for v in z["ring"])
            buf._last = None if last < 0 else last
        return buf


def check_views(images: Mapping[str, np.ndarray] | np.ndarray, cameras: Sequence[str], image_size: tuple[int, int],
                name: str, batched: bool) -> np.ndarray:
    """Camera dict (or stacked array) -> uint8 (V, H, W, 3), or (N, V, H, W, 3) if ``batched``, with clear errors."""
    lead = "(N, " if batched else "("
    h, w = image_size
    if isinstance(images, Mapping):
        missing = [c for c in cameras if c not in images]
        if missing:
            raise KeyError(
                f"{name} lacks camera(s) {missing}; it has {sorted(images)}. The agent/buffer uses cameras "
                f"{list(cameras)}: make the env with cameras={list(cameras)}"
            )
        for c in cameras:
            a = images[c]
            if getattr(a, "dtype", None) != np.uint8:
                raise TypeError(f"{name} camera {c!r} is {getattr(a, 'dtype', type(a).__name__)}; pass uint8 frames "
                                "(0..255) as the env gives them, not floats")
            if a.shape[-3:] != (h, w, 3) or a.ndim != 3 + batched:
                raise ValueError(f"{name} camera {c!r} has shape {a.shape}, expected {lead}{h}, {w}, 3): make the env "
                                 f"with image_size={h if h == w else (h, w)} or resize the frames (resize_frames)")
        return np.stack([np.asarray(images[c]) for c in cameras], axis=1 if batched else 0)
    a = np.asarray(images)
    want = (len(cameras), h, w, 3)
    if a.dtype != np.uint8:
        raise TypeError(f"{name} images are {a.dtype}; pass uint8 frames (0..255), not floats")
    if a.shape[-4:] != want or a.ndim != 4 + batched:
        raise ValueError(f"{name} images have shape {a.shape}, expected {lead}{', '.join(map(str, want))}) "
                         f"= views in camera order {list(cameras)}")
    return a


def check_action(action: np.ndarray, act_dim: int, name: str, batched: bool = False) -> np.ndarray:
    """float32 (A,) or (N, A), finite; NaN/inf is refused (it would poison every Q target it touches)."""
    a = np.asarray(action, np.float32)
    if a.shape[-1:] != (act_dim,) or a.ndim != 1 + batched:
        raise ValueError(f"{name} has shape {a.shape}, expected {'(N, ' if batched else '('}{act_dim},)")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf; check the policy's output (or the demo file) before storing it")
    return a


class MixedImageReplay(MixedReplay):
    """RLPD's symmetric sampling over image buffers: `policies.replay.MixedReplay` with the image
    buffers' compatibility check. Batches carry ``demo`` (n,) = 1.0 on offline rows and both buffers'
    ``mc_return``.
    """

    mismatch_hint = "load demos with the online env's cameras and image_size"

    @staticmethod
    def spec(buffer) -> tuple:
        """(cameras, image_size, proprio_dim, act_dim): what the two image buffers must share."""
        return (buffer.cameras, buffer.image_size, buffer.proprio_dim, buffer.act_dim)


def load_offline_images(
    store_path: str | os.PathLike,
    cameras: Sequence[str],
    image_size: int | Sequence[int],
    reward_fn: Callable[..., np.ndarray] | None = None,
    capacity: int | None = None,
) -> ImageReplayBuffer:
    """Image transitions of every episode in a store: frames of ``cameras`` + proprio, never ``state``.

    Args:
        store_path: an episode store (.hdf5), or a directory whose *.hdf5 stores are all read.
        cameras: cameras to load, in the V order of the agent (each must be in the store).
        image_size: the agent's image size; frames of another size are resized (bilinear,
            antialiased), which is close to but not identical with rendering at that size.
        reward_fn: ``episode -> float (T,)`` rewards; default: the store's ``rewards``.
        capacity: buffer rows; default the frames of every episode (T+1 per episode, an upper bound).

    Termination as `policies.replay.load_offline`: an episode is cut at its FIRST step with
    ``infos["success"][t] > 0.5``, that transition is terminated = 1 and later ones are dropped;
    episodes without success keep every transition, none terminal (their end was a time limit).
    Actions are clipped to [-1, 1].
    """
    from episodes.store import EpisodeStore  # imported here: only this loader needs h5py

    size = image_hw(image_size)
    files = store_files(Path(store_path))
    if capacity is None:
        capacity = 0
        for file in files:
            with EpisodeStore(file, cameras=list(cameras)) as store:  # checks the cameras, naming those present
                capacity += int((store.lengths() + 1).sum())
    buf: ImageReplayBuffer | None = None
    for file in files:
        store = EpisodeStore(file, cameras=list(cameras))
        try:
            for i in range(len(store)):
                ep = store[i]
                T = ep.num_steps
                reward = np.asarray(ep.rewards if reward_fn is None else reward_fn(ep), np.float32)
                if reward.shape != (T,):
                    raise ValueError(f"reward_fn returned shape {reward.shape} for episode {i}; expected ({T},)")
                success = np.asarray(ep.infos.get("success", np.zeros(T)), np.float32) > 0.5
                end = int(np.argmax(success)) + 1 if success.any() else T  # transitions kept: [0, end)
                terminated = np.zeros(end, np.float32)
                terminated[-1] = float(success.any())
                if buf is None:
                    buf = ImageReplayBuffer(cameras, size, ep.proprio.shape[1], ep.actions.shape[1], max(capacity, 2))
                images = {c: resize_frames(ep.images[c][: end + 1], size) for c in cameras}
                buf.add_episode(images, ep.proprio[: end + 1], np.clip(ep.actions[:end], -1.0, 1.0), reward[:end],
                                terminated)
        finally:
            store.close()
    if buf is None:
        raise ValueError(f"episode store {str(store_path)!r} holds no episodes; collect some first")
    return buf
