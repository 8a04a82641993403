"""``stepwise-score``: a reward model as a data tool. Scores every episode of an episode store or a
LeRobot dataset, writes per-frame progress and P(done) into a scored copy, and lists the suspect
episodes::

    stepwise-score data=data/demos/drawer-close.hdf5 model=general out=results/scored.hdf5
    stepwise-score data=path/to/lerobot_dataset model=general out=results/scored_dataset

A store's copy carries, per episode, ``infos["progress"]`` and ``infos["success_prob"]`` (float32
(T,): the frame after each action) and the first frame's values as the attributes
``progress_start`` / ``success_prob_start``; a LeRobot dataset's copy (written by lerobot's own
writer) gains the columns ``stepwise.progress`` and ``stepwise.success_prob``. The copy goes through
Stepwise's mapping (``episodes.lerobot``): cameras under their keys' last part, the last frame's
action zero, columns Stepwise does not know dropped. Next to ``out``,
``<out>.summary.json`` and ``<out>.summary.md`` list the suspect episodes:

- ``no_progress``: progress never rises more than ``rise`` above its first frame;
- ``labelled_success_not_done``: marked successful, but P(done) never reaches the threshold;
- ``done_but_labelled_failure``: marked a failure, but P(done) reaches the threshold.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

SUSPECT_KINDS = ("no_progress", "labelled_success_not_done", "done_but_labelled_failure")


def _episodes(data: Path) -> tuple[Iterator[Any], str]:
    """Episodes of a store file or a LeRobot dataset directory, and which it is."""
    from episodes.lerobot import is_lerobot_dataset

    if is_lerobot_dataset(data):
        from episodes.lerobot import read_lerobot

        return read_lerobot(data), "lerobot"
    if data.is_file():
        from episodes import EpisodeStore

        def gen():
            with EpisodeStore(data) as st:
                yield from st

        return gen(), "store"
    raise FileNotFoundError(f"data={str(data)!r} is neither an episode store (.hdf5 file) nor a LeRobot dataset "
                            "directory (with meta/info.json)")


def check_suspects(progress: np.ndarray, done: np.ndarray, success: bool, rise: float, threshold: float) -> list[str]:
    """The suspect kinds (see the module docstring) of one episode's (T+1,) progress and P(done)."""
    found = []
    if float(np.max(progress) - progress[0]) <= rise:
        found.append("no_progress")
    reached = bool(np.max(done) >= threshold)
    if success and not reached:
        found.append("labelled_success_not_done")
    if not success and reached:
        found.append("done_but_labelled_failure")
    return found


def progress_weights(progress: np.ndarray, floor: float = 0.0, cap: float = 3.0) -> np.ndarray:
    """Reward-aligned behaviour-cloning weights of an episode's T actions from its (T+1,) progress:
    each action's progress gain ``Phi_{t+1} - Phi_t`` over the episode's mean positive gain, clipped to
    ``[floor, cap]`` (after LeRobot's SARM: frames that advance the task weigh more, stalls and reversals
    weigh ``floor``). float32 (T,), mean 1 over the positive-gain actions; all ones when progress never
    rises (no information: plain BC). Off by default wherever it is used."""
    p = np.asarray(progress, np.float64)
    if p.ndim != 1 or len(p) < 2:
        raise ValueError(f"progress must be a (T+1,) curve with T >= 1, got shape {p.shape}")
    gain = np.diff(p)
    pos = gain[gain > 0]
    if len(pos) == 0:
        return np.ones(len(gain), np.float32)
    return np.clip(gain / pos.mean(), float(floor), float(cap)).astype(np.float32)


def score_episodes(model: Any, episodes: Iterable[Any], rise: float = 0.1, threshold: float | None = None):
    """Yield ``(episode, progress (T+1,), success_prob (T+1,), suspects)`` for each episode."""
    from reward_models.base import FramesError

    thr = float(threshold if threshold is not None else getattr(getattr(model, "cfg", None), "threshold", 0.5))
    for i, ep in enumerate(episodes):
        missing = [c for c in model.cameras if c not in ep.images]
        if missing:
            raise FramesError(f"episode {i} has cameras {ep.cameras}, the model scores {list(model.cameras)} (missing "
                              f"{missing}): import the data with those camera names (stepwise-import cameras=[key:camera])")
        frames = {c: ep.images[c] for c in model.cameras}
        progress, done = (np.asarray(a, np.float32) for a in model.score(frames, ep.instruction))
        yield ep, progress, done, check_suspects(progress, done, bool(ep.success), rise, thr)


