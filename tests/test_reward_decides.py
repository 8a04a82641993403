"""The learning benchmark's table comes from run folders (report.json + .hydra), wherever they ran, and keeps
the earlier table's rows whose folders are gone."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import reward_decides as rd  # noqa: E402


def _run(root: Path, name: str, config: dict, overrides: list[str], final: float, evals: list[float]) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    report = {"task": config["task"], "demos": config["demos"], "seed": config["seed"], "final_success_rate": final,
              "online_episodes": 10 * (len(evals) - 1), "wall_time_s": 1.0,
              "evals": [{"episode": 10 * i, "success_rate": s} for i, s in enumerate(evals)],
              "hacking_monitor": {"episodes": 1, "of": 10 * (len(evals) - 1)},
              "after_pretraining_success_rate": evals[0]}
    (run / "report.json").write_text(json.dumps(report))
    return run


def test_cells_are_named_by_their_resolved_config_and_tabulated(tmp_path):
    defaults = rd.current_defaults()
    base = {"task": "metaworld/push", "demos": 5, "seed": 0, "reward": {"source": "sparse", "shaping": "oracle"},
            "agent": {"n_step": defaults["agent.n_step"]}, "online": {"cql_rows": defaults["online.cql_rows"]}}
    _run(tmp_path / "a", "today", base, ["experiment=push", "seed=0"], 0.9, [0.4, 0.8, 0.9])
    # a run older than agent.n_step (no such key in its config) ran one-step returns
    old = {**base, "seed": 1, "demos": 2, "agent": {}}
    _run(tmp_path / "b", "old", old, ["seed=1", "online.episodes=20"], 0.5, [0.4, 0.5, 0.5])
    cells = {c["seed"]: c for c in rd.load_cells([tmp_path / "a", tmp_path / "b"])}
    assert cells[0]["learner"] == "" and cells[0]["reward"] == "oracle"
    assert cells[1]["learner"] == ("agent.n_step=1" if defaults["agent.n_step"] != 1 else "")
    assert rd.episodes_to(cells[0]["report"]) == 20 and rd.episodes_to(cells[1]["report"]) is None

    out = tmp_path / "table.md"
    rd.write_table(list(cells.values()), out)
    table = out.read_text()
    assert "| push | 5 | oracle | 1 | 0.40 | 0.90 | 20 | 1/20 | 20 |" in table
    assert json.loads(out.with_suffix(".json").read_text())[0]["final_success_rate"] in (0.9, 0.5)


def test_the_refresh_settings_are_named_only_for_runs_that_refresh(tmp_path):
    """A refresh made before freeze_encoder / max_failures existed re-fitted the whole model on every failure:
    its label says so; a run that never refreshed carries none of the refresh's settings in its label."""
    defaults = rd.current_defaults()
    assert defaults["refresh.every"] == 0 and defaults["refresh.freeze_encoder"] is True
    base = {"task": "metaworld/push", "demos": 5, "seed": 0, "reward": {"source": "sparse", "shaping": "progress"},
            "agent": {"n_step": defaults["agent.n_step"]}, "online": {"cql_rows": defaults["online.cql_rows"]}}
    _run(tmp_path, "plain", {**base, "refresh": {"every": 0}}, ["seed=0"], 0.5, [0.4, 0.5])
    _run(tmp_path, "old", {**base, "seed": 1, "refresh": {"every": 10, "first": 3}}, ["seed=1"], 0.5, [0.4, 0.5])
    _run(tmp_path, "cheap", {**base, "seed": 2, "refresh": {"every": 10, "first": 3, "steps": 100, "max_failures": 40,
                                                             "freeze_encoder": True}}, ["seed=2"], 0.5, [0.4, 0.5])
    labels = {c["seed"]: c["learner"] for c in rd.load_cells([tmp_path])}
    assert labels == {0: "", 1: "refresh.every=10 refresh.first=3 refresh.freeze_encoder=false refresh.max_failures=null",
                      2: "refresh.every=10 refresh.first=3"}


def test_a_later_table_keeps_the_cells_whose_run_folders_are_gone(tmp_path):
    defaults = rd.current_defaults()
    base = {"task": "metaworld/push", "demos": 5, "seed": 0, "reward": {"source": "sparse", "shaping": "oracle"},
            "agent": {"n_step": defaults["agent.n_step"]}, "online": {"cql_rows": defaults["online.cql_rows"]}}
    gone = _run(tmp_path / "earlier", "s0", base, ["seed=0"], 0.9, [0.4, 0.8, 0.9])
    out = tmp_path / "table.md"
    rd.write_table(rd.load_cells([tmp_path / "earlier"]), out)
    shutil.rmtree(gone)  # an earlier sitting's run folder, not on this machine any more
    _run(tmp_path / "today", "s1", {**base, "seed": 1}, ["seed=1"], 0.7, [0.2, 0.5, 0.7])
    redo = _run(tmp_path / "today", "s0-again", base, ["seed=0"], 0.5, [0.4, 0.5, 0.5])

    # the earlier row is kept beside today's run ...
    fresh = rd.load_cells([tmp_path / "today"])
    only_s1 = [c for c in fresh if c["seed"] == 1]
    kept = rd.kept_cells(out.with_suffix(".json"), only_s1)
    assert [(c["seed"], c["report"]["final_success_rate"]) for c in kept] == [(0, 0.9)]
    rd.write_table(only_s1 + kept, out)
    assert "| push | 5 | oracle | 2 | 0.30 | 0.80 | -, 20 | 2/40 | 20, 20 |" in out.read_text()
    # ... and a run filling the same cell today replaces it
    assert rd.kept_cells(out.with_suffix(".json"), fresh) == []
    assert redo.exists()
    # a row whose folder is on this machine but outside the folders tabulated now is kept (a grid run in
    # parts into other folders must not drop the rest); one under those folders is left to them: loaded
    # afresh, or dropped when its report was deleted on purpose
    other = _run(tmp_path / "elsewhere", "s2", {**base, "seed": 2}, ["seed=2"], 0.6, [0.2, 0.4, 0.6])
    rd.write_table(rd.load_cells([tmp_path / "elsewhere"]) + fresh, out)
    assert sorted(c["seed"] for c in rd.kept_cells(out.with_suffix(".json"), only_s1, [tmp_path / "today"])) == [2]
    (other / "report.json").unlink()
    kept = rd.kept_cells(out.with_suffix(".json"), [], [tmp_path / "elsewhere"])
    assert sorted((c["seed"], c["report"]["final_success_rate"]) for c in kept) == [(0, 0.5), (1, 0.7)]
    # a broken table file names the fix instead of a traceback
    out.with_suffix(".json").write_text("[{")
    with pytest.raises(SystemExit, match="git checkout"):
        rd.kept_cells(out.with_suffix(".json"), fresh)
