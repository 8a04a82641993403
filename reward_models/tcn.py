"""Multi-view time-contrastive network (TCN; Sermanet et al. 2018), trained here on sim video.

A small CNN learns, without labels, to embed what the scene looks like at an instant so that two
cameras seeing the same instant agree and distant instants of the same episode differ. Its pooled
intermediate feature maps and embedding are the ``tcn`` frame encoder of the perceptual reward
(``build_encoder("tcn")``, shipped checkpoint ``reward_models/checkpoints/tcn``).

Network (``TCNNet``; frames resized to ``image_size`` = 64, ImageNet normalisation), default
``channels`` = (16, 32, 64, 64); about 210k parameters, narrow where the maps are large (speed)::

    conv1 3->16   4x4 s2  32x32  BatchNorm ReLU
    conv2 16->32  3x3 s2  16x16  BatchNorm ReLU
    conv3 32->64  3x3 s2   8x8   BatchNorm ReLU
    conv4 64->64  3x3 s1   8x8   BatchNorm ReLU
    spatial soft-argmax of conv4 -> 2 x 64 keypoint coordinates (the TCN paper's spatial softmax)
    embedding = Linear([flattened conv4 map, keypoints]) -> embed_dim (32)
    projection head (training loss only) = Linear-ReLU-Linear -> proj_dim, L2-normalised

BatchNorm rather than GroupNorm: GroupNorm took about as long as the convolution itself on the
CPU, and BatchNorm with the flattened-map embedding learned at least as fast in 150-step trials.
In eval mode BatchNorm uses its running statistics: encoding is deterministic and per frame.

Reward features (``TCNEncoder.encode``, 32 + 64 + 128 + 32 = 256 dims by default): the
global-average-pooled conv2 and conv3 maps, the conv4 keypoints, and the embedding.

Loss: InfoNCE (NT-Xent) rather than the paper's triplet loss, since it uses every frame of a batch
as a negative and needs no triplet margin. A batch takes ``batch_episodes`` episodes (tasks
weighted equally) and ``times_per_episode`` instants per episode (stratified over the episode).
For each instant t, anchor = (t, camera A) and positive = (t, camera B != A): the multi-view
TCN pair; with probability ``single_view_prob`` instead positive = (t +- up to
``single_view_window`` frames, camera A): the paper's single-view TCN pair. All 2N views are
candidates for each other (SimCLR style); with ``negatives: episode`` (default) the negatives are
the frames of the same episode more than ``negative_margin`` frames away, in the same camera and
the other (the paper's negatives); ``negatives: batch`` adds other tasks' episodes (other
episodes of the same task stay masked: they may show the same phase). Why the single-view share:
with multi-view pairs alone the small network, trained from scratch for minutes, collapsed to a
constant embedding (loss at the uniform value log(candidates) after 150 steps, with GroupNorm or
BatchNorm, pooled or flattened head); with half single-view pairs it learns, and cross-view
top-1 accuracy rises with it (0.01 -> 0.21 over the shipped run, chance about 0.08).
Each view is augmented apart: random shift (``shift_pad`` pixels) and colour jitter
(brightness, contrast, per-channel gain by up to ``color_jitter``).

Checkpoint (a directory; format version :data:`FORMAT_VERSION`):
``config.json`` = ``{"kind": "tcn", "version": 1, "config": TCNConfig fields, "training": {the
train config, steps, loss curve summary, data}}`` and ``weights.pt`` = the ``TCNNet`` state dict
(``torch.save``; projection head included). A directory of another kind or version is refused with
:class:`reward_models.base.CheckpointError`. Training also leaves ``trainer_state.pt`` (resume) and
``tb/`` (TensorBoard) in ``out``; the shipped checkpoint keeps neither.

    stepwise-train-rm reward=tcn data=/work/data/train out=runs/tcn            # the shipped recipe
    stepwise-train-rm reward=tcn data=/work/data/train out=runs/tcn reward.steps=1500 seed=1
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reward_models.base import CheckpointError

log = logging.getLogger(__name__)

KIND = "tcn"
FORMAT_VERSION = 1
DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "tcn"


@dataclass
class TCNConfig:
    """Architecture of a :class:`TCNNet` (saved in the checkpoint).

    Attributes:
        image_size: side frames are resized to before the network.
        channels: output channels of conv1..conv4.
        embed_dim: size of the embedding (reward features include it).
        proj_dim: size of the projection the loss compares (training only).
        cameras: the views it was trained on (information; any camera can be encoded).
    """

    image_size: int = 64
    channels: tuple[int, int, int, int] = (16, 32, 64, 64)
    embed_dim: int = 32
    proj_dim: int = 64
    cameras: tuple[str, ...] = ("corner", "corner2", "gripperPOV")

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        self.cameras = tuple(self.cameras)
        if len(self.channels) != 4 or min(self.channels) < 1:
            raise ValueError(f"tcn: channels must be 4 positive ints (conv1..conv4), got {list(self.channels)}")
        if int(self.image_size) < 16:
            raise ValueError(f"tcn: image_size must be >= 16, got {self.image_size}")


@dataclass
class TCNTrainConfig:
    """Everything :func:`train_tcn` needs besides the data and the output directory.

    In ``stepwise-train-rm`` these are the ``reward`` group (``configs/reward/tcn.yaml``): override
    as ``reward.steps=...``; ``seed``, ``num_threads`` and ``max_episodes_per_task`` come from the
    top level.

    Attributes:
        cameras: cameras read from the stores; anchor and positive are two distinct ones of these.
        image_size, channels, embed_dim, proj_dim: the architecture (:class:`TCNConfig`).
        steps: optimiser steps.
        batch_episodes: episodes per batch (task-balanced, without replacement).
        times_per_episode: instants drawn per episode (stratified over its length).
        negative_margin: frames of the same episode closer than this (in frames) to an anchor are
            not used as its negatives.
        negatives: ``episode`` (distant frames of the same episode only) or ``batch`` (also other
            tasks' episodes in the batch).
        single_view_prob: share of pairs whose positive is the same camera a few frames away
            (single-view TCN) instead of another camera at the same instant (multi-view TCN).
        single_view_window: the largest time offset of a single-view positive, in frames.
        temperature: InfoNCE softmax temperature.
        lr, weight_decay: AdamW; the learning rate warms up over ``warmup_steps`` then decays (cosine).
        shift_pad: random-shift augmentation, pixels at ``image_size``.
        color_jitter: brightness / contrast / channel-gain augmentation strength (0 = off).
        checkpoint_every: steps between ``trainer_state.pt`` saves.
        seed: seeds the network, the sampler and the augmentation.
        num_threads: torch CPU threads.
        max_episodes_per_task: use at most this many episodes of each task (None = all).
        allow_heldout: train on tasks the default task split holds out (off: refused).
        device: ``auto`` (GPU when present), ``cpu`` or ``cuda``.
    """

    cameras: tuple[str, ...] = ("corner", "corner2", "gripperPOV")
    image_size: int = 64
    channels: tuple[int, int, int, int] = (16, 32, 64, 64)
    embed_dim: int = 32
    proj_dim: int = 64
    steps: int = 600
    batch_episodes: int = 12
    times_per_episode: int = 8
    negative_margin: int = 8
    negatives: str = "episode"
    single_view_prob: float = 0.5
    single_view_window: int = 2
    temperature: float = 0.1
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    shift_pad: int = 4
    color_jitter: float = 0.2
    checkpoint_every: int = 100
    seed: int = 0
    num_threads: int = 2
    max_episodes_per_task: int | None = None
    allow_heldout: bool = False
    device: str = "auto"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "TCNTrainConfig":
        """Build from a dict / DictConfig; unknown keys are an error naming them (catches typos)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in dict(values).items() if k != "kind"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"tcn training: unknown setting(s) {unknown}; known: {sorted(known)}")
        for key in ("cameras", "channels"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def model_config(self) -> TCNConfig:
        """The architecture part."""
        return TCNConfig(int(self.image_size), tuple(self.channels), int(self.embed_dim), int(self.proj_dim), tuple(self.cameras))


# --------------------------------------------------------------------------- network


def _block(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class SpatialSoftArgmax(nn.Module):
    """Float (B, C, H, W) -> (B, 2C): the expected (x, y) in [-1, 1] of each channel's softmax."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        probs = x.flatten(2).softmax(-1).view(b, c, h, w)
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
        ex = (probs.sum(2) * xs).sum(-1)
        ey = (probs.sum(3) * ys).sum(-1)
        return torch.cat([ex, ey], dim=1)


class TCNNet(nn.Module):
    """The TCN (see the module docstring): normalised float (B, 3, S, S) in."""

    def __init__(self, cfg: TCNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c1, c2, c3, c4 = cfg.channels
        self.conv1 = _block(3, c1, 4, 2)
        self.conv2 = _block(c1, c2, 3, 2)
        self.conv3 = _block(c2, c3, 3, 2)
        self.conv4 = _block(c3, c4, 3, 1)
        self.keypoints = SpatialSoftArgmax()
        side = (cfg.image_size // 2 + 1) // 2  # conv1 (k4 s2) floors the half, conv2 (k3 s2) rounds up
        side = (side + 1) // 2  # conv3 (k3 s2); conv4 keeps the side
        self.embed = nn.Linear(c4 * side * side + 2 * c4, cfg.embed_dim)
        self.proj = nn.Sequential(nn.Linear(cfg.embed_dim, 128), nn.ReLU(), nn.Linear(128, cfg.proj_dim))
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)

    @property
    def feature_dim(self) -> int:
        """Size of the reward-feature rows (the first output of :meth:`forward`)."""
        c = self.cfg.channels
        return c[1] + c[2] + 2 * c[3] + self.cfg.embed_dim

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or float pixels (B, 3, H, W) in [0, 255] -> resized, normalised float input."""
        from reward_models.step_prm import resize_for_encoder

        x = resize_for_encoder(images.float(), self.cfg.image_size)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised input -> (reward features (B, feature_dim), embedding (B, embed_dim))."""
        c2 = self.conv2(self.conv1(x))
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        kp = self.keypoints(c4)
        emb = self.embed(torch.cat([c4.flatten(1), kp], dim=1))
        return torch.cat([c2.mean((2, 3)), c3.mean((2, 3)), kp, emb], dim=1), emb

    def project(self, emb: torch.Tensor) -> torch.Tensor:
        """Embedding -> unit-norm projection (B, proj_dim) the loss compares."""
        return F.normalize(self.proj(emb), dim=-1)


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(net: TCNNet, directory: str | Path, training: dict | None = None) -> Path:
    """Write ``weights.pt`` then ``config.json`` (last: a checkpoint is whole or absent)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, directory / "weights.pt")
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(net.cfg).items()}
    meta = {"kind": KIND, "version": FORMAT_VERSION, "config": cfg, "training": training or {}}
    tmp = directory / "config.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(directory / "config.json")
    return directory


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> tuple[TCNNet, dict]:
    """The network (eval mode) and the ``config.json`` contents of a TCN checkpoint directory.

    Raises:
        FileNotFoundError: no such directory (the message says how to train one).
        CheckpointError: not a TCN checkpoint (another kind, another format version, damaged).
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(
            f"no TCN checkpoint directory at {str(directory)!r}: train one with "
            f"`stepwise-train-rm reward=tcn data=<stores> out={directory}`, or leave checkpoint unset for the "
            "shipped one")
    try:
        meta = json.loads((directory / "config.json").read_text())
        kind, version, config = meta["kind"], int(meta["version"]), dict(meta["config"])
    except FileNotFoundError as err:
        raise CheckpointError(f"{directory} has no config.json: not a TCN checkpoint (or an unfinished save)") from err
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{directory}/config.json is damaged ({err}); re-train the TCN") from err
    if kind != KIND:
        raise CheckpointError(f"{directory} holds a {kind!r} checkpoint, not a {KIND!r} encoder: give the directory "
                              "a `stepwise-train-rm reward=tcn` run wrote")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{directory} is a TCN checkpoint of format version {version}; this code reads "
                              f"version {FORMAT_VERSION}. Re-train it with this version.")
    try:
        net = TCNNet(TCNConfig(**config))
        net.load_state_dict(torch.load(directory / "weights.pt", map_location="cpu", weights_only=True))
    except FileNotFoundError as err:
        raise CheckpointError(f"{directory} has no weights.pt: re-train the TCN") from err
    except Exception as err:  # torch raises many kinds on a damaged or foreign file
        raise CheckpointError(f"{directory}/weights.pt does not fit its config.json or is damaged: {err}") from err
    return net.to(device).eval(), meta


class TCNEncoder:
    """The ``tcn`` frame encoder: uint8 (T, H, W, 3) -> float32 (T, 256) reward features (default size).

    Features (see the module docstring): global-average-pooled conv2 and conv3 maps, conv4
    spatial soft-argmax keypoints, and the embedding. Any camera and frame size is accepted (frames
    are resized to the network's input); it was trained on the cameras in ``net.cfg.cameras``.

    Args:
        checkpoint: a TCN checkpoint directory; None = the shipped ``reward_models/checkpoints/tcn``.
        batch_size: frames per forward pass.
        device: torch device.
    """

    kind = KIND

    def __init__(self, checkpoint: str | Path | None = None, batch_size: int = 256, device: str = "cpu") -> None:
        self.name = "tcn"
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.batch_size, self.device = int(batch_size), torch.device(device)
        self.net, self.meta = load_checkpoint(DEFAULT_CHECKPOINT if checkpoint is None else checkpoint, self.device)
        self.feature_dim = self.net.feature_dim

    @torch.inference_mode()
    def _run(self, frames: np.ndarray, part: int) -> np.ndarray:
        from reward_models.frames import check_frames_uint8

        f = check_frames_uint8(frames, "tcn")
        dim = self.feature_dim if part == 0 else self.net.cfg.embed_dim
        if len(f) == 0:
            return np.zeros((0, dim), np.float32)
        self.net.eval()
        out = []
        for i in range(0, len(f), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(f[i:i + self.batch_size])).to(self.device).permute(0, 3, 1, 2)
            out.append(self.net(self.net.normalise(x))[part].cpu())
        return torch.cat(out).numpy().astype(np.float32, copy=False)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (T, H, W, 3) -> float32 (T, feature_dim) reward features; batched, no grad."""
        return self._run(frames, 0)

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (T, H, W, 3) -> float32 (T, embed_dim): the time-contrastive embedding alone."""
        return self._run(frames, 1)

    def config(self) -> dict:
        """Rebuild kwargs (``checkpoint`` None = the shipped one)."""
        return {"name": "tcn", "checkpoint": self.checkpoint, "batch_size": self.batch_size, "device": str(self.device)}


# --------------------------------------------------------------------------- data


@dataclass
class VideoEpisode:
    """One multi-camera episode in memory: ``images`` uint8 (T, V, S, S, 3) at the network's size."""

    images: np.ndarray
    task: str


def load_videos(data, cameras: tuple[str, ...], size: int, max_per_task: int | None = None) -> list[VideoEpisode]:
    """Every episode (any kind: the loss needs no labels) with all of ``cameras`` from the stores in
    ``data`` (a store, a directory of stores, or a list), resized to ``size``."""
    from episodes import EpisodeStore
    from reward_models.pairs import resize_frames, store_paths

    out: list[VideoEpisode] = []
    per_task: dict[str, int] = {}
    for path in store_paths(data):
        with EpisodeStore(path, cameras=list(cameras)) as store:
            for i in range(len(store)):
                task = store.episode_attrs(i)["task"]
                if max_per_task is not None and per_task.get(task, 0) >= max_per_task:
                    continue
                ep = store[i]
                images = np.stack([ep.images[c] for c in cameras], axis=1)
                if len(images) < 2:
                    continue
                out.append(VideoEpisode(resize_frames(images, size), task))
                per_task[task] = per_task.get(task, 0) + 1
    if not out:
        raise ValueError(f"no episodes with cameras {list(cameras)} in {data}")
    return out


@dataclass
class ViewBatch:
    """One batch of N instants: anchor and positive uint8 (N, S, S, 3); episode, task, time (of
    the anchor) int (N,); single_view bool (N,): the positive is the anchor's camera, not another."""

    anchor: np.ndarray
    positive: np.ndarray
    episode: np.ndarray
    task: np.ndarray
    time: np.ndarray
    single_view: np.ndarray


class MultiViewSampler:
    """Draws :class:`ViewBatch` es (see the module docstring); ``rng`` is its whole state."""

    def __init__(self, episodes: list[VideoEpisode], batch_episodes: int, times_per_episode: int, seed: int = 0,
                 single_view_prob: float = 0.0, single_view_window: int = 2) -> None:
        self.episodes = episodes
        self.batch_episodes, self.times = int(batch_episodes), int(times_per_episode)
        self.single_view_prob, self.window = float(single_view_prob), max(int(single_view_window), 1)
        tasks = sorted({e.task for e in episodes})
        self.task_ids = np.array([tasks.index(e.task) for e in episodes])
        counts = np.bincount(self.task_ids)
        self.weights = 1.0 / counts[self.task_ids]  # every task equally likely, whatever its episode count
        self.weights /= self.weights.sum()
        self.rng = np.random.default_rng(seed)

    def sample(self) -> ViewBatch:
        """One batch."""
        rng = self.rng
        n_eps = min(self.batch_episodes, len(self.episodes))
        chosen = rng.choice(len(self.episodes), size=n_eps, replace=False, p=self.weights)
        anchor, positive, ep_ids, times, single = [], [], [], [], []
        for e in chosen:
            images = self.episodes[e].images
            t_len, views = images.shape[:2]
            edges = np.linspace(0, t_len, self.times + 1)
            ts = np.unique(np.minimum(rng.uniform(edges[:-1], edges[1:]).astype(int), t_len - 1))
            for t in ts:
                if rng.random() < self.single_view_prob:  # single-view TCN: same camera, a nearby instant
                    a = b = int(rng.integers(views))
                    shift = int(rng.integers(1, self.window + 1)) * (1 if rng.random() < 0.5 else -1)
                    t_pos = int(np.clip(t + shift, 0, t_len - 1))
                else:  # multi-view TCN: another camera, the same instant
                    a, b = rng.choice(views, size=2, replace=False)
                    t_pos = t
                anchor.append(images[t, a])
                positive.append(images[t_pos, b])
                single.append(a == b)
            ep_ids += [int(e)] * len(ts)
            times += list(ts)
        ep_ids = np.array(ep_ids)
        return ViewBatch(np.stack(anchor), np.stack(positive), ep_ids, self.task_ids[ep_ids], np.array(times),
                         np.array(single, dtype=bool))


def color_jitter(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Float pixels (N, 3, H, W) in [0, 255]: random brightness, contrast and per-channel gain."""
    if strength <= 0:
        return x
    n = len(x)

    def u(*shape: int) -> torch.Tensor:
        return 1 + strength * (2 * torch.rand(*shape, generator=generator) - 1)

    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * u(n, 1, 1, 1) + mean  # contrast
    x = x * u(n, 1, 1, 1) * (1 + 0.5 * (u(n, 3, 1, 1) - 1))  # brightness and channel gain
    return x.clamp(0, 255)


def time_contrastive_loss(z: torch.Tensor, episode: torch.Tensor, task: torch.Tensor, time_: torch.Tensor,
                          temperature: float, margin: int, negatives: str = "episode") -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-view InfoNCE over 2N unit vectors ``z`` = [anchors; positives] (row i pairs with i+N).

    ``episode``, ``task``, ``time_``: int (N,) of each instant. ``negatives``: ``episode`` (only
    distant frames of the same episode, the paper's negatives) or ``batch`` (also other tasks'
    episodes). Returns (loss, hits): hits bool (2N,) says whether each row's most similar
    candidate is its positive."""
    if negatives not in ("episode", "batch"):
        raise ValueError(f"negatives must be 'episode' or 'batch', got {negatives!r}")
    n = len(episode)
    ep, tk, tt = episode.repeat(2), task.repeat(2), time_.repeat(2)
    idx = torch.arange(2 * n)
    pos = (idx + n) % (2 * n)
    same_ep = ep[:, None] == ep[None]
    near = same_ep & ((tt[:, None] - tt[None]).abs() <= margin)  # includes self
    other = ~same_ep if negatives == "episode" else (tk[:, None] == tk[None]) & ~same_ep
    invalid = near | other
    invalid[idx, pos] = False
    logits = (z @ z.T / temperature).masked_fill(invalid, float("-inf"))
    return F.cross_entropy(logits, pos), logits.argmax(1) == pos


# --------------------------------------------------------------------------- training


def _resolve_device(device: str) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _check_not_heldout(episodes: list[VideoEpisode]) -> None:
    from sim.tasks import task_split

    heldout = set(task_split()["heldout"])
    bad = sorted({e.task for e in episodes} & heldout)
    if bad:
        raise ValueError(f"tcn training data holds held-out task(s) {bad} of the default task split: train on "
                         "training tasks only (e.g. data=/work/data/train), or set reward.allow_heldout=true")


def train_tcn(stores, out: str | Path, cfg: TCNTrainConfig | Mapping[str, Any], stop_after: int | None = None) -> TCNEncoder:
    """Train a TCN on the multi-camera episodes of ``stores`` and save it as a checkpoint at ``out``.

    Args:
        stores: a store file, a directory of stores, or a list of either.
        out: checkpoint directory; a ``trainer_state.pt`` there is resumed (same settings required).
        cfg: a :class:`TCNTrainConfig` or a mapping of its fields.
        stop_after: return after this many steps of THIS call without the final save, as a killed
            run would (time-boxed runs, resume tests); run again to continue.

    Returns:
        The trained encoder, loaded back from ``out`` (or from the live network when stopped early).
    """
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from reward_models.augment import random_shift

    cfg = cfg if isinstance(cfg, TCNTrainConfig) else TCNTrainConfig.from_mapping(cfg)
    if len(cfg.cameras) < 2:
        raise ValueError(f"tcn training needs at least 2 cameras (multi-view positives), got {list(cfg.cameras)}")
    if int(cfg.steps) < 1:
        raise ValueError(f"tcn training: steps must be >= 1, got {cfg.steps}")
    torch.set_num_threads(int(cfg.num_threads))
    torch.manual_seed(int(cfg.seed))
    out = Path(out)
    device = _resolve_device(cfg.device)
    t_load = time.perf_counter()
    episodes = load_videos(stores, tuple(cfg.cameras), int(cfg.image_size), cfg.max_episodes_per_task)
    if not cfg.allow_heldout:
        _check_not_heldout(episodes)
    tasks = sorted({e.task for e in episodes})
    log.info("tcn: %d episodes of %d tasks, %d frames x %d cameras, loaded in %.0f s", len(episodes), len(tasks),
             sum(len(e.images) for e in episodes), len(cfg.cameras), time.perf_counter() - t_load)
    net = TCNNet(cfg.model_config()).to(device)
    sampler = MultiViewSampler(episodes, cfg.batch_episodes, cfg.times_per_episode, seed=int(cfg.seed),
                               single_view_prob=float(cfg.single_view_prob), single_view_window=int(cfg.single_view_window))
    opt = torch.optim.AdamW(net.parameters(), lr=float(cfg.lr), weight_decay=float(cfg.weight_decay))
    steps, warm = int(cfg.steps), max(int(cfg.warmup_steps), 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(int(cfg.seed))
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "trainer_state.pt"
    step, losses = 0, []
    model_cfg = asdict(cfg.model_config())
    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        if state["model_config"] != model_cfg:
            raise ValueError(f"{state_path} was written for architecture {state['model_config']}, not {model_cfg}: "
                             "resume with the same settings or use a fresh out=")
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        sampler.rng.bit_generator.state = state["sampler_rng"]
        gen.set_state(state["gen"])
        step, losses = int(state["step"]), list(state["losses"])
        log.info("tcn: resuming from step %d of %d (%s)", step, steps, state_path)
    writer = SummaryWriter(str(out / "tb"))
    bar = tqdm(range(step, steps), initial=step, total=steps, desc="train tcn", unit="step")
    t0, done_here = time.perf_counter(), 0
    for step in bar:
        net.train()
        batch = sampler.sample()
        views = torch.from_numpy(np.concatenate([batch.anchor, batch.positive]))  # (2N, S, S, 3) uint8
        views = random_shift(views, int(cfg.shift_pad), gen).permute(0, 3, 1, 2).float()
        views = color_jitter(views, float(cfg.color_jitter), gen).to(device)
        _, emb = net(net.normalise(views))
        loss, hits = time_contrastive_loss(net.project(emb), torch.from_numpy(batch.episode), torch.from_numpy(batch.task),
                                          torch.from_numpy(batch.time), float(cfg.temperature), int(cfg.negative_margin),
                                          cfg.negatives)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.item()))
        multi = ~torch.from_numpy(np.concatenate([batch.single_view, batch.single_view]))
        cross_view = float(hits[multi].float().mean()) if multi.any() else float("nan")
        writer.add_scalar("train/loss", losses[-1], step)
        writer.add_scalar("train/top1", float(hits.float().mean()), step)
        writer.add_scalar("train/top1_cross_view", cross_view, step)  # the multi-view pairs alone
        bar.set_postfix(loss=f"{losses[-1]:.3f}", top1=f"{float(hits.float().mean()):.2f}", top1_cross=f"{cross_view:.2f}")
        done_here += 1
        last = step + 1 == steps
        if (step + 1) % int(cfg.checkpoint_every) == 0 or last or (stop_after is not None and done_here >= stop_after):
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "sampler_rng": sampler.rng.bit_generator.state, "gen": gen.get_state(), "step": step + 1,
                        "losses": losses, "model_config": model_cfg}, state_path.with_suffix(".tmp"))
            state_path.with_suffix(".tmp").replace(state_path)
        if stop_after is not None and done_here >= stop_after and not last:
            writer.close()
            return _live_encoder(net)
    writer.close()
    k = max(1, min(100, len(losses) // 10))
    training = {**{k_: (list(v) if isinstance(v, tuple) else v) for k_, v in asdict(cfg).items()},
                "steps_done": len(losses), "loss_first": float(np.mean(losses[:k])), "loss_last": float(np.mean(losses[-k:])),
                "loss_window": k, "episodes": len(episodes), "tasks": tasks,
                "seconds_this_run": round(time.perf_counter() - t0, 1)}
    log.info("tcn: loss %.3f (first %d steps) -> %.3f (last %d)", training["loss_first"], k, training["loss_last"], k)
    save_checkpoint(net.cpu(), out, training)
    return TCNEncoder(out)


def _live_encoder(net: TCNNet) -> TCNEncoder:
    """An encoder around a network in memory (no checkpoint read)."""
    enc = TCNEncoder.__new__(TCNEncoder)
    enc.name, enc.checkpoint, enc.batch_size = "tcn", None, 256
    enc.net, enc.meta = net.cpu().eval(), {}
    enc.device, enc.feature_dim = torch.device("cpu"), net.feature_dim
    return enc


def train_from_config(cfg) -> TCNEncoder:
    """``stepwise-train-rm reward=tcn``: :func:`train_tcn` with ``cfg.reward`` (configs/reward/tcn.yaml),
    ``cfg.data``, ``cfg.out``, ``cfg.seed``, ``cfg.num_threads`` and ``cfg.max_episodes_per_task``."""
    from omegaconf import OmegaConf

    reward = OmegaConf.to_container(cfg.reward, resolve=True) if OmegaConf.is_config(cfg.reward) else dict(cfg.reward)
    reward.setdefault("seed", int(cfg.seed))
    reward.setdefault("num_threads", int(cfg.num_threads))
    reward.setdefault("max_episodes_per_task", cfg.get("max_episodes_per_task"))
    data = OmegaConf.to_container(cfg.data) if OmegaConf.is_config(cfg.data) else cfg.data
    return train_tcn(data, cfg.out, TCNTrainConfig.from_mapping(reward))


# --------------------------------------------------------------------------- evaluation


def time_gap_correlation(encoder, data, cameras: tuple[str, ...] = ("corner", "corner2", "gripperPOV"),
                         max_episodes_per_task: int | None = None, kinds: tuple[str, ...] = ("expert",)) -> dict[str, float]:
    """How well feature distance tracks time: per episode and camera, the Spearman correlation
    between |t_i - t_j| and the distance of the features of frames i and j (features z-scored per
    dimension within the episode, so no dimension dominates by scale), over all frame pairs.
    Only episodes of ``kinds`` count (failures such as stalls and reversals need not move forward).

    Returns ``{camera: mean over episodes, "mean": mean over cameras}``. A good TCN is clearly
    above the ``pixels`` encoder on held-out tasks."""
    from episodes import EpisodeStore
    from reward_models.metrics import spearman
    from reward_models.pairs import store_paths

    per_cam: dict[str, list[float]] = {c: [] for c in cameras}  # (None when an episode has one frame)
    per_task: dict[str, int] = {}
    for path in store_paths(data):
        with EpisodeStore(path, cameras=list(cameras)) as store:
            for i in range(len(store)):
                attrs = store.episode_attrs(i)
                task = attrs["task"]
                if attrs["kind"] not in kinds or (max_episodes_per_task is not None
                                                  and per_task.get(task, 0) >= max_episodes_per_task):
                    continue
                per_task[task] = per_task.get(task, 0) + 1
                ep = store[i]
                for c in cameras:
                    f = encoder.encode(ep.images[c]).astype(np.float64)
                    f = (f - f.mean(0)) / (f.std(0) + 1e-6)
                    iu = np.triu_indices(len(f), k=1)
                    sq = (f * f).sum(1)
                    dist = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2 * f @ f.T, 0))[iu]
                    gap = (iu[1] - iu[0]).astype(np.float64)
                    per_cam[c].append(spearman(gap, dist))
    if not any(per_cam.values()):
        raise ValueError(f"no episodes of kinds {list(kinds)} in {data}")
    result = {c: float(np.mean([x for x in v if x is not None])) for c, v in per_cam.items()}
    result["mean"] = float(np.mean(list(result.values())))
    return result
