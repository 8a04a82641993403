"""stepwise-train, the main job: settings refused early, a small real run end to end, resume after
the run stops, the report, shaping from the progress model, and the console entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from policies.train import CONFIG_DIR, TrainConfigError, check_config, run
from reward_models.base import CheckpointError
from sim.tasks import UnknownTaskError

# a tiny job: one demo, no camera-based reward, short episodes
SMALL = ["demos=1", "reward.shaping=none", "pretrain.bc_steps=20", "pretrain.steps=10", "online.max_steps=30",
         "online.episodes=2", "eval.every=1", "eval.episodes=1", "eval.final_episodes=2", "agent.batch_size=32",
         "agent.hidden_sizes=[32,32]", "reward.adapt_steps=0"]


def cfg_of(*overrides: str):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("override,error,match", [
    ("task=metaworld/no-such-task", UnknownTaskError, "no-such-task"),
    ("agent.utd_ratio=0", TrainConfigError, "utd_ratio"),
    ("demos=0", TrainConfigError, "demos"),
    ("demos=11", TrainConfigError, "demos"),
    ("algo=ppo", TrainConfigError, "algo"),
    ("reward.perspective=incremental", TrainConfigError, "state-only"),
])
def test_bad_settings_are_refused_before_any_work(override, error, match):
    with pytest.raises(error, match=match):
        check_config(cfg_of(override))


def test_missing_reward_model_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no reward-model checkpoint"):
        run(cfg_of("reward.model=/nonexistent/model"), tmp_path / "run")
    assert not (tmp_path / "run" / "demos").exists()  # failed before collecting anything


def test_small_job_reports_and_resumes(tmp_path):
    out = tmp_path / "run"
    report = run(cfg_of(*SMALL), out)
    for key in ("final_success_rate", "online_episodes", "wall_time_s", "final_eval_episodes", "hacking_monitor"):
        assert key in report
    assert report["online_episodes"] == 2 and report["final_eval_episodes"] == 2
    saved = json.loads((out / "report.json").read_text())
    assert saved["online_episodes"] == 2
    assert (out / "success_curve.png").stat().st_size > 1000 and (out / "report.md").exists()
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert [e["episode"] for e in saved["evals"]] == [0, 1, 2]  # before training, then every episode
    # the same directory without resume=true is refused, not overwritten
    with pytest.raises(TrainConfigError, match="resume=true"):
        run(cfg_of(*SMALL), out)
    # a checkpoint of another task is refused
    with pytest.raises(TrainConfigError, match="drawer-open"):
        run(cfg_of(*SMALL, "task=metaworld/push", "resume=true"), out)
    # resume and extend: the run continues from its checkpoint (history, replay, counters)
    before = torch.load(out / "checkpoint.pt", weights_only=False)
    report = run(cfg_of(*SMALL, "resume=true", "online.episodes=3"), out)
    after = torch.load(out / "checkpoint.pt", weights_only=False)
    assert report["online_episodes"] == 3
    key = lambda rows: [(r["episode"], r["length"], r["return"], r["agent/critic_loss"]) for r in rows]  # noqa: E731
    assert len(after["state"]["history"]) == 3 and key(after["state"]["history"][:2]) == key(before["state"]["history"])
    n_before = len(before["replay"]["obs"])
    np.testing.assert_array_equal(after["replay"]["obs"][:n_before], before["replay"]["obs"])
    assert after["agent"]["num_updates"] > before["agent"]["num_updates"]
    assert report["wall_time_s"] >= saved["wall_time_s"]


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(TrainConfigError, match="cannot be read"):
        run(cfg_of(*SMALL, "resume=true"), out)


def test_progress_shaping_scores_each_episode_and_logs_terms(tmp_path):
    """Shaping from the shipped progress model (zero-shot here, to keep the test short)."""
    out = tmp_path / "run"
    over = [o for o in SMALL if not o.startswith("reward.shaping")] + ["reward.shaping=progress", "online.episodes=1"]
    report = run(cfg_of(*over), out)
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    row = ck["state"]["history"][0]
    assert 0.0 <= row["final_progress"] <= 1.0 and 0.0 <= row["phi_mean"] <= 1.0
    assert row["shaping"] != 0.0  # the shaping term reached the reward
    assert row["return"] == pytest.approx(row["env_reward"] + row["shaping"], abs=1e-3)
    assert len(report["demo_final_progress"]) == 1
    # the demonstration ended in success: its last frame scores high progress
    assert report["demo_final_progress"][0] > 0.5


def test_cli_unknown_task_exits_with_the_known_names(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "policies.train", "task=metaworld/nope", f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "nope" in proc.stderr and "list_tasks" in proc.stderr
