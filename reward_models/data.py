"""Where a reward model's training and evaluation data comes from: episode stores named by a file,
a directory of stores, or a list of either; the one resolver of every reward-model family's
trainer and of the evaluation. Imports nothing of ours."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable


class NoStoresError(FileNotFoundError, ValueError):
    """A data directory without ``*.hdf5`` stores: both a missing file and a bad ``data=`` value
    (the evaluation and the perceptual fit always raised ValueError for it, the trainers of
    pairs / TCN / VLM classifier FileNotFoundError; either ``except`` still catches it)."""


def resolve_stores(data: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Store files from a store file, a directory of ``*.hdf5`` stores, or a list of either.

    Raises FileNotFoundError for a missing path, :class:`NoStoresError` (a FileNotFoundError and a
    ValueError) for a directory without stores and ValueError for an empty list.
    """
    items = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if not items:
        raise ValueError("data= is empty: give a store file, a directory of .hdf5 stores, or a list of them")
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(p.glob("*.hdf5"))
            if not found:
                raise NoStoresError(f"data directory {str(p)!r} holds no .hdf5 stores; collect some with stepwise-collect")
            paths += found
        elif p.exists():
            paths.append(p)
        else:
            raise FileNotFoundError(
                f"episode store {str(p)!r} does not exist; give a store file, a directory of .hdf5 stores, or a list"
            )
    return paths
