"""The VLM success classifier: balanced batches, temperature scaling, save/load, multi-view fusion and
its errors, clear errors for unknown architectures and missing weights, and learning on a tiny store
of simulator episodes (experts + failures), in-process and through ``stepwise-train-rm``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import reward_models
import reward_models.vlm_success  # noqa: F401  (registers the kind until base imports it itself)
from reward_models.base import FramesError
from reward_models.metrics import auroc, expected_calibration_error
from reward_models.vlm_success import (
    BalancedSampler, VLMSuccessClassifier, VLMSuccessConfig, calibrate, fit_temperature, frame_labels, sigmoid,
    split_episodes, train,
)

BIN = Path(sys.executable).parent
CAMS = ("corner", "gripperPOV")
SIZE = 48
TASK = "metaworld/drawer-open"
# A ViT small enough to learn drawer-open at 48 px in seconds (registered from the config, as users can).
ARCH = "stepwise-test-vit"
ARCH_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": SIZE, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def small_model(**kw) -> VLMSuccessClassifier:
    torch.manual_seed(0)
    cfg = dict(cameras=CAMS, image_size=(SIZE, SIZE), arch=ARCH, arch_config=ARCH_CONFIG, text_encoder="clip",
               head_dim=32, device="cpu")
    return VLMSuccessClassifier(VLMSuccessConfig(**{**cfg, **kw}))


def random_frames(t: int = 6, cams=CAMS, size: int = SIZE, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: rng.integers(0, 256, (t, size, size, 3), dtype=np.uint8) for c in cams}


# --------------------------------------------------------------------------- sampling and labels


def test_balanced_sampler_gives_exact_halves_from_rare_positives():
    labels = (np.arange(1000) % 20 == 0).astype(np.uint8)  # 5% positives
    sampler = BalancedSampler(labels, seed=0)
    for batch in (32, 33):
        for _ in range(20):
            idx = sampler.sample(batch)
            assert len(idx) == batch
            assert labels[idx].sum() == batch // 2  # exactly half positives (the odd one is a negative)
            assert (labels[idx[: batch // 2]] == 1).all() and (labels[idx[batch // 2:]] == 0).all()
    with pytest.raises(ValueError, match="no positive"):
        BalancedSampler(np.zeros(10))
    with pytest.raises(ValueError, match="collect failures"):
        BalancedSampler(np.ones(10))


def test_frame_labels_from_step_success_or_keyframes():
    # Per-step success labels frame t + 1; frame 0 is never done.
    np.testing.assert_array_equal(frame_labels(True, np.array([2, 4]), 6, np.array([0, 0, 0, 1, 1.0])), [0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(frame_labels(True, np.array([2, 4]), 6), [0, 0, 0, 0, 1, 1])  # from the last keyframe
    np.testing.assert_array_equal(frame_labels(False, np.array([2, 5]), 6), np.zeros(6))


def test_validation_split_is_by_episode_and_holds_both_kinds():
    eps = [{"success": i < 6} for i in range(10)]
    val = split_episodes(eps, 0.2, seed=0)
    assert val[:6].sum() == 1 and val[6:].sum() == 1
    assert not split_episodes(eps, 0.0).any()


# --------------------------------------------------------------------------- calibration


@pytest.mark.parametrize("scale", [4.0, 0.25])
def test_temperature_scaling_lowers_ece_of_a_miscalibrated_model(scale):
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 2.0, 4000)
    labels = (rng.random(4000) < sigmoid(true_logit)).astype(np.uint8)
    logits = scale * true_logit  # over- (4x) or under-confident (x 1/4)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(scale, rel=0.15)
    report = calibrate(logits, labels)
    assert report["ece_after"] < 0.5 * report["ece_before"] and report["ece_after"] < 0.03
    assert report["nll_after"] < report["nll_before"]
    assert report["ece_after"] == pytest.approx(expected_calibration_error(sigmoid(logits / t), labels))
    assert 0.0 <= report["fpr"] <= 1.0 and report["auroc"] == pytest.approx(auroc(logits[labels == 1], logits[labels == 0]))


def test_platt_bias_undoes_the_prior_shift_that_a_temperature_cannot():
    """Balanced batches teach a prior of 1/2; where done frames are rarer, only a bias fixes that."""
    rng = np.random.default_rng(1)
    true_logit = rng.normal(0, 2.0, 5000)
    labels = (rng.random(5000) < sigmoid(true_logit - 2.0)).astype(np.uint8)
    temperature_only, platt = calibrate(3 * true_logit, labels), calibrate(3 * true_logit, labels, fit_bias=True)
    assert platt["ece_after"] < 0.03 < temperature_only["ece_after"]
    assert platt["bias"] == pytest.approx(-2.0, abs=0.3) and platt["temperature"] == pytest.approx(3.0, rel=0.15)
    assert temperature_only["bias"] == 0.0


# --------------------------------------------------------------------------- the model contract


def test_outputs_contract_and_single_camera_and_missing_camera():
    model = small_model()
    model.cfg.temperature = 2.0
    frames = random_frames()
    p = model.success_prob(frames, "open the drawer")
    assert p.shape == (6,) and p.dtype == np.float32 and ((p >= 0) & (p <= 1)).all()
    np.testing.assert_allclose(p, sigmoid(model.logits(frames, "open the drawer") / 2.0), atol=1e-6)
    prog, succ = model.score(frames, "open the drawer")
    np.testing.assert_allclose(prog, p, atol=1e-6)
    np.testing.assert_allclose(succ, p, atol=1e-6)
    np.testing.assert_allclose(model.progress(frames, "open the drawer"), p, atol=1e-6)
    # Each camera alone works (fusion takes any subset) and differs from the fused answer.
    for cam in CAMS:
        alone = model.success_prob({cam: frames[cam]}, "open the drawer", cameras=[cam])
        assert alone.shape == (6,) and np.isfinite(alone).all()
    # A missing camera is named, with the fix.
    with pytest.raises(FramesError, match="gripperPOV.*cameras="):
        model.success_prob({"corner": frames["corner"]}, "open the drawer")
    with pytest.raises(FramesError, match="topview"):
        model.success_prob(frames, "open the drawer", cameras=["topview"])
    with pytest.raises(FramesError, match="image_size=48"):
        model.success_prob(random_frames(size=32), "open the drawer")
    with pytest.raises(ValueError, match="instruction"):
        model.success_prob(frames, "")


def test_zero_shot_mode_uses_prompts_and_needs_the_clip_text_tower():
    model = small_model(zero_shot=True)
    frames = random_frames()
    p = model.success_prob(frames, "open the drawer")
    assert p.shape == (6,) and ((p >= 0) & (p <= 1)).all()
    np.testing.assert_allclose(p, model.zero_shot_prob(frames, "open the drawer"), atol=1e-6)
    assert "open the drawer: done" in model.cfg.text_cache and "open the drawer: not yet" in model.cfg.text_cache
    with pytest.raises(ValueError, match="text_encoder: clip"):
        small_model(zero_shot=True, text_encoder="minilm")


def test_save_load_gives_identical_outputs(tmp_path):
    model = small_model(text_encoder="minilm")
    model.cfg.text_cache["open the drawer"] = list(np.linspace(-0.1, 0.1, 384))  # no MiniLM subprocess here
    model.cfg.temperature, model.cfg.threshold = 1.7, 0.42
    frames = random_frames(seed=1)
    before = model.success_prob(frames, "open the drawer")
    model.save(tmp_path / "ckpt")
    loaded = reward_models.load(tmp_path / "ckpt", device="cpu")
    assert isinstance(loaded, VLMSuccessClassifier) and loaded.cfg.temperature == 1.7 and loaded.cfg.threshold == 0.42
    np.testing.assert_array_equal(loaded.success_prob(frames, "open the drawer"), before)
    np.testing.assert_array_equal(loaded.success_prob({"corner": frames["corner"]}, "open the drawer", cameras=["corner"]),
                                  model.success_prob({"corner": frames["corner"]}, "open the drawer", cameras=["corner"]))
    np.testing.assert_array_equal(loaded.is_done(frames, "open the drawer"), before >= 0.42)


def test_unknown_architecture_and_missing_weights_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown open_clip architecture 'ViT-Nope'.*ViT-B-32"):
        VLMSuccessClassifier(VLMSuccessConfig(arch="ViT-Nope"))
    missing = tmp_path / "open_clip_pytorch_model.bin"
    with pytest.raises(FileNotFoundError, match=f"{missing}.*local open_clip checkpoint"):
        VLMSuccessClassifier(VLMSuccessConfig(arch=ARCH, arch_config=ARCH_CONFIG, pretrained=str(missing)))
    with pytest.raises(ValueError, match="text_encoder"):
        small_model(text_encoder="bert")


def test_local_weights_file_is_loaded(tmp_path):
    import open_clip

    torch.manual_seed(3)
    reward_models.vlm_success.register_archs({ARCH: ARCH_CONFIG})
    clip = open_clip.create_model(ARCH)
    torch.save(clip.state_dict(), tmp_path / "weights.pt")
    model = small_model(pretrained=str(tmp_path / "weights.pt"))
    for name, value in clip.visual.state_dict().items():
        torch.testing.assert_close(model.net.visual.state_dict()[name], value)


# --------------------------------------------------------------------------- learning on simulator frames


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """drawer-open at 48 px, two cameras: a training store (4 experts, a stall, a near-miss) and a held-out
    store (an expert and a reversal of other seeds), recorded with the project's collector."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    import sim
    from episodes import EpisodeWriter
    from sim.collect import Plan, record_episode

    root = tmp_path_factory.mktemp("vlm")
    paths = {"train": root / "train" / "drawer-open.hdf5", "heldout": root / "heldout" / "drawer-open.hdf5"}
    plans = {"train": [Plan("expert", s) for s in range(4)] + [Plan("stall", 5), Plan("near_miss", 6)],
             "heldout": [Plan("expert", 4), Plan("reversal", 7)]}
    task = sim.SimTask(TASK, cameras=list(CAMS), image_size=SIZE, split="demo")
    try:
        for split, path in paths.items():
            path.parent.mkdir()
            with EpisodeWriter(path, fsync=False) as writer:
                for plan in plans[split]:
                    writer.add(record_episode(task, plan, max_steps=160, post_success_steps=15))
    finally:
        task.close()
    return paths


