"""The benchmark where the reward decides: 1, 2 and 5 demonstrations x six rewards x seven held-out
tasks x 3 seeds, 150 online episodes each, with episodes-to-90% and final success.

    python benchmarks/reward_decides.py                                   # every cell, resumable
    python benchmarks/reward_decides.py --tasks push --demos 1 2 --rewards sparse step_prm --seeds 0
    python benchmarks/reward_decides.py --launcher submitit_local         # the seeds of a cell side by side
    python benchmarks/reward_decides.py --tasks drawer-open --demos 1 --seeds 0 -- offline_threads=1  # overrides for
                                                                          #   every cell; after a list option, `--` first
    python benchmarks/reward_decides.py --launcher cluster --sweep-over task demos seed --concurrent 6 \
        hydra.launcher.partition=cpu                                      # a Slurm cluster: 6 sweeps of 63 jobs
    python benchmarks/reward_decides.py --table-only                      # the table from finished runs
    python benchmarks/reward_decides.py --table-only --runs DIR1 DIR2     # ... from run folders made anywhere

The cells run as Hydra multirun sweeps of `stepwise-train` (benchmarks/sweep.py), one sweep per reward
and per value of the keys not in ``--sweep-over`` (default: a sweep over the seeds), through the
Hydra launcher given (``basic``: one job after another; ``submitit_local``: side by side; ``cluster``:
Slurm). Each cell is one job (1 torch thread) in ``<runs>/<reward>/metaworld/<task>/demos<d>/seed<s>``,
launched with ``resume=true``: a finished cell (report.json) is kept, an unfinished one resumes from
its checkpoint, so the grid can be run in parts across sittings or machines. The table is aggregated
from the run folders alone: a cell is named by its ``report.json`` and ``.hydra/config.yaml`` (task,
demonstrations, seed, reward), never by its path, so runs made by a sweep anywhere can be tabulated
together. Rows with other learner settings than the benchmark's (``.hydra/overrides.yaml`` beyond the
grid's keys) are kept apart under their overrides. Rows of the earlier table whose run folders are
not loaded now are kept (``--fresh``: the folders alone), so the grid grows across sittings.
Writes ``benchmarks/results/reward_decides.md`` (+ .json, .png).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASKS = ["drawer-open", "door-open", "button-press-topdown", "window-close", "push", "pick-place", "faucet-open"]
DEMOS = [1, 2, 5]
SEEDS = [0, 1, 2]
EPISODES = 150
REWARDS = {  # label -> stepwise-train overrides
    "sparse": ["reward.shaping=none"],
    "step_prm": ["reward.shaping=progress"],
    "perceptual_tcn": ["reward=perceptual", "reward.encoder=tcn", "reward.shaping=progress"],
    "vlm+step_prm": ["reward.source=success_prob", "reward.success_model=vlm-general", "reward.shaping=progress"],
    "oracle": ["reward.shaping=oracle"],
    "dense": ["reward.source=sim_dense", "reward.shaping=none"],
}
GRID_KEYS = ("task", "experiment", "seed", "demos", "online.episodes", "reward", "threads", "offline_threads", "resume", "hydra")  # experiment=: the per-task presets set only the task


def cell_dir(runs: Path, task: str, reward: str, demos: int, seed: int) -> Path:
    """Where a cell's job runs: ``<runs>/<reward>/`` is its sweep's folder, the rest the job's subdir."""
    return runs / reward.replace("+", "_") / "metaworld" / task / f"demos{demos}" / f"seed{seed}"


SUBDIR = "${task}/demos${demos}/seed${seed}"  # the job folder under its sweep's, from the job's config


