"""Cameras behind one contract: OpenCV (USB, files, streams), Intel RealSense and the simulator's rig.

Every camera hands out its newest frame as uint8 (H, W, 3) RGB at the rig's image size, with the
capture time on ``time.monotonic()``, so a reward model or policy trained on sim frames sees real
frames framed the same way (:func:`fit_to_rig`). Hardware cameras capture on a background thread
that keeps only the newest frame: a slow control loop never drains a backlog of old frames, and
``read_latest(max_age_ms=...)`` turns a frozen or unplugged camera into a :class:`StaleFrameError`
the deploy loop can stop on, instead of acting on an old image.

Build cameras from config with :func:`make_camera`::

    cam = make_camera("front", {"type": "opencv", "device": 0, "crop": [0, 80, 480, 480]}, 96)
    cam.connect()
    frame, stamp = cam.read_latest(max_age_ms=100)

The package, one job a file: :mod:`~real.cameras.base` (the contract, its errors, age checks),
:mod:`~real.cameras.frames` (fitting frames to the rig), :mod:`~real.cameras.threaded` (the capture
thread), the drivers :mod:`~real.cameras.opencv`, :mod:`~real.cameras.realsense` and
:mod:`~real.cameras.sim`, and here the registry, :func:`make_camera` and :func:`read_frames`.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import numpy as np

from real.cameras.base import Camera, CameraError, Crop, StaleFrameError, check_age, check_max_age
from real.cameras.frames import check_crop, check_frame, fit_to_rig, rig_size
from real.cameras.opencv import OpenCVCamera
from real.cameras.realsense import RealSenseCamera
from real.cameras.sim import SimCamera
from real.cameras.threaded import ThreadedCamera

__all__ = [
    "CAMERA_TYPES",
    "Camera",
    "CameraError",
    "Crop",
    "OpenCVCamera",
    "RealSenseCamera",
    "SimCamera",
    "StaleFrameError",
    "ThreadedCamera",
    "check_age",
    "check_crop",
    "check_frame",
    "check_max_age",
    "fit_to_rig",
    "make_camera",
    "read_frames",
    "rig_size",
]

# --------------------------------------------------------------------------------------------------
# Registry and helpers

CAMERA_TYPES: dict[str, type] = {
    "opencv": OpenCVCamera,
    "realsense": RealSenseCamera,
    "sim": SimCamera,
}


def make_camera(name: str, spec: Mapping[str, Any], image_size: int | tuple[int, int]) -> Camera:
    """Build (not connect) a camera from a config entry.

    Args:
        name: the camera's name (its key in observations).
        spec: ``{"type": "opencv" | "realsense" | "sim", ...driver args..., "crop": [top, left,
            height, width]?}``; the driver args are the keyword arguments of :class:`OpenCVCamera`
            (``device``, ``fps``, ...), :class:`RealSenseCamera` (``serial``, ...) or
            :class:`SimCamera` (``robot``).
        image_size: the rig's int or ``(height, width)``.
    """
    if not isinstance(spec, Mapping):
        raise TypeError(f"camera {name!r}: spec must be a mapping with a 'type', got {spec!r}")
    args = dict(spec)
    kind = args.pop("type", None)
    if kind not in CAMERA_TYPES:
        raise ValueError(
            f"camera {name!r}: unknown camera type {kind!r}: use one of {sorted(CAMERA_TYPES)}"
        )
    cls = CAMERA_TYPES[kind]
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("name", "image_size")]
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise ValueError(
            f"camera {name!r}: {kind} cameras take {accepted}, not {unknown}"
        )
    try:
        return cls(name, image_size=image_size, **args)
    except TypeError as err:  # a missing required argument, e.g. device
        raise ValueError(f"camera {name!r}: {kind} spec {dict(spec)!r}: {err}") from err


def read_frames(
    cameras: Mapping[str, Camera], max_age_ms: float | None
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Every camera's newest frame and capture time (``time.monotonic()`` seconds), by name.

    Reads all cameras before judging staleness, so a :class:`StaleFrameError` names the stalest
    camera and lists any others stale at the same time.
    """
    limit = check_max_age(max_age_ms)
    frames: dict[str, np.ndarray] = {}
    stamps: dict[str, float] = {}
    stale: dict[str, StaleFrameError] = {}
    for key, cam in cameras.items():
        try:
            frames[key], stamps[key] = cam.read_latest(limit)
        except StaleFrameError as err:
            stale[key] = err
    if stale:
        worst = max(stale, key=lambda k: stale[k].age_ms)
        others = {k: e.age_ms for k, e in stale.items() if k != worst}
        raise StaleFrameError(stale[worst].camera, stale[worst].age_ms, limit, others)
    return frames, stamps
