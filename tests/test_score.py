"""stepwise-score: per-frame progress and P(done) from the shipped model written into a scored copy
of a store (and of a LeRobot dataset, through lerobot's writer and loader), with the suspect
episodes listed: a stalled episode labelled a success is caught, an expert one is not."""

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest
from omegaconf import OmegaConf

from episodes import Episode, EpisodeStore, EpisodeWriter
from reward_models.score import run


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")  # tests/conftest.py


def rollout(env, seed, steps, expert):
    obs, _ = env.reset(seed=seed)
    frames = {c: [obs["images"][c]] for c in obs["images"]}
    proprio, actions = [obs["proprio"]], []
    for _ in range(steps):
        a = np.clip(env.robot.expert_action(), -1, 1).astype(np.float32) if expert else np.zeros(4, np.float32)
        obs, *_ = env.step(a)
        actions.append(a)
        proprio.append(obs["proprio"])
        for c in frames:
            frames[c].append(obs["images"][c])
    return {c: np.stack(v) for c, v in frames.items()}, np.stack(proprio), np.stack(actions)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Drawer-close: an expert episode (labelled, truly, a failure: 40 steps do not finish it) and a
    stalled one mislabelled a success."""
    from real import make_env

    env = make_env("metaworld/drawer-close", image_size=96)
    path = tmp_path_factory.mktemp("score") / "drawer.hdf5"
    with EpisodeWriter(path, env_args={"task": "metaworld/drawer-close"}, fsync=False) as w:
        for seed, steps, expert, label in ((2, 40, True, False), (3, 20, False, True)):
            images, proprio, actions = rollout(env, seed, steps, expert)
            w.add(Episode(images=images, proprio=proprio, actions=actions, rewards=np.zeros(steps, np.float32),
                          dones=np.zeros(steps, bool), task="metaworld/drawer-close", instruction=env.instruction,
                          fps=80.0, success=label, keyframes=np.array([steps]), kind="expert" if expert else "stall"))
    env.close()
    return path


def test_store_scored_copy_and_suspects(store, tmp_path):
    import reward_models

    out = tmp_path / "scored.hdf5"
    cfg = OmegaConf.create({"data": str(store), "model": "general", "out": str(out), "rise": 0.1, "threshold": None,
                            "max_episodes": None, "device": None})
    summary = run(cfg)
    assert summary["suspects"] == {"no_progress": [1], "labelled_success_not_done": [1], "done_but_labelled_failure": []}
    assert json.loads(Path(f"{out}.summary.json").read_text())["episodes"] == 2
    assert "no_progress, labelled_success_not_done" in Path(f"{out}.summary.md").read_text()
    model = reward_models.load("general")
    with EpisodeStore(store) as src, EpisodeStore(out) as dst:
        for i in range(2):
            ep, scored = src[i], dst[i]
            progress, done = model.score({c: ep.images[c] for c in model.cameras}, ep.instruction)
            np.testing.assert_allclose(scored.infos["progress"], progress[1:], atol=1e-6)
            np.testing.assert_allclose(scored.infos["success_prob"], done[1:], atol=1e-6)
            assert scored.extra_attrs["progress_start"] == pytest.approx(float(progress[0]), abs=1e-6)
            assert all(np.array_equal(ep.images[c], scored.images[c]) for c in ep.cameras)  # the data unchanged
    assert summary["rows"][0]["progress_max"] > 0.3  # the expert's progress rises
    with pytest.raises(FileExistsError):
        run(cfg)


def test_lerobot_dataset_gets_progress_columns(store, tmp_path):
    pytest.importorskip("lerobot", reason="install the lerobot extra")
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from episodes.lerobot import write_lerobot

    with EpisodeStore(store) as st:
        write_lerobot(iter(st), tmp_path / "ds", repo_id="tester/drawer")
    out = tmp_path / "scored_ds"
    proc = subprocess.run([str(Path(sys.executable).parent / "stepwise-score"), f"data={tmp_path / 'ds'}", "model=general",
                           f"out={out}"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "scored 2 episodes" in proc.stdout and "no_progress 1" in proc.stdout
    ds = LeRobotDataset("tester/scored", root=out)
    assert "stepwise.progress" in ds.meta.features and ds.num_frames == 41 + 21
    col = np.array([float(ds[i]["stepwise.progress"]) for i in range(41)])
    import reward_models

    model = reward_models.load("general")
    with EpisodeStore(store) as st:
        ep = st[0]
    want, _ = model.score({c: ep.images[c] for c in model.cameras}, ep.instruction)
    np.testing.assert_allclose(col, want, atol=1e-5)  # the same scores as the store's path


def test_progress_weights_favour_the_actions_that_advance_the_task():
    from reward_models.score import progress_weights

    w = progress_weights(np.array([0.0, 0.1, 0.1, 0.05, 0.35, 0.4]))
    assert w.shape == (5,) and w[1] == 0.0 and w[2] == 0.0  # a stall and a reversal teach nothing
    assert w[3] > w[0] > 0 and w[3] == pytest.approx(0.3 / (0.45 / 3))
    np.testing.assert_array_equal(progress_weights(np.zeros(4)), np.ones(3))  # no rise: plain BC
    with pytest.raises(ValueError, match=r"\(T\+1,\)"):
        progress_weights(np.zeros(1))
