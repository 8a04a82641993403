"""Checks and resizes of the frames a reward model is given (the one resize every encoder and
trainer uses, so training and scoring see identical pixels). Imports nothing of ours."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def check_frames_uint8(frames: np.ndarray, name: str) -> np.ndarray:
    """``frames`` as a uint8 (T, H, W, 3) array, or a ValueError naming the encoder and the fix."""
    f = np.asarray(frames)
    if f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3:
        raise ValueError(f"{name} encoder: frames must be uint8 (T, H, W, 3), got {f.dtype} {f.shape} "
                         "(convert float images with (x * 255).round().astype(np.uint8))")
    return f


def resize_for_encoder(x: torch.Tensor, size: int) -> torch.Tensor:
    """Float (N, 3, H, W) -> (N, 3, size, size), antialiased bilinear; a no-op at that size.

    Training pre-resizes its images with this same function, so both see identical pixels."""
    import torch.nn.functional as F

    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def resize_frames(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (T, V, H, W, 3) -> (T, V, size, size, 3) with the encoder's own resize."""
    import torch

    t, v, h, w, _ = images.shape
    x = torch.from_numpy(images.reshape(t * v, h, w, 3)).permute(0, 3, 1, 2).float()
    x = resize_for_encoder(x, size).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).reshape(t, v, size, size, 3).numpy()
