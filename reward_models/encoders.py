"""Frame encoders for the perceptual-feature reward: camera frames -> feature vectors.

Every encoder maps uint8 frames (T, H, W, 3) to float32 features (T, D) in one batched, no-grad
pass, and says in ``config()`` how to rebuild it. Encoders are chosen by name from config
(:data:`ENCODERS`, :func:`build_encoder`); weights come from a local file or a hub tag in config,
never from a download this code starts on its own.

Encoders: ``pixels`` (pooled raw pixels, the floor), ``clip`` (an open_clip image tower),
``resnet18`` (torchvision) and ``tcn`` (the time-contrastive network trained here,
:mod:`reward_models.tcn`). Learned encoders give features of INTERMEDIATE layers, pooled, as
Sermanet, Xu and Levine (2016) did; each class says which layers. Weights that cannot be had
raise a clear error: a missing file ``FileNotFoundError``, an unreachable hub
:class:`WeightsUnavailableError`; no weights at all (None) builds random ones with a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from reward_models.frames import check_frames_uint8

log = logging.getLogger(__name__)


@runtime_checkable
class FrameEncoder(Protocol):
    """What the perceptual reward needs of an encoder."""

    name: str
    feature_dim: int

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (T, H, W, 3) -> float32 (T, feature_dim); batched, no gradients."""

    def config(self) -> dict:
        """JSON-serialisable kwargs that rebuild this encoder with :func:`build_encoder`
        (``{"name": ..., **kwargs}``)."""


ENCODERS: dict[str, Callable[..., FrameEncoder]] = {}


def register_encoder(name: str):
    """Decorator: make an encoder class (or factory) buildable by ``name``."""

    def wrap(factory):
        ENCODERS[name] = factory
        return factory

    return wrap


def build_encoder(name: str, **kwargs: Any) -> FrameEncoder:
    """The encoder ``name`` (see :data:`ENCODERS`) built with ``kwargs``."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}: use one of {sorted(ENCODERS)}")
    return ENCODERS[name](**kwargs)


@register_encoder("pixels")
class PixelEncoder:
    """Raw pixels average-pooled on a ``grid`` x ``grid`` grid per colour channel, scaled to [0, 1].

    The floor every learned encoder must beat: no learning, no weights.
    """

    def __init__(self, grid: int = 8) -> None:
        if int(grid) < 1:
            raise ValueError(f"pixels encoder: grid must be >= 1, got {grid}")
        self.name, self.grid = "pixels", int(grid)
        self.feature_dim = 3 * self.grid * self.grid

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (T, H, W, 3) -> float32 (T, 3 * grid * grid)."""
        f = np.asarray(frames)
        if f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 (T, H, W, 3), got {f.dtype} {f.shape}")
        t, h, w, _ = f.shape
        g = self.grid
        if h < g or w < g:
            raise ValueError(f"frames of {h}x{w} are smaller than the {g}x{g} grid")
        ys, xs = np.linspace(0, h, g + 1).astype(int), np.linspace(0, w, g + 1).astype(int)
        out = np.empty((t, g, g, 3), np.float32)
        for i in range(g):
            for j in range(g):
                out[:, i, j] = f[:, ys[i]:ys[i + 1], xs[j]:xs[j + 1]].mean(axis=(1, 2))
        return (out / 255.0).reshape(t, self.feature_dim)

    def config(self) -> dict:
        """Rebuild kwargs."""
        return {"name": "pixels", "grid": self.grid}


# --------------------------------------------------------------------------- learned encoders
# Everything below imports torch lazily: building the registry must stay cheap.

WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


class WeightsUnavailableError(ConnectionError, ValueError):
    """Pretrained weights named by a hub tag could not be fetched (no network to the hub).

    Also a ``ValueError``, so command-line tools that report bad inputs cleanly report this too."""


def _looks_like_path(value: str) -> bool:
    """A weights argument that names a file rather than a hub tag."""
    import os

    return os.sep in value or "/" in value or value.lower().endswith(WEIGHT_FILE_SUFFIXES) or os.path.exists(value)


def _warn_random(name: str) -> None:
    log.warning("%s encoder has RANDOM weights: its features are untrained (give a local weights file "
                "for meaningful features)", name)


