"""Policy failures as data for reward models: stepwise-train keeps its online episodes as an episode store
(count, kind, labels, where each ended, keyframes; trimmed on resume, never duplicated), stepwise-failures
copies only the failures of training-task runs and refuses a held-out task, and the VLM classifier's frame
loader reads the failure set as negatives."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from episodes import EpisodeStore, EpisodeWriter
from policies.config import CONFIG_DIR, TrainConfigError, check_config
from policies.jobs.failures import FailureSetError, build_failure_set, is_selected
from policies.jobs.train import run
from policies.online_store import STORE_NAME
from policies.stages import plan_rig
from reward_models.vlm_success.data import BalancedSampler, load_frame_set

CAMS = ["corner", "gripperPOV"]
MAX_STEPS = 25
# a tiny run on a TRAINING task (drawer-close); its reward reads no frames, so keep_episodes=true renders
# the reward rig (two cameras at 48 px) for the store
TINY = ["task=metaworld/drawer-close", "demos=1", "reward.shaping=none", "pretrain.bc_steps=20", "pretrain.steps=10",
        f"online.max_steps={MAX_STEPS}", "online.episodes=3", "eval.every=1", "eval.episodes=1",
        "eval.final_episodes=1", "agent.batch_size=32", "agent.hidden_sizes=[32,32]", "adapt.steps=0",
        "offline_threads=1", "keep_episodes=true", f"reward.cameras=[{','.join(CAMS)}]", "reward.image_size=48"]


def cfg_of(*overrides: str):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run: (run directory, its report)."""
    old = torch.get_num_threads()
    out = tmp_path_factory.mktemp("policy") / "run"
    report = run(cfg_of(*TINY), out)
    torch.set_num_threads(old)
    return out, report


def stored(run_dir: Path) -> list[dict]:
    with EpisodeStore(run_dir / STORE_NAME) as store:
        return [store.episode_attrs(i) for i in range(len(store))]


def test_keep_episodes_modes():
    auto = check_config(cfg_of(*[o for o in TINY if not o.startswith("keep_episodes")]))  # the default
    on = check_config(cfg_of(*TINY))
    assert plan_rig(auto, None, None, False).env_cams == []  # auto: nothing rendered only for the store
    assert plan_rig(on, None, None, False).env_cams == CAMS  # true: the reward rig, rendered for it
    with pytest.raises(TrainConfigError, match="keep_episodes='sometimes'"):
        plan_rig(check_config(cfg_of("keep_episodes=sometimes")), None, None, False)


def test_online_store_holds_every_episode_as_a_policy_episode(trained):
    out, report = trained
    history = torch.load(out / "checkpoint.pt", weights_only=False)["state"]["history"]
    attrs = stored(out)
    assert len(attrs) == report["online_episodes"] == len(history) == 3
    assert [a["extra_attrs"]["online_episode"] for a in attrs] == [0, 1, 2]
    with EpisodeStore(out / STORE_NAME) as store:
        assert store.env_args["task"] == "metaworld/drawer-close" and store.cameras == CAMS
        for i, (a, row) in enumerate(zip(attrs, history)):
            ep = store[i]
            assert ep.kind == "policy" and ep.success == row["success"] and ep.num_steps == row["length"]
            assert ep.images["corner"].shape == (ep.num_steps + 1, 48, 48, 3) and ep.state.shape[1] == 39
            assert ep.proprio.shape == (ep.num_steps + 1, 4) and ep.seed == i  # seed * 100000 + episode, seed 0
            assert {"success", "dense_reward", "near_object", "grasp_success", "terminated"} <= set(ep.infos)
            assert bool(ep.infos["success"].any()) == ep.success  # the simulator's label, per step
            ended = a["extra_attrs"]["ended"]
            assert ended == ("terminated" if ep.success else "truncated") and a["extra_attrs"]["end_step"] == ep.num_steps
            assert ep.success or ep.num_steps == MAX_STEPS
            assert len(ep.keyframes) >= 2 and ep.keyframes[-1] == ep.num_steps  # step labels, as a scripted episode
            assert ep.dones[-1] and not ep.dones[:-1].any()


