"""Whole-pipeline speed of `stepwise-train`'s online loop: env steps per second, for the state and the
image policy, with and without the progress-shaped reward.

Run: ``.venv/bin/python benchmarks/pipeline_speed.py`` (5-6 minutes on 2 cores). Prints a table
and writes it to ``benchmarks/results/pipeline_speed.md``. Each row runs ``stepwise-train`` as a
subprocess on a fresh run directory, exactly as a user would, with small settings (1 demonstration,
zero-shot progress model, 10 BC + 10 Cal-QL pre-training steps, then ``--episodes`` online episodes
of 200 steps with one agent update per env step at the default batch of 256) and reads
``env_steps / stage_seconds.online`` from its ``report.json``. With ``reward.shaping=progress`` every
step renders the reward model's 3 cameras at 96 px and every finished episode is scored by the
progress model in one batch; the image policy also resizes the frames to 32 px per step and
learns from them (DrQ encoder, 3 views). The online stage also holds one deterministic evaluation
episode and one checkpoint at its end (``eval.every`` is larger than the run), which the rate
includes; the pre-training and demonstration stages are outside it.

The machine may be shared: the table records the load average before and after every row, and the
torch threads (``threads``) the job used.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from machine import cpu_name  # benchmarks/machine.py (scripts here run with benchmarks/ on sys.path)

ROOT = Path(__file__).resolve().parent.parent
COMMON = ["task=metaworld/drawer-open", "demos=1", "adapt.steps=0", "pretrain.bc_steps=10", "pretrain.steps=10",
          "online.max_steps=200", "eval.every=1000", "eval.episodes=1", "eval.final_episodes=1", "offline_threads=1"]


@dataclass
class Row:
    """One measurement: a label, its stepwise-train overrides and how many online episodes it runs."""

    name: str
    overrides: list[str]
    episodes: int


def rows(state_episodes: int, image_episodes: int, image_size: int) -> dict[str, Row]:
    """Every measurement this benchmark knows, by name."""
    image = ["policy=image", f"policy_image_size={image_size}"]
    return {
        "state-progress": Row("state policy, progress shaping (3 cameras 96 px)", ["reward.shaping=progress"],
                              state_episodes),
        "image-progress": Row(f"image policy {image_size} px, progress shaping (3 cameras 96 px, resized)",
                              ["reward.shaping=progress", *image], image_episodes),
        "state-none": Row("state policy, no shaping (no rendering)", ["reward.shaping=none"], state_episodes),
        "image-none": Row(f"image policy {image_size} px, no shaping (3 cameras rendered at {image_size} px)",
                          ["reward.shaping=none", *image], image_episodes),
    }


def measure(row: Row, threads: int, timeout: float) -> dict:
    """Run stepwise-train once; its report's env steps, online seconds, and the load around it."""
    load_before = os.getloadavg()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory(prefix="pipeline_speed_") as tmp:
        cmd = [sys.executable, "-m", "policies.jobs.train", *COMMON, *row.overrides, f"online.episodes={row.episodes}",
               f"threads={threads}", f"hydra.run.dir={tmp}"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - start
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise RuntimeError(f"stepwise-train failed ({proc.returncode}) for {row.name}:\n{proc.stderr[-3000:]}")
        report = json.loads((Path(tmp) / "report.json").read_text())
    online = float(report["stage_seconds"]["online"])
    return {"env_steps": int(report["env_steps"]), "online_s": online, "steps_per_s": report["env_steps"] / online,
            "wall_s": wall, "load_before": load_before, "load_after": os.getloadavg(),
            "cpu_share": (cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime) / wall}




def main() -> None:
    """Measure the chosen rows one after another, print the table and write it to ``--out``."""
    known = rows(0, 0, 0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=["state-none", "state-progress", "image-progress"],
                        choices=list(known), help="measurements to run, in this order")
    parser.add_argument("--state-episodes", type=int, default=15, help="online episodes (of 200 steps) per state row")
    parser.add_argument("--image-episodes", type=int, default=1, help="online episodes (of 200 steps) per image row")
    parser.add_argument("--image-size", type=int, default=32, help="the image policy's policy_image_size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the online loop (stepwise-train threads=)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before a row's run is abandoned")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pipeline_speed.md"),
                        help="markdown file the table is written to")
    args = parser.parse_args()

    import torch

    chosen = rows(args.state_episodes, args.image_episodes, args.image_size)
    results = []
    for name in args.rows:
        row = chosen[name]
        print(f"measuring {row.name} ({row.episodes} episodes) ...", flush=True)
        res = measure(row, args.threads, args.timeout)
        print(f"  {res['steps_per_s']:.1f} env steps/s ({res['env_steps']} steps in {res['online_s']:.1f} s online, "
              f"{res['wall_s']:.0f} s in all, CPU share {res['cpu_share']:.2f})", flush=True)
        results.append((row, res))

    fmt = lambda load: ", ".join(f"{x:.1f}" for x in load)  # noqa: E731
    lines = [
        "# Pipeline speed: stepwise-train's online loop",
        "",
        f"Measured {datetime.date.today()} by `benchmarks/pipeline_speed.py --rows {' '.join(args.rows)} "
        f"--state-episodes {args.state_episodes} --image-episodes {args.image_episodes} --image-size {args.image_size} "
        f"--threads {args.threads}` on {os.cpu_count()} cores ({cpu_name()}), "
        f"{'GPU ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}, torch {torch.__version__}, "
        f"{args.threads} torch thread(s) online (`threads={args.threads}`), task metaworld/drawer-open.",
        "",
        "Each row is one `stepwise-train` run (subprocess) with " + ", ".join(f"`{o}`" for o in COMMON)
        + ", agent and encoder at their defaults (batch 256, 256x256 MLPs, utd 1, one update per env step). "
        "Rate = `env_steps / stage_seconds.online` from its report.json: acting, rendering, resizing, one update "
        "per step, per-episode progress scoring and replay writes, plus one evaluation episode and one checkpoint "
        "at the end of the stage. Load is the 1/5/15-minute load average before and after the row: where it "
        f"exceeds the {os.cpu_count()} cores, other processes shared them and the rates are lower than on an idle "
        "machine. CPU share: the run's CPU seconds (user + system, all its threads) over its wall time, the "
        "whole run; a share well below the job's own need says it waited for cores.",
        "",
        "| pipeline | policy | shaping | episodes | env steps | online s | env steps/s | CPU share | load before "
        "| load after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row, res in results:
        policy = next((o.split("=")[1] for o in row.overrides if o.startswith("policy=")), "state")
        shaping = next(o.split("=")[1] for o in row.overrides if o.startswith("reward.shaping="))
        lines.append(f"| {row.name} | {policy} | {shaping} | {row.episodes} | {res['env_steps']} | "
                     f"{res['online_s']:.1f} | **{res['steps_per_s']:.1f}** | {res['cpu_share']:.2f} | "
                     f"{fmt(res['load_before'])} | "
                     f"{fmt(res['load_after'])} |")
    table = "\n".join(lines) + "\n"
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