def run(cfg: Any) -> dict:
    """Score ``cfg.data`` with ``cfg.model``, write the scored copy to ``cfg.out`` and the summary; returns it."""
    import reward_models

    data, out = Path(str(cfg.data)), Path(str(cfg.out))
    if out.exists():
        raise FileExistsError(f"out={str(out)!r} exists: give a new path for the scored copy")
    episodes, kind = _episodes(data)
    model = reward_models.load(str(cfg.model), device=cfg.get("device"))
    rows, scored = [], []
    for n, (ep, progress, done, suspects) in enumerate(score_episodes(model, episodes, float(cfg.rise), cfg.get("threshold"))):
        rows.append({"episode": n, "task": ep.task, "success": bool(ep.success), "steps": ep.num_steps,
                     "progress_start": float(progress[0]), "progress_max": float(progress.max()),
                     "progress_end": float(progress[-1]), "success_prob_max": float(done.max()), "suspects": suspects})
        scored.append((ep, progress, done))
        if cfg.get("max_episodes") and n + 1 >= int(cfg.max_episodes):
            break
    if not scored:
        raise ValueError(f"data={str(data)!r} holds no episodes to score")
    if kind == "lerobot":
        from episodes.lerobot import write_lerobot

        write_lerobot((ep for ep, _, _ in scored), out, repo_id=f"local/{out.name}",
                      progress={i: (p, d) for i, (_, p, d) in enumerate(scored)})
    else:
        _write_store(scored, out, data)
    summary = {"data": str(data), "model": str(cfg.model), "out": str(out), "episodes": len(rows),
               "rise": float(cfg.rise), "suspects": {k: [r["episode"] for r in rows if k in r["suspects"]] for k in SUSPECT_KINDS},
               "rows": rows}
    Path(f"{out}.summary.json").write_text(json.dumps(summary, indent=1))
    Path(f"{out}.summary.md").write_text(summary_markdown(summary))
    return summary


def _write_store(scored: list, out: Path, data: Path) -> None:
    from episodes import EpisodeStore, EpisodeWriter

    with EpisodeStore(data) as st:
        env_args = dict(st.env_args)
    with EpisodeWriter(out, env_args={**env_args, "scored_from": str(data)}) as w:
        for ep, progress, done in scored:
            infos = {**ep.infos, "progress": progress[1:], "success_prob": done[1:]}
            attrs = {**ep.extra_attrs, "progress_start": float(progress[0]), "success_prob_start": float(done[0])}
            w.add(replace(ep, infos=infos, extra_attrs=attrs))


def summary_markdown(summary: dict) -> str:
    """The summary as a Markdown table, suspect episodes first."""
    lines = [f"# Scored {summary['data']} with {summary['model']}", "",
             f"{summary['episodes']} episodes; suspects: "
             + ", ".join(f"{k} {len(v)}" for k, v in summary["suspects"].items()), "",
             "| episode | task | labelled success | steps | progress start / max / end | max P(done) | suspect |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(summary["rows"], key=lambda r: (not r["suspects"], r["episode"])):
        lines.append(f"| {r['episode']} | {r['task']} | {r['success']} | {r['steps']} | {r['progress_start']:.2f} / "
                     f"{r['progress_max']:.2f} / {r['progress_end']:.2f} | {r['success_prob_max']:.2f} | "
                     f"{', '.join(r['suspects']) or '-'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Console entry point (Hydra): ``stepwise-score data=<store or LeRobot dir> model=<ckpt> out=<new path>``."""
    from configs.entry import hydra_job
    from episodes import StoreError
    from reward_models.base import CheckpointError

    hydra_job("stepwise-score", "score", _job, errors=(StoreError, CheckpointError, ValueError, FileExistsError, ImportError))


def _job(cfg: Any, run_dir: Path) -> str:
    s = run(cfg)
    counts = ", ".join(f"{k} {len(v)}" for k, v in s["suspects"].items())
    return f"scored {s['episodes']} episodes -> {s['out']}; suspects: {counts} (see {s['out']}.summary.md)"


if __name__ == "__main__":
    main()