def sweeps(runs: Path, tasks: list[str], demos: list[int], rewards: list[str], seeds: list[int],
           sweep_over: list[str], extra: list[str]) -> list:
    """The grid's unfinished cells as sweeps: per reward, and per value of each key not swept over.
    A sweep whose every cell has a report is left out."""
    import itertools

    from sweep import Sweep

    axes = {"demos": demos, "task": tasks, "seed": seeds}  # loop order: the cheapest question first
    looped = [k for k in axes if k not in sweep_over]
    out = []
    for values in itertools.product(*(axes[k] for k in looped)):
        fixed_keys = dict(zip(looped, values))
        for reward in rewards:
            grid = {k: ([fixed_keys[k]] if k in fixed_keys else axes[k]) for k in axes}
            cells = list(itertools.product(grid["task"], grid["demos"], grid["seed"]))
            if all((cell_dir(runs, t, reward, d, s) / "report.json").exists() for t, d, s in cells):
                continue
            swept = {"task": [f"metaworld/{t}" for t in grid["task"]], "demos": grid["demos"], "seed": grid["seed"]}
            name = reward + "".join(f" {k}={v}" for k, v in fixed_keys.items())
            out.append(Sweep(name, [*REWARDS[reward], f"online.episodes={EPISODES}"], swept,
                             runs / reward.replace("+", "_"), SUBDIR, extra))
    return out


def reward_label(config: dict) -> str:
    """The grid's reward label of a run's resolved config."""
    r = config["reward"]
    if r["source"] == "sim_dense":
        return "dense"
    if r["shaping"] == "oracle":
        return "oracle"
    if r["shaping"] == "none":
        return "sparse" if r["source"] == "sparse" else f"{r['source']}"
    family = r.get("kind", "step_prm")
    name = "step_prm" if family == "step_prm" else f"perceptual_{r.get('encoder', '?')}" if family == "perceptual" else family
    return f"vlm+{name}" if r["source"] == "success_prob" else name


# Learner settings named by their resolved value in each run's .hydra/config.yaml, against today's
# defaults, so a run keeps its label when a default changes; the value is what the code did before a
# key existed (a run older than the key).
LEARNER_KEYS = {"agent.n_step": 1, "agent.proposal": False, "agent.cql_rows": None, "agent.utd_ratio": 1,
                "agent.bc_weight": 0.5, "online.cql_rows": None, "online.cql_alpha": 1.0, "online.bc_final": 1.0,
                "online.bc_anneal_episodes": 150, "online.imitate_successes": False, "online.offline_fraction": 0.5,
                "refresh.every": 0, "pretrain.bc_steps": 3000, "pretrain.steps": 1000, "agent.init_temperature": 1.0,
                "refresh.first": None, "refresh.steps": 100, "refresh.max_failures": None, "refresh.freeze_encoder": False,
                "agent.residual_scale": None}
REFRESH_DETAIL = ("refresh.first", "refresh.steps", "refresh.max_failures", "refresh.freeze_encoder")  # named only when it refreshes


def _get(config: dict, key: str, absent):
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return absent
        node = node[part]
    return node


def current_defaults() -> dict:
    """Today's value of every learner key: configs/train.yaml, then configs/agent/sac.yaml for agent.*."""
    import yaml

    train = yaml.safe_load((ROOT / "configs" / "train.yaml").read_text())
    agent = yaml.safe_load((ROOT / "configs" / "agent" / "sac.yaml").read_text())
    merged = {**train, "agent": {**agent, **(train.get("agent") or {})}}
    return {k: _get(merged, k, absent) for k, absent in LEARNER_KEYS.items()}


def learner_label(config: dict, overrides: list[str], defaults: dict | None = None) -> str:
    """A run's learner settings that differ from today's defaults ('' for the defaults): the resolved
    LEARNER_KEYS, plus any other override beyond the grid's keys."""
    defaults = current_defaults() if defaults is None else defaults
    own = set()
    for rw in REWARDS.values():
        own.update(rw)
    refreshes = bool(_get(config, "refresh.every", 0))
    named = [f"{k}={_fmt(v)}" for k, absent in LEARNER_KEYS.items()
             if (v := _get(config, k, absent)) != defaults[k] and (refreshes or k not in REFRESH_DETAIL)]
    rest = [o for o in overrides if o not in own and o.split("=")[0].lstrip("+~") not in GRID_KEYS
            and o.split("=")[0].lstrip("+~") not in LEARNER_KEYS
            and not o.split("=")[0].startswith(("hydra.", "reward."))]
    return " ".join(sorted(named + rest))


