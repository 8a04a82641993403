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

Crash safety. The writer keeps the file closed between episodes. ``add()`` opens
it, writes the episode under ``data/_incomplete_demo_<n>``, renames it to
``data/demo_<n>`` and closes it. HDF5 itself is not crash-consistent (closing
writes changed metadata blocks one by one, superblock last; a SIGKILL stress
test of a plain ``h5py.File`` writer corrupted a store within a few hundred
kills), so every read-write open goes through a small redo journal: bytes past
the file's old end (the new episode, all new metadata) go straight to disk,
while in-place rewrites of old bytes (a few 4 KiB pages: superblock, the /data
link table and attrs) are held in memory, then written to ``<file>.journal``
(checksummed, fsynced, renamed into place = the commit point), applied, and the
journal deleted. A kill before the commit point leaves the old file untouched
(new bytes past its end are dead space, reused by the next add); a kill after
it leaves a journal that the next writer replays and that readers apply in
memory. Readers also ignore ``_incomplete*`` groups and writers delete them.
With ``fsync=True`` (default) this also holds for power loss on filesystems
that honour fsync. Residual risks: a reader that opens the file while a writer
is inside ``add()`` may see a mix of states (reopen it); a damaged disk or a
``.journal`` file deleted by hand during recovery is not covered.

Concurrency: one writer per file (enforced with an advisory ``flock``); readers
in OTHER processes may open the file while a writer exists (files are opened
with HDF5 file locking off) and see the episodes complete when they opened it.
Within one process HDF5 refuses to open a file read-only and read-write at once,
so close an EpisodeStore before ``add()``-ing to the same file (a StoreError
says so). A reader reopens its file after ``fork`` and pickles as its path, so
it is safe in DataLoader worker processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import h5py
import numpy as np

try:  # advisory single-writer lock; absent on Windows, where we skip it
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

FORMAT_VERSION = 1

__all__ = [
    "FORMAT_VERSION",
    "StoreError",
    "MissingCameraError",
    "CorruptStoreError",
    "VersionError",
    "StoreNotFoundError",
    "Episode",
    "EpisodeWriter",
    "EpisodeStore",
    "summarize",
]

_DEMO_RE = re.compile(r"^demo_(\d+)$")
_INCOMPLETE_PREFIX = "_incomplete"
# attrs the format owns; anything else on a demo group is an extra attr
_RESERVED_ATTRS = frozenset(
    {"num_samples", "task", "instruction", "cameras", "fps", "success", "keyframes", "seed", "kind"}
)
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


# --------------------------------------------------------------------------- errors


class StoreError(ValueError):
    """Base class of every error this module raises about a store or an episode."""


class MissingCameraError(StoreError):
    """A camera was requested that the store (or episode) does not contain."""


class CorruptStoreError(StoreError):
    """The file is missing its HDF5 structure: not HDF5, truncated, or a demo lacks datasets."""


