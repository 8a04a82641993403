"""LeRobotDataset in and out with the real lerobot package: a dataset built with lerobot's own
writer from real MuJoCo frames, imported (camera keys mapped to the rig, frames framed as
real.cameras does), scored with the shipped reward model, exported, and read back with lerobot's
own loader; stepwise-train-rm / stepwise-eval-rm's data= resolver takes the dataset directly.
Local directories only: no network."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest

pytest.importorskip("lerobot", reason="install the lerobot extra: pip install -e '.[lerobot]' && pip install --no-deps lerobot==0.4.4")

from episodes import EpisodeStore
from episodes.lerobot import LeRobotImportError, metaworld_task, read_lerobot, scalar_columns
from real.lerobot_io import export_lerobot, import_lerobot

KEYS = {f"observation.images.{c}": c for c in ("corner", "corner2", "gripperPOV")}  # recorded with the rig's names
INSTRUCTION = "close the drawer"
STEPS = 24


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")  # tests/conftest.py


@pytest.fixture(scope="module")
def recorded():
    """Two expert episodes of drawer-close rendered by the simulator: (frames per key, state, actions)."""
    from real import make_env

    env = make_env("metaworld/drawer-close", cameras=list(KEYS.values()), image_size=96)
    episodes = []
    for seed in (0, 1):
        obs, _ = env.reset(seed=seed)
        frames = {k: [obs["images"][c]] for k, c in KEYS.items()}
        state, actions = [obs["proprio"]], []
        for _ in range(STEPS):
            a = np.clip(env.robot.expert_action(), -1, 1).astype(np.float32)
            obs, *_ = env.step(a)
            actions.append(a)
            state.append(obs["proprio"])
            for k, c in KEYS.items():
                frames[k].append(obs["images"][c])
        episodes.append(({k: np.stack(v) for k, v in frames.items()}, np.stack(state), np.stack(actions)))
    env.close()
    return episodes


@pytest.fixture(scope="module")
def dataset(recorded, tmp_path_factory):
    """A LeRobot dataset written with lerobot's own API, as a LeRobot user records one: N frames of
    (observation, action), the last action repeated; success marked on the first episode's last frame."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = tmp_path_factory.mktemp("lr") / "drawer"
    features = {k: {"dtype": "image", "shape": (96, 96, 3), "names": ["height", "width", "channels"]} for k in KEYS}
    features.update({
        "observation.state": {"dtype": "float32", "shape": (4,), "names": None},
        "action": {"dtype": "float32", "shape": (4,), "names": None},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
        "next.success": {"dtype": "bool", "shape": (1,), "names": None},
    })
    ds = LeRobotDataset.create("tester/drawer", fps=80, features=features, root=root, use_videos=False)
    for e, (frames, state, actions) in enumerate(recorded):
        acts = np.concatenate([actions, actions[-1:]])
        for t in range(STEPS + 1):
            frame = {k: frames[k][t] for k in KEYS}
            frame.update({"observation.state": state[t].astype(np.float32), "action": acts[t],
                          "next.reward": np.array([float(t)], np.float32),
                          "next.success": np.array([e == 0 and t == STEPS]), "task": INSTRUCTION})
            ds.add_frame(frame)
        scalar_columns(ds)  # lerobot 0.4.4 + numpy 2.4: see episodes.lerobot.scalar_columns
        ds.save_episode()
    ds.finalize()
    return root


