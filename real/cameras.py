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
"""

from __future__ import annotations

import inspect
import math
import os
import threading
import time
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

Crop = tuple[int, int, int, int]
"""``(top, left, height, width)`` in source pixels."""


class StaleFrameError(RuntimeError):
    """A camera's newest frame is older than the caller's limit.

    Attributes:
        camera: the camera's name.
        age_ms: age of its newest frame in milliseconds.
        max_age_ms: the limit it broke.
        others: other cameras stale at the same time, name -> age in ms (from :func:`read_frames`).
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
# Fitting frames to the rig


def rig_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """Normalise ``image_size`` (an int or ``(height, width)``) to ``(height, width)``."""
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        size = (int(image_size), int(image_size))
    elif (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in image_size)
    ):
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise ValueError(f"image_size must be an int or (height, width) of ints, got {image_size!r}")
    if min(size) < 1:
        raise ValueError(f"image_size {size} must be positive (e.g. 96 or (96, 128))")
    return size


def _check_frame(frame: Any) -> np.ndarray:
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"frame must be a numpy array uint8 (H, W, 3) RGB, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise TypeError(
            f"frame must be uint8 (H, W, 3) RGB, got dtype {frame.dtype} with shape {frame.shape}: "
            "convert first (e.g. (x * 255).clip(0, 255).astype(np.uint8) for floats in [0, 1])"
        )
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ValueError(
            f"frame must be uint8 (H, W, 3) RGB, got shape {frame.shape}: convert grayscale or "
            "RGBA to 3 channels first"
        )
    return frame


def check_crop(crop: Any, frame_hw: tuple[int, int] | None = None) -> Crop | None:
    """Validate ``crop`` = ``(top, left, height, width)`` and, when given, that it fits ``frame_hw``."""
    if crop is None:
        return None
    try:
        box = tuple(crop)
        ok = len(box) == 4 and all(float(v) == int(v) for v in box)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"crop must be [top, left, height, width] in source pixels, got {crop!r}")
    top, left, height, width = (int(v) for v in box)
    if top < 0 or left < 0 or height < 1 or width < 1:
        raise ValueError(
            f"crop {list(box)} = [top, left, height, width] needs top, left >= 0 and height, "
            "width >= 1"
        )
    if frame_hw is not None:
        fh, fw = frame_hw
        if top + height > fh or left + width > fw:
            raise ValueError(
                f"crop [top={top}, left={left}, height={height}, width={width}] reaches row "
                f"{top + height} and column {left + width}, outside the {fw}x{fh} (width x height) "
                f"frame: shrink the box to fit within height {fh} and width {fw}"
            )
    return top, left, height, width


def _centre_crop_box(frame_hw: tuple[int, int], size: tuple[int, int]) -> Crop:
    """The largest centred box of the frame with the rig's aspect ratio."""
    fh, fw = frame_hw
    h, w = size
    if fw * h > fh * w:  # frame wider than the rig: trim the sides
        cw = max(1, min(fw, round(fh * w / h)))
        return 0, (fw - cw) // 2, fh, cw
    ch = max(1, min(fh, round(fw * h / w)))
    return (fh - ch) // 2, 0, ch, fw


_CV2: Any = None


def _optional_cv2() -> Any:
    """cv2 if importable, else ``None`` (fit_to_rig then resizes in numpy)."""
    global _CV2
    if _CV2 is None:
        try:
            import cv2
        except ImportError:
            _CV2 = False
        else:
            _CV2 = cv2
    return _CV2 or None


