"""Where a reward model's training and evaluation data comes from: episode stores named by a file,
a directory of stores, or a list of either. Imports nothing of ours."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable


def resolve_stores(data: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Store files from a store file, a directory of ``*.hdf5`` stores, or a list of either.

    Raises FileNotFoundError for a missing path and ValueError for a directory without stores.
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
                raise ValueError(f"data directory {str(p)!r} holds no .hdf5 stores; collect some with stepwise-collect")
            paths += found
        elif p.exists():
            paths.append(p)
        else:
            raise FileNotFoundError(
                f"episode store {str(p)!r} does not exist; give a store file, a directory of .hdf5 stores, or a list"
            )
    return paths
