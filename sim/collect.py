"""`stepwise-collect`: scripted demonstrations (and labelled failures) of a task, on disk.

Every episode carries its step keyframes (the task cut into N >= 2 steps), by the one rule of
``sim.keyframes`` (from the simulator's own signals).

Failure kinds, for reward models that must tell progress from its absence (all replay the clean
expert rollout of the same seed up to the point of failure, so they start exactly like a demo):
``noise`` (the expert with large action noise), ``stall`` (the expert stops halfway and holds),
``near_miss`` (it stops at 85% of the way), ``reversal`` (after 60% it undoes its recent motion
and opens the gripper).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim.keyframes import EVENT_SIGNALS, step_keyframes
from sim.tasks import get_task
from sim.world import FPS, SimTask

log = logging.getLogger(__name__)
FAILURE_KINDS = ("noise", "stall", "near_miss", "reversal")


@dataclass
class Plan:
    """One episode to collect: which kind, which seed."""

    kind: str
    seed: int


def _rollout_actions(task: SimTask, seed: int, noise: float, max_steps: int, post_success: int):
    """Clean expert rollout without rendering: actions and the step where success first holds."""
    rng = np.random.default_rng([seed, 7])
    task.reset(seed)
    actions, success_at = [], None
    for t in range(max_steps):
        a = np.clip(task.expert_action() + rng.normal(0.0, noise, 4), -1, 1).astype(np.float32)
        actions.append(a)
        if task.step(a).success and success_at is None:
            success_at = t + 1
        if success_at is not None and t + 1 >= success_at + post_success:
            break
    return actions, success_at


def _failure_actions(kind: str, expert: list[np.ndarray], ref_len: int):
    """The action sequence of a failure of ``kind``, built from the clean expert rollout."""
    total = 2 * ref_len
    hold = np.zeros(4, np.float32)
    if kind == "noise":
        return None  # generated online (the expert reacts to the noisy state)
    if kind in ("stall", "near_miss"):
        cut = max(1, round((0.5 if kind == "stall" else 0.85) * ref_len))
        hold[3] = expert[cut - 1][3]  # keep the gripper as it was
        return expert[:cut] + [hold.copy() for _ in range(total - cut)]
    if kind == "reversal":
        cut = max(1, round(0.6 * ref_len))
        undo = [np.concatenate([-a[:3], [-1.0]]).astype(np.float32) for a in reversed(expert[:cut])]
        rest = total - 2 * cut
        return expert[:cut] + undo + [np.array([0, 0, 0, -1], np.float32)] * max(rest, 0)
    raise ValueError(f"unknown failure kind {kind!r}: use one of {FAILURE_KINDS}")


def record_episode(
    task: SimTask,
    plan: Plan,
    noise: float = 0.1,
    max_steps: int = 500,
    post_success_steps: int = 10,
    failure_noise: float = 1.0,
    min_step_frames: int = 5,
) -> Episode:
    """Run one planned episode with rendering and return it as an :class:`episodes.Episode`."""
    from episodes import Episode

    expert, success_at = _rollout_actions(task, plan.seed, noise, max_steps, post_success_steps)
    ref_len = success_at or len(expert)
    if plan.kind == "expert":
        scripted, stop_after_success = expert, True
    else:
        scripted = _failure_actions(plan.kind, expert, ref_len)
        stop_after_success = False
    limit = min(max_steps, len(scripted) if scripted is not None else 2 * ref_len)
    rng = np.random.default_rng([plan.seed, 13])
    task.reset(plan.seed)
    frames = [task.render()]
    proprio, state = [task.proprio], [task.state]
    actions, success, dense, signals = [], [], [], {k: [] for k in EVENT_SIGNALS}
    first_success = None
    for t in range(limit):
        if scripted is not None:
            a = scripted[t]
        else:
            a = np.clip(task.expert_action() + rng.normal(0.0, failure_noise, 4), -1, 1)
        a = np.asarray(a, np.float32)
        sig = task.step(a)
        actions.append(a)
        frames.append(task.render())
        proprio.append(task.proprio)
        state.append(task.state)
        success.append(sig.success)
        dense.append(sig.dense_reward)
        for k in EVENT_SIGNALS:
            signals[k].append(sig.extras[k])
        if sig.success and first_success is None:
            first_success = t + 1
        if stop_after_success and first_success is not None and t + 1 >= first_success + post_success_steps:
            break
    num = len(actions)
    success_arr = np.asarray(success, bool)
    dones = np.zeros(num, bool)
    dones[-1] = True
    return Episode(
        images={c: np.stack([f[c] for f in frames]) for c in task.rig.cameras},
        proprio=np.stack(proprio),
        state=np.stack(state),
        actions=np.stack(actions).astype(np.float32),
        rewards=success_arr.astype(np.float32),
        dones=dones,
        task=task.spec.name,
        instruction=task.spec.instruction,
        fps=FPS,
        success=bool(success_arr.any()),
        keyframes=step_keyframes(signals, success_arr, min_step_frames),
        infos={
            "success": success_arr.astype(np.float32),
            "dense_reward": np.asarray(dense, np.float32),
            **{k: np.asarray(v, np.float32) for k, v in signals.items()},
        },
        seed=plan.seed,
        kind=plan.kind,
        extra_attrs={"split": task.split, "noise": noise if plan.kind == "expert" else failure_noise,
                     **({} if task.look is None else {"look": json.dumps(task.look, sort_keys=True)})},
    )


def plan_episodes(
    task: SimTask,
    episodes: int,
    seed: int,
    failures: int = 0,
    failure_kinds=FAILURE_KINDS,
    noise: float = 0.1,
    max_steps: int = 500,
    require_success: bool = True,
    success_steps: dict[int, int | None] | None = None,
) -> list[Plan]:
    """Deterministic plan: ``episodes`` expert demos, then ``failures`` episodes of each kind.

    Demos take seeds ``seed, seed+1, ...``; with ``require_success`` a seed whose (cheap,
    render-free) expert rollout fails is skipped, since Meta-World's experts fail on a few
    percent of variants. Failures take the seeds after the demos' and need an expert rollout
    that succeeds too, so that each failure is a real departure from a solvable episode.
    ``success_steps``, if given, receives seed -> the step where that rollout first succeeds.
    """
    for kind in failure_kinds:
        if kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {kind!r}: use some of {list(FAILURE_KINDS)}")
    needed = [("expert", episodes)] + [(kind, failures) for kind in failure_kinds]
    plans: list[Plan] = []
    candidate, tries = seed, 0
    for kind, count in needed:
        taken = 0
        while taken < count:
            tries += 1
            if tries > 3 * (episodes + failures * len(failure_kinds)) + 20:
                raise RuntimeError(
                    f"the scripted expert of {task.spec.name} keeps failing (seeds {seed}..{candidate}): "
                    "lower noise= or set require_success=false"
                )
            ok = True
            if require_success:
                at = _rollout_actions(task, candidate, noise, max_steps, 0)[1]
                ok = at is not None
                if success_steps is not None:
                    success_steps[candidate] = at
            if ok:
                plans.append(Plan(kind, candidate))
                taken += 1
            candidate += 1
    return plans


def store_path(cfg, task: str) -> Path:
    """Where ``cfg`` collects ``task``: ``<cfg.out>/<short name>.hdf5``."""
    return Path(cfg.out) / f"{get_task(task).short_name}.hdf5"


def plan_task(cfg, name: str):
    """``name``'s :class:`sim.corpus.TaskPlan`, without rendering (looks and cameras never move the physics)."""
    from sim.corpus import TaskPlan, episode_steps

    task = SimTask(name, cameras=[], split=cfg.split)
    try:
        at: dict[int, int | None] = {}
        plans = plan_episodes(task, int(cfg.episodes), int(cfg.seed), int(cfg.failures), list(cfg.failure_kinds),
                              float(cfg.noise), int(cfg.max_steps), bool(cfg.require_success), success_steps=at)
        for p in plans:
            if p.seed not in at:  # require_success=false plans without rollouts
                at[p.seed] = _rollout_actions(task, p.seed, float(cfg.noise), int(cfg.max_steps), 0)[1]
        steps = [episode_steps(p.kind, at[p.seed], int(cfg.max_steps), int(cfg.post_success_steps)) for p in plans]
    finally:
        task.close()
    return TaskPlan(task.spec.name, str(store_path(cfg, name)), plans, steps)


