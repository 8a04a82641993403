"""OpenCV cameras: USB/V4L2 devices, network streams and video files through ``cv2.VideoCapture``."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from real.cameras.base import CameraError, Crop
from real.cameras.threaded import ThreadedCamera


def _require_cv2() -> Any:
    try:
        import cv2
    except ImportError as err:
        raise ImportError(
            "OpenCV cameras need opencv: pip install 'stepwise[cameras]'"
        ) from err
    return cv2


class OpenCVCamera(ThreadedCamera):
    """A camera read through ``cv2.VideoCapture``: USB/V4L2 devices, network streams, video files.

    A background thread reads continuously so the driver's buffer never serves an old frame, and
    keeps only the newest one, stamped on ``time.monotonic()`` as it arrives. A video file plays
    back in real time at its own frame rate (or ``fps``) like a live camera, and its last frame
    goes stale after the end. Frames are converted BGR -> RGB and fitted to the rig on read.

    Args:
        name: the camera's name (its key in observations).
        device: a device index (``0``), a device path (``/dev/video2``), a stream URL or a file.
        image_size: the rig's int or ``(height, width)``.
        crop: ``(top, left, height, width)`` in source pixels; default the centred box with the
            rig's aspect ratio.
        fps: frame rate to request from the device (for a file: the playback rate).
        backend: OpenCV capture API, a name (``v4l2``, ``ffmpeg``, ``gstreamer``) or a
            ``cv2.CAP_*`` id; default OpenCV's choice.
        width, height: source resolution to request from the device.
    """

    def __init__(
        self,
        name: str,
        device: int | str,
        image_size: int | tuple[int, int],
        crop: Crop | None = None,
        fps: float | None = None,
        backend: str | int | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> None:
        super().__init__(name, image_size, crop)
        if isinstance(device, str) and device.strip().isdigit():
            device = int(device)  # "0" from a YAML file or command line means the index
        if isinstance(device, bool) or not isinstance(device, (int, str)):
            raise ValueError(
                f"camera {name!r}: device must be an index (0), a path or a URL, got {device!r}"
            )
        if fps is not None and not fps > 0:
            raise ValueError(f"camera {name!r}: fps must be positive, got {fps!r}")
        for key, value in (("width", width), ("height", height)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"camera {name!r}: {key} must be a positive int, got {value!r}")
        self.device = device
        self.fps = None if fps is None else float(fps)
        self.backend = backend
        self.width, self.height = width, height
        self.is_file = isinstance(device, str) and os.path.isfile(device)
        self._cap: Any = None
        self._period = 0.0
        self._next_t = 0.0

    def _describe(self) -> str:
        return f"OpenCV device {self.device!r}"

    def _backend_id(self, cv2: Any) -> int:
        if self.backend is None:
            return cv2.CAP_ANY
        if isinstance(self.backend, int) and not isinstance(self.backend, bool):
            return self.backend
        api = getattr(cv2, f"CAP_{str(self.backend).upper()}", None)
        if not isinstance(api, int):
            raise ValueError(
                f"camera {self.name!r}: unknown OpenCV backend {self.backend!r}: use a capture API "
                "name such as 'v4l2', 'ffmpeg' or 'gstreamer' (any cv2.CAP_<NAME>) or a cv2.CAP_* id"
            )
        return api

    def _open(self) -> None:
        cv2 = _require_cv2()
        api = self._backend_id(cv2)
        cap = cv2.VideoCapture(self.device, api)
        if not cap.isOpened():
            cap.release()
            hint = (
                "the file does not exist or cannot be decoded"
                if isinstance(self.device, str) and not self.device.startswith(("/dev/", "rtsp:", "http"))
                else "check it is plugged in, the index or path (ls /dev/video*), and that no other "
                "process holds it"
            )
            raise CameraError(f"camera {self.name!r}: cannot open {self._describe()}: {hint}")
        if not self.is_file:
            if self.width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            if self.height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            if self.fps:
                cap.set(cv2.CAP_PROP_FPS, self.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # best effort: not every backend honours it
            self._period = 0.0
        else:
            rate = self.fps or cap.get(cv2.CAP_PROP_FPS) or 30.0
            self._period = 1.0 / rate
        self._next_t = time.monotonic()
        self._cap = cap

    def _pace(self) -> None:
        if self._period:
            self._stop.wait(max(0.0, self._next_t - time.monotonic()))
            # a late frame resets the schedule instead of bursting to catch up
            self._next_t = max(self._next_t + self._period, time.monotonic())

    def _grab(self) -> np.ndarray | None:
        ok, frame = self._cap.read()
        return frame if ok and frame is not None else None

    def _exhausted(self) -> bool:
        return self.is_file

    def _release(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

    def _to_rgb(self, frame: np.ndarray) -> np.ndarray:
        if frame.ndim == 2:
            return np.repeat(frame[:, :, None], 3, axis=2)
        return frame[:, :, 2::-1]  # BGR(A) -> RGB, a view; fit_to_rig copies