def heldout_auroc(model: VLMSuccessClassifier, path: Path, cameras=None) -> float:
    from episodes import EpisodeStore

    pos, neg = [], []
    with EpisodeStore(path) as store:
        for ep in store:
            labels = frame_labels(ep.success, ep.keyframes, ep.num_steps + 1, ep.infos.get("success"))
            cams = cameras or model.cameras
            p = model.success_prob({c: ep.images[c] for c in cams}, ep.instruction, cameras=cameras)
            pos += list(p[labels == 1])
            neg += list(p[labels == 0])
    assert len(pos) >= 10 and len(neg) >= 100
    return auroc(pos, neg)


TRAIN_SETTINGS = dict(cameras=list(CAMS), image_size=SIZE, arch=ARCH, arch_config=ARCH_CONFIG, text_encoder="clip",
                      head_dim=64, steps=80, batch_size=32, lr=2e-3, warmup=10, val_fraction=0.25, eval_every=80,
                      negative_stride=2, checkpoint_every=40, device="cpu")


def test_tiny_training_run_separates_done_from_not_done(stores, tmp_path):
    """80 fixed-seed steps on 4 demos + a stall + a near-miss: held-out frames (another seed's demo and a
    reversal) are ranked done vs not done with AUROC > 0.9, fused and from one camera (untrained: ~0.5)."""
    untrained = small_model()
    model = train(stores["train"], tmp_path / "model", TRAIN_SETTINGS, seed=0, num_threads=1)
    assert heldout_auroc(model, stores["heldout"]) > 0.9  # measured 1.0 (seeds 0 and 1)
    assert heldout_auroc(model, stores["heldout"], cameras=["corner"]) > 0.85  # one camera alone: 0.98-1.0
    assert heldout_auroc(untrained, stores["heldout"]) < 0.8  # measured 0.46
    calib = model.cfg.calibration
    assert calib["calibrated_on"] == "validation" and calib["temperature"] > 0 and 0 <= calib["threshold"] <= 1
    assert {"ece_before", "ece_after", "auroc", "fpr", "per_camera_auroc"} <= set(calib)
    # The saved checkpoint carries the calibration and scores the same.
    frames = random_frames(4)
    loaded = reward_models.load(tmp_path / "model")
    assert loaded.cfg.calibration == calib
    np.testing.assert_array_equal(loaded.success_prob(frames, "open the drawer"), model.success_prob(frames, "open the drawer"))
    assert (tmp_path / "model" / "trainer_state.pt").exists() and (tmp_path / "model" / "tb").is_dir()
    # Running again on a finished out= resumes at the end: the same model.
    again = train(stores["train"], tmp_path / "model", TRAIN_SETTINGS, seed=0, num_threads=1)
    np.testing.assert_allclose(again.success_prob(frames, "open the drawer"), model.success_prob(frames, "open the drawer"), atol=1e-6)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(BIN / "stepwise-train-rm"), "reward=vlm_success", "num_threads=1", *args],
                          capture_output=True, text=True, timeout=600, env=env)


