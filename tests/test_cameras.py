"""The camera contract: OpenCV against a real video file, RealSense against a fake SDK, the sim rig.

The OpenCV driver reads MJPG .avi files written here with cv2.VideoWriter: frame k has its left
half grey at 8*k (the frame counter, robust to JPEG) and its right half pure red in BGR terms.
"""

from __future__ import annotations

import sys
import threading
import time
import types

import cv2
import numpy as np
import pytest

import real.cameras.frames as camera_frames
from real.cameras import (
    Camera,
    CameraError,
    OpenCVCamera,
    RealSenseCamera,
    SimCamera,
    StaleFrameError,
    fit_to_rig,
    make_camera,
    read_frames,
)

N_FRAMES = 30


def write_video(path, n_frames: int = N_FRAMES, fps: float = 30.0) -> str:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (640, 480))
    assert writer.isOpened()
    for k in range(n_frames):
        frame = np.zeros((480, 640, 3), np.uint8)
        frame[:, :320] = 8 * k
        frame[:, 320:] = (0, 0, 255)  # BGR: pure red
        writer.write(frame)
    writer.release()
    return str(path)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> str:
    return write_video(tmp_path_factory.mktemp("video") / "counter.avi")


def counter(rgb: np.ndarray) -> int:
    """The frame index encoded in the grey left half (at 96 px: columns 0..47)."""
    h = rgb.shape[0]
    return int(round(float(rgb[h // 2, rgb.shape[1] // 5].mean()) / 8))


def block_pattern(height: int, width: int) -> np.ndarray:
    """R = row // 5, G = column // 5, B = 7: after a 5x area shrink every pixel says where it came from."""
    rows, cols = np.mgrid[:height, :width]
    return np.stack([rows // 5, cols // 5, np.full_like(rows, 7)], axis=-1).astype(np.uint8)


@pytest.fixture(params=["cv2", "numpy"])
def resize_backend(request, monkeypatch):
    if request.param == "numpy":
        monkeypatch.setattr(camera_frames, "_optional_cv2", lambda: None)
    return request.param


# ---------------------------------------------------------------------------------- fit_to_rig


def test_fit_to_rig_centre_crops_to_the_rig_aspect_then_area_shrinks(resize_backend):
    out = fit_to_rig(block_pattern(480, 640), 96)
    # 640x480 -> the centred 480x480 (columns 80..559) -> 96x96: a 5x5 block per output pixel
    rows, cols = np.mgrid[:96, :96]
    np.testing.assert_array_equal(out[..., 0], rows)
    np.testing.assert_array_equal(out[..., 1], cols + 16)
    assert (out[..., 2] == 7).all() and out.dtype == np.uint8 and out.flags.c_contiguous

    tall = fit_to_rig(block_pattern(640, 480), 96)  # portrait: rows 80..559 kept
    np.testing.assert_array_equal(tall[..., 0], rows + 16)
    np.testing.assert_array_equal(tall[..., 1], cols)

    wide = fit_to_rig(block_pattern(480, 640), (48, 96))  # 2:1 rig: rows 80..399 kept
    assert wide.shape == (48, 96, 3)
    assert wide[0, :, 0].min() >= 16 and wide[-1, :, 0].max() <= 80
    assert abs(float(wide[..., 0].mean()) - (16 + 79) / 2) < 1.0
    assert wide[:, 0, 1].max() <= 1 and wide[:, -1, 1].min() >= 126


def test_fit_to_rig_explicit_crop_in_source_pixels(resize_backend):
    out = fit_to_rig(block_pattern(480, 640), (40, 20), crop=(10, 20, 200, 100))
    rows, cols = np.mgrid[:40, :20]
    np.testing.assert_array_equal(out[..., 0], rows + 2)
    np.testing.assert_array_equal(out[..., 1], cols + 4)

    frame = block_pattern(480, 640)
    same = fit_to_rig(frame, (100, 100), crop=[5, 5, 100, 100])  # no resize: still a new array
    np.testing.assert_array_equal(same, frame[5:105, 5:105])
    same[:] = 0
    assert frame[5:105, 5:105].any()

    up = fit_to_rig(frame, 96, crop=(0, 0, 24, 24))  # enlarging
    assert up.shape == (96, 96, 3) and up[0, 0, 0] == 0 and up[-1, -1, 0] == 4


def test_numpy_resize_matches_opencv_within_one_level():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    for size in [(96, 96), (84, 84), (64, 96), (120, 200)]:  # integer and fractional ratios
        ours = camera_frames._resize_numpy(frame, size)
        ref = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        assert np.abs(ours.astype(int) - ref).max() <= 1, size
    small = frame[:20, :30]
    ours = camera_frames._resize_numpy(small, (60, 90))
    ref = cv2.resize(small, (90, 60), interpolation=cv2.INTER_LINEAR)
    assert np.abs(ours.astype(int) - ref).max() <= 1


@pytest.mark.parametrize(
    "crop, match",
    [
        ((0, 0, 481, 100), "outside the 640x480"),
        ((400, 600, 100, 100), "row 500 and column 700"),
        ((-1, 0, 10, 10), "top, left >= 0"),
        ((0, 0, 0, 10), "height, width >= 1"),
        ((0, 0, 10), r"\[top, left, height, width\]"),
        ((0, 0, 10.5, 10), r"\[top, left, height, width\]"),
        ("0,0,10,10", r"\[top, left, height, width\]"),
    ],
)
def test_fit_to_rig_rejects_bad_crops(crop, match):
    with pytest.raises(ValueError, match=match):
        fit_to_rig(np.zeros((480, 640, 3), np.uint8), 96, crop=crop)


def test_fit_to_rig_rejects_bad_frames_and_sizes():
    with pytest.raises(TypeError, match=r"uint8 \(H, W, 3\).*float32.*\(48, 64, 3\).*astype"):
        fit_to_rig(np.zeros((48, 64, 3), np.float32), 32)
    with pytest.raises(ValueError, match=r"got shape \(48, 64\)"):
        fit_to_rig(np.zeros((48, 64), np.uint8), 32)
    with pytest.raises(ValueError, match=r"got shape \(48, 64, 4\)"):
        fit_to_rig(np.zeros((48, 64, 4), np.uint8), 32)
    with pytest.raises(TypeError, match="numpy array.*list"):
        fit_to_rig([[[0, 0, 0]]], 32)
    with pytest.raises(ValueError, match="image_size"):
        fit_to_rig(np.zeros((48, 64, 3), np.uint8), (0, 32))
    with pytest.raises(ValueError, match="image_size"):
        fit_to_rig(np.zeros((48, 64, 3), np.uint8), "96")


# ----------------------------------------------------------------------- OpenCV on a real file


def test_opencv_file_frames_are_rgb_at_the_rig_size(video):
    for size, shape in [(96, (96, 96, 3)), ((64, 96), (64, 96, 3))]:
        cam = OpenCVCamera("front", video, size)
        cam.connect()
        try:
            frame, stamp = cam.read_latest(max_age_ms=1000)
        finally:
            cam.close()
        assert isinstance(cam, Camera)
        assert frame.shape == shape and frame.dtype == np.uint8 and frame.flags.c_contiguous
        red = frame[shape[0] // 2, -shape[1] // 5].astype(int)  # right half: red painted in BGR
        assert red[0] > 240 and red[1] < 15 and red[2] < 15, red
        assert 0 <= time.monotonic() - stamp < 1.0


def test_opencv_serves_the_newest_frame_with_monotonic_stamps(video):
    cam = OpenCVCamera("front", video, 96)  # plays at the file's 30 fps
    cam.connect()
    try:
        first, t1 = cam.read_latest(max_age_ms=500)
        stamps = [t1]
        for _ in range(5):
            stamps.append(cam.read_latest()[1])
        time.sleep(0.25)
        later, t2 = cam.read_latest(max_age_ms=500)
        captured = cam.frames_captured
    finally:
        cam.close()
    assert all(b >= a for a, b in zip(stamps, stamps[1:])) and t2 > stamps[-1]
    k1, k2 = counter(first), counter(later)
    # 0.25 s at 30 fps is ~7 frames: a buffered driver would hand out k1 + 1
    assert k2 - k1 >= 4, (k1, k2)
    assert captured - 3 <= k2 <= captured - 1  # the newest frame (the thread may have moved on)
    assert 0.15 < t2 - t1 < 1.0


def test_opencv_end_of_file_goes_stale_and_names_the_camera(video):
    cam = OpenCVCamera("overhead", video, 96, fps=300)  # replays the 30 frames in 0.1 s
    fresh = SimCamera("wrist", types.SimpleNamespace(observe=lambda: {"images": {"wrist": np.zeros((96, 96, 3), np.uint8)}}))
    cam.connect()
    try:
        deadline = time.monotonic() + 5
        while counter(cam.read_latest()[0]) != N_FRAMES - 1:
            assert time.monotonic() < deadline, "the file never reached its last frame"
            time.sleep(0.01)
        time.sleep(0.15)
        with pytest.raises(StaleFrameError, match=r"'overhead'.*ms old, over the 100 ms limit.*Fix") as err:
            cam.read_latest(max_age_ms=100)
        assert err.value.camera == "overhead" and err.value.age_ms > 100 and cam.source_ended
        last, _ = cam.read_latest()  # without a limit the last frame is still there
        assert counter(last) == N_FRAMES - 1
        with pytest.raises(StaleFrameError, match="'overhead'") as err:
            read_frames({"wrist": fresh, "overhead": cam}, max_age_ms=100)
        assert err.value.camera == "overhead"
        frames, stamps = read_frames({"wrist": fresh, "overhead": cam}, max_age_ms=None)
        assert set(frames) == set(stamps) == {"wrist", "overhead"}
    finally:
        cam.close()


def test_opencv_missing_device_is_a_camera_error(tmp_path):
    with pytest.raises(CameraError, match=r"'wrist'.*cannot open.*nope\.avi"):
        OpenCVCamera("wrist", str(tmp_path / "nope.avi"), 96).connect()
    with pytest.raises(CameraError, match=r"'wrist'.*cannot open OpenCV device 57.*plugged in"):
        OpenCVCamera("wrist", "57", 96, backend="v4l2").connect()
    with pytest.raises(ValueError, match="unknown OpenCV backend 'nosuch'"):
        OpenCVCamera("wrist", 0, 96, backend="nosuch").connect()


def test_opencv_crop_outside_the_frame_fails_at_connect(video):
    cam = OpenCVCamera("front", video, 96, crop=(0, 0, 500, 500))
    with pytest.raises(ValueError, match=r"'front'.*outside the 640x480"):
        cam.connect()
    assert not cam.connected


def test_opencv_connect_and_close_are_idempotent_and_stop_the_thread(video):
    cam = OpenCVCamera("front", video, 96)
    with pytest.raises(CameraError, match="not connected: call connect"):
        cam.read_latest()
    cam.connect()
    thread = cam._thread
    cam.connect()
    assert cam._thread is thread and thread.is_alive()
    cam.close()
    cam.close()
    assert not thread.is_alive() and cam._cap is None
    assert not any(t.name == "camera-front" for t in threading.enumerate())
    with pytest.raises(CameraError, match="not connected"):
        cam.read_latest()


def test_opencv_unplugged_camera_reports_the_failure(video, monkeypatch):
    real_capture = cv2.VideoCapture

    class Unplugged:
        """A live device (the real decoder on the video) that stops answering after 3 frames."""

        def __init__(self, device, api):
            self.cap, self.reads = real_capture(video), 0

        def isOpened(self):
            return True

        def set(self, prop, value):
            return True

        def read(self):
            self.reads += 1
            return self.cap.read() if self.reads <= 3 else (False, None)

        def release(self):
            self.cap.release()

    monkeypatch.setattr(cv2, "VideoCapture", Unplugged)
    cam = OpenCVCamera("gripper", 4, 96)
    cam.MAX_READ_FAILURES = 3
    cam.connect()
    try:
        deadline = time.monotonic() + 3
        with pytest.raises(CameraError, match=r"'gripper'.*device 4.*3 reads failed.*disconnected"):
            while time.monotonic() < deadline:
                cam.read_latest()
                time.sleep(0.01)
    finally:
        cam.close()


def test_opencv_without_cv2_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ImportError, match=r"pip install 'stepwise\[cameras\]'"):
        OpenCVCamera("front", 0, 96).connect()


# ------------------------------------------------------------------- RealSense with a fake SDK


def fake_realsense(serials=("111", "222"), deliver=True) -> types.ModuleType:
    """A stand-in for pyrealsense2 that records every call; frames count up in the red channel."""
    rs = types.ModuleType("pyrealsense2")
    rs.calls = []
    rs.stream = types.SimpleNamespace(color="stream.color", depth="stream.depth")
    rs.format = types.SimpleNamespace(rgb8="format.rgb8", bgr8="format.bgr8")
    rs.camera_info = types.SimpleNamespace(serial_number="camera_info.serial_number")

    class Device:
        def __init__(self, serial):
            self.serial = serial

        def get_info(self, key):
            assert key == rs.camera_info.serial_number
            return self.serial

    class context:
        def query_devices(self):
            return [Device(s) for s in serials]

    class config:
        def __init__(self):
            self.serial, self.streams = None, []

        def enable_device(self, serial):
            rs.calls.append(("enable_device", serial))
            self.serial = serial

        def enable_stream(self, *args):
            rs.calls.append(("enable_stream", *args))
            self.streams.append(args)

    class Frame:
        def __init__(self, data):
            self.data = data

        def __bool__(self):
            return True

        def get_data(self):
            return self.data

    class Frames:
        def __init__(self, color):
            self.color = color

        def get_color_frame(self):
            return self.color

    class pipeline:
        def __init__(self):
            self.buffer, self.n = None, 0

        def start(self, cfg):
            rs.calls.append(("start",))
            if cfg.serial is not None and cfg.serial not in serials:
                raise RuntimeError("No device connected")
            _, width, height, _, self.fps = cfg.streams[0]
            self.buffer = np.zeros((height, width, 3), np.uint8)  # one buffer, reused like the SDK's

        def wait_for_frames(self, timeout_ms=5000):
            if not deliver:
                time.sleep(timeout_ms / 1000)
                raise RuntimeError(f"Frame didn't arrive within {timeout_ms}")
            time.sleep(1 / self.fps)
            self.n += 1
            self.buffer[:] = (min(self.n, 255), 0, 0)
            return Frames(Frame(self.buffer))

        def stop(self):
            rs.calls.append(("stop",))

    rs.context, rs.config, rs.pipeline = context, config, pipeline
    return rs


def test_realsense_streams_rgb_by_serial_and_records_sdk_calls(monkeypatch):
    rs = fake_realsense()
    monkeypatch.setitem(sys.modules, "pyrealsense2", rs)
    cam = RealSenseCamera("side", "222", (64, 96), fps=60)
    cam.connect()
    try:
        first, t1 = cam.read_latest(max_age_ms=500)
        time.sleep(0.1)
        later, t2 = cam.read_latest(max_age_ms=500)
    finally:
        cam.close()
        cam.close()
    assert isinstance(cam, Camera)
    assert first.shape == (64, 96, 3) and first.dtype == np.uint8
    assert (first[..., 1:] == 0).all() and later[0, 0, 0] > first[0, 0, 0]  # RGB as delivered, newer
    assert t2 > t1
    assert rs.calls == [
        ("enable_device", "222"),
        ("enable_stream", "stream.color", 640, 480, "format.rgb8", 60),
        ("start",),
        ("stop",),
    ]


def test_realsense_wrong_serial_lists_connected_devices(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyrealsense2", fake_realsense())
    with pytest.raises(CameraError, match=r"'side'.*serial 999.*No device connected.*\['111', '222'\]"):
        RealSenseCamera("side", "999", 96).connect()


def test_realsense_without_frames_is_a_camera_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyrealsense2", fake_realsense(deliver=False))
    cam = RealSenseCamera("side", None, 96)
    cam.WAIT_TIMEOUT_MS, cam.MAX_READ_FAILURES, cam.CONNECT_TIMEOUT_S = 5, 3, 1.0
    with pytest.raises(CameraError, match=r"'side'.*first found.*no frame"):
        cam.connect()
    assert not cam.connected


def test_realsense_without_the_sdk_names_the_extra_and_libusb(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyrealsense2", None)
    with pytest.raises(ImportError, match=r"stepwise\[realsense\].*libusb-1\.0"):
        RealSenseCamera("side", None, 96).connect()


# ------------------------------------------------------------------------------ the sim rig


@pytest.fixture(scope="module")
def sim_robot():
    from real.sim_driver import SimRobot

    robot = SimRobot("metaworld/drawer-open", cameras=["corner"], image_size=64)
    robot.connect()
    robot.reset(seed=0)
    yield robot
    robot.close()


def test_sim_camera_returns_the_rig_render(sim_robot):
    cam = SimCamera("corner", sim_robot)
    cam.connect()
    frame, stamp = cam.read_latest(max_age_ms=1)
    expected = sim_robot.observe()["images"]["corner"]
    assert isinstance(cam, Camera) and frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame, expected)
    assert 0 <= time.monotonic() - stamp < 0.5
    small, _ = SimCamera("corner", sim_robot, image_size=32).read_latest()
    np.testing.assert_array_equal(small, fit_to_rig(expected, 32))
    with pytest.raises(CameraError, match=r"'gripperPOV' is not in the robot's rig \['corner'\]"):
        SimCamera("gripperPOV", sim_robot).read_latest()
    cam.close()
    cam.close()


# -------------------------------------------------------------------------- make_camera


def test_make_camera_builds_every_type(video, sim_robot, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyrealsense2", fake_realsense())
    cv = make_camera("front", {"type": "opencv", "device": video, "crop": [0, 80, 480, 480]}, 32)
    rs = make_camera("side", {"type": "realsense", "serial": "111", "fps": 15}, (32, 48))
    sim = make_camera("corner", {"type": "sim", "robot": sim_robot}, 64)
    assert isinstance(cv, OpenCVCamera) and cv.crop == (0, 80, 480, 480) and cv.device == video
    assert isinstance(rs, RealSenseCamera) and rs.serial == "111" and rs.image_size == (32, 48)
    assert isinstance(sim, SimCamera)
    for cam in (cv, rs, sim):
        assert isinstance(cam, Camera) and not getattr(cam, "connected", False)
        cam.connect()
        frame, _ = cam.read_latest(max_age_ms=1000)
        assert frame.shape[:2] == cam.image_size
        cam.close()


def test_make_camera_rejects_bad_specs():
    with pytest.raises(ValueError, match=r"unknown camera type 'gopro'.*\['opencv', 'realsense', 'sim'\]"):
        make_camera("front", {"type": "gopro"}, 96)
    with pytest.raises(ValueError, match=r"unknown camera type None"):
        make_camera("front", {"device": 0}, 96)
    with pytest.raises(ValueError, match=r"opencv cameras take \[.*'device'.*\], not \['serial'\]"):
        make_camera("front", {"type": "opencv", "serial": "1"}, 96)
    with pytest.raises(ValueError, match=r"'front'.*device"):
        make_camera("front", {"type": "opencv"}, 96)
    with pytest.raises(ValueError, match="crop"):
        make_camera("front", {"type": "opencv", "device": 0, "crop": [0, 0, -5, 5]}, 96)
    with pytest.raises(ValueError, match="sim cameras take"):
        make_camera("corner", {"type": "sim", "robot": None, "crop": [0, 0, 5, 5]}, 96)


def test_read_frames_and_stale_error_pickle():
    import pickle

    err = pickle.loads(pickle.dumps(StaleFrameError("front", 250.0, 100.0, {"side": 120.0})))
    assert (err.camera, err.age_ms, err.max_age_ms, err.others) == ("front", 250.0, 100.0, {"side": 120.0})
    assert "'side' 120 ms" in str(err)
    with pytest.raises(ValueError, match="max_age_ms"):
        read_frames({}, max_age_ms=0)
