"""The VLM success classifier (after RoboFuME): "is the task done?" from multi-view frames and the
instruction, on an open_clip image-text model, calibrated.

Model. The image tower of an open_clip architecture (chosen by name; any of ``open_clip.list_models()``
or the small ones registered here, :data:`SMALL_ARCHS`) encodes every camera's frame; the unit-norm
per-camera features are fused by attention pooling (a learned query against keys that carry a learned
camera embedding), so any subset of the trained cameras, a single camera included, gives a fused
feature. The instruction is embedded once and cached, either by the packaged all-MiniLM-L6-v2 sentence
encoder (``text_encoder: minilm``, 384-d, offline) or by the CLIP text tower of the same architecture
(``text_encoder: clip``; kept frozen so that cached embeddings stay valid). A small head reads
``[image, text, image * text]`` (both projected to ``head_dim``) and outputs one logit;
``P(done) = sigmoid(logit / T + b)`` with a temperature ``T`` fitted on a validation split (temperature
scaling) and, by default, a bias ``b`` fitted with it (Platt scaling: batches are balanced 50/50, so the
raw logit assumes a prior of one half, and a temperature alone cannot move the prior to the data's);
a decision threshold is chosen there too (:meth:`VLMSuccessClassifier.is_done`).

Zero-shot mode (``zero_shot: true``, or :meth:`VLMSuccessClassifier.zero_shot_prob`) needs
``text_encoder: clip``: the fused image feature is compared with the CLIP text embeddings of two prompts
built from the instruction (``"{instruction}: done"`` / ``"{instruction}: not yet"``) and the two
similarities, times CLIP's logit scale, are softmaxed. It is meaningful only with pretrained weights.

Weights. ``pretrained`` is a local checkpoint file or an open_clip hub tag (``open_clip.list_pretrained()``);
the machines this project is built on cannot reach the hub, so the small architectures train from
scratch here, and the standard ones stay available for users with weights (and a GPU).

Training (:func:`train`, :func:`train_from_config`, ``stepwise-train-rm reward=vlm_success``): frames of
episode stores labelled per frame (the simulator's per-step ``success`` when recorded, else the frames
from the last keyframe on of successful episodes); negatives are failures (every frame), near-misses,
stalls and the early frames of successful episodes; every batch is exactly half positives. Random-shift
and colour augmentation, camera dropout, validation split by episode, resumable, tqdm and TensorBoard.
``init=<checkpoint>`` adapts a trained model to a new task from a few demos and failures (RoboFuME's
fine-tuning step).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reward_models.base import CheckpointError, DataclassConfigModel, FramesError, check_frames, register, load
from reward_models.evaluate import auroc, binary_scores, choose_threshold, expected_calibration_error

log = logging.getLogger(__name__)

MINILM_DIM = 384
TEXT_ENCODERS = ("minilm", "clip")
DEFAULT_PROMPTS = ("{instruction}: done", "{instruction}: not yet")

SMALL_ARCHS: dict[str, dict] = {
    # The default: CLIP's ModifiedResNet ([1, 1, 1, 1] blocks, width 16, attention pooling) at 64 px,
    # 1.4M vision parameters. Trains from scratch on a CPU; convolutions learned success from ~6 demos
    # per task much faster than the ViT below (sub-set of 10 training tasks, 400 steps: validation
    # AUROC 0.96 vs 0.59 for the ViT after 400 steps on all 40). Scores about 250 frames/s of 3 cameras
    # at 96 px on ONE thread of the shared 2-core machine.
    "stepwise-rn-tiny": {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 32},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
    },
    # A 4-layer ViT on 6x6 patches of a 96 px frame, 0.9M vision parameters: the transformer option
    # (and the shape pretrained ViT-B-32 users fine-tune), slower to learn from scratch.
    "stepwise-vit-tiny": {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 96, "layers": 4, "width": 128, "patch_size": 16, "head_width": 64},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
    },
}
# Their text towers (used only with text_encoder: clip) are small but keep CLIP's 49408-token vocabulary.


# --------------------------------------------------------------------------- open_clip plumbing


def register_archs(archs: Mapping[str, Mapping] | None = None) -> None:
    """Register architectures with open_clip (default :data:`SMALL_ARCHS`), so that
    ``open_clip.create_model(name)`` and ``open_clip.list_models()`` know them.

    Each value is a model config like open_clip's ``model_configs/*.json`` (``embed_dim``, ``vision_cfg``,
    ``text_cfg``). Names open_clip already knows with the same config are skipped.
    """
    import open_clip
    from open_clip.factory import get_model_config

    archs = SMALL_ARCHS if archs is None else archs
    todo = {k: dict(v) for k, v in archs.items() if get_model_config(k) != json.loads(json.dumps(v))}
    if not todo:
        return
    for name, cfg in todo.items():
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
        if missing:
            raise ValueError(f"arch_config for {name!r} lacks {missing}: give a dict like open_clip's model_configs/*.json")
    # open_clip reads configs from files; it keeps them in memory, so the files can go right away
    with tempfile.TemporaryDirectory(prefix="stepwise-open-clip-") as tmp:
        for name, cfg in todo.items():
            (Path(tmp) / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(tmp)


def resolve_pretrained(arch: str, pretrained: str | None) -> str | None:
    """``pretrained`` as open_clip takes it: None, an existing local file, or a known hub tag of ``arch``.

    Raises:
        FileNotFoundError: ``pretrained`` is neither an existing file nor a hub tag of ``arch``.
    """
    import open_clip

    if not pretrained:
        return None
    path = Path(str(pretrained)).expanduser()
    if path.is_file():
        return str(path)
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if str(pretrained) in tags:
        return str(pretrained)
    raise FileNotFoundError(
        f"pretrained weights {str(pretrained)!r} for {arch}: no such file, and not a hub tag of {arch} "
        f"(tags: {tags or 'none'}). Give the path of a local open_clip checkpoint (download "
        "open_clip_pytorch_model.bin on a machine with internet access and copy it here), or "
        "pretrained=null to train from scratch."
    )


class _DropRandomInitWarning(logging.Filter):
    """open_clip warns on the root logger whenever a model starts from random weights; here that is the plan."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def build_open_clip(arch: str, pretrained: str | None = None, arch_config: Mapping | None = None) -> nn.Module:
    """An open_clip CLIP model of architecture ``arch`` (weights from ``pretrained``, else random).

    Raises:
        ValueError: ``arch`` is unknown to open_clip (the message lists the known names).
        FileNotFoundError: see :func:`resolve_pretrained`.
        RuntimeError: a hub tag could not be fetched (offline machine).
    """
    import open_clip

    register_archs(None)
    if arch_config:
        register_archs({arch: arch_config})
    known = open_clip.list_models()
    if arch not in known:
        raise ValueError(
            f"unknown open_clip architecture {arch!r}: use one of {known}, or give arch_config "
            "(a dict like open_clip's model_configs/*.json) to register it"
        )
    weights = resolve_pretrained(arch, pretrained)
    root, quiet = logging.getLogger(), _DropRandomInitWarning()
    root.addFilter(quiet)
    try:
        return open_clip.create_model(arch, pretrained=weights)
    except RuntimeError as err:
        if weights is not None and not Path(weights).is_file():
            raise RuntimeError(
                f"could not fetch the {arch} weights {weights!r} from the model hub ({err}); on an offline "
                "machine download them elsewhere and give pretrained=<local file>"
            ) from err
        raise
    finally:
        root.removeFilter(quiet)


