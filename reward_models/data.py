"""Where a reward model's training and evaluation data comes from: episode stores named by a file,
a directory of stores, a LeRobot dataset directory (converted once into a cached store, see
:func:`lerobot_store`), or a list of these; the one resolver of every reward-model family's
trainer and of the evaluation. Imports only ``episodes``."""

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
        if (p / "meta" / "info.json").is_file():  # a LeRobotDataset: train and evaluate on it directly
            paths.append(lerobot_store(p))
        elif p.is_dir():
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


def lerobot_store(dataset: str | os.PathLike) -> Path:
    """An episode store holding the LeRobot dataset at ``dataset`` (frames at the dataset's own size,
    every camera under its key's last part, success from ``next.success``/``next.reward``, else every
    episode counts as a success), converted once into ``$STEPWISE_CACHE/lerobot/`` (default
    ``~/.cache/stepwise``) and reused while the dataset's ``meta/`` files are unchanged. For another
    camera mapping or size, import it with ``stepwise-import source=<dir> out=<store>``."""
    import hashlib

    from episodes import EpisodeWriter
    from episodes.lerobot import read_lerobot

    root = Path(dataset).resolve()
    digest = hashlib.sha1(str(root).encode())
    for f in sorted((root / "meta").rglob("*")):
        if f.is_file():
            digest.update(f"{f.relative_to(root)}:{f.stat().st_size}:{f.stat().st_mtime_ns}".encode())
    cache = Path(os.environ.get("STEPWISE_CACHE", Path.home() / ".cache" / "stepwise")) / "lerobot"
    out = cache / f"{root.name}-{digest.hexdigest()[:12]}.hdf5"
    if out.exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    writer = None
    try:
        for ep in read_lerobot(root):
            if writer is None:
                writer = EpisodeWriter(tmp, env_args={"task": ep.task, "cameras": ep.cameras,
                                                      "image_size": list(ep.image_size), "source": f"lerobot:{root}"},
                                       fsync=False)
            writer.add(ep)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise NoStoresError(f"LeRobot dataset {str(root)!r} has no episode of two frames or more")
    os.replace(tmp, out)  # whole or absent: a killed conversion leaves only its .tmp
    return out
