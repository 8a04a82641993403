"""Learning benchmark: stepwise-train on held-out tasks, progress-shaped against sparse rewards, with
the simulator's dense reward and a privileged oracle potential as references; and the demonstration
curve (1, 2, 5, 10 policy demonstrations).

    python benchmarks/learning.py                      # the plan below, resumable
    python benchmarks/learning.py --only progress --tasks drawer-open push --seeds 0
    python benchmarks/learning.py --launcher submitit_local   # the runs of a variant side by side
    python benchmarks/learning.py --table-only         # rebuild the table from finished runs
    python benchmarks/learning.py --table-only --from-json benchmarks/results/learning.json   # ... from the committed runs

The runs are Hydra multirun sweeps of `stepwise-train` (benchmarks/sweep.py): one sweep per variant
(and demonstration count) over its tasks and seeds, through the Hydra launcher given (``basic``:
one job after another; ``submitit_local``: side by side; ``cluster``: Slurm). Each run is one job
(1 torch thread) in ``--runs/<variant>[__demos<n>]/metaworld/<task>/s<seed>``, launched with
``resume=true``: a finished run (report.json present) is kept, an unfinished one resumes. After
every finished sweep the table ``benchmarks/results/learning.md`` (+ ``learning.json``,
``learning.png``) is rewritten from all finished runs, so a partial benchmark still reports what it
measured. A run is named ``<task>__<variant>__s<seed>[__demos<n>]`` from its report and its sweep's folder.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASKS = ["drawer-open", "door-open", "button-press-topdown", "window-close", "push", "pick-place"]
# The defaults before 2026-11-28 (raw state, BC warm start 500 steps, TD3+BC alpha 2.5, no conservative
# term online); the `_v1` variants ran with them.
V1 = ["agent.state_features=raw", "pretrain.bc_steps=500", "agent.bc_weight=2.5", "online.cql_alpha=0.0"]
VARIANTS = {  # name -> stepwise-train overrides (the plain names run the current defaults)
    "progress": ["reward.shaping=progress"],
    "sparse": ["reward.shaping=none"],
    "dense": ["reward.source=sim_dense", "reward.shaping=none"],
    "oracle": ["reward.shaping=oracle"],
    "progress_bf16": ["reward.shaping=progress", "agent.precision=bf16"],  # bfloat16 forward passes
    # the perceptual-feature reward fitted on ONE demo, as the potential (issue 7)
    "perceptual_tcn": ["reward=perceptual", "reward.encoder=tcn", "reward.shaping=progress"],
    "perceptual_pixels": ["reward=perceptual", "reward.encoder=pixels", "reward.shaping=progress"],
    # the earlier defaults, and the steps from them to the current ones
    "progress_v1": ["reward.shaping=progress", *V1],
    "sparse_v1": ["reward.shaping=none", *V1],
    "dense_v1": ["reward.source=sim_dense", "reward.shaping=none", *V1],
    "oracle_v1": ["reward.shaping=oracle", *V1],
    "progress_bf16_v1": ["reward.shaping=progress", "agent.precision=bf16", *V1],
    "perceptual_tcn_v1": ["reward=perceptual", "reward.encoder=tcn", "reward.shaping=progress", *V1],
    "perceptual_pixels_v1": ["reward=perceptual", "reward.encoder=pixels", "reward.shaping=progress", *V1],
    "progress_rel": ["reward.shaping=progress", *V1, "agent.state_features=relative"],  # v1 + relative features
    # v1 + relative features + BC warm start 3000 steps + TD3+BC alpha 0.5 (the current defaults but for online.cql_alpha)
    "progress_relbc": ["reward.shaping=progress", *V1, "agent.state_features=relative", "pretrain.bc_steps=3000",
                       "agent.bc_weight=0.5"],
    "sparse_relbc": ["reward.shaping=none", *V1, "agent.state_features=relative", "pretrain.bc_steps=3000",
                     "agent.bc_weight=0.5"],
    # candidates after the current defaults (2026-11-28): a cheaper conservative term buying more updates,
    # and the BC term annealed away over the run
    "progress_n1u2": ["reward.shaping=progress", "agent.cql_n_actions=1", "online.updates_per_step=2"],
    "progress_bcanneal": ["reward.shaping=progress", "online.bc_final=0.0", "online.bc_anneal_episodes=60"],
    # self-imitation: online episodes that end at success join the demonstrations
    "progress_imitate": ["reward.shaping=progress", "online.imitate_successes=true"],
    "progress_n1u2_imitate": ["reward.shaping=progress", "agent.cql_n_actions=1", "online.updates_per_step=2",
                              "online.imitate_successes=true"],
}
CHECKPOINTS = (10, 20, 50, 100, 150)
BASE = ["online.episodes=60"]  # this table's runs: 60 online episodes, 5 demonstrations unless the name says


def overrides_of(name: str) -> list[str]:
    """Run name ``<task>__<variant>__s<seed>[__demos<n>]`` -> its stepwise-train overrides."""
    task, variant, seed, *rest = name.split("__")
    demos = [f"demos={rest[0].removeprefix('demos')}"] if rest else ["demos=5"]
    return [f"task=metaworld/{task}", f"seed={seed.removeprefix('s')}", *demos, *BASE, *VARIANTS[variant]]


def plan(args) -> list[tuple[str, list[str]]]:
    """(run name, overrides), in the order they run: what matters most first."""
    if args.names:
        return [(n, overrides_of(n)) for n in args.names]
    runs = []
    seeds = [int(s) for s in args.seeds]
    variants = args.only or ["progress", "sparse", "oracle", "dense"]
    for seed in seeds:
        for variant in variants:
            if variant in ("dense", "oracle") and seed != seeds[0]:
                continue  # references: one seed
            for task in args.tasks:
                runs.append((f"{task}__{variant}__s{seed}", [f"task=metaworld/{task}", f"seed={seed}", "demos=5", *BASE, *VARIANTS[variant]]))
    if args.demo_curve:
        for task in ("drawer-open", "push"):
            for demos in (1, 2, 10):  # 5 demonstrations: the progress runs above
                runs.append((f"{task}__progress__s0__demos{demos}",
                             [f"task=metaworld/{task}", "seed=0", f"demos={demos}", *BASE, *VARIANTS["progress"]]))
    return [(n, o) for n, o in runs if n not in set(args.skip or [])]


def sweeps_of(runs: list[tuple[str, list[str]]], runs_dir: Path, extra: list[str]) -> list:
    """The planned runs as sweeps: those of one variant and demonstration count share a sweep over
    their tasks and seeds (a sweep whose runs all have reports is left out)."""
    from sweep import Sweep

    groups: dict[str, dict] = {}
    for name, _ in runs:
        task, variant, seed, *rest = name.split("__")
        group = groups.setdefault("__".join([variant, *rest]), {"variant": variant, "rest": rest, "tasks": [], "seeds": []})
        group["tasks"] += [task] if task not in group["tasks"] else []
        group["seeds"] += [seed.removeprefix("s")] if seed.removeprefix("s") not in group["seeds"] else []
    out = []
    for folder, g in groups.items():
        if all((runs_dir / folder / "metaworld" / t / f"s{s}" / "report.json").exists() for t in g["tasks"] for s in g["seeds"]):
            continue
        demos = [f"demos={g['rest'][0].removeprefix('demos')}"] if g["rest"] else ["demos=5"]
        out.append(Sweep(folder, [*BASE, *VARIANTS[g["variant"]], *demos],
                         {"task": [f"metaworld/{t}" for t in g["tasks"]], "seed": g["seeds"]},
                         runs_dir / folder, "${task}/s${seed}", extra))
    return out


def success_at(report: dict, episode: int) -> float | None:
    """Eval success rate at the evaluation nearest at or before ``episode`` online episodes."""
    rows = [e for e in report["evals"] if e["episode"] <= episode]
    return rows[-1]["success_rate"] if rows and report["online_episodes"] >= episode else None


def task_means(reports: dict, variant: str, seeds: set[str] | None = None) -> tuple[float, dict] | None:
    """The mean final success of ``variant``'s 5-demonstration runs over the benchmark's TASKS (each
    task's seeds averaged first; ``seeds``: only those, e.g. {"s0"}), and the per-task means; None
    unless every task has such a run."""
    per_task: dict[str, list[float]] = {}
    for name, r in reports.items():
        parts = name.split("__")
        if len(parts) == 3 and parts[1] == variant and (seeds is None or parts[2] in seeds):
            per_task.setdefault(parts[0], []).append(float(r["final_success_rate"]))
    if any(t not in per_task for t in TASKS):
        return None
    means = {t: sum(per_task[t]) / len(per_task[t]) for t in TASKS}
    return sum(means.values()) / len(means), means


def load_runs(runs_dir: Path) -> dict:
    """The report of every finished run under ``runs_dir``, by run name: ``<task>__<folder>__s<seed>``
    from a sweep's job folder ``<folder>/metaworld/<task>/s<seed>`` (the folder names the variant and
    any demonstration count), or the folder's own name for runs of the earlier layout ``<runs>/<name>``."""
    reports = {}
    for path in sorted(runs_dir.rglob("report.json")) if runs_dir.exists() else []:
        rel = path.parent.relative_to(runs_dir).parts
        if len(rel) == 1:
            name = rel[0]
        else:
            variant, *rest = rel[0].split("__")
            name = "__".join([rel[-2], variant, rel[-1], *rest])
        reports[name] = json.loads(path.read_text())
    return dict(sorted(reports.items()))


