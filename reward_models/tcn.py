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
train config, steps, loss curve summary, data}}`` and ``model.safetensors`` = the ``TCNNet`` state
dict (projection head included; an older ``weights.pt`` still loads, deprecated). A directory of
another kind or version is refused with :class:`reward_models.base.CheckpointError`. Training also leaves ``trainer_state.pt`` (resume) and
``tb/`` (TensorBoard) in ``out``; the shipped checkpoint keeps neither.

    stepwise-train-rm reward=tcn data=/work/data/train out=runs/tcn            # the shipped recipe
    stepwise-train-rm reward=tcn data=/work/data/train out=runs/tcn reward.steps=1500 seed=1
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reward_models.base import CheckpointError
from reward_models.frames import resize_for_encoder

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
    """Write ``model.safetensors`` then ``config.json`` (last: a checkpoint is whole or absent)."""
    from reward_models.hub import LEGACY_WEIGHTS, WEIGHTS_NAME, save_state_dict

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_state_dict(net.state_dict(), directory / WEIGHTS_NAME)
    (directory / LEGACY_WEIGHTS).unlink(missing_ok=True)
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
    from reward_models.hub import load_state_dict

    try:
        net = TCNNet(TCNConfig(**config))
        net.load_state_dict(load_state_dict(directory))
    except FileNotFoundError as err:
        raise CheckpointError(f"{err}: re-train the TCN") from err
    except Exception as err:  # torch raises many kinds on a damaged or foreign file
        raise CheckpointError(f"{directory}: the weights do not fit its config.json or are damaged: {err}") from err
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