def task_job(cfg: dict, job: tuple, emit) -> None:
    """One job of a corpus run (``sim.corpus`` says which messages go to ``emit``)."""
    from omegaconf import OmegaConf

    conf = OmegaConf.merge(OmegaConf.create(cfg), {"task": job[1]})
    if job[0] == "plan":
        return emit(("planned", job[1], plan_task(conf, job[1])))
    on_episode = lambda ep: emit(("episode", job[1], ep.kind))  # noqa: E731
    emit(("done", job[1], collect(conf, plans=job[2], on_episode=on_episode, progress=job[3])))


def collect(cfg, plans: list[Plan] | None = None, on_episode=None, progress: bool = True) -> str:
    """Collect the episodes ``cfg`` asks for into ``<cfg.out>/<task>.hdf5``; resumes a partial store.

    With ``randomize`` on (e.g. ``randomize=corpus``) each episode is rendered with its own look,
    drawn from ``(randomize_seed, split, seed)`` (so a resumed run redraws the same looks); the look
    is stored as the episode attr ``look`` (a JSON string: the store keeps scalar attrs only) and the
    bounds under ``env_args["randomize"]``. ``plans``: the task's plan if already made (by
    :func:`plan_task`; the same as planning here), ``on_episode(ep)`` is called after each episode
    is stored, ``progress`` shows this task's own tqdm bar. Returns the store's path.
    """
    from tqdm import tqdm

    from omegaconf import OmegaConf

    from episodes import EpisodeWriter, StoreError
    from sim.randomize import from_config

    spec = get_task(cfg.task)
    if int(cfg.episodes) < 0 or int(cfg.failures) < 0:
        raise ValueError(f"episodes and failures must be >= 0, got {cfg.episodes} and {cfg.failures}")
    path = store_path(cfg, spec.name)
    env_args = {
        "task": spec.name,
        "cameras": list(cfg.cameras),
        "image_size": int(cfg.image_size),
        "quality": cfg.quality,
        "split": cfg.split,
    }
    raw = cfg.get("randomize")
    randomization = from_config(OmegaConf.to_container(raw) if OmegaConf.is_config(raw) else raw)
    if randomization.enabled:  # off stores keep their env_args as before, so they still resume
        env_args["randomize"] = randomization.as_dict()
        env_args["randomize_seed"] = int(cfg.get("randomize_seed", 0))
    task = SimTask(spec, cameras=list(cfg.cameras), image_size=int(cfg.image_size),
                   quality=cfg.quality, split=cfg.split, randomize=randomization,
                   randomize_seed=int(cfg.get("randomize_seed", 0)))
    try:
        try:  # open first: a store of other settings should fail before any simulation
            writer = EpisodeWriter(path, env_args=env_args)
        except StoreError as err:
            raise StoreError(f"{err}\nTo collect with these settings, choose another out= directory.") from err
        with writer:
            if plans is None:
                plans = plan_episodes(task, int(cfg.episodes), int(cfg.seed), int(cfg.failures),
                                      list(cfg.failure_kinds), float(cfg.noise), int(cfg.max_steps),
                                      bool(cfg.require_success))
            done = len(writer)
            if done:
                log.info("resuming %s: %d of %d episodes already there", path, done, len(plans))
            bar = tqdm(plans[done:], desc=f"collect {spec.short_name}", unit="ep", initial=done, total=len(plans),
                       disable=not progress)
            for plan in bar:
                ep = record_episode(task, plan, noise=float(cfg.noise), max_steps=int(cfg.max_steps),
                                    post_success_steps=int(cfg.post_success_steps),
                                    failure_noise=float(cfg.failure_noise),
                                    min_step_frames=int(cfg.min_step_frames))
                writer.add(ep)
                if on_episode is not None:
                    on_episode(ep)
                bar.set_postfix(kind=plan.kind, success=ep.success, steps=ep.num_steps)
    finally:
        task.close()
    return str(path)


def main() -> None:
    """Console entry point (Hydra): ``stepwise-collect task=metaworld/drawer-open episodes=5``."""
    from configs.entry import hydra_job
    from episodes import StoreError
    from sim.corpus import CorpusError
    from sim.rendering import CameraError
    from sim.tasks import UnknownTaskError

    hydra_job("stepwise-collect", "collect", _job,
              errors=(StoreError, CameraError, UnknownTaskError, ValueError, CorpusError))


def _job(cfg, run_dir: Path) -> None:
    """Collect one store per task (``task=`` a task name, a list of names, a split's group, or ``all``)."""
    from omegaconf import ListConfig

    from episodes import summarize
    from sim.corpus import run_corpus
    from sim.tasks import list_tasks, task_split

    groups = {**task_split(), "all": None}
    if isinstance(cfg.task, ListConfig):
        names = [get_task(t).name for t in cfg.task]
    elif cfg.task in groups:  # a whole task group: one store per task
        names = groups[cfg.task] or list_tasks()
    else:  # one task: its own progress bar and summary table, its error as it is
        for path in run_corpus(cfg, [get_task(cfg.task).name], task_job, single=True):
            print(summarize(path))
        return
    run_corpus(cfg, names, task_job)


if __name__ == "__main__":
    main()