def _fmt(v) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def load_cells(dirs: list[Path]) -> list[dict]:
    """Every finished run under ``dirs``: its cell keys and its report."""
    import yaml

    cells, defaults = [], current_defaults()
    for d in dirs:
        for report in sorted(Path(d).rglob("report.json")):
            run = report.parent
            hydra = run / ".hydra"
            if not (hydra / "config.yaml").exists():
                continue
            config = yaml.safe_load((hydra / "config.yaml").read_text())
            overrides = yaml.safe_load((hydra / "overrides.yaml").read_text()) if (hydra / "overrides.yaml").exists() else []
            r = json.loads(report.read_text())
            cells.append({"task": r["task"].split("/")[-1], "demos": int(r["demos"]), "seed": int(r["seed"]),
                          "reward": reward_label(config), "learner": learner_label(config, overrides or [], defaults),
                          "episodes": int(r["online_episodes"]), "run": str(run), "report": r})
    return cells


def kept_cells(table_json: Path, cells: list[dict], dirs: list[Path] | None = None) -> list[dict]:
    """Rows of an earlier table (its ``.json``) whose runs were not loaded now, as cells, so a table
    written in one sitting keeps the cells run in earlier ones (run folders are not committed) and those
    under folders this call was not given. A row is dropped where its folder lies under one of ``dirs``
    (the folders tabulated now: it was loaded afresh, or its report was deleted on purpose) or where a
    loaded run fills the same cell (learner, task, demos, reward, seed, episodes). Each row keeps the
    learner label it was written with, against the defaults of its day."""
    if not table_json.exists():
        return []
    try:
        rows = json.loads(table_json.read_text())
    except json.JSONDecodeError as err:
        raise SystemExit(f"{table_json} is not valid JSON ({err}): restore it from git (git checkout -- {table_json}) "
                         "or delete it to tabulate only the run folders given") from None
    key = lambda c: (c["learner"], c["task"], c["demos"], c["reward"], c["seed"], c["episodes"])  # noqa: E731
    loaded = {c["run"] for c in cells} | {key(c) for c in cells}
    given = [Path(d).resolve() for d in dirs or []]
    out = []
    for row in rows:
        run = Path(row["run"]).resolve()
        if row["run"] in loaded or key(row) in loaded or any(run.is_relative_to(d) for d in given):
            continue
        out.append(cell_from_row(row))
        loaded.add(key(row))
    return out


def table_row(cell: dict) -> dict:
    """A cell as a row of the table's ``.json``: its keys and the report's numbers the table reads."""
    r = cell["report"]
    return {k: v for k, v in cell.items() if k != "report"} | {
        "final_success_rate": r["final_success_rate"], "to_90": episodes_to(r),
        "after_pretraining": r.get("after_pretraining_success_rate"),
        "evals": [[e["episode"], e["success_rate"]] for e in r["evals"]],
        "hacking": r["hacking_monitor"], "wall_time_s": r["wall_time_s"]}


def cell_from_row(row: dict) -> dict:
    """The inverse of `table_row`: a cell whose report holds what the table reads."""
    report = {"final_success_rate": row["final_success_rate"], "after_pretraining_success_rate": row["after_pretraining"],
              "evals": [{"episode": e, "success_rate": r} for e, r in row["evals"]],
              "hacking_monitor": row["hacking"], "wall_time_s": row["wall_time_s"]}
    return {k: v for k, v in row.items() if k not in ("final_success_rate", "to_90", "after_pretraining", "evals",
                                                        "hacking", "wall_time_s")} | {"report": report}


