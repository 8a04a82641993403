"""Visual randomisation (sim.randomize): off is the scene as built, looks are seeded, relative to the
original values, invisible to physics, and recorded per episode by stepwise-collect."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

import sim
from episodes import EpisodeStore
from sim.randomize import from_config

ROOT = Path(__file__).resolve().parent.parent
CORPUS = OmegaConf.to_container(OmegaConf.load(ROOT / "configs/randomize/corpus.yaml"))
OFF = OmegaConf.to_container(OmegaConf.load(ROOT / "configs/randomize/off.yaml"))
CAMS = ["corner", "gripperPOV"]


def _task(randomize=None, name="metaworld/drawer-open", size=32, **kw):
    return sim.SimTask(name, cameras=CAMS, image_size=size, split="demo", randomize=randomize, **kw)


@pytest.fixture(scope="module")
def plain():
    task = _task()
    yield task
    task.close()


@pytest.fixture(scope="module")
def corpus():
    task = _task(CORPUS)
    yield task
    task.close()


def test_config_errors_name_the_key_and_the_fix():
    with pytest.raises(sim.RandomizeConfigError, match=r"light_scle.*light_scale"):
        from_config({"light_scle": [0.5, 1.5]})
    with pytest.raises(sim.RandomizeConfigError, match=r"noise_std.*negative"):
        from_config({"noise_std": [-1, 2]})
    with pytest.raises(sim.RandomizeConfigError, match=r"light_scale.*low > high.*\[1\.0, 2\.0\]"):
        from_config({"light_scale": [2, 1]})
    with pytest.raises(sim.RandomizeConfigError, match=r"colour_parts.*robot"):
        from_config({"colour_parts": ["ceiling"]})
    with pytest.raises(sim.RandomizeConfigError, match=r"camera_pos_m"):
        from_config({"camera_pos_m": "wide"})
    with pytest.raises(ValueError, match="randomize_seed"):
        sim.SimTask("metaworld/reach", cameras=[], randomize_seed=-1)
    # Fixed values (held-out robustness settings) and the shipped presets are accepted.
    assert from_config({"light_scale": 0.6}).light_scale == (0.6, 0.6)
    assert from_config({"light_scale": [1.4, 1.4]}).enabled
    assert not from_config(OFF).enabled and not from_config(None).enabled
    assert from_config(CORPUS).enabled and from_config(from_config(CORPUS)) == from_config(CORPUS)


def test_off_renders_byte_identical_to_no_option(plain):
    off = _task(OFF)
    try:
        for seed in (0, 1):
            plain.reset(seed)
            off.reset(seed)
            a, b = plain.render(), off.render()
            for cam in CAMS:
                np.testing.assert_array_equal(a[cam], b[cam])
        assert off.look is None and plain.look is None
    finally:
        off.close()


def test_same_seed_same_look_and_images_different_seed_different(corpus):
    other = _task(CORPUS)
    try:
        corpus.reset(4)
        other.reset(9)
        other.reset(4)  # a look is a function of the seed alone, not of what came before
        assert corpus.look == other.look
        a, b = corpus.render(), other.render()
        for cam in CAMS:
            np.testing.assert_array_equal(a[cam], b[cam])
        json.dumps(corpus.look)  # JSON-serialisable as it is stored
        other.reset(5)
        assert other.look != corpus.look
        c = other.render()
        assert all(not np.array_equal(a[cam], c[cam]) for cam in CAMS)
        # A fresh randomize_seed gives fresh looks of the same variant.
        fresh = _task(CORPUS, randomize_seed=1)
        fresh.reset(4)
        np.testing.assert_array_equal(fresh.variant, corpus.variant)
        assert fresh.look != corpus.look
        fresh.close()
    finally:
        other.close()


def test_randomisation_leaves_variants_and_physics_alone(plain, corpus):
    model, _ = corpus.physics
    cam_pos, light_dir, rgba = model.cam_pos.copy(), model.light_dir.copy(), model.geom_rgba.copy()
    actions = np.random.default_rng(0).uniform(-1, 1, (15, 4)).astype(np.float32)
    for task in (plain, corpus):
        task.reset(2)
    np.testing.assert_array_equal(plain.variant, corpus.variant)
    for act in actions:
        plain.step(act)
        corpus.step(act)
        corpus.render()
        np.testing.assert_array_equal(plain.state, corpus.state)
    # The physics model is untouched: looks live on the rig's render model and scene.
    np.testing.assert_array_equal(model.cam_pos, cam_pos)
    np.testing.assert_array_equal(model.light_dir, light_dir)
    np.testing.assert_array_equal(model.geom_rgba, rgba)
    assert corpus.rig.render_model is not model


def test_light_scale_darkens_and_brightens():
    means = {}
    for scale in (0.6, 1.4):
        task = _task({"light_scale": scale})
        task.reset(0)
        assert task.look["light_scale"] == scale
        means[scale] = np.mean([img.mean() for img in task.render().values()])
        task.close()
    assert means[0.6] < means[1.4] - 10, means


def test_camera_jitter_within_bounds_and_relative_not_cumulative(plain, corpus):
    plain.reset(0)
    _, data = plain.physics
    base = {cam: plain.rig.view_pose(data, cam) for cam in CAMS}
    pos_bound = CORPUS["camera_pos_m"][1]
    rot_bound = np.radians(CORPUS["camera_rot_deg"][1]) * np.sqrt(3)  # per-axis bound, three axes

    def poses(seed):
        corpus.reset(seed)
        _, cdata = corpus.physics
        return {cam: corpus.rig.view_pose(cdata, cam) for cam in CAMS}

    first = poses(0)
    for cam in CAMS:
        (pos, fwd, up), (bpos, bfwd, bup) = first[cam], base[cam]
        shift = pos - bpos
        assert np.all(np.abs(shift) <= pos_bound + 1e-6), (cam, shift)
        np.testing.assert_allclose(shift, corpus.look["cameras"][cam]["pos_m"], atol=1e-5)
        angle = np.arccos(np.clip(fwd @ bfwd, -1, 1))
        assert 0 < angle <= rot_bound + 1e-6, (cam, angle)
        assert abs(fwd @ up) < 1e-5  # still a proper camera frame
    for seed in range(1, 13):
        poses(seed)
    last = poses(0)  # after a dozen other looks, seed 0 puts every camera exactly where it did
    for cam in CAMS:
        for a, b in zip(first[cam], last[cam]):
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_noise_changes_pixels_by_about_its_std(plain):
    noisy = _task({"noise_std": 4.0})
    try:
        plain.reset(1)
        noisy.reset(1)
        a, b = plain.render(), noisy.render()
        diff = np.concatenate([(b[c].astype(float) - a[c]).ravel() for c in CAMS])
        assert 3.4 < diff.std() < 4.6 and abs(diff.mean()) < 0.3, (diff.std(), diff.mean())
        again = noisy.render()  # each frame has fresh noise, but a reset replays the stream
        assert not np.array_equal(again["corner"], b["corner"])
        noisy.reset(1)
        np.testing.assert_array_equal(noisy.render()["corner"], b["corner"])
    finally:
        noisy.close()


def test_colours_change_the_chosen_parts_only_and_restore():
    task = _task({"colour_hue_deg": [30, 30], "colour_brightness": [0.7, 0.7], "colour_parts": ["objects"]})
    try:
        model = task.rig.render_model
        original = model.geom_rgba.copy()
        task.reset(0)
        parts = task.rig.look_targets.parts
        assert {"floor", "table", "wall", "robot"} <= set(parts)
        assert sorted(task.look["colours"]) == sorted(p for p in parts if p.startswith("object/"))
        changed = np.flatnonzero(np.any(model.geom_rgba != original, axis=1))
        assert changed.size
        robot_root = next(b for b in range(model.nbody) if model.body(b).name == "base")
        for g in changed:  # only task objects: never the arm, the table or the floor
            body = int(model.geom_bodyid[g])
            while model.body_parentid[body] != 0:
                body = int(model.body_parentid[body])
            assert body not in (0, robot_root) and model.body(body).name not in ("tablelink", "RetainingWall")
        task.rig.apply_look(None)
        np.testing.assert_array_equal(model.geom_rgba, original)
    finally:
        task.close()


def test_adopt_carries_the_look_and_reset_to_variant_keeps_it():
    cfg = {**CORPUS, "noise_std": [0.0, 0.0]}
    opener = _task(cfg)
    closer = _task(cfg, name="metaworld/drawer-close", randomize_seed=5)
    try:
        opener.reset(3)
        closer.reset(7)
        before = closer.look
        closer.reset_to_variant(opener.variant)
        assert closer.look == before  # a reset to a variant keeps this task's look
        for _ in range(5):
            opener.step(opener.expert_action())
        closer.adopt(opener)
        assert closer.look == opener.look  # the continued scene looks as it did
        a, b = opener.render(), closer.render()
        closer.rig.apply_look(sim.Look.from_dict(before))
        c = closer.render()  # the same state in the closer's own old look
        for cam in CAMS:  # the same frame, but for the two tasks' own goal markers (a few pixels)
            same, old = (np.abs(a[cam].astype(float) - x[cam]).mean() for x in (b, c))
            assert same < 2.0 and old > 3 * same, (cam, same, old)
    finally:
        opener.close()
        closer.close()


def test_collect_records_the_look_per_episode_and_resume_redraws_it(tmp_path):
    def run(episodes):
        return subprocess.run(
            [str(Path(sys.executable).parent / "stepwise-collect"), f"out={tmp_path}", "image_size=32",
             "cameras=[corner]", "task=metaworld/reach", f"episodes={episodes}", "randomize=corpus",
             "split=demo", "max_steps=60", "require_success=false"],
            capture_output=True, text=True, env=dict(os.environ), timeout=600,
        )

    proc = run(2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    path = tmp_path / "reach.hdf5"
    with EpisodeStore(path) as store:
        assert store.env_args["randomize"] == from_config(CORPUS).as_dict()
        assert store.env_args["randomize_seed"] == 0
        stored = [json.loads(store.episode_attrs(i)["extra_attrs"]["look"]) for i in range(2)]
        seeds = [store.episode_attrs(i)["seed"] for i in range(2)]
    task = sim.SimTask("metaworld/reach", cameras=["corner"], image_size=32, split="demo", randomize=CORPUS)
    try:
        for seed, look in zip(seeds, stored):
            task.reset(seed)
            assert look == task.look
    finally:
        task.close()
    assert stored[0] != stored[1]
    proc = run(3)  # resuming: the first two looks stay, the third is its seed's look
    assert proc.returncode == 0, proc.stderr[-2000:]
    with EpisodeStore(path) as store:
        again = [json.loads(store.episode_attrs(i)["extra_attrs"]["look"]) for i in range(3)]
    assert again[:2] == stored and again[2] not in stored


def test_envs_and_robots_take_randomize_off_by_default():
    """make_env / SimRobot / SimPairRobot pass randomize= through (default off: the scene as built);
    a pair's two tasks render one look; a non-simulator robot refuses the option."""
    from real import make_env
    from real.sim_driver import SimPairRobot
    from sim.task_pair import TaskPairScene

    plain = make_env("metaworld/drawer-open", cameras=CAMS, image_size=32, split="demo")
    looked = make_env("metaworld/drawer-open", cameras=CAMS, image_size=32, split="demo", randomize=CORPUS)
    again = make_env("metaworld/drawer-open", cameras=CAMS, image_size=32, split="demo", randomize=CORPUS)
    task = _task()
    try:
        task.reset(3)
        ref = task.render()
        o_plain, o_look, o_again = (env.reset(seed=3)[0] for env in (plain, looked, again))
        for c in CAMS:
            assert np.array_equal(o_plain["images"][c], ref[c])       # off: byte-identical to SimTask
            assert not np.array_equal(o_look["images"][c], ref[c])    # on: another look
            assert np.array_equal(o_look["images"][c], o_again["images"][c])  # seeded
    finally:
        for env in (plain, looked, again):
            env.close()
        task.close()
    with pytest.raises(ValueError, match="randomize.*simulator option"):
        make_env("metaworld/drawer-open", robot="remote", randomize=CORPUS, port=1)
    with pytest.raises(sim.RandomizeConfigError, match="light_scle"):
        make_env("metaworld/drawer-open", cameras=CAMS, randomize={"light_scle": [1, 2]})

    scene = TaskPairScene("drawer", cameras=CAMS, image_size=32, split="demo", randomize=CORPUS)
    try:
        scene.reset(5)
        forward, backward = scene.tasks
        assert forward.look is not None and forward.look == backward.look
        scene.flip()
        assert scene.active.look == forward.look
    finally:
        scene.close()
    pair, plain_pair = (SimPairRobot("drawer", cameras=CAMS, image_size=32, split="demo", randomize=r)
                        for r in (CORPUS, None))
    try:
        for robot in (pair, plain_pair):
            robot.connect()
        a, b = pair.reset(seed=5)["images"]["corner"], plain_pair.reset(seed=5)["images"]["corner"]
        assert not np.array_equal(a, b)
    finally:
        pair.close()
        plain_pair.close()
