"""Episodes per second with 1 and N simulator processes: demonstration collection (`stepwise-collect
workers=N`) and policy evaluation (`eval.workers=N`, gymnasium's AsyncVectorEnv).

    python benchmarks/parallel_envs.py                 # about 4 minutes on 2 cores
    python benchmarks/parallel_envs.py --workers 1 2 4

Collection: `stepwise-collect` as a user runs it (3 training tasks x 3 experts + 1 failure each, 3
cameras at 96 px), wall time of the subprocess. Evaluation: the eval loop of `stepwise-train`
(`policies.loop.evaluate`) with a deterministic scripted reach policy, 8 episodes of at most 100
steps, rendering the reward rig's 3 cameras at 96 px every step as an image policy's eval env does
(`--cameras 0` for the state policy's camera-free env). Every row states the load average: on a
shared machine the ratio between rows measured one after the other is what carries over.
Writes ``benchmarks/results/parallel_envs.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from machine import cpu_name

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TASKS = "[metaworld/reach,metaworld/button-press,metaworld/drawer-close]"


def collection(workers: int) -> tuple[float, int]:
    """(wall seconds, episodes) of one `stepwise-collect` run into a fresh folder."""
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        run = subprocess.run([str(BIN / "stepwise-collect"), f"task={TASKS}", "episodes=3", "failures=1", "split=train",
                              f"workers={workers}", f"out={out}"], cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if run.returncode != 0:
            raise RuntimeError(run.stderr[-2000:])
    return wall, 3 * 4


class Reacher:
    """Deterministic reach policy: the hand moves toward the goal."""

    def act(self, state: np.ndarray, deterministic: bool = False) -> np.ndarray:
        return np.clip(np.r_[25 * (state[-3:] - state[:3]), 0.0], -1, 1).astype(np.float32)


def evaluation(workers: int, cameras: int, episodes: int) -> float:
    """Seconds to evaluate ``episodes`` seeds with ``workers`` env processes (env start excluded)."""
    from policies.episode import state_view
    from policies.loop import evaluate
    from real import make_env, make_vec_env

    kw = dict(cameras=["corner", "corner2", "gripperPOV"][:cameras], image_size=96, max_episode_steps=100,
              terminate_on_success=False, split="eval")
    env = make_env("metaworld/reach", **kw) if workers == 1 else make_vec_env("metaworld/reach", num_envs=workers, **kw)
    try:
        evaluate(Reacher(), env, [0], state_view)  # warm-up: renderers, processes
        t = time.perf_counter()
        evaluate(Reacher(), env, list(range(episodes)), state_view)
        return time.perf_counter() - t
    finally:
        env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "parallel_envs.md"))
    args = parser.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    rows = []
    for workers in args.workers:
        wall, n = collection(workers)
        rows.append(("collection (3 tasks x 4 episodes, 3 cameras)", workers, f"{n / wall:.2f}", f"{wall:.1f}",
                     f"{os.getloadavg()[0]:.1f}"))
        print(rows[-1], flush=True)
    for cams in (3, 0):
        for workers in args.workers:
            wall = evaluation(workers, cams, args.episodes)
            rows.append((f"evaluation ({args.episodes} x 100 steps, {cams} cameras)", workers,
                         f"{args.episodes / wall:.2f}", f"{wall:.1f}", f"{os.getloadavg()[0]:.1f}"))
            print(rows[-1], flush=True)
    table = (f"# Parallel simulator processes\n\nMeasured {datetime.date.today()} by `benchmarks/parallel_envs.py` on "
             f"{os.cpu_count()} cores ({cpu_name()}). Collection: `stepwise-collect workers=N` (whole tasks per process); "
             "evaluation: `policies.loop.evaluate` over gymnasium's AsyncVectorEnv (`eval.workers=N`), the same "
             "results for any N. 'load' is the 1-minute load average after the row.\n\n"
             "| what | processes | episodes/s | wall s | load |\n|---|---|---|---|---|\n"
             + "".join("| " + " | ".join(str(c) for c in r) + " |\n" for r in rows))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table)
    print(table)


if __name__ == "__main__":
    main()
