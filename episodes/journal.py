"""The page journal that makes every read-write open of a store crash-safe.

HDF5 has no crash consistency: closing a file writes the changed metadata blocks
one by one, superblock last, and a kill in between leaves links to objects past
the stored end-of-allocation ("len not positive after adjustment for EOA"), which
the stress test hit within a few hundred kills. So every read-write open goes
through JournaledFile (h5py's fileobj driver): writes past the file's old end go
straight to disk (new space nobody references yet), writes into the old region
are held in copy-on-write pages. commit() makes the new space durable, writes the
held pages to a redo journal (checksummed, renamed into place), applies them and
deletes the journal. A kill before the journal exists leaves the old file intact;
a kill after it leaves a journal that the next open replays (writer, :func:`recover`)
or overlays in memory (reader, :func:`read_journal`). The journal is a few pages per
episode, not a file copy.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

__all__ = ["JournaledFile", "read_journal", "recover"]

_PAGE = 4096
_JMAGIC = b"STEPWISE-JOURNAL-1\n"


def _journal_path(path: Path) -> Path:
    return path.with_name(path.name + ".journal")


class JournaledFile:
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
        """Durably apply the held pages and final size via a redo journal; see the module docstring."""
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


def read_journal(path: Path) -> tuple[dict[int, bytearray], int] | None:
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


def recover(path: Path, fsync: bool = True) -> None:
    """Writer-side: replay a committed journal left by a killed writer, drop torn temp journals."""
    j = read_journal(path)
    jp = _journal_path(path)
    if j is not None:
        with open(path, "r+b") as fh:
            _apply(fh, j[0], j[1], fsync)
    if jp.exists():
        jp.unlink()
    for stale in path.parent.glob(f"{path.name}.journal.tmp-*"):
        stale.unlink(missing_ok=True)