def write_table(runs_dir: Path, out: Path, reports: dict | None = None, written: str | None = None) -> None:
    """The tables (``out``, its .json and .png) from the finished runs under ``runs_dir``, or from
    ``reports`` (an earlier learning.json's runs) with ``written``, the line saying where they ran."""
    import numpy as np

    reports = load_runs(runs_dir) if reports is None else reports
    if not reports:
        return
    from machine import cpu_name

    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    if written is None:
        written = (f"Written {time.strftime('%Y-%m-%d %H:%M')} by `benchmarks/learning.py` on {os.cpu_count()} CPU "
                   f"cores ({cpu_name()});")
    lines = [
        "# Learning benchmark: stepwise-train on held-out tasks", "",
        f"{written} "
        "two to five processes side by side (this benchmark ran 2 runs at a time beside other jobs; wall times are contended), 1 torch thread each. Every run: 5 scripted demonstrations (demo split) for the "
        "policy, the progress model adapted on ONE of them (150 steps), BC warm start 3000 steps + Cal-QL "
        "pre-training 1000 steps, then online SAC with Cal-QL's conservative term kept (2 critics, 256x256, update ratio 1, "
        "TD3+BC term with alpha 0.5, relative state features) on the train split, "
        "episodes of at most 200 steps ended at success (+10); `online eps` says how long each run was. Evaluation: deterministic policy on the eval split "
        "(variants never seen in demos or training), 10 episodes every 10 online episodes; `final` = 50 episodes "
        "after the last online episode.", "",
        "Variants: `progress` = sparse success + lambda 5 shaping from the adapted step-PRM (forward perspective); "
        "`sparse` = success reward only; `dense` = Meta-World's hand-written dense reward (reference); `oracle` = "
        "sparse + shaping from a privileged simulator potential (the dense reward / 10), the ceiling a learned "
        "progress model can approach; `perceptual_<encoder>` = sparse + lambda 5 shaping from the perceptual-feature "
        "reward fitted on ONE demonstration with that encoder. `_v1` = the same with the defaults before 2026-11-28 "
        "(raw 39-d state, BC warm start 500 steps, TD3+BC alpha 2.5, no conservative term online); `progress_rel` and "
        "`progress_relbc` / `sparse_relbc` are the steps between (see VARIANTS in the script). Candidates tried after the "
        "current defaults: `progress_n1u2` = the conservative term with 1 sampled action per source instead of 4, buying "
        "2 updates per env step; `progress_bcanneal` = the BC term annealed to 0 over the 60 episodes; "
        "`progress_imitate` = self-imitation (`online.imitate_successes`: episodes ending at success join the demonstrations).", "",
        "| run | online eps | " + " | ".join(f"@{c}" for c in CHECKPOINTS) + " | final (50 eps) | first 100% at | hacking eps | wall min |",
        "|---|---|" + "---|" * (len(CHECKPOINTS) + 4),
    ]
    for name, r in reports.items():
        lines.append(f"| {name} | {r['online_episodes']} | " + " | ".join(fmt(success_at(r, c)) for c in CHECKPOINTS)
                     + f" | {r['final_success_rate']:.2f} | "
                       f"{'-' if r['first_episode_at_full_success'] is None else r['first_episode_at_full_success']} | " f"{r['hacking_monitor']['episodes']}/{r['hacking_monitor']['of']} | {r['wall_time_s'] / 60:.1f} |")
    # means per variant over tasks and seeds (5 demos only)
    lines += ["", "Means over every finished 5-demonstration run of a variant:", "",
              "| variant | runs | " + " | ".join(f"@{c}" for c in CHECKPOINTS) + " | final |", "|---|---|" + "---|" * (len(CHECKPOINTS) + 1)]
    summary = {}
    plain = {n: r for n, r in reports.items() if "__demos" not in n}
    by_variant = {v: {n.split("__")[0] for n in plain if f"__{v}__" in n} for v in VARIANTS}
    paired = by_variant["progress"] & by_variant["sparse"]
    groups = [(v, None) for v in VARIANTS] + [(v, paired) for v in ("progress", "sparse") if paired]
    for variant, tasks in groups:
        rs = [r for n, r in plain.items() if f"__{variant}__" in n and (tasks is None or n.split("__")[0] in tasks)]
        if not rs:
            continue
        cells = []
        for c in CHECKPOINTS:
            vals = [v for v in (success_at(r, c) for r in rs) if v is not None]
            cells.append((float(np.mean(vals)), len(vals)) if vals else None)
        final = float(np.mean([r["final_success_rate"] for r in rs]))
        label = variant if tasks is None else f"{variant}, tasks with both variants ({len(tasks)})"
        summary[label] = {"runs": len(rs), "at": {c: cell for c, cell in zip(CHECKPOINTS, cells)}, "final": final}
        show = lambda cell: "-" if cell is None else (f"{cell[0]:.2f}" + ("" if cell[1] == len(rs) else f" ({cell[1]} runs)"))  # noqa: E731
        lines.append(f"| {label} | {len(rs)} | " + " | ".join(show(cell) for cell in cells) + f" | {final:.2f} |")
    lines += ["", f"Mean final success over the {len(TASKS)} tasks (5 demonstrations; each task's seeds averaged "
              "first), for every variant run on all of them:", "",
              "| variant | seeds | mean | " + " | ".join(TASKS) + " |", "|---|---|---|" + "---|" * len(TASKS)]
    for variant in VARIANTS:
        for seeds, label in ((None, "all"), ({"s0"}, "s0")):
            got = task_means(plain, variant, seeds)
            if got is not None:
                summary.setdefault("task_means", {})[f"{variant} ({label})"] = got[0]
                lines.append(f"| {variant} | {label} | **{got[0]:.2f}** | " + " | ".join(f"{got[1][t]:.2f}" for t in TASKS) + " |")
    demo_runs = {n: r for n, r in reports.items() if "__progress__s0" in n or "__progress_v1__s0" in n}
    curve = [(t, "v1" if "_v1__" in n else "current", r["demos"], r["final_success_rate"], success_at(r, 50),
              r["first_episode_at_full_success"])
             for n, r in demo_runs.items() for t in [r["task"].split("/")[1]] if t in ("drawer-open", "push")]
    if any(d != 5 for _, _, d, *_ in curve):
        lines += ["", "Demonstration curve (progress shaping, seed 0):", "",
                  "| task | defaults | demos | @50 | final (50 eps) | first 100% at |", "|---|---|---|---|---|---|"]
        for t, v, d, f, s50, first in sorted(curve):
            lines.append(f"| {t} | {v} | {d} | {fmt(s50)} | {f:.2f} | {first} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"written": written, "summary": summary, "runs": reports}, indent=1,
                                                   default=str))
    plot(reports, out.with_suffix(".png"))