# --------------------------------------------------------------------------- config and network


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
        from reward_models.step_prm import resolve_device

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
        torch.save(self.net.state_dict(), directory / "weights.pt")

    @classmethod
    def _from_checkpoint(cls, directory: Path, config: dict, device: str | None) -> "VLMSuccessClassifier":
        try:
            cfg = VLMSuccessConfig(**config)
        except TypeError as err:  # keys this code does not know: another model's config under this kind
            raise CheckpointError(f"{directory}/config.json does not fit this code's vlm_success config: {err}") from err
        if device is not None:
            cfg.device = device
        model = cls(cfg, load_pretrained=False)  # the weights file holds the (fine-tuned) pretrained weights
        model._load_net_weights(directory)
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


# --------------------------------------------------------------------------- calibration


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically safe logistic function, float64."""
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(x, dtype=np.float64), -60, 60)))


def binary_nll(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of logits (N,) against 0/1 labels (N,)."""
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.02, 50.0)) -> float:
    """The temperature T > 0 minimising the NLL of ``sigmoid(logits / T)`` against ``labels`` (both (N,)).

    A log-spaced grid then golden-section refinement (the NLL is smooth and unimodal in log T for
    ranking-consistent logits). Returns 1.0 when a class is absent (nothing to calibrate against).
    """
    z, y = np.asarray(logits, dtype=np.float64).ravel(), np.asarray(labels, dtype=np.float64).ravel()
    if len(z) == 0 or y.min() == y.max():
        return 1.0
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    grid = np.linspace(lo, hi, 81)
    losses = [binary_nll(z / np.exp(g), y) for g in grid]
    k = int(np.argmin(losses))
    a, b = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    phi = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        c, d = b - phi * (b - a), a + phi * (b - a)
        if binary_nll(z / np.exp(c), y) < binary_nll(z / np.exp(d), y):
            b = d
        else:
            a = c
    return float(np.exp((a + b) / 2))


