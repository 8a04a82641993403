"""Frame encoders of the perceptual reward (pixels, clip, resnet18, tcn) and the TCN trainer:
output contract on random frames, weights from local files round-trip exactly, every way weights
can be missing gives a clear error, and the TCN learns (its loss falls) on a tiny store of real
simulator frames, resumes exactly, refuses foreign checkpoints and held-out tasks."""

from __future__ import annotations

import json
import logging
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from reward_models.distributed import load_state
from reward_models.base import CheckpointError
from reward_models.hub import load_state_dict as load_weights
from reward_models.encoders import ENCODERS, WeightsUnavailableError, build_encoder
from reward_models.tcn import DEFAULT_CHECKPOINT, load_checkpoint
from reward_models.tcn_eval import time_gap_correlation
from reward_models.tcn_train import TCNTrainConfig, train_tcn

CAMERAS = ["corner", "corner2", "gripperPOV"]
TRAIN_TASK = "metaworld/drawer-close"  # a training-split task: the TCN refuses held-out ones
# a tiny TCN that learns in seconds on 32 px frames
TINY = dict(cameras=CAMERAS, image_size=32, channels=[8, 16, 16, 16], embed_dim=16, proj_dim=16, steps=60,
            batch_episodes=3, times_per_episode=8, negative_margin=3, lr=3e-3, warmup_steps=5, shift_pad=2,
            checkpoint_every=10, num_threads=1, device="cpu", seed=0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def frames(t: int = 5, size: int = 96, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> Path:
    """Three short scripted episodes of a training task, three cameras at 32 px, rendered now."""
    import sim
    from episodes import EpisodeWriter
    from sim.collect import Plan, record_episode

    path = tmp_path_factory.mktemp("tcn") / "drawer-close.hdf5"
    task = sim.SimTask(TRAIN_TASK, cameras=CAMERAS, image_size=32, split="demo")
    try:
        with EpisodeWriter(path, fsync=False) as writer:
            for seed in range(3):
                writer.add(record_episode(task, Plan("expert", seed), max_steps=40, post_success_steps=2))
    finally:
        task.close()
    return path


# --------------------------------------------------------------------------- the contract

SPECS = {
    "pixels": dict(name="pixels"),
    "resnet18": dict(name="resnet18", image_size=64),
    "clip-vit": dict(name="clip", arch="ViT-S-32", image_size=64),
    "clip-resnet": dict(name="clip", arch="RN50", image_size=64),
}
DIMS = {"pixels": 192, "resnet18": 256 + 512, "clip-vit": 4 * 384, "clip-resnet": 1024 + 2048}


@pytest.mark.parametrize("spec", sorted(SPECS))
def test_encoder_contract_shape_dtype_determinism(spec):
    torch.manual_seed(0)
    enc = build_encoder(**SPECS[spec])
    f = frames(5)
    a, b = enc.encode(f), enc.encode(f)
    assert a.shape == (5, enc.feature_dim) and enc.feature_dim == DIMS[spec]
    assert a.dtype == np.float32 and np.isfinite(a).all()
    assert np.array_equal(a, b)  # eval mode, no randomness
    assert a.std(0).max() > 0  # features depend on the frame
    config = enc.config()
    assert config["name"] == enc.name == SPECS[spec]["name"]
    assert build_encoder(**config).config() == config  # config() rebuilds the same encoder
    assert enc.encode(f[:0]).shape == (0, enc.feature_dim)


@pytest.mark.parametrize("spec", ["resnet18", "clip-vit"])
def test_encoder_chunks_large_batches(spec):
    enc = build_encoder(**SPECS[spec], batch_size=2)
    f = frames(5)
    whole = build_encoder(**enc.config() | {"batch_size": 64})
    whole.model.load_state_dict(enc.model.state_dict())
    np.testing.assert_allclose(enc.encode(f), whole.encode(f), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec", ["pixels", "resnet18", "clip-vit", "tcn"])
def test_encoders_refuse_frames_that_are_not_uint8_rgb(spec):
    if spec == "tcn" and not (DEFAULT_CHECKPOINT / "config.json").exists():
        pytest.skip("the shipped TCN checkpoint is not trained yet")
    enc = build_encoder("tcn") if spec == "tcn" else build_encoder(**SPECS[spec])
    with pytest.raises(ValueError, match="uint8"):
        enc.encode(frames(2).astype(np.float32))
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        enc.encode(frames(2)[..., :1])


def test_unknown_encoder_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown encoder 'dino'") as err:
        build_encoder("dino")
    for name in ("pixels", "clip", "resnet18", "tcn"):
        assert name in ENCODERS and name in str(err.value)


def test_random_weights_are_allowed_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="reward_models.encoders"):
        build_encoder("resnet18", image_size=64)
    assert "RANDOM weights" in caplog.text


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize("name,key", [("clip", "pretrained"), ("resnet18", "weights")])
def test_missing_weights_file_names_it_and_the_fix(name, key, tmp_path):
    missing = tmp_path / "nowhere" / "weights.pt"
    with pytest.raises(FileNotFoundError, match=str(missing)) as err:
        build_encoder(name, **{key: str(missing)})
    assert "Download" in str(err.value) or "download" in str(err.value)


@pytest.mark.parametrize("name,key", [("clip", "pretrained"), ("resnet18", "weights")])
def test_unknown_weights_tag_lists_the_choices(name, key):
    with pytest.raises(ValueError, match="neither a file path nor"):
        build_encoder(name, **{key: "imagenet-ish"})


def test_resnet18_weights_from_a_local_file_round_trip(tmp_path):
    import torchvision

    torch.manual_seed(1)
    source = build_encoder("resnet18", image_size=64)
    path = tmp_path / "trunk.pt"
    torch.save(source.model.state_dict(), path)  # trunk only: no fc head
    loaded = build_encoder("resnet18", weights=str(path), image_size=64)
    f = frames(4)
    assert np.array_equal(source.encode(f), loaded.encode(f))
    assert not np.array_equal(build_encoder("resnet18", image_size=64).encode(f), source.encode(f))  # not luck
    full = tmp_path / "resnet18-full.pth"  # torchvision's own format, classifier included
    torch.save(torchvision.models.resnet18().state_dict(), full)
    assert build_encoder("resnet18", weights=str(full), image_size=64).encode(f).shape == (4, 768)
    alien = tmp_path / "alien.pt"
    torch.save({"conv1.weight": torch.zeros(3)}, alien)
    with pytest.raises(ValueError, match="do not fit"):
        build_encoder("resnet18", weights=str(alien))


def test_clip_weights_from_a_local_file_round_trip(tmp_path):
    torch.manual_seed(2)
    source = build_encoder("clip", arch="ViT-S-32", image_size=64)
    f = frames(3)
    visual_only = tmp_path / "visual.pt"
    torch.save(source.model.state_dict(), visual_only)
    assert np.array_equal(source.encode(f), build_encoder("clip", arch="ViT-S-32", pretrained=str(visual_only),
                                                          image_size=64).encode(f))
    full = tmp_path / "clip_full.pt"  # a whole CLIP state dict (text tower keys are ignored)
    torch.save({"state_dict": {**{f"visual.{k}": v for k, v in source.model.state_dict().items()},
                               "text_projection": torch.zeros(4, 4)}}, full)
    assert np.array_equal(source.encode(f), build_encoder("clip", arch="ViT-S-32", pretrained=str(full),
                                                          image_size=64).encode(f))
    with pytest.raises(ValueError, match="do not fit arch 'RN50'"):
        build_encoder("clip", arch="RN50", pretrained=str(visual_only), image_size=64)


def test_hub_tags_fail_clearly_when_the_hub_is_unreachable(monkeypatch):
    import open_clip.factory
    import torchvision.models._api

    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", unreachable)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", unreachable)
    with pytest.raises(WeightsUnavailableError, match=r"cannot reach .*pretrained=<local file path>"):
        build_encoder("clip", arch="RN50", pretrained="openai", image_size=64)
    with pytest.raises(WeightsUnavailableError, match=r"resnet18-.*\.pth.*weights=<path"):
        build_encoder("resnet18", weights="IMAGENET1K_V1")
    assert issubclass(WeightsUnavailableError, ValueError)  # the CLIs report it as a bad input


def test_clip_unknown_arch_suggests_names():
    with pytest.raises(ValueError, match="ViT-B-32"):
        build_encoder("clip", arch="ViT-B-23")


# --------------------------------------------------------------------------- TCN


def test_tcn_loss_falls_and_the_checkpoint_encodes(tiny_store, tmp_path):
    enc = train_tcn(tiny_store, tmp_path / "tcn", TINY)
    training = enc.meta["training"]
    assert training["steps_done"] == 60 and training["episodes"] == 3
    assert training["loss_last"] < training["loss_first"] - 0.15, training  # it learns (0.25-0.36 over seeds 0-3)
    loaded = build_encoder("tcn", checkpoint=str(tmp_path / "tcn"))
    f = frames(6, size=96)
    out = loaded.encode(f)
    assert out.shape == (6, loaded.feature_dim) == (6, 16 + 16 + 32 + 16) and out.dtype == np.float32
    assert np.array_equal(out, enc.encode(f)) and np.array_equal(out, loaded.encode(f))
    assert loaded.embed(f).shape == (6, 16)
    assert build_encoder(**loaded.config()).encode(f).tolist() == out.tolist()
    meta = json.loads((tmp_path / "tcn" / "config.json").read_text())
    assert meta["kind"] == "tcn" and meta["version"] == 1
    check = time_gap_correlation(loaded, tiny_store, cameras=("corner",))
    assert set(check) == {"corner", "mean"} and -1 <= check["mean"] <= 1


def test_tcn_resume_continues_exactly(tiny_store, tmp_path):
    cfg = TINY | {"steps": 12, "checkpoint_every": 4}
    train_tcn(tiny_store, tmp_path / "straight", cfg)
    train_tcn(tiny_store, tmp_path / "resumed", cfg, stop_after=6)  # as if killed after step 6
    assert load_state(tmp_path / "resumed" / "trainer_state.pt")["step"] == 6
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    train_tcn(tiny_store, tmp_path / "resumed", cfg)
    a, b = load_weights(tmp_path / "straight"), load_weights(tmp_path / "resumed")  # model.safetensors
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert list((tmp_path / "resumed" / "tb").glob("events.out.tfevents*"))  # TensorBoard loss log


def test_tcn_refuses_held_out_tasks(tiny_store, tmp_path):
    from episodes import EpisodeStore, EpisodeWriter

    with EpisodeStore(tiny_store) as store:
        episode = store[0]
    episode.task = "metaworld/drawer-open"  # held out by the default task split
    with EpisodeWriter(tmp_path / "heldout.hdf5", fsync=False) as writer:
        writer.add(episode)
    with pytest.raises(ValueError, match=r"held-out task\(s\) \['metaworld/drawer-open'\]"):
        train_tcn(tmp_path / "heldout.hdf5", tmp_path / "out", TINY)


def test_tcn_settings_and_the_cli_config(tiny_store, tmp_path):
    from hydra import compose, initialize_config_module

    from reward_models.tcn_train import train_from_config

    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['stepz'\]"):
        TCNTrainConfig.from_mapping({"stepz": 5})
    with pytest.raises(ValueError, match="at least 2 cameras"):
        train_tcn(tiny_store, tmp_path / "one", TINY | {"cameras": ["corner"]})
    with initialize_config_module("configs", version_base="1.3"):
        cfg = compose("train_rm", overrides=["reward=tcn", f"data={tiny_store}", f"out={tmp_path / 'cli'}",
                                             "reward.steps=3", "reward.image_size=32", "reward.batch_episodes=2",
                                             "num_threads=1"])
    from omegaconf import OmegaConf

    assert TCNTrainConfig.from_mapping(OmegaConf.to_container(cfg.reward)).channels == (16, 32, 64, 64)  # tcn.yaml parses
    enc = train_from_config(cfg)
    assert enc.kind == "tcn" and enc.meta["training"]["steps_done"] == 3
    assert (tmp_path / "cli" / "config.json").exists() and (tmp_path / "cli" / "model.safetensors").exists()


def test_tcn_refuses_checkpoints_of_another_kind_or_version(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"kind": "step_prm", "version": 1, "config": {}}))
    with pytest.raises(CheckpointError, match="holds a 'step_prm' checkpoint, not a 'tcn' encoder"):
        build_encoder("tcn", checkpoint=str(other))
    (other / "config.json").write_text(json.dumps({"kind": "tcn", "version": 99, "config": {}}))
    with pytest.raises(CheckpointError, match="format version 99"):
        build_encoder("tcn", checkpoint=str(other))
    (other / "config.json").write_text(json.dumps({"kind": "tcn", "version": 1, "config": {}}))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        build_encoder("tcn", checkpoint=str(other))
    with pytest.raises(FileNotFoundError, match="stepwise-train-rm reward=tcn"):
        build_encoder("tcn", checkpoint=str(tmp_path / "absent"))


def test_shipped_tcn_checkpoint_loads_and_encodes():
    if not (DEFAULT_CHECKPOINT / "config.json").exists():
        pytest.skip("the shipped TCN checkpoint is not trained yet")
    enc = build_encoder("tcn")
    f = frames(8, size=96)
    out = enc.encode(f)
    assert out.shape == (8, enc.feature_dim) and out.dtype == np.float32 and np.isfinite(out).all()
    assert enc.config()["checkpoint"] is None  # portable: the shipped one, wherever the checkout is
    net, meta = load_checkpoint(DEFAULT_CHECKPOINT)
    assert meta["training"]["loss_last"] < meta["training"]["loss_first"]
    assert not set(meta["training"]["tasks"]) & set(__import__("sim").task_split()["heldout"])
    size = sum(p.stat().st_size for p in DEFAULT_CHECKPOINT.rglob("*") if p.is_file())
    assert size <= 10 * 2**20, f"shipped TCN checkpoint is {size / 2**20:.1f} MiB"
