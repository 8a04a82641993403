"""The encoder registry: the :class:`FrameEncoder` protocol, :data:`ENCODERS` (name -> class or
factory) and :func:`build_encoder`. Imports nothing of ours."""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

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