def test_cli_trains_and_adapts_a_loadable_checkpoint(stores, tmp_path):
    out = tmp_path / "cli"
    common = [f"data={stores['train']}", "reward.arch=stepwise-rn-tiny", f"reward.image_size={SIZE}",
              f"reward.cameras=[{','.join(CAMS)}]", "reward.text_encoder=clip", "reward.head_dim=32",
              "reward.steps=6", "reward.batch_size=8", "reward.eval_every=6", "reward.checkpoint_every=3",
              "reward.device=cpu"]
    run = _cli(f"out={out}", *common)
    assert run.returncode == 0, run.stderr[-3000:]
    model = reward_models.load(out)
    assert isinstance(model, VLMSuccessClassifier) and model.cfg.arch == "stepwise-rn-tiny"
    assert model.cfg.calibration["steps"] == 6 and model.success_prob(random_frames(3), "open the drawer").shape == (3,)
    # Adaptation from it (init=) writes another loadable checkpoint.
    run = _cli(f"out={tmp_path / 'adapted'}", f"init={out}", f"data={stores['heldout']}", "reward.adapt_steps=3",
               "reward.batch_size=8", "reward.checkpoint_every=3")
    assert run.returncode == 0, run.stderr[-3000:]
    adapted = reward_models.load(tmp_path / "adapted")
    assert adapted.cfg.calibration["init"] == str(out) and adapted.cfg.calibration["steps"] == 3