def resize_square(x, size: int, mode: str = "bilinear"):
    """Float (N, 3, H, W) -> (N, 3, size, size): shortest side to ``size``, then a centre crop
    (open_clip's ``shortest`` resize mode); antialiased when shrinking; a no-op at that size."""
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x, size=(nh, nw), mode=mode, antialias=scale < 1, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[..., top:top + size, left:left + size]


class TorchFrameEncoder:
    """Shared plumbing of the torch encoders: checks, chunking, resize, normalisation, no grad.

    Subclasses set ``self.model`` (in eval mode), ``self.input_size``, ``self.mean`` / ``self.std``
    (3 floats, for images in [0, 1]), ``self.interpolation`` and implement :meth:`_features`.
    """

    name: str = "torch"
    feature_dim: int
    batch_size: int = 64

    def _setup_norm(self, mean, std, device) -> None:
        import torch

        self.device = torch.device(device)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def _features(self, x):
        """Normalised float (N, 3, S, S) -> float (N, feature_dim)."""
        raise NotImplementedError

    def _prepare(self, chunk: np.ndarray):
        import torch

        x = torch.from_numpy(np.ascontiguousarray(chunk)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        # bicubic overshoots: clamp back to the [0, 1] range the weights were trained on
        x = resize_square(x, self.input_size, self.interpolation).clamp(0.0, 1.0)
        return (x - self._mean) / self._std

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (T, H, W, 3) -> float32 (T, feature_dim); in chunks of ``batch_size``, no grad."""
        import torch

        f = check_frames_uint8(frames, self.name)
        if len(f) == 0:
            return np.zeros((0, self.feature_dim), np.float32)
        self.model.eval()
        out = []
        with torch.inference_mode():
            for i in range(0, len(f), self.batch_size):
                out.append(self._features(self._prepare(f[i:i + self.batch_size])).float().cpu())
        return torch.cat(out).numpy().astype(np.float32, copy=False)

    def _measure_dim(self) -> int:
        import torch

        with torch.inference_mode():
            probe = torch.zeros(1, 3, self.input_size, self.input_size, device=self.device)
            return int(self._features(probe).shape[-1])


def _read_state_dict(path: Path, what: str) -> dict:
    """A state dict from a local file (.safetensors, torch pickle, or TorchScript archive)."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except RuntimeError as err:
                if "TorchScript" not in str(err) and "jit" not in str(err).lower():
                    raise
                state = torch.jit.load(str(path), map_location="cpu").state_dict()  # OpenAI's CLIP files
    except Exception as err:  # torch raises many kinds on a damaged or foreign file
        raise ValueError(f"{what}: cannot read weights file {str(path)!r} ({err}); give a state-dict file "
                         "saved with torch.save(model.state_dict(), path) or a .safetensors file") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{what}: {str(path)!r} holds no state dict (got {type(state).__name__})")
    if all(k.startswith("module.") for k in state):  # saved from a DataParallel wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


@register_encoder("resnet18")
class ResNet18Encoder(TorchFrameEncoder):
    """torchvision ResNet-18 trunk; features are INTERMEDIATE: global-average-pooled ``layer3``
    (256 channels) and ``layer4`` (512) concatenated, 768 dims. ImageNet normalisation.

    Args:
        weights: a local state-dict file (torchvision's ``resnet18-*.pth`` or any
            ``torch.save(resnet.state_dict())``; the ``fc`` head may be absent), a torchvision tag
            (``IMAGENET1K_V1`` / ``DEFAULT``, fetched from download.pytorch.org, which these machines
            cannot reach), or None for random weights (a warning is logged).
        image_size: side frames are resized to (224: what ImageNet weights were trained at; 96 is
            about 5x faster).
        batch_size: frames per forward pass.
        device: torch device for the model.
    """

    MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, weights: str | None = None, image_size: int = 224, batch_size: int = 64,
                 device: str = "cpu") -> None:
        import torchvision

        if int(image_size) < 32:
            raise ValueError(f"resnet18 encoder: image_size must be >= 32, got {image_size}")
        self.name, self.weights = "resnet18", weights
        self.input_size, self.batch_size, self.interpolation = int(image_size), int(batch_size), "bilinear"
        net = torchvision.models.resnet18(weights=None)
        if weights is None:
            _warn_random("resnet18")
        else:
            net.load_state_dict(self._load_weights(str(weights), net), strict=False)
        net.fc = None  # the ImageNet classifier is never used; drop it so nothing calls it
        self.model = net.to(device).eval()
        self._setup_norm(self.MEAN, self.STD, device)
        self.feature_dim = self._measure_dim()

    @staticmethod
    def _load_weights(weights: str, net) -> dict:
        import torchvision

        tags = list(torchvision.models.ResNet18_Weights.__members__)
        if weights in tags:
            spec = torchvision.models.ResNet18_Weights[weights]
            try:
                state = spec.get_state_dict(progress=False)
            except OSError as err:  # URLError and socket errors are OSErrors
                raise WeightsUnavailableError(
                    f"resnet18 encoder: weights={weights!r} must be downloaded from {spec.url}, which this "
                    f"machine cannot reach ({err}). Download that file where the network allows, copy it "
                    "here and pass weights=<path to the .pth file>") from err
        elif _looks_like_path(weights):
            path = Path(weights).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"resnet18 encoder: weights file {str(path)!r} does not exist. Give the path of a ResNet-18 "
                    "state dict (e.g. torchvision's resnet18-f37072fd.pth, downloaded where the network "
                    "allows), or weights=null for random weights")
            state = _read_state_dict(path, "resnet18 encoder")
        else:
            raise ValueError(f"resnet18 encoder: weights={weights!r} is neither a file path nor a torchvision "
                             f"tag; use a local .pth file, one of {tags}, or null (random)")
        expected = net.state_dict()
        missing = [k for k in expected if k not in state and not k.startswith("fc.")]
        unexpected = [k for k in state if k not in expected]
        wrong = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
        if missing or unexpected or wrong:
            raise ValueError(f"resnet18 encoder: weights {weights!r} do not fit torchvision's ResNet-18 "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]})")
        return state

    def _features(self, x):
        import torch

        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        x3 = m.layer3(m.layer2(m.layer1(x)))
        x4 = m.layer4(x3)
        return torch.cat([x3.mean((2, 3)), x4.mean((2, 3))], dim=1)

    def config(self) -> dict:
        """Rebuild kwargs."""
        return {"name": "resnet18", "weights": self.weights, "image_size": self.input_size,
                "batch_size": self.batch_size, "device": str(self.device)}


