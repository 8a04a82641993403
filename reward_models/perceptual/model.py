"""The fitted perceptual-feature reward (:class:`PerceptualReward`): features, step rewards,
progress and success of frames, save and load (steps 1, 4, 5 and 6 of :mod:`reward_models.perceptual`)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from reward_models.base import CheckpointError, DataclassConfigModel, FramesError, check_frames, register
from reward_models.devices import resolve_device
from reward_models.encoders import ENCODERS, FrameEncoder, build_encoder
from reward_models.perceptual.config import PROGRESS_RULES, PerceptualConfig
from reward_models.perceptual.stats import StepStats, sigmoid

ANCHOR_EPS = 1e-3
"""Added to the ``anchored`` rule's denominator: a frame no detector recognises tends to 0, not to noise."""


@dataclass
class Head:
    """What one camera subset needs: z-normalisation, per-step statistics, calibrations.

    Attributes:
        mean, std: float64 (D,) z-normalisation of the subset's fused features.
        stats: the per-detector :class:`StepStats` (row 0 the start, then steps 1..n).
        calib: float64 (n + 1, 2) logistic (a, b) mapping detector i's log-likelihood to its reward.
        success: float64 (2,) logistic (a, b) on the last step's log-likelihood.
    """

    mean: np.ndarray
    std: np.ndarray
    stats: StepStats
    calib: np.ndarray
    success: np.ndarray


ENCODER_SEED = 0
"""Torch seed under which encoders are built (random-weight encoders must rebuild identically)."""


def build_frame_encoder(spec: Mapping[str, Any], device: str | None) -> FrameEncoder:
    """``build_encoder`` from a config dict, under :data:`ENCODER_SEED`; encoders that take a
    ``device`` (a named parameter or ``**kwargs``) get ``device`` resolved on THIS machine, so a
    model fitted on a GPU loads on a CPU."""
    spec = dict(spec)
    name = spec.pop("name")
    factory = ENCODERS.get(name)
    if factory is not None:
        try:
            params = inspect.signature(factory).parameters.values()
            accepts = any(p.name == "device" or p.kind == p.VAR_KEYWORD for p in params)
        except (TypeError, ValueError):
            accepts = False
        if accepts:
            spec["device"] = str(resolve_device(device))  # encoders take the device as a string
    import torch

    # a fixed seed, kept local: an encoder with random weights (no weights file) is rebuilt identically on load
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ENCODER_SEED)
        return build_encoder(name, **spec)


