"""Hardware cameras' common base: a capture thread that keeps only the newest frame.

A slow control loop never drains a backlog of old frames, a frozen camera turns into a
:class:`~real.cameras.base.StaleFrameError` on read, and a dead one into a
:class:`~real.cameras.base.CameraError`.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np

from real.cameras.base import CameraError, Crop, check_age
from real.cameras.frames import check_crop, fit_to_rig, rig_size

# --------------------------------------------------------------------------------------------------
# Hardware cameras: a capture thread that keeps only the newest frame


class ThreadedCamera:
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
        check_age(self.name, stamp, max_age_ms)
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

