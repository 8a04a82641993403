"""The ``pixels`` encoder: raw pixels pooled on a grid, the floor every learned encoder must beat."""

from __future__ import annotations

import numpy as np

from reward_models.encoders.registry import register_encoder


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
