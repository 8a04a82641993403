"""``Episode``: one episode in memory, the unit the writer stores and the reader loads."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import StoreError
from .format import RESERVED_ATTRS, check_name
from .validation import check_1d, check_2d, check_finite, episodes_equal, is_real

__all__ = ["Episode"]


@dataclass
class Episode:
    """One episode in memory. T = number of actions; observations have T+1 rows.

    Attributes:
        images: camera name -> uint8 (T+1, H, W, 3); insertion order is the camera order.
        proprio: float32 (T+1, P) robot proprioception.
        actions: float32 (T, A).
        rewards: float32 (T,).
        dones: bool (T,).
        task: task id, e.g. "pick-place-v3".
        instruction: natural-language instruction.
        fps: control frequency in Hz (frames per second of the obs axis).
        success: whether the episode solved the task.
        keyframes: int64 (N,) obs indices where each step ENDS, strictly increasing, each in [1, T].
        state: optional float32 (T+1, S) privileged simulator state.
        infos: key -> float32 (T,) per-step scalar signals.
        seed: environment seed (-1 = unknown).
        kind: "expert", "noise", "stall", "reversal", "near_miss", "policy", ...
        extra_attrs: extra scalar (bool/int/float) or str metadata, stored as demo attrs.
    """

    images: dict[str, np.ndarray]
    proprio: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    task: str
    instruction: str
    fps: float
    success: bool
    keyframes: np.ndarray
    state: np.ndarray | None = None
    infos: dict[str, np.ndarray] = field(default_factory=dict)
    seed: int = -1
    kind: str = "expert"
    extra_attrs: dict = field(default_factory=dict)

    @property
    def num_steps(self) -> int:
        """T, the number of actions (observations have T+1 rows)."""
        return int(np.shape(self.actions)[0])

    @property
    def cameras(self) -> list[str]:
        """Camera names in insertion order of ``images``."""
        return list(self.images)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the first camera's frames."""
        first = next(iter(self.images.values()))
        return int(first.shape[1]), int(first.shape[2])

    def validate(self) -> None:
        """Check shapes, dtypes and values; raise StoreError (a ValueError) naming the bad field and the fix.

        Checks: at least one camera; images uint8 (T+1, H, W, 3), all cameras the same H, W;
        proprio/state (T+1, D) numeric and finite; actions (T, A) finite; rewards (T,) finite;
        dones (T,); infos (T,); keyframes 1-D integers, strictly increasing, each in [1, T];
        T >= 1; extra_attrs scalar or str and not shadowing a format attr.
        """
        actions = np.asarray(self.actions)
        if actions.ndim != 2 or not is_real(actions):
            raise StoreError(
                f"Episode.actions must be a real-valued (T, A) array, got dtype {actions.dtype} shape "
                f"{actions.shape}; reshape a 1-D action to (T, 1)"
            )
        T = actions.shape[0]
        if T < 1:
            raise StoreError("Episode.actions has 0 rows; an episode needs at least one action (T >= 1)")
        if not self.images:
            raise StoreError("Episode.images is empty; an episode needs at least one camera, e.g. {'front': frames}")
        hw = None
        for cam, img in self.images.items():
            check_name("camera", cam)
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
                dt = getattr(img, "dtype", type(img).__name__)
                raise StoreError(
                    f"Episode.images[{cam!r}] has dtype {dt}, must be uint8 in [0, 255]; convert floats "
                    "in [0, 1] with (img * 255).round().astype(np.uint8)"
                )
            if img.ndim != 4 or img.shape[3] != 3:
                raise StoreError(
                    f"Episode.images[{cam!r}] has shape {img.shape}, must be (T+1, H, W, 3) RGB "
                    "(channels last; transpose CHW frames with img.transpose(0, 2, 3, 1))"
                )
            if img.shape[0] != T + 1:
                raise StoreError(
                    f"Episode.images[{cam!r}] has {img.shape[0]} frames but actions has T={T} rows; "
                    f"images need T+1={T + 1} (include the observation after the last action)"
                )
            if hw is None:
                hw = img.shape[1:3]
            elif img.shape[1:3] != hw:
                raise StoreError(
                    f"Episode.images[{cam!r}] is {img.shape[1]}x{img.shape[2]} but the first camera is "
                    f"{hw[0]}x{hw[1]}; render all cameras at the same size"
                )
        check_2d("proprio", self.proprio, T + 1, "T+1 (one per observation)")
        if self.state is not None:
            check_2d("state", self.state, T + 1, "T+1 (one per observation)")
        check_finite("actions", actions)
        check_1d("rewards", self.rewards, T, finite=True)
        check_1d("dones", self.dones, T, finite=False)
        for key, val in self.infos.items():
            check_name("infos key", key)
            check_1d(f"infos[{key!r}]", val, T, finite=False)
        kf = np.asarray(self.keyframes)
        if kf.ndim != 1 or (kf.size and not np.issubdtype(kf.dtype, np.integer)):
            raise StoreError(
                f"Episode.keyframes must be a 1-D integer array of frame indices, got dtype {kf.dtype} "
                f"shape {kf.shape}; use np.asarray(keyframes, dtype=np.int64)"
            )
        if kf.size:
            if np.any(np.diff(kf) <= 0):
                raise StoreError(
                    f"Episode.keyframes {kf.tolist()} are not strictly increasing; each entry is the frame "
                    "where one step ends, in order, without repeats"
                )
            if kf[0] < 1 or kf[-1] > T:
                raise StoreError(
                    f"Episode.keyframes {kf.tolist()} out of range: each must be in [1, T={T}] "
                    "(index into the T+1 observations; 0 is the initial frame, before any step ends)"
                )
        for name, val, typ in (("task", self.task, str), ("instruction", self.instruction, str), ("kind", self.kind, str)):
            if not isinstance(val, typ):
                raise StoreError(f"Episode.{name} must be a str, got {type(val).__name__} {val!r}")
        try:
            fps = float(self.fps)
        except (TypeError, ValueError):
            raise StoreError(f"Episode.fps must be a number (Hz), got {self.fps!r}") from None
        if not np.isfinite(fps) or fps <= 0:
            raise StoreError(f"Episode.fps must be a positive finite number (Hz), got {self.fps!r}")
        if not isinstance(self.success, (bool, np.bool_)):
            raise StoreError(f"Episode.success must be a bool, got {type(self.success).__name__} {self.success!r}")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool):
            raise StoreError(f"Episode.seed must be an int (-1 if unknown), got {self.seed!r}")
        for key, val in self.extra_attrs.items():
            if not isinstance(key, str) or not key or "/" in key:
                raise StoreError(f"Episode.extra_attrs key {key!r} must be a non-empty str without '/'")
            if key in RESERVED_ATTRS:
                raise StoreError(
                    f"Episode.extra_attrs key {key!r} collides with a format attr {sorted(RESERVED_ATTRS)}; rename it"
                )
            if not isinstance(val, (str, bool, int, float, np.bool_, np.integer, np.floating)):
                raise StoreError(
                    f"Episode.extra_attrs[{key!r}] is a {type(val).__name__}; only str/bool/int/float are "
                    "stored; encode structured values with json.dumps(...)"
                )

    def __eq__(self, other: object) -> bool:  # arrays make the dataclass-generated __eq__ ambiguous
        if not isinstance(other, Episode):
            return NotImplemented
        return episodes_equal(self, other)