class VersionError(StoreError):
    """The file is HDF5 but not a stepwise store of the version this code reads."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """The store path does not exist (also a FileNotFoundError)."""


# --------------------------------------------------------------------------- helpers


def _h5open(path: str | os.PathLike, mode: str) -> h5py.File:
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


def _open_checked(path: Path, mode: str, fileobj: Any = None) -> h5py.File:
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
        f = _h5open(path, mode) if fileobj is None else h5py.File(fileobj, mode)
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


def _demo_names(data: h5py.Group) -> list[str]:
    """Names of complete demos in ``data``, ordered by their integer index (demo_2 before demo_10)."""
    found = [(int(m.group(1)), k) for k in data.keys() if (m := _DEMO_RE.match(k))]
    return [k for _, k in sorted(found)]


def _py(v: Any) -> Any:
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


def _check_name(kind: str, name: Any) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise StoreError(
            f"{kind} name {name!r} is not allowed; use a non-empty str of letters, digits, '_', '-', '.' "
            "(it becomes an HDF5 dataset name)"
        )


def _parse_compression(compression: str) -> tuple[str | None, int | None]:
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


# --------------------------------------------------------------------------- journaled writes
#
# HDF5 has no crash consistency: closing a file writes the changed metadata blocks
# one by one, superblock last, and a kill in between leaves links to objects past
# the stored end-of-allocation ("len not positive after adjustment for EOA"), which
# the stress test hit within a few hundred kills. So every read-write open goes
# through _JournaledFile (h5py's fileobj driver): writes past the file's old end go
# straight to disk (new space nobody references yet), writes into the old region
# are held in copy-on-write pages. commit() makes the new space durable, writes the
# held pages to a redo journal (checksummed, renamed into place), applies them and
# deletes the journal. A kill before the journal exists leaves the old file intact;
# a kill after it leaves a journal that the next open replays (writer) or overlays
# in memory (reader). The journal is a few pages per episode, not a file copy.

_PAGE = 4096
_JMAGIC = b"STEPWISE-JOURNAL-1\n"


def _journal_path(path: Path) -> Path:
    return path.with_name(path.name + ".journal")


class _JournaledFile:
    """File object for h5py's fileobj driver: old bytes copy-on-write in memory, new bytes to disk."""

    def __init__(self, path: Path, pages: dict[int, bytearray] | None = None, size: int | None = None,
                 readonly: bool = False) -> None:
        self._fh = open(path, "rb" if readonly else "r+b")
        self._readonly = readonly
        disk = os.fstat(self._fh.fileno()).st_size
        self._npages_old = -(-disk // _PAGE)  # pages that hold old data: never written in place
        self._pages: dict[int, bytearray] = dict(pages or {})
        self._size = disk if size is None else size
        self._pos = 0

    # -- the file-object protocol h5py needs
    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = pos if whence == 0 else (self._pos + pos if whence == 1 else self._size + pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def _page(self, n: int) -> bytearray:
        pg = self._pages.get(n)
        if pg is None:
            self._fh.seek(n * _PAGE)
            pg = bytearray(self._fh.read(_PAGE).ljust(_PAGE, b"\0"))
            self._pages[n] = pg
        return pg

    def readinto(self, buf) -> int:
        mv = memoryview(buf).cast("B")
        n = max(0, min(len(mv), self._size - self._pos))
        pos, done = self._pos, 0
        while done < n:
            pno, off = divmod(pos, _PAGE)
            if pno in self._pages:
                k = min(_PAGE - off, n - done)
                mv[done:done + k] = self._pages[pno][off:off + k]
            else:  # read up to the next held page straight from disk
                nxt = min((p for p in self._pages if p > pno), default=None)
                end = n - done if nxt is None else min(n - done, nxt * _PAGE - pos)
                self._fh.seek(pos)
                k = self._fh.readinto(mv[done:done + end])
                if k < end:  # sparse tail: zeros
                    mv[done + k:done + end] = bytes(end - k)
                k = end
            done += k
            pos += k
        self._pos += n
        return n

    def read(self, n: int = -1) -> bytes:
        n = self._size - self._pos if n is None or n < 0 else n
        buf = bytearray(n)
        k = self.readinto(buf)
        return bytes(buf[:k])

    def write(self, data) -> int:
        if self._readonly:
            raise OSError("read-only")
        mv = memoryview(data).cast("B")
        pos, done, n = self._pos, 0, len(mv)
        while done < n:
            pno, off = divmod(pos, _PAGE)
            if pno < self._npages_old:
                k = min(_PAGE - off, n - done)
                self._page(pno)[off:off + k] = mv[done:done + k]
            else:  # new space: nothing on disk refers to it until the journal is applied
                k = n - done
                self._fh.seek(pos)
                self._fh.write(mv[done:done + k])
            done += k
            pos += k
        self._pos = pos
        self._size = max(self._size, pos)
        return n

    def truncate(self, size: int | None = None) -> int:
        self._size = self._pos if size is None else size
        return self._size

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._fh.close()

    # -- commit
    def commit(self, path: Path, fsync: bool) -> None:
        """Durably apply the held pages and final size via a redo journal; see the comment above."""
        self._fh.flush()
        if fsync:
            os.fsync(self._fh.fileno())
        for pno in list(self._pages):  # HDF5 rewrites some blocks unchanged; journal only real changes
            self._fh.seek(pno * _PAGE)
            if self._fh.read(_PAGE).ljust(_PAGE, b"\0") == self._pages[pno]:
                del self._pages[pno]
        if self._pages:
            body = bytearray(_JMAGIC)
            body += self._size.to_bytes(8, "little") + len(self._pages).to_bytes(8, "little")
            for pno in sorted(self._pages):
                body += pno.to_bytes(8, "little") + self._pages[pno]
            body += zlib.crc32(body).to_bytes(4, "little")
            jp = _journal_path(path)
            tmp = jp.with_name(jp.name + f".tmp-{os.getpid()}")
            with open(tmp, "wb") as fh:
                fh.write(body)
                fh.flush()
                if fsync:
                    os.fsync(fh.fileno())
            os.replace(tmp, jp)  # the commit point
            _apply(self._fh, self._pages, self._size, fsync)
            jp.unlink()
        else:
            self._fh.truncate(self._size)
        self._fh.close()


def _apply(fh, pages: dict[int, bytearray], size: int, fsync: bool) -> None:
    for pno, pg in sorted(pages.items()):
        fh.seek(pno * _PAGE)
        fh.write(pg)
    fh.truncate(size)
    fh.flush()
    if fsync:
        os.fsync(fh.fileno())


def _read_journal(path: Path) -> tuple[dict[int, bytearray], int] | None:
    """The committed journal of ``path`` as (pages, size), or None if there is none (or it is torn)."""
    jp = _journal_path(path)
    try:
        body = jp.read_bytes()
    except FileNotFoundError:
        return None
    if len(body) < len(_JMAGIC) + 20 or not body.startswith(_JMAGIC):
        return None
    if zlib.crc32(body[:-4]) != int.from_bytes(body[-4:], "little"):
        return None  # torn by power loss before it was complete: the data file was not touched yet
    o = len(_JMAGIC)
    size = int.from_bytes(body[o:o + 8], "little")
    n = int.from_bytes(body[o + 8:o + 16], "little")
    o += 16
    pages = {}
    for _ in range(n):
        pages[int.from_bytes(body[o:o + 8], "little")] = bytearray(body[o + 8:o + 8 + _PAGE])
        o += 8 + _PAGE
    return pages, size


def _recover(path: Path, fsync: bool = True) -> None:
    """Writer-side: replay a committed journal left by a killed writer, drop torn temp journals."""
    j = _read_journal(path)
    jp = _journal_path(path)
    if j is not None:
        with open(path, "r+b") as fh:
            _apply(fh, j[0], j[1], fsync)
    if jp.exists():
        jp.unlink()
    for stale in path.parent.glob(f"{path.name}.journal.tmp-*"):
        stale.unlink(missing_ok=True)


# --------------------------------------------------------------------------- Episode


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
        if actions.ndim != 2 or not _is_real(actions):
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
            _check_name("camera", cam)
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
        _check_2d("proprio", self.proprio, T + 1, "T+1 (one per observation)")
        if self.state is not None:
            _check_2d("state", self.state, T + 1, "T+1 (one per observation)")
        _check_finite("actions", actions)
        _check_1d("rewards", self.rewards, T, finite=True)
        _check_1d("dones", self.dones, T, finite=False)
        for key, val in self.infos.items():
            _check_name("infos key", key)
            _check_1d(f"infos[{key!r}]", val, T, finite=False)
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
            if key in _RESERVED_ATTRS:
                raise StoreError(
                    f"Episode.extra_attrs key {key!r} collides with a format attr {sorted(_RESERVED_ATTRS)}; rename it"
                )
            if not isinstance(val, (str, bool, int, float, np.bool_, np.integer, np.floating)):
                raise StoreError(
                    f"Episode.extra_attrs[{key!r}] is a {type(val).__name__}; only str/bool/int/float are "
                    "stored; encode structured values with json.dumps(...)"
                )

    def __eq__(self, other: object) -> bool:  # arrays make the dataclass-generated __eq__ ambiguous
        if not isinstance(other, Episode):
            return NotImplemented
        return _episodes_equal(self, other)


def _is_real(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating) or a.dtype == np.bool_


def _check_2d(name: str, val: Any, rows: int, what: str) -> None:
    a = np.asarray(val)
    if a.ndim != 2 or not _is_real(a):
        raise StoreError(
            f"Episode.{name} must be a real-valued 2-D ({what.split()[0]}, D) array, got dtype {a.dtype} shape "
            f"{a.shape}; reshape a vector per step to (rows, D)"
        )
    if a.shape[0] != rows:
        raise StoreError(f"Episode.{name} has {a.shape[0]} rows but must have {what} = {rows} (T = len(actions))")
    _check_finite(name, a)


def _check_1d(name: str, val: Any, rows: int, finite: bool) -> None:
    a = np.asarray(val)
    if a.shape != (rows,) or not _is_real(a):
        raise StoreError(
            f"Episode.{name} must be a real-valued array of shape (T,) = ({rows},), got dtype {a.dtype} "
            f"shape {a.shape}; one value per action"
        )
    if finite:
        _check_finite(name, a)


def _check_finite(name: str, a: np.ndarray) -> None:
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))[0].tolist()
        raise StoreError(
            f"Episode.{name} contains NaN/inf (first at index {bad}); fix the producer (a diverged "
            "controller or simulator) rather than storing it"
        )