def episodes_to(report: dict, rate: float = 0.9) -> int | None:
    """Online episodes before the first evaluation at or above ``rate`` (0 = already after pre-training)."""
    return next((e["episode"] for e in report["evals"] if e["success_rate"] >= rate), None)


def write_table(cells: list[dict], out: Path) -> None:
    import numpy as np

    from machine import cpu_name

    groups: dict[tuple, list[dict]] = {}
    for c in cells:
        groups.setdefault((c["learner"], c["task"], c["demos"], c["reward"]), []).append(c)
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    grid_total = len(TASKS) * len(DEMOS) * len(REWARDS) * len(SEEDS)
    grid_done = {(c["task"], c["demos"], c["reward"], c["seed"]) for c in cells if not c["learner"] and
                 c["task"] in TASKS and c["demos"] in DEMOS and c["seed"] in SEEDS and c["episodes"] == EPISODES}
    lines = [
        "# The benchmark where the reward decides", "",
        f"Written {time.strftime('%Y-%m-%d %H:%M')} by `benchmarks/reward_decides.py` from {len(cells)} finished runs "
        f"(tabulated on {os.cpu_count()} CPU cores, {cpu_name()}; each run's own wall time is in its report). Every "
        f"run: `stepwise-train` with the scripted-expert demonstrations given (the progress model adapted on ONE "
        f"of them), BC warm start + Cal-QL pre-training, then {EPISODES} online episodes (a shorter run says so). "
        "Success: deterministic policy on the eval split; `final` over 50 episodes after the last online episode; "
        "`to 90%`: online episodes before the first 10-episode evaluation at >= 0.9 (0: pre-training alone; - : "
        "never). `pre` is the success after pre-training alone. Runs started before 2026-12-08 04:22 UTC drew "
        "the networks' initial weights unseeded (a bug, fixed then: docs/policy-learning.md), so their seed fixed "
        "the data and the exploration but not the initialisation. Rewards: `sparse` success only; `step_prm` + "
        "the adapted step-PRM's progress as potential; `perceptual_tcn` + the perceptual reward fitted on one "
        "demonstration; `vlm+step_prm` the VLM classifier's P(done) as the success signal + the step-PRM potential; "
        "`oracle` + a privileged simulator potential; `dense` Meta-World's hand-written reward.", "",
        f"Grid cells finished with today's learner: {len(grid_done)} of {grid_total} ({len(TASKS)} tasks x "
        f"{len(DEMOS)} demonstration counts x {len(REWARDS)} rewards x {len(SEEDS)} seeds, {EPISODES} episodes); "
        "the other rows are runs with other settings, tasks or lengths, kept apart.", "",
    ]
    for learner in sorted({c["learner"] for c in cells}):
        title = "the benchmark's learner (today's defaults)" if not learner else f"learner settings beside today's defaults `{learner}`"
        lines += [f"## Cells, {title}", "",
                  "| task | demos | reward | seeds | pre | final | to 90% (per seed) | hacking eps | episodes |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for (ln, task, demos, reward), cs in sorted(groups.items(), key=lambda kv: (kv[0][0], TASKS.index(kv[0][1]) if kv[0][1] in TASKS else 99, kv[0][2], kv[0][3])):
            if ln != learner:
                continue
            reps = [c["report"] for c in cs]
            pre = [r.get("after_pretraining_success_rate") for r in reps]
            pre = [p for p in pre if p is not None]
            hack = sum(r["hacking_monitor"]["episodes"] for r in reps), sum(r["hacking_monitor"]["of"] for r in reps)
            lines.append(
                f"| {task} | {demos} | {reward} | {len(cs)} | {fmt(float(np.mean(pre)) if pre else None)} | "
                f"{np.mean([r['final_success_rate'] for r in reps]):.2f} | "
                f"{', '.join('-' if episodes_to(r) is None else str(episodes_to(r)) for r in reps)} | "
                f"{hack[0]}/{hack[1]} | {', '.join(str(c['episodes']) for c in cs)} |")
        lines += ["", "Mean final success over the tasks run (each task's seeds averaged first):", "",
                  "| demos | " + " | ".join(REWARDS) + " |", "|---|" + "---|" * len(REWARDS)]
        for demos in sorted({c["demos"] for c in cells if c["learner"] == learner}):
            row = []
            for reward in REWARDS:
                per_task = [np.mean([c["report"]["final_success_rate"] for c in cs])
                            for (ln, t, d, rw), cs in groups.items() if ln == learner and d == demos and rw == reward]
                row.append(f"{np.mean(per_task):.2f} ({len(per_task)} tasks)" if per_task else "-")
            lines.append(f"| {demos} | " + " | ".join(row) + " |")
        lines.append("")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps([table_row(c) for c in cells], indent=1))
    plot(groups, out.with_suffix(".png"))


