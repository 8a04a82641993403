"""What the torch encoders share: weights arguments (a local file or a hub tag), reading a state
dict, the square resize, and :class:`TorchFrameEncoder` (checks, chunking, normalisation, no grad).
Everything here imports torch lazily: building the registry must stay cheap."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from reward_models.frames import check_frames_uint8

log = logging.getLogger("reward_models.encoders")  # one logger for every encoder's warnings

WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


class WeightsUnavailableError(ConnectionError, ValueError):
    """Pretrained weights named by a hub tag could not be fetched (no network to the hub).

    Also a ``ValueError``, so command-line tools that report bad inputs cleanly report this too."""


def looks_like_path(value: str) -> bool:
    """A weights argument that names a file rather than a hub tag."""
    import os

    return os.sep in value or "/" in value or value.lower().endswith(WEIGHT_FILE_SUFFIXES) or os.path.exists(value)


def warn_random(name: str) -> None:
    """Log that encoder ``name`` was built without weights (its features are untrained)."""
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


def read_state_dict(path: Path, what: str) -> dict:
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
