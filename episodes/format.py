"""The project's one on-disk episode format: HDF5 in the robomimic layout.

Layout (one file holds many episodes; robomimic's loaders read it as-is)::

    /data                          attrs: stepwise_format_version (int, = FORMAT_VERSION)
                                          total (int, transitions over all episodes)
                                          env_args (JSON str, free-form metadata given at creation)
    /data/demo_<n>                 attrs: num_samples (int T = number of actions), task (str),
                                          instruction (str), cameras (JSON list of str), fps (float),
                                          success (bool), keyframes (int64 (N,)), seed (int),
                                          kind (str), plus the writer's extra scalar/str attrs
    /data/demo_<n>/obs/<cam>_image uint8   (T+1, H, W, 3)  one frame per chunk, compressed
    /data/demo_<n>/obs/proprio     float32 (T+1, P)
    /data/demo_<n>/obs/state       float32 (T+1, S)   optional, privileged simulator state
    /data/demo_<n>/actions         float32 (T, A)
    /data/demo_<n>/rewards         float32 (T,)
    /data/demo_<n>/dones           uint8   (T,)      (read back as bool)
    /data/demo_<n>/infos/<key>     float32 (T,)      optional per-step scalar signals

Observations have T+1 rows, actions/rewards/dones have T rows: obs[t] is what the
robot saw before actions[t], and obs[T] is the observation after the last action
(kept so that a reward model can score the final state). ``keyframes`` are frame
indices into the obs axis where each sub-step of the task ENDS, strictly
increasing, each in [1, T].

This module is the format's leaf: its version, its names, opening a file and checking it is a
store of this version, and decoding attrs. Writing lives in :mod:`episodes.writer` (crash safety
through :mod:`episodes.journal`), reading in :mod:`episodes.store`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import CorruptStoreError, StoreError, StoreNotFoundError, VersionError

FORMAT_VERSION = 1

# a complete episode's group name; the writer builds one under INCOMPLETE_PREFIX, then renames it
DEMO_RE = re.compile(r"^demo_(\d+)$")
INCOMPLETE_PREFIX = "_incomplete"
# attrs the format owns; anything else on a demo group is an extra attr
RESERVED_ATTRS = frozenset(
    {"num_samples", "task", "instruction", "cameras", "fps", "success", "keyframes", "seed", "kind"}
)
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def h5open(path: str | os.PathLike, mode: str) -> h5py.File:
    """Open an HDF5 file with HDF5's own file locking off, so readers coexist with a writer."""
    try:
        try:
            return h5py.File(path, mode, locking=False)
        except TypeError:  # pragma: no cover - h5py < 3.5 has no locking kwarg
            os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
            return h5py.File(path, mode)
    except OSError as e:
        if "already open" in str(e):
            # HDF5 lets one process hold a file read-only OR read-write, not both at once
            raise StoreError(
                f"{str(path)!r} is already open in this process in another mode ({e}); close the "
                "EpisodeStore reading it before writing with EpisodeWriter (or write from another process)"
            ) from None
        raise


def open_checked(path: Path, mode: str, fileobj: Any = None) -> h5py.File:
    """Open ``path`` (through ``fileobj`` if given) and check it is a stepwise store; raise a clear StoreError otherwise."""
    if not path.exists():
        raise StoreNotFoundError(
            f"episode store {str(path)!r} does not exist; check the path, or create it with EpisodeWriter({str(path)!r})"
        )
    if not path.is_file():
        raise CorruptStoreError(f"episode store {str(path)!r} is not a regular file; pass the path of an .hdf5 file")
    fix = "re-collect the episodes or restore the file from a backup"
    try:
        is_h5 = h5py.is_hdf5(str(path))
    except OSError as e:
        raise CorruptStoreError(f"episode store {str(path)!r} cannot be read ({e}); {fix}") from None
    if not is_h5:
        raise CorruptStoreError(
            f"episode store {str(path)!r} is not an HDF5 file (no HDF5 signature; size {path.stat().st_size} bytes); {fix}"
        )
    try:
        f = h5open(path, mode) if fileobj is None else h5py.File(fileobj, mode)
    except OSError as e:
        # truncated files fail here with 'truncated file: eof = ..., stored_eof = ...'
        raise CorruptStoreError(f"episode store {str(path)!r} is damaged or truncated ({e}); {fix}") from None
    try:
        if "data" not in f or not isinstance(f["data"], h5py.Group):
            raise VersionError(
                f"{str(path)!r} is HDF5 but has no /data group, so it is not a stepwise episode store; "
                "write stores with episodes.EpisodeWriter"
            )
        ver = f["data"].attrs.get("stepwise_format_version")
        if ver is None:
            raise VersionError(
                f"{str(path)!r} has no /data attr 'stepwise_format_version' (a plain robomimic file, or not "
                f"written by stepwise); re-write it with episodes.EpisodeWriter (format version {FORMAT_VERSION})"
            )
        if int(ver) != FORMAT_VERSION:
            hint = "upgrade this checkout of stepwise" if int(ver) > FORMAT_VERSION else "re-collect or convert it"
            raise VersionError(
                f"{str(path)!r} has stepwise_format_version={int(ver)} but this code reads version "
                f"{FORMAT_VERSION}; {hint}"
            )
    except (StoreError, OSError, KeyError) as e:
        f.close()
        if isinstance(e, StoreError):
            raise
        raise CorruptStoreError(f"episode store {str(path)!r} has damaged metadata ({e}); {fix}") from None
    return f


def demo_names(data: h5py.Group) -> list[str]:
    """Names of complete demos in ``data``, ordered by their integer index (demo_2 before demo_10)."""
    found = [(int(m.group(1)), k) for k in data.keys() if (m := DEMO_RE.match(k))]
    return [k for _, k in sorted(found)]


def plain_value(v: Any) -> Any:
    """Turn an h5py attr value into a plain Python value (np.bool_ -> bool, bytes -> str, ...)."""
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def check_name(kind: str, name: Any) -> None:
    """Raise StoreError unless ``name`` (a camera or infos key, the ``kind``) can be an HDF5 dataset name."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise StoreError(
            f"{kind} name {name!r} is not allowed; use a non-empty str of letters, digits, '_', '-', '.' "
            "(it becomes an HDF5 dataset name)"
        )


def parse_compression(compression: str) -> tuple[str | None, int | None]:
    """(h5py compression, level) for "gzip", "gzip-N", "lzf" or "none"; raise StoreError otherwise."""
    c = compression.lower().strip()
    if c in ("none", ""):
        return None, None
    if c == "lzf":
        return "lzf", None
    m = re.fullmatch(r"gzip(?:[-_:]?(\d))?", c)
    if m:
        level = int(m.group(1)) if m.group(1) else 1
        if 0 <= level <= 9:
            return "gzip", level
    raise StoreError(
        f"compression={compression!r} is not understood; use 'gzip' (level 1, the default), 'gzip-N' "
        "for level N in 0..9, 'lzf', or 'none'"
    )

