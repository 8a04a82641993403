"""``EpisodeStore``: reads a store (episodes, attrs, single frames fast); ``summarize`` prints one.

The format is :mod:`episodes.format`, writing :mod:`episodes.writer`.

Concurrency: one writer per file (enforced with an advisory ``flock``); readers
in OTHER processes may open the file while a writer exists (files are opened
with HDF5 file locking off) and see the episodes complete when they opened it.
Within one process HDF5 refuses to open a file read-only and read-write at once,
so close an EpisodeStore before ``add()``-ing to the same file (a StoreError
says so). A reader reopens its file after ``fork`` and pickles as its path, so
it is safe in DataLoader worker processes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

import h5py
import numpy as np

from .episode import Episode
from .errors import CorruptStoreError, MissingCameraError, StoreError
from .format import FORMAT_VERSION, RESERVED_ATTRS, demo_names, open_checked, plain_value
from .journal import JournaledFile, read_journal

__all__ = ["EpisodeStore", "summarize"]


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
            self._names = demo_names(data)
            self._env_args = json.loads(plain_value(data.attrs.get("env_args", "{}")) or "{}")
            self._all_cameras: list[str] = []
            self._image_size: tuple[int, int] | None = None
            if self._names:
                g = data[self._names[0]]
                self._all_cameras = list(json.loads(plain_value(g.attrs["cameras"])))
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
        j = read_journal(self.path) if self.path.is_file() else None
        self._fobj = JournaledFile(self.path, j[0], j[1], readonly=True) if j else None
        return open_checked(self.path, "r", fileobj=self._fobj)

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
        raw = {k: plain_value(v) for k, v in g.attrs.items()}
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
        out["extra_attrs"] = {k: v for k, v in raw.items() if k not in RESERVED_ATTRS}
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