def test_import_score_export_and_read_back_with_lerobot(dataset, recorded, tmp_path):
    import reward_models
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    store = tmp_path / "imported.hdf5"
    cams = ["observation.images.corner:corner", "corner2:corner2", "gripperPOV:gripperPOV"]  # full or short keys
    assert import_lerobot(str(dataset), store, cameras=cams, success="next.success") == 2
    with EpisodeStore(store) as st:
        eps = list(st)
    assert len(eps) == 2 and [e.success for e in eps] == [True, False]
    frames, state, actions = recorded[0]
    ep = eps[0]
    assert ep.cameras == list(KEYS.values()) and ep.num_steps == STEPS and ep.instruction == INSTRUCTION
    assert ep.task == "metaworld/drawer-close"  # Stepwise's own instruction names its task
    np.testing.assert_array_equal(ep.images["gripperPOV"], frames["observation.images.gripperPOV"])  # PNG: lossless
    np.testing.assert_allclose(ep.actions, actions)
    np.testing.assert_allclose(ep.proprio, state)
    np.testing.assert_allclose(ep.rewards, np.arange(STEPS))
    # score it with the shipped progress model: an expert closing the drawer makes progress
    model = reward_models.load("general")
    progress, done = model.score(ep.images, ep.instruction)
    assert progress.shape == done.shape == (STEPS + 1,) and 0 <= progress.min() and progress.max() <= 1
    assert progress[-4:].mean() > progress[:4].mean()
    # export with keyframes, and read it with lerobot's own loader
    out = tmp_path / "export"
    run = subprocess.run([str(Path(sys.executable).parent / "stepwise-export"), f"source={store}", f"out={out}",
                          "repo_id=tester/exported"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "exported" in run.stdout, run.stderr[-2000:]
    back = LeRobotDataset("tester/exported", root=out)
    assert back.num_episodes == 2 and back.num_frames == 2 * (STEPS + 1)
    assert sorted(back.meta.camera_keys) == sorted(f"observation.images.{c}" for c in KEYS.values())
    item = back[3]
    assert item["task"] == INSTRUCTION and tuple(item["observation.images.corner"].shape) == (3, 96, 96)
    np.testing.assert_allclose(item["observation.images.corner"].numpy().transpose(1, 2, 0) * 255,
                               ep.images["corner"][3], atol=0.01)
    again = list(read_lerobot(out))  # and back into episodes: the round trip is exact
    for a, b in zip(eps, again):
        assert a.success == b.success and a.instruction == b.instruction and np.array_equal(a.keyframes, b.keyframes)
        assert all(np.array_equal(a.images[c], b.images[c]) for c in a.cameras)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.rewards, b.rewards)


def test_import_frames_to_the_rig_and_explains_bad_keys(dataset, recorded, tmp_path):
    from real.cameras import fit_to_rig

    store = tmp_path / "small.hdf5"
    # by repo id from lerobot's own cache (HF_LEROBOT_HOME), offline
    shutil.copytree(dataset, tmp_path / "lerobot_home" / "tester" / "drawer")
    env = {**os.environ, "HF_LEROBOT_HOME": str(tmp_path / "lerobot_home"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([str(Path(sys.executable).parent / "stepwise-import"), "source=tester/drawer", f"out={store}",
                          "cameras=[observation.images.corner:front,gripperPOV:wrist]", "image_size=48"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0 and "imported 2 episodes" in run.stdout, run.stderr[-2000:]
    with EpisodeStore(store) as st:
        ep = st[1]
    assert ep.cameras == ["front", "wrist"] and ep.image_size == (48, 48)
    assert not ep.success  # success=auto reads next.success, never set in the second episode
    want = fit_to_rig(recorded[1][0]["observation.images.corner"][5], 48)  # framed as a real camera is
    np.testing.assert_array_equal(ep.images["front"][5], want)
    assert import_lerobot(str(dataset), tmp_path / "two.hdf5", cameras=["corner", "gripperPOV"]) == 2
    with EpisodeStore(tmp_path / "two.hdf5") as st:
        assert st.cameras == ["corner", "gripperPOV"]
    with pytest.raises(LeRobotImportError, match=r"observation.images.corner.*cameras=\{"):
        next(read_lerobot(dataset, cameras={"top": "corner"}))
    with pytest.raises(LeRobotImportError, match="success"):
        next(read_lerobot(dataset, success="next.done"))
    with pytest.raises(LeRobotImportError, match="not a LeRobot dataset"):
        next(read_lerobot(tmp_path))


def test_reward_model_data_resolver_takes_the_dataset(dataset, tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from reward_models.data import resolve_stores
    from reward_models.evaluate import run

    monkeypatch.setenv("STEPWISE_CACHE", str(tmp_path / "cache"))
    (store,) = resolve_stores(str(dataset))
    assert store.suffix == ".hdf5" and store.parent == tmp_path / "cache" / "lerobot"
    stamp = store.stat().st_mtime_ns
    assert resolve_stores([str(dataset)]) == [store] and store.stat().st_mtime_ns == stamp  # converted once
    with EpisodeStore(store) as st:
        assert len(st) == 2 and st.cameras == ["corner", "corner2", "gripperPOV"]
    cfg = OmegaConf.create({"model": "general", "data": str(dataset), "out": str(tmp_path / "eval"), "reference": "none",
                            "cameras_ablation": False, "densities": [1], "baselines": ["random"], "seed": 0,
                            "threshold_metric": "accuracy", "max_episodes_per_task": None, "plot_episodes": 1,
                            "device": None, "fit_demos": 1, "demo_data": None, "perceptual": {}})
    report = run(cfg)
    assert (tmp_path / "eval" / "report.json").exists() and report


def test_lerobot_metaworld_task_strings_map_onto_stepwise_tasks():
    # lerobot/metaworld_mt50 labels episodes with lerobot's Meta-World descriptions; its env uses the v3 ids
    assert metaworld_task("Open a drawer") == "metaworld/drawer-open"
    assert metaworld_task("Push and close a drawer") == "metaworld/drawer-close"
    assert metaworld_task("drawer-open-v3") == metaworld_task("metaworld-drawer-open-v3") == "metaworld/drawer-open"
    assert metaworld_task("fold the shirt") is None