@register("perceptual")
class PerceptualReward(DataclassConfigModel):
    """Perceptual-feature progress and success model of one task; see the package docstring."""

    version = 1

    def __init__(self, cfg: PerceptualConfig, heads: dict[str, Head], encoder: FrameEncoder | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.heads = heads
        self.encoder = encoder if encoder is not None else build_frame_encoder(cfg.encoder, cfg.device)
        self.n_steps = int(next(iter(heads.values())).calib.shape[0]) - 1 if heads else 0  # row 0: the start

    # --- RewardModel plumbing --------------------------------------------------------------
    def config(self) -> dict:
        cfg = super().config()
        cfg["encoder"] = dict(self.encoder.config())
        return cfg

    def _save_weights(self, directory: Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        for key, h in self.heads.items():
            arrays.update({f"{key}/mean": h.mean, f"{key}/std": h.std, f"{key}/idx": h.stats.idx,
                           f"{key}/mu": h.stats.mu, f"{key}/sigma": h.stats.sigma,
                           f"{key}/calib": h.calib, f"{key}/success": h.success})
        np.savez(directory / "stats.npz", **arrays)

    @classmethod
    def _from_checkpoint(cls, directory: Path, config: dict, device: str | None) -> "PerceptualReward":
        try:
            cfg = PerceptualConfig(**config)
        except TypeError as err:  # keys this code does not know: a checkpoint of another release
            raise CheckpointError(f"{directory}/config.json does not fit this code's perceptual config: {err}") from err
        if device is not None:
            cfg.device = device
        try:
            with np.load(directory / "stats.npz") as f:
                arrays = {k: f[k] for k in f.files}
        except FileNotFoundError as err:
            raise CheckpointError(f"{directory} has no stats.npz: re-save or re-fit the model") from err
        except Exception as err:  # numpy raises several kinds on a damaged file
            raise CheckpointError(f"{directory}/stats.npz is damaged: {err}") from err
        heads = {}
        try:
            for key in sorted({k.rsplit("/", 1)[0] for k in arrays}):
                a = lambda name: arrays[f"{key}/{name}"]  # noqa: E731
                heads[key] = Head(a("mean"), a("std"), StepStats(a("idx"), a("mu"), a("sigma")), a("calib"), a("success"))
        except KeyError as err:
            raise CheckpointError(f"{directory}/stats.npz lacks {err}: re-save or re-fit the model") from err
        if head_key(cfg.cameras) not in heads:
            raise CheckpointError(f"{directory}/stats.npz has no statistics for the rig {list(cfg.cameras)}")
        return cls(cfg, heads)

    # --- features --------------------------------------------------------------------------
    def _check_cameras(self, cameras: Sequence[str] | str | None) -> tuple[str, ...]:
        if cameras is None:
            return self.cfg.cameras
        cameras = (cameras,) if isinstance(cameras, str) else tuple(cameras)
        unknown = [c for c in cameras if c not in self.cfg.cameras]
        if unknown or not cameras or len(set(cameras)) != len(cameras):
            raise FramesError(
                f"cameras {list(cameras)} are not distinct cameras of this model's rig {list(self.cfg.cameras)}: "
                "score with a subset of the rig"
            )
        return tuple(c for c in self.cfg.cameras if c in cameras)  # rig order: heads are keyed by it

    def camera_features(self, frames: Mapping[str, np.ndarray], cameras: Sequence[str] | str | None = None) -> dict[str, np.ndarray]:
        """Encoder features per camera, camera -> float32 (T, D): ONE batched pass per camera.

        Frames are checked with :func:`~reward_models.base.check_frames` (cameras, dtype, shape).
        """
        cams = self._check_cameras(cameras)
        check_frames(frames, cams, self.image_size, known=self.cfg.cameras)
        return {c: encode_frames(self.encoder, frames[c]) for c in cams}

    def step_logliks(self, feats: Mapping[str, np.ndarray]) -> np.ndarray:
        """Average per-feature log-likelihood of every frame under every detector, float64 (T, n + 1)
        (column 0 the start detector, column i step i), from :meth:`camera_features` output."""
        cams = tuple(c for c in self.cfg.cameras if c in feats)
        head = self.heads.get(head_key(cams))
        if head is None:
            raise FramesError(f"no statistics for cameras {list(cams)}; this model has {sorted(self.heads)}")
        x = fuse(feats, cams, self.cfg.fusion)
        return head.stats.loglik((x - head.mean) / head.std, self.cfg.q_max)

    def step_rewards_from_features(self, feats: Mapping[str, np.ndarray]) -> np.ndarray:
        """Calibrated rewards in [0, 1], float64 (T, n + 1): column 0 the start state, column i step i."""
        head = self.heads[head_key(tuple(c for c in self.cfg.cameras if c in feats))]
        return sigmoid(self.step_logliks(feats) * head.calib[:, 0] + head.calib[:, 1])

    def outputs_from_features(self, feats: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``(progress float32 (T,), success_prob float32 (T,))`` from :meth:`camera_features`."""
        head = self.heads[head_key(tuple(c for c in self.cfg.cameras if c in feats))]
        ll = self.step_logliks(feats)
        rewards = sigmoid(ll * head.calib[:, 0] + head.calib[:, 1])
        success = sigmoid(ll[:, -1] * head.success[0] + head.success[1])
        return combine_progress(rewards, self.cfg.progress_rule).astype(np.float32), success.astype(np.float32)

    # --- the RewardModel interface ---------------------------------------------------------
    def step_rewards(self, frames: Mapping[str, np.ndarray], instruction: str = "", reference: Any = None,
                     cameras: Sequence[str] | str | None = None) -> np.ndarray:
        """Step rewards r_1..r_n in [0, 1] of every frame, float64 (T, n) (the start detector left out)."""
        return self.step_rewards_from_features(self.camera_features(frames, cameras))[:, 1:]

    def progress(self, frames: Mapping[str, np.ndarray], instruction: str, reference: Any = None,
                 cameras: Sequence[str] | str | None = None) -> np.ndarray:
        """Progress float32 (T,) in [0, 1], a function of each frame alone.

        Args:
            frames: camera -> uint8 (T, H, W, 3) for the cameras used.
            instruction, reference: accepted for the interface; unused (the model is per task).
            cameras: score with this subset of the rig (any non-empty subset; default all).
        """
        return self.outputs_from_features(self.camera_features(frames, cameras))[0]

    def success_prob(self, frames: Mapping[str, np.ndarray], instruction: str, reference: Any = None,
                     cameras: Sequence[str] | str | None = None) -> np.ndarray:
        """P(task done) per frame, float32 (T,) in [0, 1], from the last step's log-likelihood."""
        return self.outputs_from_features(self.camera_features(frames, cameras))[1]

    def score(self, frames: Mapping[str, np.ndarray], instruction: str, reference: Any = None,
              cameras: Sequence[str] | str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(progress, success_prob)`` from ONE encoder pass over the frames."""
        return self.outputs_from_features(self.camera_features(frames, cameras))


def head_key(cameras: Sequence[str]) -> str:
    """The key of a camera subset's head: the names in rig order, joined by ``+``."""
    return "+".join(cameras)


def encode_frames(encoder: FrameEncoder, frames: np.ndarray, batch: int = 256) -> np.ndarray:
    """``encoder.encode`` in chunks of ``batch`` frames: uint8 (T, H, W, 3) -> float32 (T, D)."""
    out = [np.asarray(encoder.encode(frames[i:i + batch]), dtype=np.float32) for i in range(0, len(frames), batch)]
    feats = np.concatenate(out) if out else np.zeros((0, encoder.feature_dim), np.float32)
    if feats.ndim != 2 or len(feats) != len(frames):
        raise ValueError(f"encoder {encoder.name!r} returned {feats.shape} for {len(frames)} frames: expected (T, D)")
    return feats


def fuse(feats: Mapping[str, np.ndarray], cameras: Sequence[str], fusion: str) -> np.ndarray:
    """Fused features of ``cameras``: concat -> (T, V*D), mean -> (T, D); float64."""
    parts = [np.asarray(feats[c], dtype=np.float64) for c in cameras]
    return np.concatenate(parts, axis=1) if fusion == "concat" else np.mean(parts, axis=0)


def combine_progress(rewards: np.ndarray, rule: str = "anchored") -> np.ndarray:
    """Progress float64 (T,) in [0, 1] by ``rule`` (:data:`PROGRESS_RULES`).

    Args:
        rewards: float (T, n + 1) in [0, 1]: column 0 the start-state detector, column i step i's reward.
    """
    r_all = np.clip(np.asarray(rewards, dtype=np.float64), 0.0, 1.0)
    r = r_all[:, 1:]
    n = r.shape[1]
    steps = np.arange(1, n + 1, dtype=np.float64)
    if rule == "anchored":
        levels = np.arange(n + 1, dtype=np.float64) / n
        return (r_all @ levels) / (r_all.sum(1) + ANCHOR_EPS)
    if rule == "furthest":
        return np.max(r * (steps - 1 + r) / n, axis=1)
    if rule == "weighted":
        return r @ steps / steps.sum()
    raise ValueError(f"progress rule {rule!r} unknown: use one of {PROGRESS_RULES}")