def fit_platt(logits: np.ndarray, labels: np.ndarray, ridge: float = 1e-4) -> tuple[float, float]:
    """(T, b) minimising the NLL of ``sigmoid(logits / T + b)``: logistic regression on the logit (Newton).

    Returns (1.0, 0.0) when a class is absent, and falls back to a temperature alone when the fitted
    slope is not positive (a model that ranks backwards is not rescued by calibration).
    """
    z, y = np.asarray(logits, dtype=np.float64).ravel(), np.asarray(labels, dtype=np.float64).ravel()
    if len(z) == 0 or y.min() == y.max():
        return 1.0, 0.0
    w = np.zeros(2)
    x = np.stack([z, np.ones_like(z)], axis=1)
    for _ in range(100):
        p = sigmoid(x @ w)
        grad = x.T @ (p - y) / len(z) + ridge * w
        hess = (x * (p * (1 - p))[:, None]).T @ x / len(z) + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    if not w[0] > 1e-6:
        return fit_temperature(z, y), 0.0
    return float(1.0 / w[0]), float(w[1])


def calibrate(logits: np.ndarray, labels: np.ndarray, threshold_metric: str = "accuracy", fit_bias: bool = False) -> dict:
    """Temperature scaling (with a bias when ``fit_bias``: Platt scaling) and the threshold choice on
    validation frames; returns the numbers to report.

    Keys: temperature, bias, threshold, ece_before, ece_after, nll_before, nll_after, auroc, accuracy,
    f1, fpr (false-positive rate at the threshold), tpr, frames, positives.
    """
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(labels).astype(np.float64)
    t, b = fit_platt(z, y) if fit_bias else (fit_temperature(z, y), 0.0)
    before, after = sigmoid(z), sigmoid(z / t + b)
    threshold = choose_threshold(after, y, threshold_metric)
    pred = after >= threshold
    acc, f1 = binary_scores(pred, y)
    neg, pos = y == 0, y == 1
    return {
        "temperature": t,
        "bias": b,
        "threshold": float(threshold),
        "ece_before": expected_calibration_error(before, y),
        "ece_after": expected_calibration_error(after, y),
        "nll_before": binary_nll(z, y) if len(z) else None,
        "nll_after": binary_nll(z / t + b, y) if len(z) else None,
        "auroc": auroc(z[pos], z[neg]),
        "accuracy": acc,
        "f1": f1,
        "fpr": float(pred[neg].mean()) if neg.any() else None,
        "tpr": float(pred[pos].mean()) if pos.any() else None,
        "frames": int(len(z)),
        "positives": int(pos.sum()),
    }


# --------------------------------------------------------------------------- data


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
    from reward_models.pairs import store_paths

    images, labels, ep_ids, texts, episodes, instructions = [], [], [], [], [], []
    per_task: dict[str, int] = {}
    for path in store_paths(data):
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


