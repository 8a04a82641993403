"""Checks on the frames a reward model is given. Imports nothing of ours."""

from __future__ import annotations

import numpy as np


def check_frames_uint8(frames: np.ndarray, name: str) -> np.ndarray:
    """``frames`` as a uint8 (T, H, W, 3) array, or a ValueError naming the encoder and the fix."""
    f = np.asarray(frames)
    if f.dtype != np.uint8 or f.ndim != 4 or f.shape[-1] != 3:
        raise ValueError(f"{name} encoder: frames must be uint8 (T, H, W, 3), got {f.dtype} {f.shape} "
                         "(convert float images with (x * 255).round().astype(np.uint8))")
    return f
