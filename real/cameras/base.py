"""The camera contract: the :class:`Camera` protocol, its errors and the frame-age checks.

Every camera hands out its newest frame with its capture time on ``time.monotonic()``;
:func:`check_age` turns a frame older than the caller's limit into a :class:`StaleFrameError`.
"""

from __future__ import annotations

import time
from typing import Mapping, Protocol, runtime_checkable

import numpy as np

Crop = tuple[int, int, int, int]
"""``(top, left, height, width)`` in source pixels."""


class StaleFrameError(RuntimeError):
    """A camera's newest frame is older than the caller's limit.

    Attributes:
        camera: the camera's name.
        age_ms: age of its newest frame in milliseconds.
        max_age_ms: the limit it broke.
        others: other cameras stale at the same time, name -> age in ms (from :func:`real.cameras.read_frames`).
    """

    def __init__(
        self,
        camera: str,
        age_ms: float,
        max_age_ms: float,
        others: Mapping[str, float] | None = None,
    ) -> None:
        self.camera, self.age_ms, self.max_age_ms = camera, float(age_ms), float(max_age_ms)
        self.others = dict(others or {})
        also = "".join(f", camera {k!r} {v:.0f} ms" for k, v in self.others.items())
        super().__init__(
            f"camera {camera!r}: newest frame is {self.age_ms:.0f} ms old, over the "
            f"{self.max_age_ms:g} ms limit{' (also stale' + also + ')' if also else ''}. Fix: check "
            "the camera is still streaming (cable, USB bandwidth, another process holding it) and "
            "that its fps keeps up with the control loop, or raise max_age_ms if this latency is "
            "acceptable."
        )

    def __reduce__(self):  # keep the structured fields across processes (pickle)
        return (type(self), (self.camera, self.age_ms, self.max_age_ms, self.others))


class CameraError(RuntimeError):
    """A camera cannot be opened or read, or was disconnected; the message names camera and device."""


@runtime_checkable
class Camera(Protocol):
    """A named camera that hands out its newest frame.

    Attributes:
        name: the camera's name, the key of its images in observations.
    """

    name: str

    def connect(self) -> None:
        """Open the device and start capturing. Idempotent."""

    def read_latest(self, max_age_ms: float | None = None) -> tuple[np.ndarray, float]:
        """The newest frame, uint8 (H, W, 3) RGB at the rig's image size, and its capture time.

        The time is in seconds on ``time.monotonic()``. Raises :class:`StaleFrameError` when the
        newest frame is older than ``max_age_ms`` (``None``: no limit) and :class:`CameraError`
        when the camera is not connected or has failed.
        """

    def close(self) -> None:
        """Stop capturing and release the device. Idempotent."""


# --------------------------------------------------------------------------------------------------
# Frame-age checks


def check_max_age(max_age_ms: float | None) -> float | None:
    """Validate a frame-age limit: a positive number of milliseconds (as float) or ``None`` (no limit)."""
    if max_age_ms is None:
        return None
    if not isinstance(max_age_ms, (int, float, np.integer, np.floating)) or not max_age_ms > 0:
        raise ValueError(f"max_age_ms must be a positive number of milliseconds or None, got {max_age_ms!r}")
    return float(max_age_ms)


def check_age(name: str, stamp: float, max_age_ms: float | None) -> None:
    """Raise :class:`StaleFrameError` when camera ``name``'s frame captured at ``stamp``
    (``time.monotonic()`` seconds) is older than ``max_age_ms`` (``None``: no limit)."""
    limit = check_max_age(max_age_ms)
    if limit is not None:
        age_ms = (time.monotonic() - stamp) * 1000.0
        if age_ms > limit:
            raise StaleFrameError(name, age_ms, limit)

