"""Intel RealSense cameras: the colour stream through pyrealsense2."""

from __future__ import annotations

from typing import Any

import numpy as np

from real.cameras.base import CameraError, Crop
from real.cameras.threaded import ThreadedCamera


def _require_realsense() -> Any:
    try:
        import pyrealsense2 as rs
    except (ImportError, OSError) as err:
        raise ImportError(
            "RealSense cameras need pyrealsense2: pip install 'stepwise[realsense]' (the wheel "
            "also needs the system library libusb-1.0, e.g. apt-get install libusb-1.0-0)"
        ) from err
    return rs


class RealSenseCamera(ThreadedCamera):
    """The colour stream of an Intel RealSense camera through pyrealsense2.

    The SDK delivers RGB directly (``rs.format.rgb8``); the capture thread waits on the pipeline,
    copies each frame out of the SDK's recycled buffer and keeps the newest, stamped on
    ``time.monotonic()`` as it arrives.

    Args:
        name: the camera's name.
        serial: the device's serial number (``rs-enumerate-devices``); ``None`` takes the first.
        image_size: the rig's int or ``(height, width)``.
        crop: ``(top, left, height, width)`` in source pixels; default a centred box.
        fps, width, height: the colour stream's mode (must be one the camera offers).
    """

    WAIT_TIMEOUT_MS = 500  # one wait; MAX_READ_FAILURES of them in a row mean disconnected

    def __init__(
        self,
        name: str,
        serial: str | None,
        image_size: int | tuple[int, int],
        crop: Crop | None = None,
        fps: int = 30,
        width: int = 640,
        height: int = 480,
    ) -> None:
        super().__init__(name, image_size, crop)
        if serial is not None and not isinstance(serial, (str, int)):
            raise ValueError(f"camera {name!r}: serial must be a string like '123622270' or None")
        for key, value in (("fps", fps), ("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"camera {name!r}: {key} must be a positive int, got {value!r}")
        self.serial = None if serial is None else str(serial)
        self.fps, self.width, self.height = fps, width, height
        self._pipeline: Any = None

    def _describe(self) -> str:
        return f"RealSense serial {self.serial or '(first found)'}"

    def _connected_serials(self, rs: Any) -> list[str]:
        try:
            return [d.get_info(rs.camera_info.serial_number) for d in rs.context().query_devices()]
        except Exception:  # listing is only for the error message
            return []

    def _open(self) -> None:
        rs = _require_realsense()
        config = rs.config()
        if self.serial:
            config.enable_device(self.serial)
        config.enable_stream(rs.stream.color, self.width, self.height, rs.format.rgb8, self.fps)
        pipeline = rs.pipeline()
        try:
            pipeline.start(config)
        except RuntimeError as err:
            raise CameraError(
                f"camera {self.name!r}: cannot start {self._describe()} at {self.width}x"
                f"{self.height} @ {self.fps} fps ({err}); connected serials: "
                f"{self._connected_serials(rs)}. Check the serial, the USB 3 cable, and that the "
                "mode is one the camera offers"
            ) from err
        self._pipeline = pipeline

    def _grab(self) -> np.ndarray | None:
        try:
            frames = self._pipeline.wait_for_frames(self.WAIT_TIMEOUT_MS)
        except RuntimeError:  # the SDK's timeout: "Frame didn't arrive within ..."
            return None
        color = frames.get_color_frame()
        if not color:
            return None
        # the SDK recycles its buffer once the frame is released: copy now
        return np.array(np.asanyarray(color.get_data()), dtype=np.uint8, copy=True)

    def _release(self) -> None:
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            pipeline.stop()