def test_evaluation_at_the_classifiers_own_threshold(stores):
    """stepwise-eval-rm threshold_metric=model judges every frame at cfg.threshold: its accuracy, FPR and
    FNR equal those computed here from success_prob and the simulator's per-frame labels."""
    from episodes import EpisodeStore
    from reward_models.evaluation import evaluate

    model = small_model()
    probs, labels = [], []
    with EpisodeStore(stores["heldout"]) as store:
        for ep in store:
            probs.append(model.success_prob({c: ep.images[c] for c in CAMS}, ep.instruction))
            labels.append(np.concatenate([[0.0], np.asarray(ep.infos["success"], dtype=float) > 0.5]))
    p, y = np.concatenate(probs), np.concatenate(labels).astype(bool)
    model.cfg.threshold = float(np.median(p))  # both decisions occur
    res = evaluate(model, stores["heldout"], cameras_ablation=False, baselines=(), densities=(1,), reference="none",
                   threshold_metric="model")
    m = res["rows"]["model"]["per_task"][TASK]
    pred = p >= model.cfg.threshold
    assert m["threshold"] == pytest.approx(model.cfg.threshold)
    assert m["success_acc"] == pytest.approx(float((pred == y).mean()), abs=1e-6)
    assert m["success_fpr"] == pytest.approx(float(pred[~y].mean()), abs=1e-6)
    assert m["success_fnr"] == pytest.approx(float((~pred[y]).mean()), abs=1e-6)
    assert m["success_auroc"] == pytest.approx(auroc(p[y], p[~y]), abs=1e-6)
