"""Durable files: written whole or not at all, and checked when read back.

Every checkpoint of the project (a learning run's ``checkpoint.pt``, a reward-model trainer's
``trainer_state.pt``) is its bytes followed by a one-line trailer with their sha256
(``\\nSTEPWISE-SHA256 <64 hex>\\n``), written to a temporary file that is fsynced, renamed over the
old one, and the directory fsynced: a kill (or a power cut) at any instant leaves the old file or
the new one, never a mix. ``torch.load`` still reads such a file directly (a zip archive ignores
bytes after its end), and a copied or restored file stays verifiable. Bytes only: the callers
serialise (``torch.save``) and deserialise. Imports nothing of ours.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

TRAILER = b"\nSTEPWISE-SHA256 "  # + 64 hex digits + newline, after the body
TRAILER_LEN = len(TRAILER) + 65


class ChecksumError(ValueError):
    """A file whose trailer's sha256 does not match its bytes: damaged after it was written."""


def write_durably(path: str | Path, write: Callable[[Path], None]) -> None:
    """``write(tmp_path)``, fsync, rename over ``path``, fsync the directory: all or nothing, even on power loss."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checksummed(path: str | Path, body: bytes) -> None:
    """``body`` and its sha256 trailer, written durably."""
    trailer = TRAILER + hashlib.sha256(body).hexdigest().encode() + b"\n"
    write_durably(path, lambda tmp: Path(tmp).write_bytes(body + trailer))


def read_checksummed(path: str | Path) -> tuple[bytes, bool]:
    """``(body, verified)``: the bytes before a matching trailer and True, or the whole file and False
    when it has no trailer (written before trailers). Raises :class:`ChecksumError` on a mismatch."""
    raw = Path(path).read_bytes()
    tail = raw[-TRAILER_LEN:]
    if len(raw) > TRAILER_LEN and tail.startswith(TRAILER):
        body = raw[:-TRAILER_LEN]
        if hashlib.sha256(body).hexdigest().encode() != tail[len(TRAILER):-1]:
            raise ChecksumError(f"{path} fails its checksum: it was damaged after it was written; restore it from a "
                                "copy, or delete it to start over")
        return body, True
    return raw, False


def file_sha256(path: str | Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()
