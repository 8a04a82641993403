"""stepwise-train as a Hydra multirun sweep through hydra-submitit-launcher (two small jobs side by
side with submitit_local), launched again without redoing finished jobs, and tabulated from the
run folders by the learning benchmark."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import reward_decides as rd  # noqa: E402
from sweep import Sweep, run_sweep  # noqa: E402

SMALL = ["demos=1", "reward.shaping=none", "pretrain.bc_steps=20", "pretrain.steps=10", "online.max_steps=20",
         "online.episodes=1", "eval.every=1", "eval.episodes=1", "eval.final_episodes=1", "agent.batch_size=32",
         "agent.hidden_sizes=[32,32]", "adapt.steps=0"]


def test_a_submitit_local_sweep_runs_two_jobs_resumes_and_tabulates(tmp_path):
    sweep = Sweep("sparse", SMALL, {"task": ["metaworld/reach"], "seed": [0, 1]}, tmp_path / "sparse", rd.SUBDIR)
    assert run_sweep(sweep, "submitit_local") == 0, (tmp_path / "sparse" / "sweep.log").read_text()[-3000:]
    runs = {s: tmp_path / "sparse" / "metaworld" / "reach" / "demos1" / f"seed{s}" for s in (0, 1)}
    for seed, run in runs.items():  # one folder per job, named from its own config
        report = json.loads((run / "report.json").read_text())
        assert report["seed"] == seed and report["online_episodes"] == 1
        assert yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["seed"] == seed
    assert list((tmp_path / "sparse" / ".submitit").iterdir())  # submitit's own job folders: it ran them
    stamps = {s: (r / "report.json").stat().st_mtime_ns for s, r in runs.items()}

    # Launched again (here with Hydra's in-process launcher): both jobs are found finished and kept.
    assert run_sweep(sweep, "basic") == 0
    assert (tmp_path / "sparse" / "sweep.log").read_text().count("already finished") == 2
    assert {s: (r / "report.json").stat().st_mtime_ns for s, r in runs.items()} == stamps

    # The benchmark's table comes from the run folders alone.
    cells = rd.load_cells([tmp_path])
    assert sorted((c["task"], c["seed"], c["reward"]) for c in cells) == [("reach", 0, "sparse"), ("reach", 1, "sparse")]
    rd.write_table(cells, tmp_path / "table.md")
    assert "| reach | 1 | sparse | 2 |" in (tmp_path / "table.md").read_text()


def test_the_grid_becomes_one_sweep_per_reward_and_loop_value_skipping_finished_cells(tmp_path):
    todo = rd.sweeps(tmp_path, ["push", "pick-place"], [1, 5], ["sparse", "oracle"], [0, 1, 2], ["seed"], ["x=1"])
    assert len(todo) == 2 * 2 * 2 and all(s.jobs() == 3 for s in todo)
    first = todo[0]
    assert first.swept == {"task": ["metaworld/push"], "demos": [1], "seed": [0, 1, 2]}
    cmd = first.command("cluster")
    assert cmd[1] == "-m" and "seed=0,1,2" in cmd and "hydra/launcher=cluster" in cmd and "resume=true" in cmd
    assert "reward.shaping=none" in cmd and f"online.episodes={rd.EPISODES}" in cmd and cmd[-1] == "x=1"
    # a cluster spans the whole grid per reward
    wide = rd.sweeps(tmp_path, ["push", "pick-place"], [1, 5], ["sparse", "oracle"], [0, 1, 2], ["task", "demos", "seed"], [])
    assert [s.jobs() for s in wide] == [12, 12]
    # a sweep whose cells all have reports is not launched again
    for seed in (0, 1, 2):
        done = rd.cell_dir(tmp_path, "push", "sparse", 1, seed)
        done.mkdir(parents=True)
        (done / "report.json").write_text("{}")
    again = rd.sweeps(tmp_path, ["push", "pick-place"], [1, 5], ["sparse", "oracle"], [0, 1, 2], ["seed"], [])
    assert len(again) == 7 and all(not (s.name == "sparse demos=1 task=push") for s in again)