def _episodes_equal(a: Episode, b: Episode) -> bool:
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
        and {k: _py(v) for k, v in a.extra_attrs.items()} == {k: _py(v) for k, v in b.extra_attrs.items()}
    )


# --------------------------------------------------------------------------- writer


class EpisodeWriter:
    """Appends episodes to a store, one atomic ``add()`` per episode.

    Creates the file (and parent directories) if missing. If it exists, validates it,
    deletes groups left half-written by a killed writer, and APPENDS: new episodes get
    the next index, which is how collection resumes after being killed. The HDF5 file
    is closed between ``add()`` calls; only an advisory lock is held, so a second
    writer on the same path fails fast while readers can still open it.

    Args:
        path: the .hdf5 file.
        env_args: free-form JSON-serializable metadata for the whole store (task, cameras,
            image_size, ...). When appending, must equal the stored value (or be None to skip
            the check).
        compression: image compression: "gzip" (level 1, default), "gzip-N", "lzf" or "none".
            gzip-1 measured smaller AND faster to read at random than lzf on rendered frames.
        fsync: fsync data and journal at each commit so an episode survives power loss, not only
            process death (costs a few ms per episode; False for throwaway stores).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        env_args: dict | None = None,
        compression: str = "gzip",
        fsync: bool = True,
    ) -> None:
        self.path = Path(path)
        self._compression, self._level = _parse_compression(compression)
        self._fsync = fsync
        self._lock_fd: int | None = None
        if env_args is not None:
            try:
                env_json = json.dumps(env_args, sort_keys=True)
            except (TypeError, ValueError) as e:
                raise StoreError(f"env_args must be JSON-serializable ({e}); convert arrays with .tolist()") from None
        else:
            env_json = None
        if not self.path.exists():
            self._create(env_json or "{}")
        self._lock()
        try:
            _recover(self.path, fsync)  # finish an add() whose writer was killed after its commit point
            self._open_existing(env_json)
        except BaseException:
            self._unlock()
            raise

    def _create(self, env_json: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # build the empty store under a temp name, then rename: a kill here leaves no half-made file at path
        tmp = self.path.with_name(f".{self.path.name}.creating-{os.getpid()}")
        with _h5open(tmp, "w") as f:
            data = f.create_group("data")
            data.attrs["stepwise_format_version"] = FORMAT_VERSION
            data.attrs["total"] = 0
            data.attrs["env_args"] = env_json
        try:
            os.link(tmp, self.path)  # fails if another process created path meanwhile; never clobber data
        except FileExistsError:
            pass
        except OSError:  # filesystems without hard links
            if not self.path.exists():
                os.replace(tmp, self.path)
        if tmp.exists():
            tmp.unlink()

    def _lock(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(
                f"another EpisodeWriter has {str(self.path)!r} open; close it first, or write to a "
                "different file and merge later"
            ) from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the fd releases the flock
            self._lock_fd = None

    @contextlib.contextmanager
    def _txn(self) -> Iterator[h5py.File]:
        """Open the store read-write; on clean exit commit all changes atomically, on error discard them."""
        if not self.path.is_file():
            raise CorruptStoreError(f"episode store {str(self.path)!r} vanished or is not a file; re-create it")
        jf = _JournaledFile(self.path)
        try:
            f = _open_checked(self.path, "r+", fileobj=jf)
        except BaseException:
            jf.close()
            raise
        ok = False
        try:
            yield f
            ok = True
        finally:
            f.close()  # pushes HDF5's metadata into jf's held pages
            if ok:
                jf.commit(self.path, self._fsync)
            else:
                jf.close()  # held pages dropped: the file keeps its old content

    def _open_existing(self, env_json: str | None) -> None:
        with self._txn() as f:
            self._scan(f, env_json)

    def _scan(self, f: h5py.File, env_json: str | None) -> None:
        try:
            data = f["data"]
            stale = [k for k in data.keys() if k.startswith(_INCOMPLETE_PREFIX)]
            for k in stale:  # left by a writer killed mid-add(); never visible to readers
                del data[k]
            names = _demo_names(data)
            self._n = len(names)
            self._next = int(_DEMO_RE.match(names[-1]).group(1)) + 1 if names else 0
            self._total = int(sum(int(data[k].attrs["num_samples"]) for k in names))
            if int(data.attrs.get("total", -1)) != self._total:
                data.attrs["total"] = self._total  # heal a count left behind by a crash
            stored = data.attrs.get("env_args", "{}")
            stored = _py(stored)
            if env_json is not None and json.loads(stored) != json.loads(env_json):
                if not names and json.loads(stored) == {}:
                    data.attrs["env_args"] = env_json
                else:
                    raise StoreError(
                        f"env_args {env_json} differ from those stored in {str(self.path)!r} ({stored}); "
                        "append with the same env_args, pass env_args=None to skip the check, or use a new file"
                    )
            self._ref = _layout_of(data[names[0]]) if names else None
        except KeyError as e:
            raise CorruptStoreError(
                f"episode store {str(self.path)!r} is missing expected entries ({e}); re-collect or restore it"
            ) from None

    def __len__(self) -> int:
        """Number of complete episodes in the store."""
        return self._n

    def add(self, episode: Episode) -> int:
        """Validate ``episode`` and append it atomically; return its demo index (n in demo_<n>).

        Also checks the episode matches the store's existing layout (cameras, image size,
        proprio/action/state dims) and raises StoreError naming the mismatch otherwise.
        """
        if self._lock_fd is None and fcntl is not None:
            raise StoreError(f"EpisodeWriter for {str(self.path)!r} is closed; create a new EpisodeWriter to append")
        episode.validate()
        layout = _layout_of_episode(episode)
        # state is optional per episode, but when two episodes both have it its width must agree
        diffs = [
            f"{k}: store has {self._ref[k]}, episode has {layout[k]}"
            for k in layout
            if self._ref is not None
            and layout[k] != self._ref[k]
            and not (k == "state_dim" and None in (layout[k], self._ref[k]))
        ]
        if diffs:
            raise StoreError(
                f"episode does not match the layout of {str(self.path)!r} ({'; '.join(diffs)}); "
                "write episodes with a different layout to a separate store file"
            )
        idx = self._next
        name, tmp = f"demo_{idx}", f"{_INCOMPLETE_PREFIX}_demo_{idx}"
        T = episode.num_steps
        with self._txn() as f:
            data = f["data"]
            if tmp in data:
                del data[tmp]
            g = data.create_group(tmp)
            obs = g.create_group("obs")
            for cam, img in episode.images.items():
                h, w = img.shape[1:3]
                obs.create_dataset(
                    f"{cam}_image",
                    data=img,
                    chunks=(1, h, w, 3),  # one frame per chunk: a random frame costs one chunk read
                    compression=self._compression,
                    compression_opts=self._level,
                )
            obs.create_dataset("proprio", data=np.asarray(episode.proprio, dtype=np.float32))
            if episode.state is not None:
                obs.create_dataset("state", data=np.asarray(episode.state, dtype=np.float32))
            g.create_dataset("actions", data=np.asarray(episode.actions, dtype=np.float32))
            g.create_dataset("rewards", data=np.asarray(episode.rewards, dtype=np.float32))
            g.create_dataset("dones", data=np.asarray(episode.dones).astype(bool).astype(np.uint8))
            if episode.infos:
                ig = g.create_group("infos")
                for key, val in episode.infos.items():
                    ig.create_dataset(key, data=np.asarray(val, dtype=np.float32))
            a = g.attrs
            a["num_samples"] = T
            a["task"] = episode.task
            a["instruction"] = episode.instruction
            a["cameras"] = json.dumps(list(episode.images))
            a["fps"] = float(episode.fps)
            a["success"] = bool(episode.success)
            a["keyframes"] = np.asarray(episode.keyframes, dtype=np.int64).reshape(-1)
            a["seed"] = int(episode.seed)
            a["kind"] = episode.kind
            for key, val in episode.extra_attrs.items():
                a[key] = val
            data.attrs["total"] = self._total + T
            data.move(tmp, name)  # readers only see demo_<n>; the journal commit makes it all atomic
        self._n += 1
        self._next += 1
        self._total += T
        if self._ref is None or self._ref["state_dim"] is None:
            self._ref = layout
        return idx

    def close(self) -> None:
        """Release the writer lock. The file itself is already closed after every add()."""
        self._unlock()

    def __enter__(self) -> "EpisodeWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._unlock()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"EpisodeWriter({str(self.path)!r}, episodes={self._n})"


def _layout_of(g: h5py.Group) -> dict:
    """Layout of a stored demo: what must agree across episodes of one store."""
    cams = json.loads(_py(g.attrs["cameras"]))
    img = g["obs"][f"{cams[0]}_image"]
    return {
        "cameras": sorted(cams),
        "image_size": tuple(int(x) for x in img.shape[1:3]),
        "proprio_dim": int(g["obs/proprio"].shape[1]),
        "action_dim": int(g["actions"].shape[1]),
        "state_dim": int(g["obs/state"].shape[1]) if "state" in g["obs"] else None,
    }


def _layout_of_episode(ep: Episode) -> dict:
    return {
        "cameras": sorted(ep.images),
        "image_size": ep.image_size,
        "proprio_dim": int(np.shape(ep.proprio)[1]),
        "action_dim": int(np.shape(ep.actions)[1]),
        "state_dim": int(np.shape(ep.state)[1]) if ep.state is not None else None,
    }


# --------------------------------------------------------------------------- reader


class EpisodeStore:
    """Reads a store. Opening validates the file; indexing loads episodes; ``frames`` reads single frames fast.

    Args:
        path: the .hdf5 file.
        cameras: restrict loads to these cameras (in this order); default: all, in the
            order the first episode lists them.

    Raises:
        StoreNotFoundError: the path does not exist.
        CorruptStoreError: not a file, not HDF5, truncated, or damaged.
        VersionError: HDF5 without a matching stepwise_format_version.
        MissingCameraError: a requested camera is absent (the message lists those present).

    The reader sees the episodes complete when it opened the file; reopen to see newer ones.
    """

    def __init__(self, path: str | os.PathLike, cameras: list[str] | None = None) -> None:
        self.path = Path(path)
        self._f: h5py.File | None = None
        self._pid = os.getpid()
        f = self._open()
        self._f = f
        try:
            data = f["data"]
            self._names = _demo_names(data)
            self._env_args = json.loads(_py(data.attrs.get("env_args", "{}")) or "{}")
            self._all_cameras: list[str] = []
            self._image_size: tuple[int, int] | None = None
            if self._names:
                g = data[self._names[0]]
                self._all_cameras = list(json.loads(_py(g.attrs["cameras"])))
                self._image_size = tuple(int(x) for x in g["obs"][f"{self._all_cameras[0]}_image"].shape[1:3])
            elif isinstance(self._env_args.get("cameras"), list):
                self._all_cameras = [str(c) for c in self._env_args["cameras"]]
        except (KeyError, OSError, ValueError) as e:
            self.close()
            raise CorruptStoreError(
                f"episode store {str(self.path)!r} has damaged metadata ({e}); re-collect or restore it"
            ) from None
        if cameras is not None:
            if isinstance(cameras, str):
                cameras = [cameras]
            missing = [c for c in cameras if c not in self._all_cameras]
            if missing:
                self.close()
                raise MissingCameraError(
                    f"camera(s) {missing} not in {str(self.path)!r}; available cameras: {self._all_cameras}. "
                    "Request a subset of those, or re-collect with the camera enabled"
                )
        self._cameras = list(cameras) if cameras is not None else list(self._all_cameras)
        self._ds_cache: dict[tuple[int, str], h5py.Dataset] = {}
        self._lengths: np.ndarray | None = None

    def _open(self) -> h5py.File:
        # a committed journal means a writer died while applying it: read through it, in memory
        j = _read_journal(self.path) if self.path.is_file() else None
        self._fobj = _JournaledFile(self.path, j[0], j[1], readonly=True) if j else None
        return _open_checked(self.path, "r", fileobj=self._fobj)

    # -- file handle, reopened after fork (HDF5 handles must not cross fork)
    @property
    def _file(self) -> h5py.File:
        if self._f is None:
            raise StoreError(f"EpisodeStore for {str(self.path)!r} is closed; open a new EpisodeStore")
        if os.getpid() != self._pid:
            self._f = self._open()
            self._pid = os.getpid()
            self._ds_cache = {}
        return self._f

    def _group(self, i: int) -> h5py.Group:
        n = len(self._names)
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise TypeError(f"episode index must be an int, got {type(i).__name__}")
        if not -n <= i < n:
            raise IndexError(f"episode index {i} out of range for {n} episodes (valid: 0..{n - 1} or negative)")
        name = self._names[int(i) % n]
        try:
            return self._file["data"][name]
        except (KeyError, OSError) as e:
            raise CorruptStoreError(
                f"episode data/{name} in {str(self.path)!r} cannot be read ({e}); re-collect or restore the file"
            ) from None

    def _check_cams(self, cameras: Iterable[str] | None) -> list[str]:
        if cameras is None:
            return self._cameras
        if isinstance(cameras, str):
            cameras = [cameras]
        cams = list(cameras)
        missing = [c for c in cams if c not in self._all_cameras]
        if missing:
            raise MissingCameraError(f"camera(s) {missing} not in {str(self.path)!r}; available: {self._all_cameras}")
        return cams

    def __len__(self) -> int:
        """Number of complete episodes."""
        return len(self._names)

    def __iter__(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, i: int) -> Episode:
        """Load episode ``i`` fully (images of the selected cameras included)."""
        g = self._group(i)
        try:
            attrs = self._attrs(g)
            obs = g["obs"]
            images = {c: obs[f"{c}_image"][()] for c in self._cameras}
            infos = {k: g["infos"][k][()] for k in g["infos"]} if "infos" in g else {}
            return Episode(
                images=images,
                proprio=obs["proprio"][()],
                actions=g["actions"][()],
                rewards=g["rewards"][()],
                dones=g["dones"][()].astype(bool),
                task=attrs["task"],
                instruction=attrs["instruction"],
                fps=attrs["fps"],
                success=attrs["success"],
                keyframes=attrs["keyframes"],
                state=obs["state"][()] if "state" in obs else None,
                infos=infos,
                seed=attrs["seed"],
                kind=attrs["kind"],
                extra_attrs=attrs["extra_attrs"],
            )
        except (KeyError, OSError) as e:
            raise CorruptStoreError(
                f"episode {g.name} in {str(self.path)!r} is incomplete or damaged ({e}); re-collect or restore it"
            ) from None

    def _attrs(self, g: h5py.Group) -> dict:
        raw = {k: _py(v) for k, v in g.attrs.items()}
        try:
            out = {
                "num_samples": int(raw["num_samples"]),
                "task": str(raw["task"]),
                "instruction": str(raw["instruction"]),
                "cameras": list(json.loads(raw["cameras"])),
                "fps": float(raw["fps"]),
                "success": bool(raw["success"]),
                "keyframes": np.asarray(raw["keyframes"], dtype=np.int64).reshape(-1),
                "seed": int(raw.get("seed", -1)),
                "kind": str(raw.get("kind", "expert")),
            }
        except (KeyError, ValueError) as e:
            raise CorruptStoreError(
                f"episode {g.name} in {str(self.path)!r} lacks attr {e}; re-collect or restore it"
            ) from None
        out["extra_attrs"] = {k: v for k, v in raw.items() if k not in _RESERVED_ATTRS}
        return out

    def episode_attrs(self, i: int) -> dict:
        """Attrs of episode ``i`` without loading arrays.

        Keys: num_samples, task, instruction, cameras, fps, success, keyframes (int64 (N,)),
        seed, kind, extra_attrs (dict), index (i), name ("demo_<n>").
        """
        g = self._group(i)
        out = self._attrs(g)
        out["index"] = int(i) % len(self._names)
        out["name"] = g.name.rsplit("/", 1)[-1]
        return out

    def frames(self, i: int, t: int | np.ndarray | list[int], cameras: list[str] | None = None) -> dict[str, np.ndarray]:
        """Random access to frames of episode ``i``.

        Args:
            i: episode index.
            t: an obs index in [0, T] (negative counts from the end), or a 1-D int array of them
                (any order, repeats allowed).
            cameras: subset of cameras; default the store's selection.
        Returns:
            camera -> uint8 (H, W, 3) for an int ``t``, or (len(t), H, W, 3) for an array.
        """
        cams = self._check_cams(cameras)
        scalar = np.ndim(t) == 0
        ts = np.atleast_1d(np.asarray(t))
        if ts.ndim != 1 or (ts.size and not np.issubdtype(ts.dtype, np.integer)):
            raise TypeError(f"t must be an int or 1-D int array, got {t!r}")
        out: dict[str, np.ndarray] = {}
        for c in cams:
            ds = self._dataset(i, c)
            n = ds.shape[0]
            if ts.size and (ts.min() < -n or ts.max() >= n):
                raise IndexError(f"frame index {t} out of range for episode {i} with {n} frames (valid: 0..{n - 1})")
            # one ds[k] per frame: h5py fancy indexing measured ~100x slower for a handful of frames
            if scalar:
                out[c] = ds[int(ts[0])]
            else:
                arr = np.empty((ts.size, *ds.shape[1:]), dtype=np.uint8)
                for j, k in enumerate(ts.tolist()):
                    arr[j] = ds[k]
                out[c] = arr
        return out

    def _dataset(self, i: int, cam: str) -> h5py.Dataset:
        self._file  # reopens (and resets the cache) after fork
        key = (int(i) % max(len(self._names), 1), cam)
        ds = self._ds_cache.get(key)
        if ds is None:
            g = self._group(i)
            try:
                ds = g["obs"][f"{cam}_image"]
            except KeyError:
                raise MissingCameraError(
                    f"episode {g.name} in {str(self.path)!r} has no camera {cam!r}; it has "
                    f"{[k[:-6] for k in g['obs'] if k.endswith('_image')]}"
                ) from None
            self._ds_cache[key] = ds
        return ds

    def lengths(self) -> np.ndarray:
        """int64 (num_episodes,): T (number of actions) of each episode."""
        if self._lengths is None:
            data = self._file["data"]
            self._lengths = np.array([int(data[n].attrs["num_samples"]) for n in self._names], dtype=np.int64)
        return self._lengths

    @property
    def cameras(self) -> list[str]:
        """Selected cameras (all the store's cameras unless restricted at open)."""
        return list(self._cameras)

    @property
    def available_cameras(self) -> list[str]:
        """All cameras in the store."""
        return list(self._all_cameras)

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(H, W) of the frames, or None for an empty store."""
        return self._image_size

    @property
    def env_args(self) -> dict:
        """The free-form metadata given when the store was created."""
        return dict(self._env_args)

    def summary(self) -> dict:
        """Store statistics from attrs only (no arrays loaded).

        Keys: path, format_version, episodes, transitions, success_rate (None if empty),
        lengths {min, mean, max} (None if empty), cameras, image_size, tasks {task: count},
        kinds {kind: count}, env_args.
        """
        lens = self.lengths()
        tasks: dict[str, int] = {}
        kinds: dict[str, int] = {}
        succ = 0
        for i in range(len(self)):
            a = self._attrs(self._group(i))
            tasks[a["task"]] = tasks.get(a["task"], 0) + 1
            kinds[a["kind"]] = kinds.get(a["kind"], 0) + 1
            succ += a["success"]
        n = len(self)
        return {
            "path": str(self.path),
            "format_version": FORMAT_VERSION,
            "episodes": n,
            "transitions": int(lens.sum()),
            "success_rate": succ / n if n else None,
            "lengths": {"min": int(lens.min()), "mean": float(lens.mean()), "max": int(lens.max())} if n else None,
            "cameras": self.available_cameras,
            "image_size": self.image_size,
            "tasks": dict(sorted(tasks.items())),
            "kinds": dict(sorted(kinds.items())),
            "env_args": self.env_args,
        }

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._f is not None:
            try:
                if os.getpid() == self._pid:
                    self._f.close()
            finally:
                self._f = None
                self._ds_cache = {}
                if getattr(self, "_fobj", None) is not None:
                    self._fobj.close()
                    self._fobj = None

    def __enter__(self) -> "EpisodeStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # pickled as (path, cameras) and reopened, so it can be sent to spawn-started DataLoader workers
    def __getstate__(self) -> dict:
        return {"path": str(self.path), "cameras": self._cameras}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], cameras=state["cameras"])

    def __repr__(self) -> str:
        return f"EpisodeStore({str(self.path)!r}, episodes={len(self._names)}, cameras={self._cameras})"


def summarize(path: str | os.PathLike) -> str:
    """Human-readable table of ``EpisodeStore(path).summary()``; raises the store's StoreErrors."""
    with EpisodeStore(path) as st:
        s = st.summary()
    size = os.path.getsize(path)
    size_s = f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"
    rows = [
        ("path", s["path"]),
        ("format version", str(s["format_version"])),
        ("file size", size_s),
        ("episodes", str(s["episodes"])),
        ("transitions", str(s["transitions"])),
        ("success rate", "-" if s["success_rate"] is None else f"{100 * s['success_rate']:.1f}%"),
        (
            "length min/mean/max",
            "-" if s["lengths"] is None else f"{s['lengths']['min']} / {s['lengths']['mean']:.1f} / {s['lengths']['max']}",
        ),
        ("cameras", ", ".join(s["cameras"]) or "-"),
        ("image size", "-" if s["image_size"] is None else f"{s['image_size'][0]}x{s['image_size'][1]}"),
        ("kinds", ", ".join(f"{k}: {v}" for k, v in s["kinds"].items()) or "-"),
        ("env_args", json.dumps(s["env_args"], sort_keys=True)),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    if s["tasks"]:
        lines.append("tasks:")
        tw = max(len(t) for t in s["tasks"])
        lines += [f"  {t:<{tw}}  {c}" for t, c in s["tasks"].items()]
    return "\n".join(lines)