def plot(groups: dict, path: Path) -> None:
    """Mean final success against the number of demonstrations, one line per reward (defaults only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for reward in REWARDS:
        pts = []
        for demos in DEMOS:
            per_task = [np.mean([c["report"]["final_success_rate"] for c in cs])
                        for (ln, t, d, rw), cs in groups.items() if not ln and d == demos and rw == reward]
            if per_task:
                pts.append((demos, float(np.mean(per_task))))
        if pts:
            ax.plot(*zip(*pts), marker="o", label=reward)
    ax.set(xlabel="demonstrations", ylabel="mean final success", ylim=(-0.05, 1.05), xticks=DEMOS)
    if ax.get_lines():  # no cell with today's learner yet: an empty plot, no legend
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--demos", nargs="+", type=int, default=DEMOS)
    parser.add_argument("--rewards", nargs="+", choices=list(REWARDS), default=list(REWARDS))
    parser.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    parser.add_argument("--runs", nargs="+", default=[str(ROOT / "runs" / "reward_decides")],
                        help="where cells run (the first) and the folders tabulated (all)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reward_decides.md"))
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--fresh", action="store_true",
                        help="tabulate the run folders alone (default: also keep the rows of the earlier table "
                             "whose runs are not under the --runs folders)")
    parser.add_argument("--launcher", default="basic",
                        help="Hydra launcher: basic | submitit_local | cluster (Slurm) | any hydra/launcher option")
    parser.add_argument("--sweep-over", nargs="+", choices=["task", "demos", "seed"], default=["seed"],
                        help="keys each sweep spans (the others are looped over, one sweep per value)")
    parser.add_argument("--concurrent", type=int, default=1, help="sweeps running at once")
    parser.add_argument("extra", nargs="*", help="stepwise-train (and hydra.launcher.*) overrides for every cell")
    args = parser.parse_args()
    dirs = [Path(d) for d in args.runs]
    out = Path(args.out)

    def table_cells() -> list[dict]:  # the run folders' cells, and the earlier table's rows not under them
        cells = load_cells(dirs)
        return cells if args.fresh else cells + kept_cells(out.with_suffix(".json"), cells, dirs)

    if not args.table_only:
        from sweep import run_sweeps

        todo = sweeps(dirs[0], args.tasks, args.demos, args.rewards, args.seeds, args.sweep_over, args.extra)
        print(f"{len(todo)} sweep(s), {sum(s.jobs() for s in todo)} job(s) through hydra/launcher={args.launcher}")
        run_sweeps(todo, args.launcher, args.concurrent, after_each=lambda: write_table(table_cells(), out))
    cells = table_cells()
    if cells:
        write_table(cells, out)
        print(out.read_text())
    else:
        print(f"no finished runs under {[str(d) for d in dirs]}")


if __name__ == "__main__":
    main()