def _resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 weights: area averaging when shrinking, linear when enlarging."""
    scale = n_in / n_out
    out = np.zeros((n_out, n_in))
    if n_out <= n_in:
        edges = np.arange(n_out + 1) * scale  # output pixel i covers source [edges[i], edges[i+1])
        src = np.arange(n_in)
        overlap = np.minimum(edges[1:, None], src[None, :] + 1) - np.maximum(edges[:-1, None], src)
        out = np.clip(overlap, 0.0, None) / scale
    else:
        x = np.clip((np.arange(n_out) + 0.5) * scale - 0.5, 0.0, n_in - 1)
        lo = np.floor(x).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = x - lo
        rows = np.arange(n_out)
        np.add.at(out, (rows, lo), 1.0 - frac)
        np.add.at(out, (rows, hi), frac)
    return out


def _resize_numpy(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    wy = _resize_weights(frame.shape[0], size[0])
    wx = _resize_weights(frame.shape[1], size[1])
    out = np.einsum("ih,hwc,jw->ijc", wy, frame.astype(np.float64), wx, optimize=True)
    return np.ascontiguousarray(np.clip(np.rint(out), 0, 255), dtype=np.uint8)


def fit_to_rig(
    frame: np.ndarray,
    image_size: int | tuple[int, int],
    crop: Crop | None = None,
) -> np.ndarray:
    """Frame a camera image as the sim rig framed its images.

    Crops ``crop`` = ``(top, left, height, width)`` (source pixels) when given; otherwise takes the
    largest centred box with the rig's aspect ratio (a 640x480 frame loses 80 columns each side
    for a square rig, so nothing is squashed). Then resizes to ``image_size`` with area averaging
    when shrinking (cv2's INTER_AREA, or a numpy equivalent without cv2). An explicit crop is
    resized as given, so choose one with the rig's aspect ratio.

    Args:
        frame: uint8 (H, W, 3) RGB.
        image_size: the rig's int or ``(height, width)``.
        crop: optional box in source pixels.

    Returns:
        A new C-contiguous uint8 (height, width, 3) RGB array.
    """
    frame = _check_frame(frame)
    size = rig_size(image_size)
    box = check_crop(crop, frame.shape[:2])
    if box is None:
        box = _centre_crop_box(frame.shape[:2], size)
    top, left, height, width = box
    view = frame[top : top + height, left : left + width]
    if view.shape[:2] == size:
        return np.array(view, dtype=np.uint8, order="C", copy=True)
    cv2 = _optional_cv2()
    if cv2 is None:
        return _resize_numpy(view, size)
    shrink = size[0] <= height and size[1] <= width
    out = cv2.resize(
        np.ascontiguousarray(view),
        (size[1], size[0]),
        interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR,
    )
    return np.ascontiguousarray(out, dtype=np.uint8)


def _check_max_age(max_age_ms: float | None) -> float | None:
    if max_age_ms is None:
        return None
    if not isinstance(max_age_ms, (int, float, np.integer, np.floating)) or not max_age_ms > 0:
        raise ValueError(f"max_age_ms must be a positive number of milliseconds or None, got {max_age_ms!r}")
    return float(max_age_ms)


def _check_age(name: str, stamp: float, max_age_ms: float | None) -> None:
    limit = _check_max_age(max_age_ms)
    if limit is not None:
        age_ms = (time.monotonic() - stamp) * 1000.0
        if age_ms > limit:
            raise StaleFrameError(name, age_ms, limit)


# --------------------------------------------------------------------------------------------------
# Hardware cameras: a capture thread that keeps only the newest frame


class _ThreadedCamera:
    """Newest-frame capture on a background thread; subclasses open, grab and release a device.

    The thread owns the device: it opens nothing, but releases the device when it ends, so a read
    blocked inside the SDK is never released underneath it.
    """

    MAX_READ_FAILURES = 10  # consecutive failed reads before the camera counts as disconnected
    FAILURE_BACKOFF_S = 0.01  # wait between failed reads so a dead device does not spin a core
    CONNECT_TIMEOUT_S = 5.0  # the first frame must arrive within this after opening
    CLOSE_TIMEOUT_S = 2.0

    def __init__(self, name: str, image_size: int | tuple[int, int], crop: Crop | None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"camera name must be a non-empty string, got {name!r}")
        self.name = name
        self.image_size = rig_size(image_size)
        self.crop = check_crop(crop)
        self._lock = threading.Lock()
        self._first = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._frame: np.ndarray | None = None
        self._stamp = -math.inf
        self._error: CameraError | None = None
        self._ended = False
        self.frames_captured = 0

    # Subclass hooks ---------------------------------------------------------------------------
    def _describe(self) -> str:
        raise NotImplementedError

    def _open(self) -> None:
        """Open the device; raise CameraError naming it on failure."""
        raise NotImplementedError

    def _grab(self) -> np.ndarray | None:
        """Block for the next frame; ``None`` when the read failed."""
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def _to_rgb(self, frame: np.ndarray) -> np.ndarray:
        return frame

    def _pace(self) -> None:
        """Called before each grab (file playback waits for the frame's time here)."""

    def _exhausted(self) -> bool:
        """True when a failed read means the source ended (a file), not a failure."""
        return False

    # The contract -----------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True while the capture thread runs or has delivered a source's last frame."""
        return self._thread is not None

    @property
    def source_ended(self) -> bool:
        """True once a finite source (a video file) delivered its last frame; it then goes stale."""
        return self._ended

    def connect(self) -> None:
        """Open the device, start the capture thread and wait for the first frame (idempotent).

        A camera whose thread failed is reopened. Raises :class:`CameraError` when the device
        cannot be opened or sends nothing within ``CONNECT_TIMEOUT_S``, and ``ValueError`` when
        ``crop`` does not fit the frames it sends.
        """
        if self._thread is not None and self._error is None:
            return
        self.close()
        self._first.clear()
        self._stop.clear()
        self._frame, self._stamp, self._error, self._ended = None, -math.inf, None, False
        self._open()
        self._thread = threading.Thread(target=self._capture, name=f"camera-{self.name}", daemon=True)
        self._thread.start()
        if not self._first.wait(self.CONNECT_TIMEOUT_S) or self._frame is None:
            error = self._error
            self.close()
            raise CameraError(
                f"camera {self.name!r} ({self._describe()}) sent no frame within "
                f"{self.CONNECT_TIMEOUT_S:g} s of opening: check it streams (another program "
                "holding it, USB bandwidth, a wrong resolution or fps)"
            ) from error
        try:
            fit_to_rig(self._to_rgb(self._frame), self.image_size, self.crop)
        except (TypeError, ValueError) as err:
            self.close()
            raise ValueError(f"camera {self.name!r}: {err}") from err

    def _capture(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set():
                self._pace()
                if self._stop.is_set():
                    break
                frame = self._grab()
                stamp = time.monotonic()  # as close to the capture as the SDK lets us see it
                if frame is None:
                    if self._exhausted():
                        self._ended = True
                        break
                    failures += 1
                    if failures >= self.MAX_READ_FAILURES:
                        raise CameraError(
                            f"camera {self.name!r} ({self._describe()}): {failures} reads failed in "
                            "a row: the camera was disconnected or stopped streaming; check the "
                            "cable and power, then connect() again"
                        )
                    self._stop.wait(self.FAILURE_BACKOFF_S)
                    continue
                failures = 0
                with self._lock:
                    self._frame, self._stamp = frame, stamp
                    self.frames_captured += 1
                self._first.set()
        except CameraError as err:
            self._error = err
        except Exception as err:  # an SDK exception kills only this camera, and says so on read
            self._error = CameraError(
                f"camera {self.name!r} ({self._describe()}): capture failed with "
                f"{type(err).__name__}: {err}"
            )
            self._error.__cause__ = err
        finally:
            self._first.set()  # wake connect() whatever happened
            try:
                self._release()
            except Exception:  # releasing a dead device may fail; nothing left to save
                pass

    def read_latest(self, max_age_ms: float | None = None) -> tuple[np.ndarray, float]:
        """The newest frame (a new uint8 (H, W, 3) RGB array at the rig size) and its capture time.

        Raises:
            CameraError: not connected, or the capture thread failed (the message says why).
            StaleFrameError: the newest frame is older than ``max_age_ms``.
        """
        if self._thread is None:
            raise CameraError(
                f"camera {self.name!r} ({self._describe()}) is not connected: call connect() first"
            )
        if self._error is not None:
            raise CameraError(str(self._error)) from self._error
        with self._lock:
            frame, stamp = self._frame, self._stamp
        _check_age(self.name, stamp, max_age_ms)
        return fit_to_rig(self._to_rgb(frame), self.image_size, self.crop), stamp

    def close(self) -> None:
        """Stop the capture thread (it releases the device). Idempotent."""
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None:
            thread.join(self.CLOSE_TIMEOUT_S)

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


def _require_cv2() -> Any:
    try:
        import cv2
    except ImportError as err:
        raise ImportError(
            "OpenCV cameras need opencv: pip install 'stepwise[cameras]'"
        ) from err
    return cv2


class OpenCVCamera(_ThreadedCamera):
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


# --------------------------------------------------------------------------------------------------
# Intel RealSense


def _require_realsense() -> Any:
    try:
        import pyrealsense2 as rs
    except (ImportError, OSError) as err:
        raise ImportError(
            "RealSense cameras need pyrealsense2: pip install 'stepwise[realsense]' (the wheel "
            "also needs the system library libusb-1.0, e.g. apt-get install libusb-1.0-0)"
        ) from err
    return rs


class RealSenseCamera(_ThreadedCamera):
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


# --------------------------------------------------------------------------------------------------
# The simulator's rig


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
        _check_max_age(max_age_ms)
        images = self.robot.observe().get("images", {})
        if self.name not in images:
            raise CameraError(
                f"sim camera {self.name!r} is not in the robot's rig {sorted(images)}: add it to "
                "the robot's cameras or use one of those names"
            )
        frame = _check_frame(images[self.name])
        stamp = time.monotonic()
        if self.image_size is not None and frame.shape[:2] != self.image_size:
            frame = fit_to_rig(frame, self.image_size)
        return frame, stamp

    def close(self) -> None:
        """Nothing to release: the robot owns the renderer. Idempotent."""


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
    limit = _check_max_age(max_age_ms)
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
