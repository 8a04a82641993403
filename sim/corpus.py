"""Collecting many tasks (``stepwise-collect task=train``): the disk estimate and the parallel runner.

A run has two phases. First every task is planned without rendering (the plan's expert rollouts give
each episode's length), so the disk needed is known before a single frame is drawn: frames x cameras
x image bytes x a compression ratio, counting only what a partly written store still lacks. Then the
tasks are collected, each whole task into its own store, by ``workers`` processes ("spawn" context,
one BLAS/torch thread each) or in this process for ``workers=1``. Episodes depend only on the task's
plan and seeds, never on which process records them, so the stores are the same for any ``workers``.

This module knows nothing of how a task is planned or recorded: ``sim.collect`` hands it a job
function ``job_fn(cfg, job, emit)`` that runs ``("plan", task)`` or ``("collect", task, plans,
own_bar)`` and reports ``("planned", task, TaskPlan)``, ``("episode", task, kind)`` and ``("done",
task, path)``. A job that raises is reported as ``("failed", task, error)`` and the run goes on;
Ctrl-C or SIGTERM stops every worker at once, which leaves each store resumable (its journal covers a
kill inside a write; an episode being rendered is simply not there).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configs.entry import one_line

# Stored file bytes per raw image byte (this format: gzip-1, one frame per chunk), measured on 96 px
# stores of 3 cameras: randomize=corpus 0.59 (assembly and button-press of the train corpus, 42
# episodes each: 0.593, 0.591; its pixel noise is what costs), randomize=off 0.36 (assembly, 4 episodes).
# A store that already holds episodes is measured instead (its own file bytes per frame).
PRIOR_RATIO = {"off": 0.36, "on": 0.59}
STEP_BYTES = 4 * (4 + 39 + 4 + 1 + 7) + 1  # proprio, state, action, reward, infos (float32), done


class CorpusError(RuntimeError):
    """A corpus run that must not start (too little disk, a bad setting) or whose tasks failed."""


@dataclass
class TaskPlan:
    """One task's plan, made without rendering.

    Attributes:
        task: registered name; path: its store; plans: the episodes to collect (``sim.collect.Plan``);
        steps: actions each planned episode records (int, one per plan).
    """

    task: str
    path: str
    plans: list
    steps: list[int]


def episode_steps(kind: str, success_at: int | None, max_steps: int, post_success_steps: int) -> int:
    """Actions ``sim.collect.record_episode`` records for a plan of ``kind``, given the step where its
    clean expert rollout first succeeds: a demo stops ``post_success_steps`` after success, a failure
    runs 2 x that reference length, both within ``max_steps``."""
    if kind == "expert":
        return max_steps if success_at is None else min(success_at + post_success_steps, max_steps)
    return min(max_steps, 2 * (success_at or max_steps))


def free_space(out: str | os.PathLike) -> tuple[int, str]:
    """Free bytes on the file system that holds ``out`` (or its nearest existing parent), and its mount."""
    p = Path(out).absolute()
    while not p.exists():
        p = p.parent
    mount = p.resolve()
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    return shutil.disk_usage(p).free, str(mount)


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g}" if n < 10e9 else f"{n / 1e9:.1f}"


def estimate(plans: list[TaskPlan], cfg: Any) -> tuple[int, int, int, dict[str, int]]:
    """(bytes, episodes, frames) still to write over ``plans``, and each store's size now.

    A store that already holds episodes counts only the rest, at its own measured bytes per frame.
    """
    from omegaconf import OmegaConf

    from episodes import EpisodeStore, StoreError
    from sim.randomize import from_config
    from sim.rendering import check_image_size

    raw, size = cfg.get("randomize"), cfg.image_size
    looks = from_config(OmegaConf.to_container(raw) if OmegaConf.is_config(raw) else raw).enabled
    size = check_image_size(size if isinstance(size, int) else tuple(size))
    ratio = _number(cfg, "disk_ratio") or PRIOR_RATIO["on" if looks else "off"]
    prior = len(cfg.cameras) * size[0] * size[1] * 3 * float(ratio) + STEP_BYTES
    need = episodes = frames = 0
    sizes: dict[str, int] = {}
    for tp in plans:
        done, per_frame = 0, prior
        path = Path(tp.path)
        sizes[tp.task] = path.stat().st_size if path.is_file() else 0
        if path.is_file():
            try:
                with EpisodeStore(path) as store:
                    done = len(store)
                    seen = int(store.lengths().sum()) + done  # T + 1 frames per episode
                if seen:
                    per_frame = sizes[tp.task] / seen
            except StoreError:
                pass  # the collect job reports what is wrong with it
        left = [s + 1 for s in tp.steps[done:]]
        episodes += len(left)
        frames += sum(left)
        need += int(sum(left) * per_frame)
    return need, episodes, frames, sizes


def check_disk(need: int, episodes: int, frames: int, out: str, free_gb: float | None, force: bool) -> str:
    """The estimate's line; raise CorpusError when ``need`` exceeds the free space (unless ``force``).

    ``free_gb`` replaces the measured free space (config ``disk_free_gb``: a quota, or a test).
    """
    free, mount = free_space(out)
    if free_gb is not None:
        free, mount = int(float(free_gb) * 1e9), f"{mount} (disk_free_gb={free_gb})"
    line = f"about {_gb(need)} GB for {episodes} episodes / {frames} frames; {_gb(free)} GB free on {mount}"
    if need > free and not force:
        raise CorpusError(
            f"{line}: not enough disk for out={out}. Free space on {mount}, collect fewer episodes "
            "(episodes=, failures=, or fewer tasks), use a smaller image_size=, or pass force_disk=true "
            "to start anyway"
        )
    return line


def _number(cfg: Any, key: str) -> float | None:
    value = cfg.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
        raise CorpusError(f"{key}={value!r} must be a number >= 0, or null (see configs/collect.yaml)")
    return value


def _run_one(job_fn: Callable, cfg: dict, job: tuple, emit: Callable) -> None:
    try:
        job_fn(cfg, job, emit)
    except Exception as err:  # one task failing must not stop the others
        emit(("failed", job[1], err))


class InProcess:
    """``workers=1``: jobs run one after another here; failures keep their exception."""

    def __init__(self, job_fn: Callable, cfg: dict) -> None:
        self.job_fn, self.cfg = job_fn, cfg

    def run(self, jobs: list[tuple], handle: Callable) -> None:
        """Run ``jobs``, passing every message to ``handle``."""
        for job in jobs:
            _run_one(self.job_fn, self.cfg, job, handle)

    def close(self, now: bool = False) -> None:
        """Nothing to stop (the signature of :meth:`Workers.close`)."""


def _worker(wid: int, parent: int, job_fn: Callable, cfg: dict, inbox: Any, events: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    seq = -1

    def emit(msg: tuple) -> None:
        if os.getppid() != parent:  # the parent died: stop rather than work for no one
            sys.exit(1)
        if msg[0] == "failed":
            msg = (msg[0], msg[1], f"{type(msg[2]).__name__}: {one_line(msg[2])}")
        events.put((wid, seq, msg))

    while os.getppid() == parent:
        try:
            item = inbox.get(timeout=1.0)
        except queue.Empty:
            continue
        if item is None:
            return
        seq, job = item
        _run_one(job_fn, cfg, job, emit)


class Workers:
    """``workers=N``: N spawned processes, each given one whole job at a time; a dead one is replaced."""

    THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")

    def __init__(self, job_fn: Callable, cfg: dict, n: int) -> None:
        self.ctx = mp.get_context("spawn")
        self.job_fn, self.cfg, self.seq = job_fn, cfg, 0
        self.events = self.ctx.Queue()
        self.procs, self.inboxes = [None] * n, [None] * n
        for wid in range(n):
            self._start(wid)

    def _start(self, wid: int) -> None:
        saved = {k: os.environ.get(k) for k in (*self.THREAD_VARS, "MUJOCO_GL")}
        os.environ.update({k: "1" for k in self.THREAD_VARS})  # children read these at import
        if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
            os.environ.setdefault("MUJOCO_GL", "egl")
        try:
            self.inboxes[wid] = self.ctx.Queue()
            self.procs[wid] = self.ctx.Process(target=_worker, daemon=True, name=f"collect-{wid}", args=(
                wid, os.getpid(), self.job_fn, self.cfg, self.inboxes[wid], self.events))
            self.procs[wid].start()
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)

    def run(self, jobs: list[tuple], handle: Callable) -> None:
        """Run ``jobs`` over the workers, passing every message to ``handle`` until all are answered."""
        pending, holding = list(jobs), {}  # holding: worker -> (seq, job)

        def dispatch() -> None:
            for wid in range(len(self.procs)):
                if wid not in holding and pending:
                    self.seq += 1
                    holding[wid] = (self.seq, pending.pop(0))
                    self.inboxes[wid].put(holding[wid])

        dispatch()
        while holding:
            try:
                wid, seq, msg = self.events.get(timeout=0.5)
            except queue.Empty:
                for wid, p in enumerate(self.procs):
                    if p.exitcode is not None:  # died (a crash, a kill): the job it held failed
                        self._start(wid)
                        if wid in holding:
                            handle(("failed", holding.pop(wid)[1][1], f"its worker died (exit code {p.exitcode})"))
                dispatch()
                continue
            if wid not in holding or holding[wid][0] != seq:
                continue  # from a job already given up on
            if msg[0] in ("planned", "done", "failed"):
                del holding[wid]
            handle(msg)
            dispatch()

    def close(self, now: bool = False) -> None:
        """Let idle workers exit, or (``now``) stop them at once: a kill mid-episode leaves its store resumable."""
        for inbox in self.inboxes if not now else ():
            inbox.put(None)
        for p in self.procs:
            p.join(timeout=0 if now else 5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
        for q in (*self.inboxes, self.events):
            q.close()
            q.cancel_join_thread()


def _stop_on_sigterm(*_: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM stops a run the way Ctrl-C does


def run_corpus(cfg: Any, names: list[str], job_fn: Callable, single: bool = False) -> list[str]:
    """Plan, check the disk, then collect every task of ``names``; returns the stores written.

    ``single``: one named task, whose error is re-raised as it is. Otherwise failed tasks are
    collected into one CorpusError at the end, after the summary line.
    """
    from omegaconf import OmegaConf
    from tqdm import tqdm

    workers = cfg.get("workers", 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise CorpusError(f"workers={workers!r} must be an int >= 1 (processes collecting tasks at once)")
    plain = OmegaConf.to_container(cfg, resolve=True)
    n = min(workers, len(names))
    pool = InProcess(job_fn, plain) if n == 1 else Workers(job_fn, plain, n)
    planned: dict[str, TaskPlan] = {}
    failed: dict[str, Any] = {}
    kinds: Counter = Counter()
    start, written, stopped = time.time(), [], False
    old = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        bar = tqdm(total=len(names), desc="plan (no rendering)", unit="task", disable=single)

        def on_plan(msg: tuple) -> None:
            if msg[0] == "planned":
                planned[msg[1]] = msg[2]
            elif msg[0] == "failed":
                failed[msg[1]] = msg[2]
            bar.update(1)

        pool.run([("plan", name) for name in names], on_plan)
        bar.close()
        if single and failed:
            raise failed[names[0]]  # in process, so the exception itself
        todo = [planned[name] for name in names if name in planned]
        need, episodes, frames, sizes = estimate(todo, cfg)
        print(check_disk(need, episodes, frames, str(cfg.out), _number(cfg, "disk_free_gb"),
                         bool(cfg.get("force_disk", False))), flush=True)
        todo.sort(key=lambda tp: -sum(tp.steps))  # longest first: workers finish together
        bar = tqdm(total=episodes, desc=f"collect {len(todo)} tasks x {n} workers", unit="ep", disable=single)

        def on_collect(msg: tuple) -> None:
            if msg[0] == "episode":
                kinds[msg[2]] += 1
                bar.update(1)
            elif msg[0] == "done":
                written.append(msg[2])
                if not single:
                    bar.write(f"done {msg[1]}: {msg[2]}")
            elif msg[0] == "failed":
                failed[msg[1]] = msg[2]
                bar.write(f"FAILED {msg[1]}: {one_line(msg[2]) if isinstance(msg[2], BaseException) else msg[2]}")

        pool.run([("collect", tp.task, tp.plans, single) for tp in todo], on_collect)
        bar.close()
    except KeyboardInterrupt:
        stopped = True
        raise CorpusError("interrupted: every store keeps its finished episodes; rerun the same command "
                          "to resume where it stopped") from None
    finally:
        signal.signal(signal.SIGTERM, old)
        pool.close(now=stopped)
    if single and failed:
        raise failed[names[0]]
    grown = sum(max(0, Path(tp.path).stat().st_size - sizes.get(tp.task, 0)) for tp in planned.values()
                if tp.path in written)
    wall = time.time() - start
    total = sum(kinds.values())
    print(f"corpus: {len(written)}/{len(names)} tasks; episodes {', '.join(f'{k} {v}' for k, v in sorted(kinds.items())) or 'none'}"
          f"; {_gb(grown)} GB written; wall {wall / 60:.1f} min; {total / wall:.2f} episodes/s; workers {n}", flush=True)
    if failed:
        why = "; ".join(f"{t}: {one_line(e) if isinstance(e, BaseException) else e}" for t, e in failed.items())
        raise CorpusError(f"{len(failed)} of {len(names)} tasks failed ({why}); fix the cause and rerun the same "
                          "command: finished stores are skipped, partial ones resume")
    return written