def test_resume_trims_the_store_to_the_checkpoint(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained[0], out)
    at_three = (out / "checkpoint.pt").read_bytes()
    # run on to 4 episodes, then put back the checkpoint of episode 3: as if killed after episode 3 was
    # stored but before its checkpoint; the resumed run runs episode 3 again, and stores it once
    run(cfg_of(*TINY, "resume=true", "online.episodes=4"), out)
    assert len(stored(out)) == 4
    (out / "checkpoint.pt").write_bytes(at_three)
    run(cfg_of(*TINY, "resume=true", "online.episodes=4"), out)
    attrs = stored(out)
    assert [a["extra_attrs"]["online_episode"] for a in attrs] == [0, 1, 2, 3]  # not [0, 1, 2, 3, 3]
    history = torch.load(out / "checkpoint.pt", weights_only=False)["state"]["history"]
    assert [a["success"] for a in attrs] == [r["success"] for r in history]
    assert [a["num_samples"] for a in attrs] == [r["length"] for r in history]


def test_failure_set_copies_only_failures_and_resumes(trained, tmp_path):
    out, _ = trained
    failed = [a["extra_attrs"]["online_episode"] for a in stored(out) if not a["success"]]
    assert failed  # a 20-update policy does not close the drawer in 25 steps
    target = tmp_path / "failures"
    counts = build_failure_set([out], target)
    assert counts == {"metaworld/drawer-close": len(failed)}
    with EpisodeStore(target / "drawer-close.hdf5") as store:
        assert [store.episode_attrs(i)["extra_attrs"]["online_episode"] for i in range(len(store))] == failed
        assert all(not store.episode_attrs(i)["success"] and store[i].kind == "policy" for i in range(len(store)))
        assert store.episode_attrs(0)["extra_attrs"]["source_run"] == str(out.resolve())
    assert build_failure_set([out], target) == counts  # a rerun copies nothing twice
    with pytest.raises(FailureSetError, match="keep_episodes"):
        build_failure_set([tmp_path], target)


def test_near_miss_selection():
    base = {"success": False, "kind": "policy", "extra_attrs": {"claimed_success": False, "final_progress": 0.5}}
    claimed = {**base, "extra_attrs": {"claimed_success": True, "final_progress": float("nan")}}
    high = {**base, "extra_attrs": {"claimed_success": False, "final_progress": 0.95}}
    assert is_selected(base, "failures", 0.9) and not is_selected(base, "near_misses", 0.9)
    assert is_selected(claimed, "near_misses", 0.9) and is_selected(high, "near_misses", 0.9)
    assert not is_selected({**high, "success": True}, "failures", 0.9)
    assert not is_selected({**base, "kind": "expert"}, "failures", 0.9)


def test_command_refuses_a_heldout_task(trained, tmp_path):
    out, _ = trained
    heldout = tmp_path / "heldout_run"  # a run of drawer-open, a held-out task of the default split
    with EpisodeStore(out / STORE_NAME) as store:
        ep = store[0]
        env_args = {**store.env_args, "task": "metaworld/drawer-open"}
    ep.task = "metaworld/drawer-open"
    with EpisodeWriter(heldout / STORE_NAME, env_args=env_args, fsync=False) as writer:
        writer.add(ep)
    target = tmp_path / "failures"
    proc = subprocess.run([sys.executable, "-m", "policies.jobs.failures", f"runs=[{out},{heldout}]", f"out={target}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "metaworld/drawer-open" in proc.stderr and "held-out" in proc.stderr and "drop it from runs=" in proc.stderr
    assert not target.exists()  # every run is checked before anything is copied


def test_vlm_loader_reads_policy_failures_as_negatives(trained, tmp_path):
    out, _ = trained
    build_failure_set([out], tmp_path / "failures")
    frames = load_frame_set([out / "demos", tmp_path / "failures"], CAMS, (48, 48))
    kinds = [e["kind"] for e in frames.episodes]
    assert kinds[0] == "expert" and set(kinds[1:]) == {"policy"}
    for k, e in enumerate(frames.episodes):
        labels = frames.labels[frames.episode == k]
        assert labels.any() if e["kind"] == "expert" else not labels.any()  # every policy-failure frame: not done
    policy_frames = int(np.isin(frames.episode, [k for k, e in enumerate(frames.episodes) if e["kind"] == "policy"]).sum())
    assert policy_frames == sum(a["num_samples"] + 1 for a in stored(out) if not a["success"])
    batch = BalancedSampler(frames.labels).sample(8)
    assert frames.labels[batch].tolist() == [1] * 4 + [0] * 4
    assert json.loads(json.dumps(frames.episodes))  # the episode table stays plain data