def color_jitter(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Per-image brightness, contrast and saturation jitter of float images (N, 3, H, W) in [0, 1]."""
    if strength <= 0:
        return x
    n = x.shape[0]

    def factor():
        return (1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * strength).to(x.device)

    x = x * factor()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor() + mean
    gray = x.mean(dim=1, keepdim=True)
    x = (x - gray) * factor() + gray
    return x.clamp(0, 1)


# --------------------------------------------------------------------------- training

TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 2000, "batch_size": 32, "lr": 2e-3, "tower_lr_scale": 1.0, "weight_decay": 0.05, "warmup": 100,
    "adapt_steps": 300, "adapt_lr": 2e-4, "shift_pad": 4, "color_jitter": 0.15, "camera_keep_prob": 0.7,
    "mismatch_share": 0.1, "negative_stride": 3, "val_fraction": 0.15, "eval_every": 500,
    "checkpoint_every": 100, "threshold_metric": "accuracy", "calibrate_bias": True,
}


def _model_config_from(reward: Mapping) -> VLMSuccessConfig:
    size = reward.get("image_size", 96)
    size = (int(size), int(size)) if isinstance(size, (int, float, str)) else tuple(int(s) for s in size)
    arch_config = reward.get("arch_config")
    if arch_config is not None:
        arch_config = json.loads(json.dumps(_plain(arch_config)))
    return VLMSuccessConfig(
        cameras=tuple(reward.get("cameras", VLMSuccessConfig.cameras)), image_size=size,
        arch=str(reward.get("arch", VLMSuccessConfig.arch)), arch_config=arch_config,
        pretrained=reward.get("pretrained"), text_encoder=str(reward.get("text_encoder", "minilm")),
        zero_shot=bool(reward.get("zero_shot", False)),
        prompts=tuple(reward.get("prompts", DEFAULT_PROMPTS)), head_dim=int(reward.get("head_dim", 256)),
        device=str(reward.get("device", "auto")))


def _plain(obj: Any) -> Any:
    """OmegaConf containers -> plain Python (dicts and lists), other values unchanged."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(obj):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return obj


@torch.no_grad()
def frame_set_logits(model: VLMSuccessClassifier, frames: FrameSet, cameras: Sequence[str] | None = None,
                     batch: int = 128) -> np.ndarray:
    """Uncalibrated logits float64 (N,) of every frame of ``frames`` (all cameras, or a subset)."""
    cams = list(cameras or model.cameras)
    ids = [model.cameras.index(c) for c in cams]
    net = model.net
    net.eval()
    table = model.text_table(frames.instructions)
    out = []
    for i in range(0, len(frames.labels), batch):
        chunk = torch.from_numpy(frames.images[i : i + batch][:, ids]).to(model.device)
        b, v = chunk.shape[:2]
        x = chunk.reshape(b * v, *chunk.shape[2:]).permute(0, 3, 1, 2).float() / 255.0
        fused = net.fuse(net.encode_views(x).view(b, v, -1), ids)
        out.append(net.head_logits(fused, table[torch.from_numpy(frames.text[i : i + batch]).to(model.device)]).cpu())
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def train(data, out: str | Path, reward: Mapping | None = None, init: str | Path | None = None, seed: int = 0,
          max_episodes_per_task: int | None = None, num_threads: int = 2) -> VLMSuccessClassifier:
    """Train (or, with ``init``, adapt) a success classifier on episode stores; save it to ``out``.

    Args:
        data: store file, directory of stores, or a list of them (successes and failures).
        out: checkpoint directory; holds ``trainer_state.pt`` (resume by running again) and ``tb/``.
        reward: the ``reward`` config group (``configs/reward/vlm_success.yaml``): model settings and
            training settings (``steps``, ``batch_size``, ``lr``, ... see :data:`TRAIN_DEFAULTS`).
        init: checkpoint (or shipped name) to adapt; the model settings then come from the checkpoint,
            and ``adapt_steps`` / ``adapt_lr`` replace ``steps`` / ``lr``.
        seed: seeds the model, sampling, augmentation and the validation split.
        max_episodes_per_task: keep at most this many successful episodes per task.
        num_threads: torch CPU threads.
    Returns:
        The trained, calibrated model (also saved at ``out``).
    """
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from reward_models.train import random_shift

    r = {**TRAIN_DEFAULTS, **dict(_plain(reward) or {})}
    torch.set_num_threads(int(num_threads))
    torch.manual_seed(int(seed))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    if init:
        model = load(init, device=r.get("device"))
        if not isinstance(model, VLMSuccessClassifier):
            raise ValueError(f"init={init} is a {model.kind} model; vlm_success training needs a vlm_success checkpoint")
        steps, lr = int(r["adapt_steps"]), float(r["adapt_lr"])
    else:
        model = VLMSuccessClassifier(_model_config_from(r))
        steps, lr = int(r["steps"]), float(r["lr"])
    frames = load_frame_set(data, model.cameras, model.image_size, max_episodes_per_task, int(r["negative_stride"]))
    val_eps = split_episodes(frames.episodes, float(r["val_fraction"]), int(seed))
    is_val = val_eps[frames.episode]
    train_set, val_set = frames.subset(~is_val), frames.subset(is_val)
    log.info("vlm_success: %d train frames (%d done) from %d episodes, %d validation frames (%d done) from %d episodes",
             len(train_set.labels), int(train_set.labels.sum()), int((~val_eps).sum()),
             len(val_set.labels), int(val_set.labels.sum()), int(val_eps.sum()))
    sampler = BalancedSampler(train_set.labels, seed=int(seed))
    table = model.text_table(frames.instructions)  # cached into the config: saved with the model
    net = model.net
    tower = [p for p in net.visual.parameters() if p.requires_grad]
    tower_ids = {id(p) for p in tower}
    rest = [p for p in net.parameters() if p.requires_grad and id(p) not in tower_ids]
    opt = torch.optim.AdamW([{"params": tower, "lr": lr * float(r["tower_lr_scale"])}, {"params": rest, "lr": lr}],
                            weight_decay=float(r["weight_decay"]))
    warmup = max(1, min(int(r["warmup"]), steps // 5 + 1))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1))))
    gen = torch.Generator().manual_seed(int(seed))
    state_path = out / "trainer_state.pt"
    step = 0
    if state_path.exists():
        state = torch.load(state_path, map_location=model.device, weights_only=False)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        sampler.rng = state["sampler_rng"]
        gen.set_state(state["gen"])
        step = int(state["step"])
        log.info("resuming from step %d of %d (%s)", step, steps, state_path)
    writer = SummaryWriter(str(out / "tb"))
    v = len(model.cameras)
    cam_ids = list(range(v))
    batch_size = int(r["batch_size"])
    pos_by_text = {k: np.flatnonzero((train_set.labels == 1) & (train_set.text == k)) for k in range(len(frames.instructions))}
    bar = tqdm(range(step, steps), initial=step, total=steps, desc="train vlm_success", unit="step")
    t0 = time.perf_counter()
    for step in bar:
        net.train()
        idx = sampler.sample(batch_size)
        labels = train_set.labels[idx].astype(np.float32)
        text = train_set.text[idx].copy()
        if len(frames.instructions) > 1 and float(r["mismatch_share"]) > 0:
            # a done frame of another task with THIS instruction is "not done": the text must matter
            neg_slots = np.arange(batch_size // 2, batch_size)
            swap = neg_slots[sampler.rng.random(len(neg_slots)) < float(r["mismatch_share"])]
            for j in swap:
                k = int(text[j])
                others = [o for o in pos_by_text if o != k and len(pos_by_text[o])]
                if others:
                    idx[j] = sampler.rng.choice(pos_by_text[int(sampler.rng.choice(others))])
        images = torch.from_numpy(train_set.images[idx])
        mask = torch.rand(batch_size, v, generator=gen) < float(r["camera_keep_prob"])  # camera dropout
        empty = ~mask.any(1)
        mask[empty, torch.randint(0, v, (int(empty.sum()),), generator=gen)] = True
        flat = random_shift(images[mask], int(r["shift_pad"]), gen)  # only kept views are encoded
        x = color_jitter(flat.permute(0, 3, 1, 2).float() / 255.0, float(r["color_jitter"]), gen).to(model.device)
        feats = net.encode_views(x)
        full = torch.zeros(batch_size, v, feats.shape[-1], device=model.device, dtype=feats.dtype)
        full[mask.to(model.device)] = feats
        fused = net.fuse(full, cam_ids, mask.to(model.device))
        logit = net.head_logits(fused, table[torch.from_numpy(text).to(model.device)])
        target = torch.from_numpy(labels).to(model.device)
        loss = F.binary_cross_entropy_with_logits(logit, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        acc = float(((logit.detach() > 0).float() == target).float().mean())
        writer.add_scalar("train/loss", loss.item(), step)
        writer.add_scalar("train/accuracy", acc, step)
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.2f}")
        last = step + 1 == steps
        if (step + 1) % int(r["checkpoint_every"]) == 0 or last:
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "sampler_rng": sampler.rng, "gen": gen.get_state(), "step": step + 1}, state_path.with_suffix(".tmp"))
            state_path.with_suffix(".tmp").replace(state_path)
        if len(val_set.labels) and ((step + 1) % int(r["eval_every"]) == 0 or last):
            z = frame_set_logits(model, val_set)
            y = val_set.labels
            val_auc = auroc(z[y == 1], z[y == 0])
            val_loss = binary_nll(z, y)
            writer.add_scalar("val/loss", val_loss, step)
            if val_auc is not None:
                writer.add_scalar("val/auroc", val_auc, step)
            log.info("step %d: loss %.3f val loss %.3f AUROC %s (%.2f steps/s)", step + 1, loss.item(), val_loss,
                     f"{val_auc:.3f}" if val_auc is not None else "n/a", (step + 1 - 0) / (time.perf_counter() - t0 + 1e-9))
    # Calibration: temperature and threshold on validation episodes (training frames if it lacks a class).
    calib_set, calibrated_on = val_set, "validation"
    if len(val_set.labels) == 0 or val_set.labels.min() == val_set.labels.max():
        calib_set, calibrated_on = train_set, "train (validation lacked a class: optimistic)"
    z = frame_set_logits(model, calib_set)
    report = calibrate(z, calib_set.labels, str(r["threshold_metric"]), fit_bias=bool(r["calibrate_bias"]))
    report["per_camera_auroc"] = {}
    for cam in model.cameras if len(model.cameras) > 1 else ():
        zc = frame_set_logits(model, calib_set, [cam])
        report["per_camera_auroc"][cam] = auroc(zc[calib_set.labels == 1], zc[calib_set.labels == 0])
    report.update(calibrated_on=calibrated_on, steps=steps, seed=int(seed), init=str(init) if init else None,
                  train_frames=int(len(train_set.labels)), train_episodes=int((~val_eps).sum()),
                  val_episodes=int(val_eps.sum()), wall_s=round(time.perf_counter() - t_start, 1))
    model.cfg.temperature, model.cfg.bias = float(report["temperature"]), float(report["bias"])
    model.cfg.threshold = float(report["threshold"])
    model.cfg.calibration = json.loads(json.dumps(report))
    for k in ("auroc", "ece_before", "ece_after", "accuracy", "fpr"):
        if report[k] is not None:
            writer.add_scalar(f"calibration/{k}", report[k], steps)
    writer.close()
    log.info("calibration on %s: T %.3f bias %.3f threshold %.3f ECE %.4f -> %.4f, AUROC %s, accuracy %s, FPR %s",
             calibrated_on, report["temperature"], report["bias"], report["threshold"], report["ece_before"] or float("nan"),
             report["ece_after"] or float("nan"), report["auroc"], report["accuracy"], report["fpr"])
    model.save(out)
    return model


def train_from_config(cfg) -> VLMSuccessClassifier:
    """``stepwise-train-rm reward=vlm_success``: :func:`train` with the Hydra config of ``configs/train_rm.yaml``.

    Reads ``cfg.data``, ``cfg.out``, ``cfg.init``, ``cfg.seed``, ``cfg.max_episodes_per_task`` and
    ``cfg.num_threads`` from the top level and everything else from ``cfg.reward`` (the top-level
    ``steps``/``lr``/... belong to the step-PRM trainer and are ignored here: use ``reward.steps=``).
    """
    mept = cfg.get("max_episodes_per_task")
    data = _plain(cfg.data)
    return train(data, cfg.out, cfg.reward, init=cfg.get("init"), seed=int(cfg.get("seed", 0)),
                 max_episodes_per_task=int(mept) if mept is not None else None,
                 num_threads=int(cfg.get("num_threads", 2)))
