"""``EpisodeWriter``: appends episodes to a store, one atomic, crash-safe ``add()`` per episode.

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

The journal itself is :mod:`episodes.journal`; one writer per file (an advisory
``flock``), see :mod:`episodes.store` for readers next to a writer.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from .episode import Episode
from .errors import CorruptStoreError, StoreError
from .format import (
    DEMO_RE,
    FORMAT_VERSION,
    INCOMPLETE_PREFIX,
    demo_names,
    h5open,
    open_checked,
    parse_compression,
    plain_value,
)
from .journal import JournaledFile, recover

try:  # advisory single-writer lock; absent on Windows, where we skip it
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["EpisodeWriter"]


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
        self._compression, self._level = parse_compression(compression)
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
            recover(self.path, fsync)  # finish an add() whose writer was killed after its commit point
            self._open_existing(env_json)
        except BaseException:
            self._unlock()
            raise

    def _create(self, env_json: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # build the empty store under a temp name, then rename: a kill here leaves no half-made file at path
        tmp = self.path.with_name(f".{self.path.name}.creating-{os.getpid()}")
        with h5open(tmp, "w") as f:
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
        jf = JournaledFile(self.path)
        try:
            f = open_checked(self.path, "r+", fileobj=jf)
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
            stale = [k for k in data.keys() if k.startswith(INCOMPLETE_PREFIX)]
            for k in stale:  # left by a writer killed mid-add(); never visible to readers
                del data[k]
            names = demo_names(data)
            self._n = len(names)
            self._next = int(DEMO_RE.match(names[-1]).group(1)) + 1 if names else 0
            self._total = int(sum(int(data[k].attrs["num_samples"]) for k in names))
            if int(data.attrs.get("total", -1)) != self._total:
                data.attrs["total"] = self._total  # heal a count left behind by a crash
            stored = data.attrs.get("env_args", "{}")
            stored = plain_value(stored)
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
        name, tmp = f"demo_{idx}", f"{INCOMPLETE_PREFIX}_demo_{idx}"
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
    cams = json.loads(plain_value(g.attrs["cameras"]))
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