@register_encoder("clip")
class ClipEncoder(TorchFrameEncoder):
    """The image tower of an open_clip model; features are INTERMEDIATE and pooled:

    * ViT towers: the outputs of a middle block (index ``L // 2 - 1``, e.g. block 6 of 12) and the
      last block ``L - 1``, each after the tower's final LayerNorm, each as [class token, mean of
      the patch tokens]: ``4 * width`` dims (3072 for ViT-B-32).
    * ResNet towers (RN50, ...): ``layer3`` and ``layer4`` globally average-pooled (1024 + 2048
      for RN50).

    Frames are resized (shortest side, centre crop, open_clip's interpolation) to the model's
    input size and normalised with the model's own mean and std.

    Args:
        arch: open_clip architecture name (``open_clip.list_models()``), e.g. ``ViT-B-32``, ``RN50``.
        pretrained: a local weights file (a full CLIP state dict or the visual tower's alone;
            .safetensors, torch pickle or OpenAI's TorchScript file), an open_clip pretrained tag
            (``open_clip.list_pretrained_tags_by_model(arch)``; fetched from the model hub, which
            these machines cannot reach), or None for random weights (a warning is logged).
        image_size: input side; None = the model's own (224 for most). Smaller is much faster
            (ViT position embeddings of loaded weights are interpolated to it).
        batch_size: frames per forward pass.
        device: torch device for the model.
    """

    def __init__(self, arch: str = "ViT-B-32", pretrained: str | None = None, image_size: int | None = None,
                 batch_size: int = 32, device: str = "cpu") -> None:
        import difflib

        import open_clip

        models = open_clip.list_models()
        if arch not in models:
            close = difflib.get_close_matches(str(arch), models, n=5, cutoff=0.4)
            raise ValueError(f"clip encoder: unknown arch {arch!r}; close names: {close} "
                             "(all: open_clip.list_models())")
        self.name, self.arch, self.pretrained = "clip", arch, pretrained
        self.batch_size = int(batch_size)
        force = int(image_size) if image_size is not None else None
        tag = None
        if pretrained is None:
            _warn_random(f"clip ({arch})")
        elif pretrained in open_clip.list_pretrained_tags_by_model(arch):
            tag = pretrained
        elif _looks_like_path(str(pretrained)):
            path = Path(str(pretrained)).expanduser()
            if not path.is_file():
                raise FileNotFoundError(
                    f"clip encoder: weights file {str(path)!r} does not exist. Download the {arch} weights "
                    "where the network allows (open_clip.create_model(arch, pretrained=<tag>) caches them "
                    "under ~/.cache/huggingface; or the model's hub page), copy the file here and pass "
                    "pretrained=<its path>, or pretrained=null for random weights")
        else:
            raise ValueError(f"clip encoder: pretrained={pretrained!r} is neither a file path nor a tag of "
                             f"{arch} ({open_clip.list_pretrained_tags_by_model(arch)}); or null (random)")
        try:
            clip = open_clip.create_model(arch, pretrained=tag, force_image_size=force)
        except RuntimeError as err:
            if tag is None:
                raise
            raise WeightsUnavailableError(
                f"clip encoder: could not fetch {arch} weights {tag!r} from the model hub, which this machine "
                f"cannot reach ({err}). Download them where the network allows, copy the file here and pass "
                "pretrained=<local file path>") from err
        if tag is None and pretrained is not None:
            self._load_file(clip, Path(str(pretrained)).expanduser())
        visual = clip.visual
        del clip  # the text tower is never used: free its memory
        cfg = getattr(visual, "preprocess_cfg", {})
        size = visual.image_size
        self.input_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.interpolation = cfg.get("interpolation", "bicubic")
        if self.interpolation not in ("bicubic", "bilinear"):
            self.interpolation = "bicubic"
        self._family = type(visual).__name__
        if self._family == "VisionTransformer":
            blocks = len(visual.transformer.resblocks)
            self.layers = [max(blocks // 2 - 1, 0), blocks - 1]
        elif self._family == "ModifiedResNet":
            self.layers = [3, 4]  # forward_intermediates numbers the stem 0, layer1..layer4 1..4
        else:
            raise ValueError(f"clip encoder: arch {arch!r} has a {self._family} image tower; this encoder reads "
                             "intermediate layers of ViT (VisionTransformer) and ResNet (ModifiedResNet) towers: "
                             "pick e.g. ViT-B-32, ViT-S-32 or RN50")
        self.model = visual.to(device).eval()
        self._setup_norm(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)),
                         cfg.get("std", (0.26862954, 0.26130258, 0.27577711)), device)
        self.feature_dim = self._measure_dim()

    def _load_file(self, clip, path: Path) -> None:
        """Load a full CLIP state dict or the visual tower's alone into ``clip.visual``."""
        from open_clip.model import resize_pos_embed

        state = _read_state_dict(path, "clip encoder")
        if not any(k.startswith("visual.") for k in state):
            state = {f"visual.{k}": v for k, v in state.items()}  # a visual-tower-only file
        resize_pos_embed(state, clip)  # weights trained at another image size still fit a ViT
        visual_state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
        try:
            clip.visual.load_state_dict(visual_state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"clip encoder: weights {str(path)!r} do not fit arch {self.arch!r} at this "
                             f"image_size ({str(err)[:400]}); check arch= and image_size=") from err

    def _features(self, x):
        import torch

        if self._family == "VisionTransformer":
            out = self.model.forward_intermediates(x, indices=self.layers, normalize_intermediates=True,
                                                   intermediates_only=True, output_fmt="NLC",
                                                   output_extra_tokens=True)
            parts = []
            for cls, patches in zip(out["image_intermediates_prefix"], out["image_intermediates"]):
                parts += [cls[:, 0], patches.mean(1)]
            return torch.cat(parts, dim=1)
        out = self.model.forward_intermediates(x, indices=self.layers, intermediates_only=True)
        return torch.cat([m.mean((2, 3)) for m in out["image_intermediates"]], dim=1)

    def config(self) -> dict:
        """Rebuild kwargs."""
        return {"name": "clip", "arch": self.arch, "pretrained": self.pretrained, "image_size": self.input_size,
                "batch_size": self.batch_size, "device": str(self.device)}


@register_encoder("tcn")
def _tcn_encoder(**kwargs: Any) -> FrameEncoder:
    """The time-contrastive network trained here (:class:`reward_models.tcn.TCNEncoder`)."""
    from reward_models.tcn import TCNEncoder

    return TCNEncoder(**kwargs)
