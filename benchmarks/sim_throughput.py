"""Simulation throughput: physics, rendered env steps (1 and 2 processes), demo collection.

Run: ``.venv/bin/python benchmarks/sim_throughput.py`` (about 2 minutes). Prints a table and
writes it to ``benchmarks/results/sim_throughput.md``. The scene as shipped (``quality=high``) is
measured in the same run as the peer, so the ratio holds on whatever machine runs it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time
from pathlib import Path

import numpy as np

import real
import sim
from episodes import EpisodeWriter
from sim.collect import Plan, record_episode

from machine import cpu_name  # benchmarks/machine.py (scripts here run with benchmarks/ on sys.path)

TASK = "metaworld/drawer-open"
CAMERAS = ["corner", "corner2", "gripperPOV"]


def physics_steps_per_s(seconds: float) -> float:
    """Random actions, no rendering."""
    env = real.make_env(TASK, cameras=[], max_episode_steps=10**6)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (1000, 4)).astype(np.float32)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        env.step(actions[n % 1000])
        n += 1
    rate = n / (time.perf_counter() - start)
    env.close()
    return rate


def env_steps_per_s(quality: str, seconds: float, size: int) -> float:
    """Rendered env steps (3 cameras) in one process."""
    env = real.make_env(TASK, cameras=CAMERAS, image_size=size, quality=quality, max_episode_steps=10**6)
    env.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (1000, 4)).astype(np.float32)
    for a in actions[:5]:  # warm up GL
        env.step(a)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        env.step(actions[n % 1000])
        n += 1
    rate = n / (time.perf_counter() - start)
    env.close()
    return rate


def vec_steps_per_s(num_envs: int, seconds: float, size: int) -> float:
    """Rendered env steps summed over ``num_envs`` subprocesses (AsyncVectorEnv)."""
    vec = real.make_vec_env(TASK, num_envs=num_envs, cameras=CAMERAS, image_size=size, max_episode_steps=10**6)
    vec.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (1000, num_envs, 4)).astype(np.float32)
    for a in actions[:5]:
        vec.step(a)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        vec.step(actions[n % 1000])
        n += 1
    rate = n * num_envs / (time.perf_counter() - start)
    vec.close()
    return rate


def collection_episodes_per_min(episodes: int, size: int) -> tuple[float, float]:
    """Expert demos with 3 cameras recorded to an HDF5 store; returns (episodes/min, MiB/episode)."""
    task = sim.SimTask(TASK, cameras=CAMERAS, image_size=size, split="demo")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.hdf5"
        start = time.perf_counter()
        with EpisodeWriter(path, env_args={"task": TASK}) as writer:
            for seed in range(episodes):
                writer.add(record_episode(task, Plan("expert", seed)))
        rate = episodes / (time.perf_counter() - start) * 60
        size_mib = path.stat().st_size / 2**20 / episodes
    task.close()
    return rate, size_mib




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each timed loop")
    parser.add_argument("--size", type=int, default=96, help="image side in pixels")
    parser.add_argument("--episodes", type=int, default=5, help="episodes for the collection rate")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "sim_throughput.md"))
    args = parser.parse_args()

    physics = physics_steps_per_s(args.seconds)
    fast = env_steps_per_s("fast", args.seconds, args.size)
    shipped = env_steps_per_s("high", args.seconds, args.size)
    vec2 = vec_steps_per_s(2, args.seconds, args.size)
    collect_rate, mib = collection_episodes_per_min(args.episodes, args.size)
    rows = [
        ("physics only, random actions, 1 process", f"{physics:,.0f} steps/s", ""),
        (f"env, 3 cameras {args.size}px, scene as shipped (peer), 1 process", f"{shipped:.1f} steps/s", "1.0x"),
        (f"env, 3 cameras {args.size}px, fast (default), 1 process", f"{fast:.1f} steps/s", f"{fast / shipped:.1f}x"),
        (f"env, 3 cameras {args.size}px, fast, 2 processes (AsyncVectorEnv)", f"{vec2:.1f} steps/s", f"{vec2 / shipped:.1f}x"),
        (f"collection, drawer-open expert demos, 3 cameras {args.size}px", f"{collect_rate:.1f} episodes/min", f"{mib:.1f} MiB/episode"),
    ]
    header = (
        f"# Simulation throughput\n\n"
        f"Measured {datetime.date.today()} by `benchmarks/sim_throughput.py --seconds {args.seconds:g} "
        f"--size {args.size} --episodes {args.episodes}` on {os.cpu_count()} cores ({cpu_name()}), "
        f"task {TASK}, cameras {', '.join(CAMERAS)}, MUJOCO_GL={os.environ.get('MUJOCO_GL')}. "
        f"Targets: >= 60 env steps/s in one process, >= 100 with 2 processes.\n\n"
        "| measurement | rate | vs. shipped |\n|---|---|---|\n"
    )
    table = header + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in rows)
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
