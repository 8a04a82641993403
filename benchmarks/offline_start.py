"""What the policy knows before its first online episode: success of the behaviour-cloned and the
Cal-QL pre-trained policy from 5 demonstrations, by state features and pre-training settings.

    python benchmarks/offline_start.py                          # push and pick-place, the grid below
    python benchmarks/offline_start.py --tasks drawer-open --parallel 1
    python benchmarks/offline_start.py --table-only

Each cell is one `stepwise-train` run with no online episodes (algo=bc, or algo=calql with
online.episodes=0), 1 torch thread, seed 0, its final success over ``--eval-episodes`` deterministic
episodes on the eval split (variants never seen in the demonstrations). No reward model is used:
shaping is off and adaptation skipped, since neither BC nor the sparse-reward pre-training reads it.
Runs live in ``--runs/<name>``; a finished one (report.json present) is not run again. Writes
``benchmarks/results/offline_start.md`` (+ ``.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning import run_one  # noqa: E402  (one stepwise-train run per cell, skipped once finished)
from machine import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FEATURES = ("raw", "relative")
SETTINGS = {  # name -> (description, stepwise-train overrides)
    "bc500": ("BC warm start 500 steps (the old default's warm start)", ["algo=bc", "pretrain.bc_steps=500"]),
    "bc3000": ("BC warm start 3000 steps", ["algo=bc", "pretrain.bc_steps=3000"]),
    "bc500+calql_a2.5": ("BC 500 + Cal-QL 1000 steps, TD3+BC alpha 2.5 (the old default pre-training)",
                         ["algo=calql", "online.episodes=0", "pretrain.bc_steps=500", "agent.bc_weight=2.5"]),
    "bc3000+calql_a2.5": ("BC 3000 + Cal-QL 1000 steps, TD3+BC alpha 2.5",
                          ["algo=calql", "online.episodes=0", "pretrain.bc_steps=3000", "agent.bc_weight=2.5"]),
    "bc3000+calql_a0.5": ("BC 3000 + Cal-QL 1000 steps, TD3+BC alpha 0.5",
                          ["algo=calql", "online.episodes=0", "pretrain.bc_steps=3000", "agent.bc_weight=0.5"]),
}


def write_table(results: dict, tasks: list[str], eval_episodes: int, out: Path) -> None:
    lines = [
        "# Offline start: success before the first online episode",
        "",
        f"Written {datetime.now():%Y-%m-%d %H:%M} by `benchmarks/offline_start.py` on 2 CPU cores ({cpu_name()}), "
        "1 torch thread per run, 2 runs side by side. 5 scripted demonstrations (demo split), seed 0; success of "
        f"the deterministic policy over {eval_episodes} episodes on the eval split (variants never seen in the "
        "demonstrations). `raw` = the 39-d simulator state; `relative` = `agent.state_features=relative` (plus "
        "object-hand, goal-hand, goal-object vectors).",
        "",
        "| task | features | " + " | ".join(SETTINGS) + " |",
        "|---|---|" + "---|" * len(SETTINGS),
    ]
    for task in tasks:
        for feat in FEATURES:
            cells = []
            for setting in SETTINGS:
                r = results.get(f"{task}__{feat}__{setting}")
                cells.append("-" if r is None else f"{r['final_success_rate']:.2f}")
            lines.append(f"| {task} | {feat} | " + " | ".join(cells) + " |")
    lines += ["", "Settings:", ""] + [f"- `{k}`: {d}" for k, (d, _) in SETTINGS.items()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["push", "pick-place"])
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--features", nargs="+", choices=FEATURES, default=list(FEATURES))
    parser.add_argument("--eval-episodes", type=int, default=30)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--runs", default=str(ROOT / "runs" / "bench_offline"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "offline_start.md"))
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    runs_dir, out = Path(args.runs), Path(args.out)
    plan = [(f"{t}__{f}__{s}", [f"task=metaworld/{t}", "demos=5", f"agent.state_features={f}", "reward.shaping=none",
                                "adapt.steps=0", f"eval.final_episodes={args.eval_episodes}", *SETTINGS[s][1]])
            for t in args.tasks for f in args.features for s in args.settings]
    results: dict = {}
    if not args.table_only:
        with ThreadPoolExecutor(args.parallel) as pool:
            for (name, _), fut in zip(plan, [pool.submit(run_one, n, ov, runs_dir, []) for n, ov in plan]):
                if (r := fut.result()) is not None:
                    results[name] = r
                    write_table(results, args.tasks, args.eval_episodes, out)
    for d in sorted(runs_dir.glob("*/report.json")):
        results.setdefault(d.parent.name, json.loads(d.read_text()))
    write_table(results, args.tasks, args.eval_episodes, out)
    print(out.read_text())


if __name__ == "__main__":
    main()
