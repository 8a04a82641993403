"""The simulator's rig behind the camera contract: one camera of a simulated robot, rendered on read."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from real.cameras.base import CameraError, check_max_age
from real.cameras.frames import check_frame, fit_to_rig, rig_size


class SimCamera:
    """One camera of a simulated robot's rig behind the camera contract.

    Renders on each read (the robot's ``observe()``), so frames are always fresh and stamped now.

    Args:
        name: a camera of the robot's rig (e.g. ``corner``).
        robot: a :class:`real.sim_driver.SimRobot`, or anything whose ``observe()`` returns
            ``{"images": {name: uint8 (H, W, 3)}}``.
        image_size: fit the render to this size (default: as rendered).
    """

    def __init__(self, name: str, robot: Any, image_size: int | tuple[int, int] | None = None) -> None:
        if not callable(getattr(robot, "observe", None)):
            raise TypeError(
                f"sim camera {name!r} needs a robot with observe() (a real.sim_driver.SimRobot), "
                f"got {type(robot).__name__}"
            )
        self.name = name
        self.robot = robot
        self.image_size = None if image_size is None else rig_size(image_size)

    def connect(self) -> None:
        """Connect the robot if it needs it (idempotent)."""
        connect = getattr(self.robot, "connect", None)
        if callable(connect):
            connect()

    def read_latest(self, max_age_ms: float | None = None) -> tuple[np.ndarray, float]:
        """The camera's current render (uint8 (H, W, 3) RGB) and ``time.monotonic()`` now."""
        check_max_age(max_age_ms)
        images = self.robot.observe().get("images", {})
        if self.name not in images:
            raise CameraError(
                f"sim camera {self.name!r} is not in the robot's rig {sorted(images)}: add it to "
                "the robot's cameras or use one of those names"
            )
        frame = check_frame(images[self.name])
        stamp = time.monotonic()
        if self.image_size is not None and frame.shape[:2] != self.image_size:
            frame = fit_to_rig(frame, self.image_size)
        return frame, stamp

    def close(self) -> None:
        """Nothing to release: the robot owns the renderer. Idempotent."""