def plot(reports: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for n, r in reports.items() if "__demos" not in n})
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(3.2 * max(1, len(tasks)), 3), squeeze=False)
    colors = {"progress": "C0", "sparse": "C1", "dense": "C2", "oracle": "C3"}
    for ax, task in zip(axes[0], tasks):
        for name, r in reports.items():
            if r["task"] != task or "__demos" in name:
                continue
            variant = name.split("__")[1]
            ax.plot([e["episode"] for e in r["evals"]], [e["success_rate"] for e in r["evals"]],
                    color=colors.get(variant, "k"), alpha=0.8, label=variant)
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=7, loc="lower right")
        ax.set(title=task.split("/")[1], xlabel="online episodes", ylim=(-0.05, 1.05))
    axes[0][0].set_ylabel("eval success")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--seeds", nargs="+", default=["0", "1"])
    parser.add_argument("--only", nargs="+", choices=sorted(VARIANTS), help="variants to run (default: all)")
    parser.add_argument("--demo-curve", action="store_true", help="also 1, 2, 10 demonstrations on drawer-open and push")
    parser.add_argument("--launcher", default="basic",
                        help="Hydra launcher: basic | submitit_local | cluster (Slurm) | any hydra/launcher option")
    parser.add_argument("--concurrent", type=int, default=1, help="sweeps running at once")
    parser.add_argument("--names", nargs="+", help="exactly these runs, in this order (e.g. push__sparse__s0)")
    parser.add_argument("--skip", nargs="+", help="run names to leave out (e.g. ones running elsewhere)")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "bench_learning"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "learning.md"))
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--from-json", help="with --table-only: rebuild the tables from an earlier learning.json's "
                                            "runs (its machine line kept) instead of --runs")
    parser.add_argument("extra", nargs="*", help="extra stepwise-train (and hydra.launcher.*) overrides for every run")
    args = parser.parse_args()
    runs_dir, out = Path(args.runs), Path(args.out)
    if args.table_only and args.from_json:
        earlier = json.loads(Path(args.from_json).read_text())
        written = earlier.get("written") or next(
            (ln.split(" two to five")[0] for ln in out.read_text().splitlines() if ln.startswith("Written")), None)
        write_table(runs_dir, out, earlier["runs"], written)
        print(out.read_text())
        return
    if not args.table_only:
        from sweep import run_sweeps

        todo = sweeps_of(plan(args), runs_dir, args.extra)
        print(f"{len(todo)} sweep(s), {sum(s.jobs() for s in todo)} job(s) through hydra/launcher={args.launcher}")
        run_sweeps(todo, args.launcher, args.concurrent, after_each=lambda: write_table(runs_dir, out))
    write_table(runs_dir, out)
    print(out.read_text() if out.exists() else "no finished runs")


if __name__ == "__main__":
    main()
