"""``stepwise-import`` and ``stepwise-export``: LeRobotDataset in and out (``episodes.lerobot`` does
the mapping through lerobot's own loader and writer; this adds the rig's framing of
``real.cameras`` and the command lines)::

    stepwise-import source=<dataset dir or repo_id> out=data/imported.hdf5 \\
        cameras=[observation.images.top:corner,wrist:gripperPOV] image_size=96 success=auto
    stepwise-export source=data/imported.hdf5 out=exports/my_dataset repo_id=me/my_dataset

The options are documented in ``configs/import_data.yaml`` and ``configs/export_data.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def parse_cameras(value: Any) -> dict[str, str] | list[str] | None:
    """``[key:camera, ...]`` (or the string ``key:camera,...``) -> ``{key: camera}``; ``[camera, ...]``
    stays a list of rig cameras; a dict or None as it is."""
    if value is None or isinstance(value, dict):
        return value
    items = [str(p).strip() for p in value] if isinstance(value, (list, tuple)) else \
        [p.strip() for p in str(value).strip().strip("{}[]").split(",")]
    items = [p for p in items if p]
    if all(":" in p for p in items):
        return {k.strip(): v.strip() for k, v in (p.rsplit(":", 1) for p in items)}
    if any(":" in p for p in items):
        raise ValueError(f"cameras={value!r}: write key:camera,key:camera (every item mapped) or camera,camera")
    return items


def registry_task(instruction: str) -> str | None:
    """The registered task whose instruction is ``instruction`` (a dataset Stepwise exported), else None."""
    from sim import get_task, list_tasks

    return next((name for name in list_tasks() if get_task(name).instruction == instruction.strip()), None)


def import_lerobot(source: str, out: str | Path, cameras: Any = None, image_size: Any = None, success: str = "auto",
                   task: str | None = None, repo_id: str | None = None) -> int:
    """Import every episode of a LeRobot dataset into the episode store ``out``; returns the count."""
    from episodes import EpisodeWriter
    from episodes.lerobot import read_lerobot

    frame_fn = None
    if image_size is not None:
        from real.cameras import fit_to_rig

        frame_fn = lambda frame: fit_to_rig(frame, image_size)  # noqa: E731
    count = 0
    writer = None
    try:
        for ep in read_lerobot(source, cameras=parse_cameras(cameras), success=success, task=task,
                               repo_id=repo_id, frame_fn=frame_fn):
            if task is None and ep.task == ep.instruction:  # no Meta-World id or description: Stepwise's own words?
                ep.task = registry_task(ep.instruction) or ep.task
            if writer is None:
                env_args = {"task": ep.task, "cameras": ep.cameras, "image_size": list(ep.image_size),
                            "source": f"lerobot:{source}"}
                writer = EpisodeWriter(out, env_args=env_args)
            writer.add(ep)
            count += 1
    finally:
        if writer is not None:
            writer.close()
    return count


def export_lerobot(store: str | Path, out: str | Path, repo_id: str = "local/stepwise") -> Path:
    """Write every episode of the store ``store`` as a LeRobot dataset at ``out``."""
    from episodes import EpisodeStore
    from episodes.lerobot import write_lerobot

    with EpisodeStore(store) as st:
        return write_lerobot(iter(st), out, repo_id=repo_id)


FORMATS = ("lerobot",)


def _check_format(cfg: Any) -> None:
    if cfg.format not in FORMATS:
        raise ValueError(f"format={cfg.format!r} unknown: use one of {FORMATS}")


def _import_job(cfg: Any, run_dir: Path) -> str:
    _check_format(cfg)
    from omegaconf import OmegaConf

    cams = OmegaConf.to_container(cfg.cameras) if OmegaConf.is_config(cfg.cameras) else cfg.cameras
    size = OmegaConf.to_container(cfg.image_size) if OmegaConf.is_config(cfg.image_size) else cfg.image_size
    n = import_lerobot(str(cfg.source), cfg.out, cameras=cams, image_size=size, success=cfg.success,
                       task=cfg.task, repo_id=cfg.repo_id)
    return f"imported {n} episodes from {cfg.source} -> {cfg.out}"


def _export_job(cfg: Any, run_dir: Path) -> str:
    _check_format(cfg)
    return f"exported {cfg.source} -> {export_lerobot(cfg.source, cfg.out, repo_id=cfg.repo_id)}"


def import_main() -> None:
    """Console entry point (Hydra): ``stepwise-import source=<dataset> out=<store.hdf5>``."""
    from configs.entry import hydra_job
    from episodes import StoreError

    hydra_job("stepwise-import", "import_data", _import_job, errors=(ValueError, ImportError, StoreError))


def export_main() -> None:
    """Console entry point (Hydra): ``stepwise-export source=<store.hdf5> out=<new dir>``."""
    from configs.entry import hydra_job
    from episodes import StoreError

    hydra_job("stepwise-export", "export_data", _export_job,
              errors=(ValueError, ImportError, StoreError, FileExistsError))
