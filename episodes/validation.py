"""Array checks behind ``Episode.validate`` and the array-aware equality of two episodes.

Each check raises StoreError naming the Episode field and the fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import StoreError
from .format import plain_value

if TYPE_CHECKING:  # a type hint only: episode.py imports this module
    from .episode import Episode

__all__ = ["is_real", "check_2d", "check_1d", "check_finite", "episodes_equal"]


def is_real(a: np.ndarray) -> bool:
    """Whether ``a`` holds numbers (integers, floats or bools)."""
    return np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating) or a.dtype == np.bool_


def check_2d(name: str, val: Any, rows: int, what: str) -> None:
    """Raise unless Episode field ``name`` is a finite real (rows, D) array; ``what`` says what the rows are."""
    a = np.asarray(val)
    if a.ndim != 2 or not is_real(a):
        raise StoreError(
            f"Episode.{name} must be a real-valued 2-D ({what.split()[0]}, D) array, got dtype {a.dtype} shape "
            f"{a.shape}; reshape a vector per step to (rows, D)"
        )
    if a.shape[0] != rows:
        raise StoreError(f"Episode.{name} has {a.shape[0]} rows but must have {what} = {rows} (T = len(actions))")
    check_finite(name, a)


def check_1d(name: str, val: Any, rows: int, finite: bool) -> None:
    """Raise unless Episode field ``name`` is a real (rows,) array (and finite, if ``finite``)."""
    a = np.asarray(val)
    if a.shape != (rows,) or not is_real(a):
        raise StoreError(
            f"Episode.{name} must be a real-valued array of shape (T,) = ({rows},), got dtype {a.dtype} "
            f"shape {a.shape}; one value per action"
        )
    if finite:
        check_finite(name, a)


def check_finite(name: str, a: np.ndarray) -> None:
    """Raise if the float array ``a`` (Episode field ``name``) holds NaN or inf, naming the first index."""
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))[0].tolist()
        raise StoreError(
            f"Episode.{name} contains NaN/inf (first at index {bad}); fix the producer (a diverged "
            "controller or simulator) rather than storing it"
        )


def episodes_equal(a: Episode, b: Episode) -> bool:
    """Whether two episodes hold equal arrays and metadata (extra attrs compared as plain values)."""
    def arr_eq(x: Any, y: Any) -> bool:
        return np.array_equal(np.asarray(x), np.asarray(y))

    return (
        list(a.images) == list(b.images)
        and all(arr_eq(a.images[k], b.images[k]) for k in a.images)
        and arr_eq(a.proprio, b.proprio)
        and arr_eq(a.actions, b.actions)
        and arr_eq(a.rewards, b.rewards)
        and arr_eq(a.dones, b.dones)
        and (a.state is None) == (b.state is None)
        and (a.state is None or arr_eq(a.state, b.state))
        and set(a.infos) == set(b.infos)
        and all(arr_eq(a.infos[k], b.infos[k]) for k in a.infos)
        and arr_eq(a.keyframes, b.keyframes)
        and (a.task, a.instruction, float(a.fps), bool(a.success), int(a.seed), a.kind)
        == (b.task, b.instruction, float(b.fps), bool(b.success), int(b.seed), b.kind)
        and {k: plain_value(v) for k, v in a.extra_attrs.items()} == {k: plain_value(v) for k, v in b.extra_attrs.items()}
    )

