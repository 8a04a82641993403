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

One job per file: :mod:`~reward_models.encoders.registry` (the protocol and the registry),
:mod:`~reward_models.encoders.pixels`, :mod:`~reward_models.encoders.torch_base` (what the torch
encoders share), :mod:`~reward_models.encoders.resnet`, :mod:`~reward_models.encoders.clip`; the
``tcn`` encoder is registered here and built by :mod:`reward_models.tcn`. Importing this package
fills :data:`ENCODERS`.
"""

from __future__ import annotations

from typing import Any

from reward_models.encoders.registry import ENCODERS, FrameEncoder, build_encoder, register_encoder
# registered in this order (ENCODERS keeps it): pixels, resnet18, clip, then tcn below
from reward_models.encoders.pixels import PixelEncoder
from reward_models.encoders.resnet import ResNet18Encoder
from reward_models.encoders.clip import ClipEncoder
from reward_models.encoders.torch_base import (
    WEIGHT_FILE_SUFFIXES,
    TorchFrameEncoder,
    WeightsUnavailableError,
    read_state_dict,
    resize_square,
)


@register_encoder("tcn")
def _tcn_encoder(**kwargs: Any) -> FrameEncoder:
    """The time-contrastive network trained here (:class:`reward_models.tcn.TCNEncoder`)."""
    from reward_models.tcn import TCNEncoder

    return TCNEncoder(**kwargs)


__all__ = [
    "ENCODERS", "WEIGHT_FILE_SUFFIXES", "ClipEncoder", "FrameEncoder", "PixelEncoder", "ResNet18Encoder",
    "TorchFrameEncoder", "WeightsUnavailableError", "build_encoder", "read_state_dict", "register_encoder",
    "resize_square",
]
