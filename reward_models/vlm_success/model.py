"""The VLM success classifier's config, network and model (:class:`VLMSuccessClassifier`): text
embeddings, multi-view fusion, calibrated and zero-shot scoring, save and load."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reward_models.base import CheckpointError, DataclassConfigModel, FramesError, check_frames, register
from reward_models.vlm_success.backbone import build_open_clip

MINILM_DIM = 384
TEXT_ENCODERS = ("minilm", "clip")
DEFAULT_PROMPTS = ("{instruction}: done", "{instruction}: not yet")


@dataclass
class VLMSuccessConfig:
    """Everything that builds a :class:`VLMSuccessClassifier` (weights aside).

    Attributes:
        cameras: camera names the model was trained with, in rig order.
        image_size: (height, width) of input frames.
        arch: open_clip architecture name (``open_clip.list_models()`` or :data:`SMALL_ARCHS`).
        arch_config: optional open_clip model config registered under ``arch`` (saved with the model,
            so a checkpoint of a custom architecture loads anywhere).
        pretrained: local weights file or hub tag for ``arch``; None: random initialisation.
        text_encoder: ``minilm`` (packaged sentence encoder) or ``clip`` (the architecture's text tower, frozen).
        zero_shot: ``success_prob`` uses prompt similarity instead of the trained head (needs ``clip``).
        prompts: (done, not done) prompt templates with ``{instruction}``.
        head_dim: width of the classifier head.
        temperature: T of ``sigmoid(logit / T + bias)``, fitted on validation frames.
        bias: prior correction fitted with T when training sets ``calibrate_bias`` (Platt scaling), else 0.
        threshold: decision threshold on the calibrated probability, chosen on validation frames.
        calibration: what training measured (ECE before/after temperature scaling, AUROC, ...).
        device: ``auto`` (GPU when present), ``cpu`` or ``cuda``.
        text_cache: text -> embedding, filled as instructions (and prompts) are seen.
    """

    cameras: tuple[str, ...] = ("corner", "corner2", "gripperPOV")
    image_size: tuple[int, int] = (96, 96)
    arch: str = "stepwise-rn-tiny"
    arch_config: dict | None = None
    pretrained: str | None = None
    text_encoder: str = "minilm"
    zero_shot: bool = False
    prompts: tuple[str, str] = DEFAULT_PROMPTS
    head_dim: int = 256
    temperature: float = 1.0
    bias: float = 0.0
    threshold: float = 0.5
    calibration: dict = field(default_factory=dict)
    device: str = "auto"
    text_cache: dict[str, list[float]] = field(default_factory=dict)


class VLMSuccessNet(nn.Module):
    """Image tower (shared by cameras), attention fusion over cameras, optional CLIP text tower, head."""

    def __init__(self, cfg: VLMSuccessConfig, clip: nn.Module, embed_dim: int | None = None) -> None:
        super().__init__()
        self.visual = clip.visual.to(memory_format=torch.channels_last)  # ~1.4x faster convolutions on CPU (oneDNN)
        pp = getattr(self.visual, "preprocess_cfg", {}) or {}
        size = pp.get("size", getattr(self.visual, "image_size", 224))
        self.tower_size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        self.register_buffer("mean", torch.tensor(pp.get("mean", OPENAI_DATASET_MEAN)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pp.get("std", OPENAI_DATASET_STD)).view(1, 3, 1, 1), persistent=False)
        if cfg.text_encoder == "clip":
            clip.visual = None  # the text tower keeps the rest of CLIP (and its logit scale)
            self.text_tower = clip
            for p in clip.parameters():
                p.requires_grad_(False)  # frozen: cached instruction embeddings stay valid
        else:
            self.text_tower = None
        e = int(embed_dim) if embed_dim else _embed_dim(self.visual, self.tower_size)
        self.embed_dim = e
        text_dim = MINILM_DIM if cfg.text_encoder == "minilm" else e
        h = int(cfg.head_dim)
        self.camera_embedding = nn.Parameter(torch.zeros(len(cfg.cameras), e))
        self.query = nn.Parameter(torch.randn(e) / e**0.5)
        self.key = nn.Linear(e, e)
        self.img_proj = nn.Sequential(nn.Linear(e, h), nn.LayerNorm(h))
        self.txt_proj = nn.Sequential(nn.Linear(text_dim, h), nn.LayerNorm(h))
        self.head = nn.Sequential(nn.Linear(3 * h, h), nn.GELU(), nn.Linear(h, h), nn.GELU(), nn.Linear(h, 1))

    def encode_views(self, x: torch.Tensor) -> torch.Tensor:
        """Float images (N, 3, H, W) in [0, 1] -> unit-norm image features (N, embed_dim)."""
        if tuple(x.shape[-2:]) != self.tower_size:
            x = F.interpolate(x, size=self.tower_size, mode="bilinear", antialias=True, align_corners=False)
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return F.normalize(self.visual(x), dim=-1)

    def fuse(self, feats: torch.Tensor, camera_ids: Sequence[int], mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-camera features (B, V, E) of cameras ``camera_ids`` -> fused (B, E); ``mask`` bool (B, V) hides views.

        The output is a convex combination of unit-norm camera features, so it stays in CLIP's space.
        """
        keys = self.key(feats + self.camera_embedding[list(camera_ids)])
        scores = (keys * self.query).sum(-1) / feats.shape[-1] ** 0.5
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return (scores.softmax(-1).unsqueeze(-1) * feats).sum(1)

    def head_logits(self, fused: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Logit of "done" (B,) from fused image features (B, E) and instruction embeddings (B, D_text)."""
        img, txt = self.img_proj(fused), self.txt_proj(text)
        return self.head(torch.cat([img, txt, img * txt], dim=-1)).squeeze(-1)


def _embed_dim(visual: nn.Module, size: tuple[int, int]) -> int:
    """Output width of an image tower, by running it once (towers do not all expose it)."""
    with torch.no_grad():
        was = visual.training
        visual.eval()
        out = visual(torch.zeros(1, 3, *size))
        visual.train(was)
    return int(out.shape[-1])


# --------------------------------------------------------------------------- the model


@register("vlm_success")
class VLMSuccessClassifier(DataclassConfigModel):
    """Calibrated multi-view success classifier on open_clip; see the module docstring."""

    version = 1

    def __init__(self, cfg: VLMSuccessConfig | None = None, load_pretrained: bool = True) -> None:
        """Build the model; ``load_pretrained=False`` skips ``cfg.pretrained`` (a checkpoint supplies weights)."""
        from reward_models.devices import resolve_device

        self.cfg = cfg or VLMSuccessConfig()
        c = self.cfg
        c.cameras, c.image_size, c.prompts = tuple(c.cameras), tuple(int(s) for s in c.image_size), tuple(c.prompts)
        if not c.cameras:
            raise ValueError("cameras must name at least one camera")
        if c.text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"text_encoder={c.text_encoder!r} unknown: use one of {TEXT_ENCODERS}")
        if c.zero_shot and c.text_encoder != "clip":
            raise ValueError("zero_shot needs the CLIP text tower to embed the prompts: set text_encoder: clip")
        if len(c.prompts) != 2 or not all("{instruction}" in p for p in c.prompts):
            raise ValueError(f"prompts must be two templates (done, not done) containing '{{instruction}}', got {c.prompts}")
        if not c.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {c.temperature}")
        self.device = resolve_device(c.device)
        clip = build_open_clip(c.arch, c.pretrained if load_pretrained else None, c.arch_config)
        from open_clip.factory import get_model_config

        self.net = VLMSuccessNet(c, clip, (get_model_config(c.arch) or {}).get("embed_dim")).to(self.device)
        self._tokenizer = None

    # --- RewardModel plumbing --------------------------------------------------------------

    def _save_weights(self, directory: Path) -> None:
        self.save_net_weights(directory)

    @classmethod
    def _from_checkpoint(cls, directory: Path, config: dict, device: str | None) -> "VLMSuccessClassifier":
        try:
            cfg = VLMSuccessConfig(**config)
        except TypeError as err:  # keys this code does not know: another model's config under this kind
            raise CheckpointError(f"{directory}/config.json does not fit this code's vlm_success config: {err}") from err
        if device is not None:
            cfg.device = device
        model = cls(cfg, load_pretrained=False)  # the weights file holds the (fine-tuned) pretrained weights
        model.load_net_weights(directory)
        return model

    # --- text ------------------------------------------------------------------------------
    def cache_texts(self, texts: Sequence[str]) -> None:
        """Embed the texts not cached yet, in one batch (MiniLM in a subprocess, or the CLIP text tower)."""
        todo = sorted({t for t in texts if t not in self.cfg.text_cache})
        for t in todo:
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"instruction must be a non-empty string, got {t!r}")
        if not todo:
            return
        if self.cfg.text_encoder == "minilm":
            from reward_models.step_prm import embed_instructions

            embs = embed_instructions(todo)
        else:
            embs = self._clip_text(todo)
        for t, e in zip(todo, embs):
            self.cfg.text_cache[t] = [float(x) for x in e]

    @torch.no_grad()
    def _clip_text(self, texts: list[str]) -> np.ndarray:
        import open_clip

        if self._tokenizer is None:
            self._tokenizer = open_clip.get_tokenizer(self.cfg.arch)
        tower = self.net.text_tower
        tower.eval()
        return F.normalize(tower.encode_text(self._tokenizer(texts).to(self.device)), dim=-1).cpu().numpy()

    def text_table(self, texts: Sequence[str]) -> torch.Tensor:
        """Cached embeddings of ``texts`` as a tensor (len(texts), D_text), computing missing ones."""
        self.cache_texts(list(texts))
        return torch.tensor(np.array([self.cfg.text_cache[t] for t in texts]), dtype=torch.float32, device=self.device)

    # --- scoring ---------------------------------------------------------------------------
    def _check_cameras(self, cameras) -> tuple[str, ...]:
        if cameras is None:
            return self.cfg.cameras
        cameras = (cameras,) if isinstance(cameras, str) else tuple(cameras)
        unknown = [c for c in cameras if c not in self.cfg.cameras]
        if unknown or not cameras:
            raise FramesError(
                f"cameras {list(cameras)} are not all known to this model: it was trained with "
                f"{list(self.cfg.cameras)}; pick a non-empty subset of those"
            )
        return cameras

    @torch.no_grad()
    def fused_features(self, frames: Mapping[str, np.ndarray], cameras=None, batch: int = 128) -> torch.Tensor:
        """Fused image features (T, E) of ``frames`` (camera -> uint8 (T, H, W, 3)); ``cameras``: a subset."""
        cams = self._check_cameras(cameras)
        check_frames(frames, cams, self.image_size, known=self.cfg.cameras)
        ids = [self.cfg.cameras.index(c) for c in cams]
        self.net.eval()
        images = torch.from_numpy(np.stack([frames[c] for c in cams], axis=1))  # (T, V, H, W, 3)
        out = []
        for i in range(0, len(images), batch):
            chunk = images[i : i + batch].to(self.device)
            b, v = chunk.shape[:2]
            x = chunk.reshape(b * v, *chunk.shape[2:]).permute(0, 3, 1, 2).float() / 255.0
            out.append(self.net.fuse(self.net.encode_views(x).view(b, v, -1), ids))
        return torch.cat(out)

    @torch.no_grad()
    def logits_from_features(self, fused: torch.Tensor, instruction: str) -> np.ndarray:
        """Uncalibrated logits float32 (T,) of the trained head for fused features (T, E)."""
        text = self.text_table([instruction]).expand(len(fused), -1)
        return self.net.head_logits(fused, text).float().cpu().numpy()

    def logits(self, frames: Mapping[str, np.ndarray], instruction: str, cameras=None) -> np.ndarray:
        """Uncalibrated head logits float32 (T,) (``success_prob`` is ``sigmoid(logits / temperature + bias)``)."""
        return self.logits_from_features(self.fused_features(frames, cameras), instruction)

    @torch.no_grad()
    def zero_shot_from_features(self, fused: torch.Tensor, instruction: str) -> np.ndarray:
        """Zero-shot P(done) float32 (T,): softmax of CLIP similarities to the done / not-done prompts."""
        tower = self.net.text_tower
        if tower is None:
            raise ValueError("zero-shot scoring needs the CLIP text tower: build the model with text_encoder: clip")
        prompts = [p.format(instruction=instruction) for p in self.cfg.prompts]
        text = self.text_table(prompts)  # (2, E), unit norm
        scale = tower.logit_scale.exp() if hasattr(tower, "logit_scale") else torch.tensor(100.0)
        sims = scale * F.normalize(fused, dim=-1) @ text.T
        return sims.softmax(-1)[:, 0].float().cpu().numpy()

    def zero_shot_prob(self, frames: Mapping[str, np.ndarray], instruction: str, cameras=None) -> np.ndarray:
        """P(done) float32 (T,) from prompt similarity alone (no trained head); see the module docstring."""
        return self.zero_shot_from_features(self.fused_features(frames, cameras), instruction)

    def prob_from_features(self, fused: torch.Tensor, instruction: str) -> np.ndarray:
        """Calibrated P(done) float32 (T,) for fused features (zero-shot when ``cfg.zero_shot``)."""
        if self.cfg.zero_shot:
            return self.zero_shot_from_features(fused, instruction).astype(np.float32)
        z = self.logits_from_features(fused, instruction) / float(self.cfg.temperature) + float(self.cfg.bias)
        return (1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))).astype(np.float32)

    def success_prob(self, frames: Mapping[str, np.ndarray], instruction: str, reference: Any = None,
                     cameras=None) -> np.ndarray:
        """Calibrated probability float32 (T,) in [0, 1] that the task is done at each frame.

        Args:
            frames: camera -> uint8 (T, H, W, 3), the cameras of ``self.cameras`` (or of ``cameras``).
            instruction: the task's instruction.
            reference: ignored: the classifier judges each frame by itself.
            cameras: score with this subset of the trained cameras (a single camera works).
        Raises:
            FramesError: a camera is missing or unknown, or frames are of the wrong size or dtype.
        """
        return self.prob_from_features(self.fused_features(frames, cameras), instruction)

    def progress(self, frames: Mapping[str, np.ndarray], instruction: str, reference: Any = None,
                 cameras=None) -> np.ndarray:
        """A COARSE progress float32 (T,): it is P(done), the same as :meth:`success_prob`.

        The classifier knows "done" from "not done", not how far along a task is; use a progress model
        (``step_prm``) for dense shaping, and this one for success rewards and termination.
        """
        return self.success_prob(frames, instruction, reference=reference, cameras=cameras)

    def score(self, frames: Mapping[str, np.ndarray], instruction: str, reference: Any = None,
              cameras=None) -> tuple[np.ndarray, np.ndarray]:
        """``(progress, success_prob)`` from one encoder pass (equal arrays; see :meth:`progress`)."""
        p = self.prob_from_features(self.fused_features(frames, cameras), instruction)
        return p, p.copy()

    def is_done(self, frames: Mapping[str, np.ndarray], instruction: str, cameras=None) -> np.ndarray:
        """bool (T,): ``success_prob >= threshold`` (the threshold chosen on validation frames)."""
        return self.success_prob(frames, instruction, cameras=cameras) >= float(self.cfg.threshold)
