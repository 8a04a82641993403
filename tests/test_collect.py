"""`stepwise-collect`: demonstrations and labelled failures on disk, keyframes, resume."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import sim
from episodes import EpisodeStore
from sim.collect import FAILURE_KINDS, Plan, plan_episodes, record_episode
from sim.keyframes import step_keyframes

BIN = Path(sys.executable).parent


def test_keyframes_rule():
    off_on = lambda t_on, n: np.r_[np.zeros(t_on - 1), np.ones(n - t_on + 1)]  # noqa: E731
    success = np.zeros(100, bool)
    success[79:] = True  # success first holds after action 80
    kf = step_keyframes({"near_object": off_on(30, 100), "grasp_success": off_on(50, 100)}, success)
    np.testing.assert_array_equal(kf, [30, 50, 80])
    # A signal already on at the first step is not an event; no events -> split at the midpoint.
    kf = step_keyframes({"grasp_success": np.ones(100)}, success)
    np.testing.assert_array_equal(kf, [40, 80])
    # Events too close to each other or to success are dropped.
    kf = step_keyframes({"a": off_on(30, 100), "b": off_on(32, 100), "c": off_on(78, 100)}, success)
    np.testing.assert_array_equal(kf, [30, 80])
    # A failed episode ends its last step at its last frame.
    kf = step_keyframes({"near_object": off_on(30, 100)}, np.zeros(100, bool))
    np.testing.assert_array_equal(kf, [30, 100])


def test_failure_kinds_fail_and_start_like_the_demo():
    task = sim.SimTask("metaworld/drawer-open", cameras=["corner"], image_size=16, split="demo")
    try:
        demo = record_episode(task, Plan("expert", 0))
        assert demo.success and demo.kind == "expert" and len(demo.keyframes) >= 2
        assert demo.infos["success"][-1] == 1.0 and demo.rewards.max() == 1.0
        for kind in ("stall", "near_miss", "reversal"):
            ep = record_episode(task, Plan(kind, 0))
            assert not ep.success, kind
            k = 10  # the failure replays the demo's opening exactly
            np.testing.assert_allclose(ep.actions[:k], demo.actions[:k])
        stall = record_episode(task, Plan("stall", 0))
        tail = stall.state[-20:, :3]  # the hand holds still once stalled
        assert np.ptp(tail, axis=0).max() < 0.01
    finally:
        task.close()


def test_plan_skips_seeds_where_the_expert_fails():
    task = sim.SimTask("metaworld/door-open", cameras=[], split="demo")
    try:
        plans = plan_episodes(task, episodes=6, seed=0, failures=1, failure_kinds=FAILURE_KINDS, noise=0.1)
        seeds = [p.seed for p in plans]
        assert len(plans) == 6 + len(FAILURE_KINDS) and len(set(seeds)) == len(seeds)
        assert seeds == sorted(seeds)
        assert [p.kind for p in plans[:6]] == ["expert"] * 6
    finally:
        task.close()


def _collect(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    return subprocess.run(
        [str(BIN / "stepwise-collect"), f"out={out}", "image_size=32", *args],
        capture_output=True, text=True, env=env, timeout=600,
    )


def test_stepwise_collect_writes_a_valid_store_and_resumes(tmp_path):
    run = _collect(tmp_path, "task=metaworld/drawer-open", "episodes=2", "failures=1",
                   "failure_kinds=[stall]", "split=demo")
    assert run.returncode == 0, run.stderr[-2000:]
    path = tmp_path / "drawer-open.hdf5"
    with EpisodeStore(path, cameras=["corner", "corner2", "gripperPOV"]) as store:
        assert len(store) == 3
        kinds = [store.episode_attrs(i)["kind"] for i in range(3)]
        assert kinds == ["expert", "expert", "stall"]
        assert [store.episode_attrs(i)["success"] for i in range(3)] == [True, True, False]
        for i in range(3):
            kf = np.asarray(store.episode_attrs(i)["keyframes"])
            assert len(kf) >= 2 and np.all(np.diff(kf) > 0)
        assert store.image_size == (32, 32)
        ep = store[0]
        assert ep.instruction == "open the drawer" and ep.task == "metaworld/drawer-open"
        assert ep.images["corner"].shape == (ep.num_steps + 1, 32, 32, 3)
    assert "episodes" in run.stdout and "success rate" in run.stdout
    # Asking for more demos resumes: the 3 episodes stay and only the new ones are added.
    first = EpisodeStore(path)[0]
    run = _collect(tmp_path, "task=metaworld/drawer-open", "episodes=3", "failures=1",
                   "failure_kinds=[stall]")
    assert run.returncode == 0, run.stderr[-2000:]
    with EpisodeStore(path) as store:
        assert len(store) == 4
        np.testing.assert_array_equal(store[0].actions, first.actions)


def test_stepwise_collect_rejects_bad_input_clearly(tmp_path):
    run = _collect(tmp_path, "task=metaworld/drawer-opn", "episodes=1")
    assert run.returncode != 0 and "metaworld/drawer-open" in run.stderr
    run = _collect(tmp_path, "task=metaworld/reach", "episodes=1", "cameras=[corner,wrist]")
    assert run.returncode != 0 and "gripperPOV" in run.stderr
    # A store collected with other settings is not silently mixed with new episodes.
    assert _collect(tmp_path, "task=metaworld/reach", "episodes=1").returncode == 0
    run = _collect(tmp_path, "task=metaworld/reach", "episodes=2", "cameras=[corner]")
    assert run.returncode != 0 and "out=" in run.stderr
