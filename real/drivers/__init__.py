"""Real arm drivers behind the `Robot` contract, each written against its vendor's own Python SDK.

- ``real.drivers.ur:URRobot``: Universal Robots e-series through ur-rtde (``pip install 'stepwise[ur]'``).
- ``real.drivers.xarm:XArmRobot``: UFactory xArm / Lite6 through xarm-python-sdk (``stepwise[xarm]``).
- ``real.drivers.lerobot:LeRobotAdapter``: any robot following LeRobot's ``Robot`` interface.

Vendor SDKs are imported only in ``connect()``, so this package imports without them. The helpers
below are what the drivers share: config checks, action clipping and the camera rig.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ACTION_NAMES = ("dx", "dy", "dz", "gripper")
PROPRIO_NAMES = ("hand_x", "hand_y", "hand_z", "gripper_opening")


def check_positive(driver: str, key: str, value: Any, unit: str) -> float:
    """``value`` as a finite float > 0, else a ValueError naming ``key`` and the fix."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not (math.isfinite(v) and v > 0):
        raise ValueError(
            f"{driver}: {key} must be a positive number ({unit}), "
            f"got {value!r}; fix {key} in the robot config"
        )
    return v


def check_range(driver: str, key: str, value: Any, low: float, high: float, unit: str) -> float:
    """``value`` as a float within ``[low, high]``, else a ValueError naming ``key`` and the range."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not low <= v <= high:  # also rejects NaN
        raise ValueError(
            f"{driver}: {key} must be in [{low}, {high}] {unit}, "
            f"got {value!r}; fix {key} in the robot config"
        )
    return v


def check_choice(driver: str, key: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else a ValueError listing them."""
    if value not in choices:
        raise ValueError(f"{driver}: unknown {key} {value!r}; use one of {list(choices)}")
    return str(value)


def check_vector(driver: str, key: str, value: Any, length: int, meaning: str) -> tuple[float, ...]:
    """``value`` as a tuple of ``length`` finite floats, else a ValueError saying what it must hold."""
    try:
        vec = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        vec = ()
    if len(vec) != length or not all(math.isfinite(v) for v in vec):
        raise ValueError(
            f"{driver}: {key} must be {length} finite numbers ({meaning}), "
            f"got {value!r}; fix {key} in the robot config"
        )
    return vec


def check_image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` from an int or a pair, else a ValueError."""
    size = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size):
        raise ValueError(f"image_size must be a positive int or (height, width), got {image_size!r}")
    return int(size[0]), int(size[1])


def clip_action(driver: str, action: Any) -> np.ndarray:
    """The action as float32 (4,) clipped to [-1, 1]; rejects wrong shapes and NaN before any hardware call."""
    a = np.asarray(action, dtype=np.float32)
    if a.shape != (4,):
        raise ValueError(
            f"{driver}: action has shape {a.shape}, "
            "expected (4,) (end-effector dx, dy, dz, gripper in [-1, 1])"
        )
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{driver}: action contains NaN or inf: {a.tolist()}; check the policy's output")
    return np.clip(a, -1.0, 1.0)


class CameraRig:
    """The driver's cameras: built from objects or ``{type: ..., ...}`` specs, read with a staleness bound.

    Args:
        cameras: ``name -> camera`` where a camera is an object with ``connect()``,
            ``read_latest(max_age_ms) -> (uint8 (H, W, 3), monotonic seconds)`` and ``close()``, or a
            dict spec built by ``real.cameras.make_camera(name, spec, image_size)``.
        image_size: int or ``(height, width)`` every frame must have.
        max_frame_age_ms: oldest frame accepted; older raises ``real.cameras.StaleFrameError``.
    """

    def __init__(
        self,
        cameras: Mapping[str, Any] | None,
        image_size: int | Sequence[int] = 96,
        max_frame_age_ms: float | None = 100.0,
    ) -> None:
        self.image_size = check_image_size(image_size)
        if max_frame_age_ms is not None:
            max_frame_age_ms = check_positive("cameras", "max_frame_age_ms", max_frame_age_ms, "milliseconds")
        self.max_frame_age_ms = max_frame_age_ms
        self.cameras: dict[str, Any] = {}
        for name, cam in (cameras or {}).items():
            if isinstance(cam, Mapping):
                from real.cameras import make_camera  # only dict specs need the camera module

                cam = make_camera(str(name), dict(cam), self.image_size)
            elif not all(hasattr(cam, m) for m in ("connect", "read_latest", "close")):
                raise ValueError(
                    f"camera {name!r} is a {type(cam).__name__}: give a camera object (connect, read_latest, "
                    "close) or a spec such as {type: opencv, device: 0}"
                )
            self.cameras[str(name)] = cam

    @property
    def names(self) -> tuple[str, ...]:
        """Camera names, in order."""
        return tuple(self.cameras)

    def connect(self) -> None:
        """Open every camera."""
        for cam in self.cameras.values():
            cam.connect()

    def read(self) -> dict[str, np.ndarray]:
        """The latest frame of every camera, uint8 (H, W, 3); a stale frame raises the camera's error."""
        h, w = self.image_size
        images = {}
        for name, cam in self.cameras.items():
            frame, _ = cam.read_latest(self.max_frame_age_ms)
            frame = np.asarray(frame)
            if frame.shape != (h, w, 3) or frame.dtype != np.uint8:
                raise RuntimeError(
                    f"camera {name!r} gave a {frame.dtype} frame of shape {frame.shape}, expected uint8 "
                    f"{(h, w, 3)}: build it with the driver's image_size"
                )
            images[name] = frame
        return images

    def close(self, log: logging.Logger) -> None:
        """Close every camera; a failing one is logged and the rest still close."""
        for name, cam in self.cameras.items():
            try:
                cam.close()
            except Exception:
                log.exception("closing camera %r failed", name)

