"""Fitting camera frames to the sim rig: frame and crop checks, the centred crop and the resize.

A real frame is cropped (an explicit box, or the largest centred box with the rig's aspect ratio)
and resized with area averaging, so it is framed the way the sim rig framed its images.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from real.cameras.base import Crop

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


def check_frame(frame: Any) -> np.ndarray:
    """Return ``frame`` if it is a uint8 (H, W, 3) RGB array; raise TypeError/ValueError naming the fix."""
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
    frame = check_frame(frame)
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

