"""`stepwise-failures`: a learning policy's failures as training data for reward models.

Reward models trained on scripted demonstrations and scripted failures rate a learning policy's
near-misses as done: no policy failure was in their data. This job reads the online episodes that
``stepwise-train`` keeps (``<run>/online_episodes.hdf5``, `policies.online_store`) and copies the failed
ones into ``<out>/<task>.hdf5``, one store per task, which ``stepwise-train-rm data=[...,<out>]`` reads
beside the demonstrations (the VLM classifier takes every frame of them as "not done").

- ``select=failures``: every episode without the simulator's success;
  ``select=near_misses``: those failures the run's own reward rated done: ended by the success
  signal (a classifier's false positive) or with the progress model's final progress >=
  ``near_miss_progress``.
- Runs of a held-out task (``configs/task_split/<task_split>.yaml``) are refused, before anything is
  copied: reward models are trained on the train split only.
- Resumes: a copied episode keeps its ``source_run`` and ``online_episode``; a rerun (after a kill,
  or with more runs) skips those already in ``out``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from policies.online_store import KIND, STORE_NAME

log = logging.getLogger("stepwise.failures")
SELECTS = ("failures", "near_misses")


class FailureSetError(ValueError):
    """A setting or run that ``stepwise-failures`` cannot use; the message names it and the fix."""


def run_store(run: str | Path, heldout: set[str], split_name: str) -> tuple[Path, str]:
    """(the online store of ``run``, its task), refused when the run has none or its task is held out."""
    from episodes import EpisodeStore

    run = Path(run)
    path = run / STORE_NAME
    if not run.is_dir():
        raise FailureSetError(f"runs: {run} is not a directory: give stepwise-train run directories (hydra.run.dir)")
    if not path.is_file():
        raise FailureSetError(f"runs: {run} holds no {STORE_NAME}: train it with keep_episodes=true (the default)")
    with EpisodeStore(path) as store:
        tasks = {store.env_args.get("task")} | {store.episode_attrs(i)["task"] for i in range(len(store))}
    tasks.discard(None)
    if len(tasks) != 1:
        raise FailureSetError(f"runs: {path} names tasks {sorted(tasks)}, expected one: is it a stepwise-train store?")
    task = tasks.pop()
    if task in heldout:
        raise FailureSetError(
            f"runs: {run} is a run of {task}, a held-out task of task_split={split_name} (never trained on): "
            "drop it from runs=, and learn the failure set from runs on train-split tasks "
            f"(configs/task_split/{split_name}.yaml)")
    return path, task


def is_selected(attrs: dict, select: str, near_miss_progress: float) -> bool:
    """Whether an online episode (its ``episode_attrs``) goes into the failure set."""
    if attrs["success"] or attrs["kind"] != KIND:
        return False
    if select == "failures":
        return True
    extra = attrs["extra_attrs"]
    progress = float(extra.get("final_progress", math.nan))
    return bool(extra.get("claimed_success", False)) or (not math.isnan(progress) and progress >= near_miss_progress)


def copied(target: Path) -> set[tuple[str, int]]:
    """(source run, online episode) of every episode already in the failure store ``target``."""
    from episodes import EpisodeStore

    if not Path(target).exists():
        return set()
    with EpisodeStore(target) as have:
        extras = [have.episode_attrs(i)["extra_attrs"] for i in range(len(have))]
    return {(e.get("source_run"), e.get("online_episode")) for e in extras}


def build_failure_set(runs, out: str | Path, select: str = "failures", near_miss_progress: float = 0.9,
                      task_split: str = "default") -> dict[str, int]:
    """Copy the failures of ``runs`` (stepwise-train run directories) into ``<out>/<task>.hdf5``; returns
    the number of episodes each task's store holds. Every run is checked before anything is copied."""
    from tqdm import tqdm

    from episodes import EpisodeStore, EpisodeWriter, StoreError
    from sim.tasks import get_task, task_split as split_of

    runs = [runs] if isinstance(runs, (str, Path)) else list(runs or [])
    if not runs:
        raise FailureSetError("runs= is empty: give stepwise-train run directories, e.g. runs=[runs/a,runs/b]")
    if select not in SELECTS:
        raise FailureSetError(f"select={select!r} unknown: use one of {SELECTS}")
    heldout = set(split_of(task_split)["heldout"])
    sources = [run_store(r, heldout, task_split) for r in runs]
    counts: dict[str, int] = {}
    for (path, task), run in zip(sources, runs):
        with EpisodeStore(path) as store:
            env_args = {**store.env_args, "kind": "policy_failures"}
            target = Path(out) / f"{get_task(task).short_name}.hdf5"
            done = copied(target)
            try:
                writer = EpisodeWriter(target, env_args=env_args)
            except StoreError as err:
                raise FailureSetError(f"{err}\nruns: {run} renders other frames than the runs already in {target}: "
                                      "give it another out=") from err
            source = str(Path(run).resolve())
            with writer:
                picked = [i for i in range(len(store)) if is_selected(store.episode_attrs(i), select, near_miss_progress)]
                for i in tqdm(picked, desc=f"failures {Path(run).name}", unit="ep"):
                    ep = store[i]
                    if (source, ep.extra_attrs.get("online_episode")) in done:
                        continue
                    ep.extra_attrs = {**ep.extra_attrs, "source_run": source}
                    writer.add(ep)
                counts[task] = len(writer)
    return counts


def main() -> None:
    """Console entry point (Hydra): ``stepwise-failures runs=[runs/a,runs/b] out=data/policy_failures``."""
    from configs.entry import hydra_job
    from episodes import StoreError
    from sim.tasks import UnknownTaskError

    hydra_job("stepwise-failures", "failures", _job, errors=(FailureSetError, StoreError, UnknownTaskError))


def _job(cfg, run_dir: Path) -> str:
    """Build the failure set ``cfg`` asks for; returns the closing line."""
    from omegaconf import OmegaConf

    runs = OmegaConf.to_container(cfg.runs) if OmegaConf.is_config(cfg.runs) else cfg.runs
    counts = build_failure_set(runs, cfg.out, str(cfg.select), float(cfg.near_miss_progress), str(cfg.task_split))
    return f"{sum(counts.values())} policy failures of {len(counts)} task(s) in {cfg.out}: " + ", ".join(
        f"{task} {n}" for task, n in sorted(counts.items()))


if __name__ == "__main__":
    main()
