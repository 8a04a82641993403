"""Image-based SAC: real env observations, learning from pixels, critic-only encoder training,
augmentation, frame-sharing replay, save/resume, and demos loaded from a collected store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import real
from episodes.store import EpisodeStore
from policies.image_replay import ImageReplayBuffer, MixedImageReplay, load_offline_images, resize_frames
from policies.image_sac import ImageSAC, ImageSACConfig, random_shift
from policies.sac import SAC, SACConfig
from sim.collect import collect

CAMERAS = ["corner", "gripperPOV"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tests share 2 cores with other jobs: one thread, fixed seed."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(old)


def small_config(**kw) -> ImageSACConfig:
    """A CPU-sized agent: 16-channel convs, 64-wide MLPs."""
    base = dict(hidden_sizes=(64, 64), encoder_channels=16, feature_dim=32, proprio_features=16, batch_size=16,
                device="cpu")
    return ImageSACConfig(**{**base, **kw})


def random_obs(rng: np.random.Generator, cameras: list[str], size: int, proprio_dim: int = 4) -> dict:
    return {"images": {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in cameras},
            "proprio": rng.normal(size=proprio_dim).astype(np.float32)}


def random_batch(rng: np.random.Generator, n: int, views: int = 2, size: int = 16, proprio_dim: int = 4,
                 act_dim: int = 4) -> dict:
    def obs() -> dict:
        return {"images": torch.as_tensor(rng.integers(0, 256, (n, views, size, size, 3), dtype=np.uint8)),
                "proprio": torch.as_tensor(rng.normal(size=(n, proprio_dim)), dtype=torch.float32)}

    return {"obs": obs(), "next_obs": obs(),
            "action": torch.as_tensor(rng.uniform(-1, 1, (n, act_dim)), dtype=torch.float32),
            "reward": torch.as_tensor(rng.normal(size=n), dtype=torch.float32),
            "terminated": torch.as_tensor(rng.random(n) < 0.1, dtype=torch.float32),
            "demo": torch.as_tensor(rng.random(n) < 0.5, dtype=torch.float32)}


# ----------------------------------------------------------------------------- (1) the real env


def test_acts_on_real_env_observations_and_trains_on_them():
    """Real env obs -> action (4,) in [-1, 1]; 3 env steps -> replay -> one update; bad obs get clear errors."""
    env = real.make_env("metaworld/drawer-open", cameras=CAMERAS, image_size=32)
    try:
        agent = ImageSAC.for_env(env, small_config(batch_size=8))
        assert agent.cameras == CAMERAS and agent.image_size == (32, 32) and agent.proprio_dim == 4
        obs, _ = env.reset(seed=0)
        assert "state" in obs  # present in simulation, never read by the image path
        buf = ImageReplayBuffer(CAMERAS, 32, 4, 4, capacity=16)
        for _ in range(3):
            action = agent.act(obs)
            assert action.shape == (4,) and action.dtype == np.float32 and np.all(np.abs(action) <= 1)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            buf.add(obs, action, reward, next_obs, terminated)
            obs = next_obs
    finally:
        env.close()
    assert len(buf) == 3 and buf.filled == 4  # consecutive steps share frames: 3 transitions in 4 rows
    out = agent.update(buf.sample(8, np.random.default_rng(0)))
    assert set(out) == {"critic_loss", "actor_loss", "alpha_loss", "alpha", "q_mean", "bc_loss", "entropy", "cql_loss"}
    assert all(np.isfinite(v) for v in out.values())
    # the state is not needed, and a batch of observations gives a batch of actions
    det = agent.act({"images": obs["images"], "proprio": obs["proprio"]}, deterministic=True)
    np.testing.assert_array_equal(det, agent.act(obs, deterministic=True))
    batch_obs = {"images": {c: np.stack([v] * 3) for c, v in obs["images"].items()},
                 "proprio": np.stack([obs["proprio"]] * 3)}
    assert agent.act(batch_obs).shape == (3, 4)
    # errors that name the input and the fix
    with pytest.raises(KeyError, match=r"gripperPOV.*cameras="):
        agent.act({"images": {"corner": obs["images"]["corner"]}, "proprio": obs["proprio"]})
    with pytest.raises(ValueError, match="image_size=32"):
        agent.act({"images": {c: np.zeros((64, 64, 3), np.uint8) for c in CAMERAS}, "proprio": obs["proprio"]})
    with pytest.raises(TypeError, match="uint8"):
        agent.act({"images": {c: v / 255.0 for c, v in obs["images"].items()}, "proprio": obs["proprio"]})
    with pytest.raises(TypeError, match="obs\\['state'\\]"):
        agent.act(obs["state"])
    bad = buf.sample(8, np.random.default_rng(0))
    bad["action"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        agent.update(bad)
    with pytest.raises(ValueError, match="NaN"):
        buf.add(obs, np.full(4, np.nan), 0.0, obs, False)


# ----------------------------------------------------------------------------- (2) learning from pixels

SIZE, SQUARE = 32, 6


def cue_task(rng: np.random.Generator, n: int) -> tuple[dict, np.ndarray]:
    """n one-step episodes: camera 'cue' shows a bright square in the left (target -0.7) or right
    (target +0.7) third; camera 'clutter' shows a square anywhere (uninformative); proprio is noise.

    The square's column range ([2, 12) or [20, 30)) keeps the halves apart under +-4 px shifts,
    so only the image tells the sign; nothing else in the observation does.
    """
    images = rng.integers(0, 40, (n, 2, SIZE, SIZE, 3), dtype=np.uint8)
    right = rng.random(n) < 0.5
    for i in range(n):
        x = rng.integers(20, 25) if right[i] else rng.integers(2, 7)
        y = rng.integers(2, SIZE - SQUARE - 1)
        images[i, 0, y : y + SQUARE, x : x + SQUARE] = 230
        cx, cy = rng.integers(0, SIZE - SQUARE, 2)
        images[i, 1, cy : cy + SQUARE, cx : cx + SQUARE] = 230
    obs = {"images": images, "proprio": rng.normal(size=(n, 2)).astype(np.float32)}
    return obs, np.where(right, 0.7, -0.7).astype(np.float32)[:, None]


def test_learns_an_action_readable_only_from_pixels():
    """Reward -(a - target)^2 where the target's sign is drawn in one camera; terminal after one step.

    Measured (250 updates of 64 rows, about 10 s on one thread, seeds 0-3): the untrained
    deterministic action misses by 0.68-0.70 on average, the trained one by 0.06-0.11, and the
    critic loss falls about 100x. With the cue camera blanked the error stays at 0.72, so the
    skill comes from the pixels. Asserted: error < 0.25 and < half the untrained one; loss falls 10x.
    """
    rng = np.random.default_rng(0)
    cfg = small_config(batch_size=64, lr=1e-3, init_temperature=0.1)
    agent = ImageSAC(["cue", "clutter"], SIZE, 2, 1, cfg)
    buf = ImageReplayBuffer(["cue", "clutter"], SIZE, 2, 1, capacity=2048)
    obs, target = cue_task(rng, 512)
    action = rng.uniform(-1, 1, (512, 1)).astype(np.float32)  # a random behaviour policy: a contextual bandit
    for i in range(512):  # each row is its own episode: obs, then a terminal next frame
        one = {"images": obs["images"][i : i + 1], "proprio": obs["proprio"][i : i + 1]}
        buf.add_episode(np.concatenate([one["images"]] * 2), np.concatenate([one["proprio"]] * 2), action[i : i + 1],
                        -((action[i] - target[i]) ** 2), np.ones(1))
    test_obs, test_target = cue_task(np.random.default_rng(1), 128)

    def error() -> float:
        return float(np.abs(agent.act(test_obs, deterministic=True) - test_target).mean())

    untrained = error()
    losses = [agent.update(buf.sample(64, rng))["critic_loss"] for _ in range(250)]
    trained = error()
    first, last = np.mean(losses[:20]), np.mean(losses[-20:])
    assert untrained > 0.5, untrained
    assert trained < 0.25 and trained < untrained / 2, (untrained, trained)
    assert last < first / 10, (first, last)


# ----------------------------------------------------------------------------- (3) who trains the encoder


def test_encoder_is_trained_by_the_critic_only():
    rng = np.random.default_rng(0)
    agent = ImageSAC(["a", "b"], 16, 4, 4, small_config(encoder_strides=(2, 1)))
    mb = agent._check_batch(random_batch(rng, 16))
    snapshot = lambda m: [p.detach().clone() for p in m.parameters()]  # noqa: E731
    same = lambda m, s: all(torch.equal(p, q) for p, q in zip(m.parameters(), s))  # noqa: E731
    enc, actor, critic = snapshot(agent.encoder), snapshot(agent.actor), snapshot(agent.critic)
    features, _ = agent.critic_step(mb)
    assert not same(agent.encoder, enc) and not same(agent.critic, critic)
    assert same(agent.actor, actor) and not features.requires_grad
    enc, critic = snapshot(agent.encoder), snapshot(agent.critic)
    # actor step on features that still carry the encoder's graph: it must not push gradient into it
    live = agent.encode(mb["obs"], augment=True)
    agent.encoder.zero_grad(set_to_none=True)
    agent.actor_step(live, mb)
    assert same(agent.encoder, enc) and same(agent.critic, critic) and not same(agent.actor, actor)
    assert all(p.grad is None for p in agent.encoder.parameters())
    actor = snapshot(agent.actor)  # the behaviour-cloning warm start trains the actor alone as well
    assert np.isfinite(agent.bc_update(mb["obs"], mb["action"]))
    assert same(agent.encoder, enc) and not same(agent.actor, actor)


def test_random_shift_equals_replicate_pad_and_crop():
    x = torch.randint(0, 256, (3, 2, 10, 12, 3), dtype=torch.uint8)
    torch.manual_seed(5)
    out = random_shift(x, 4)
    torch.manual_seed(5)
    shift = torch.randint(-4, 5, (6, 2))  # the same draw random_shift makes: (dy, dx) per view
    padded = torch.nn.functional.pad(x.reshape(6, 10, 12, 3).permute(0, 3, 1, 2).float(), (4, 4, 4, 4), mode="replicate")
    for k, (dy, dx) in enumerate(shift.tolist()):
        crop = padded[k, :, 4 + dy : 4 + dy + 10, 4 + dx : 4 + dx + 12].permute(1, 2, 0).to(torch.uint8)
        assert torch.equal(out.reshape(6, 10, 12, 3)[k], crop), (k, dy, dx)
    assert len({tuple(s) for s in shift.tolist()}) > 1  # views are shifted independently
    assert random_shift(x, 0) is x


# ----------------------------------------------------------------------------- (4) replay


def test_replay_shares_frames_wraps_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    buf = ImageReplayBuffer(["a"], 4, 1, 1, capacity=7)
    frames = [random_obs(rng, ["a"], 4, 1) for _ in range(12)]
    # episode 1: frames 0..3 (3 steps, truncated); episode 2: frames 4..8 (4 steps, terminal at the end)
    for ep in ([0, 1, 2, 3], [4, 5, 6, 7, 8]):
        for t, (i, j) in enumerate(zip(ep[:-1], ep[1:])):
            buf.add(frames[i], np.array([i / 10]), float(i), frames[j], terminated=(j == 8), mc_return=-float(i))
    # 9 frames were written into 7 rows: the 2 oldest (frames 0, 1) are gone, and transitions 0->1, 1->2 with them
    assert buf.filled == 7 and len(buf) == 5
    batch = buf.sample(200, rng)
    rewards = sorted({int(r) for r in batch["reward"]})
    assert rewards == [2, 4, 5, 6, 7], rewards  # 3->4 would cross episodes: it never existed
    for k in range(200):  # every next_obs is the frame after obs
        i = int(batch["reward"][k])
        np.testing.assert_array_equal(batch["obs"]["images"][k, 0].numpy(), frames[i]["images"]["a"])
        np.testing.assert_array_equal(batch["next_obs"]["images"][k, 0].numpy(), frames[i + 1]["images"]["a"])
        np.testing.assert_allclose(batch["next_obs"]["proprio"][k].numpy(), frames[i + 1]["proprio"])
        assert float(batch["terminated"][k]) == float(i == 7) and float(batch["mc_return"][k]) == -i
    assert batch["obs"]["images"].dtype == torch.uint8 and batch["action"].dtype == torch.float32
    buf.save(tmp_path / "r.npz")
    back = ImageReplayBuffer.load(tmp_path / "r.npz")
    a, b = buf.sample(32, np.random.default_rng(3)), back.sample(32, np.random.default_rng(3))
    assert torch.equal(a["next_obs"]["images"], b["next_obs"]["images"]) and torch.equal(a["reward"], b["reward"])
    assert torch.equal(a["mc_return"], b["mc_return"]) and back.capacity == 7
    # continuing after load still shares the frame of the last next_obs
    back.add(frames[8], np.array([0.8]), 8.0, frames[9], False)
    assert back.filled == 7 and back.pos == (buf.pos + 1) % 7


# ----------------------------------------------------------------------------- (5) save / resume


def test_save_load_round_trip_and_mismatch(tmp_path):
    rng = np.random.default_rng(0)
    cfg = small_config(num_critics=3, critic_subsample=2, encoder_strides=(2, 1), bc_weight=1.0, cql_alpha=1.0)
    agent = ImageSAC(["a", "b"], 16, 4, 4, cfg)
    for _ in range(3):  # the whole loss: TD + Cal-QL penalty (mc_return given) + TD3+BC actor
        batch = random_batch(rng, 16)
        batch["mc_return"] = torch.as_tensor(rng.normal(size=16), dtype=torch.float32)
        assert agent.update(batch)["cql_loss"] != 0
    agent.bc_coef = 0.5  # a trainer's annealed BC weight is part of the state
    torch.save(agent.state_dict(), tmp_path / "agent.pt")
    resumed = ImageSAC.from_state_dict(torch.load(tmp_path / "agent.pt"))
    assert resumed.cfg == agent.cfg and resumed.num_updates == 3 and resumed.cameras == ["a", "b"]
    assert resumed.bc_coef == 0.5
    batch = random_batch(rng, 16)
    torch.manual_seed(7)
    out_a = agent.update(batch)
    torch.manual_seed(7)
    out_b = resumed.update(batch)
    assert out_a == out_b
    for net in ("encoder", "actor", "critic", "critic_target"):
        for pa, pb in zip(getattr(agent, net).parameters(), getattr(resumed, net).parameters()):
            assert torch.equal(pa, pb), net
    state = agent.state_dict()
    with pytest.raises(ValueError, match=r"cameras: checkpoint \['a', 'b'\] vs agent \['a', 'c'\].*from_state_dict"):
        ImageSAC(["a", "c"], 16, 4, 4, cfg).load_state_dict(state)
    with pytest.raises(ValueError, match=r"image_size: checkpoint \[16, 16\] vs agent \[24, 24\]"):
        ImageSAC(["a", "b"], 24, 4, 4, cfg).load_state_dict(state)
    with pytest.raises(ValueError, match="SAC.from_state_dict"):  # a state-based checkpoint
        ImageSAC.from_state_dict(SAC(5, 4, SACConfig(hidden_sizes=(8,), device="cpu")).state_dict())
    with pytest.raises(ValueError, match="encoder_channels"):
        ImageSAC(["a", "b"], 16, 4, 4, small_config(encoder_channels=8, encoder_strides=(2, 1))).load_state_dict(state)


# ----------------------------------------------------------------------------- (6) demos from a store


def test_load_offline_images_from_a_collected_store(tmp_path):
    cfg = OmegaConf.merge(OmegaConf.load(Path(__file__).parents[1] / "configs" / "collect.yaml"), {
        "task": "metaworld/reach", "episodes": 1, "image_size": 16, "cameras": CAMERAS, "out": str(tmp_path)})
    path = collect(cfg)  # the stepwise-collect pipeline, in process
    with EpisodeStore(path) as store:
        ep = store[0]
    success = ep.infos["success"] > 0.5
    k = int(np.argmax(success))  # first success: the last kept transition
    assert success.any() and ep.num_steps > k + 1  # the collector kept stepping after success
    buf = load_offline_images(path, CAMERAS, 16)
    assert len(buf) == k + 1 and buf.filled == k + 2 and buf.cameras == CAMERAS
    np.testing.assert_array_equal(buf.images[: k + 2, 1], ep.images["gripperPOV"][: k + 2])
    np.testing.assert_array_equal(buf.proprio[: k + 2], ep.proprio[: k + 2])
    np.testing.assert_array_equal(buf.action[: k + 1], np.clip(ep.actions[: k + 1], -1, 1))
    assert buf.terminated[: k + 1].tolist() == [0.0] * k + [1.0] and not buf.valid[k + 1]
    # another image size is resized; the batch contract and the demo mask of the mixer
    small = load_offline_images(tmp_path, ["gripperPOV", "corner"], 8)  # a directory, another camera order
    assert small.images.shape[1:] == (2, 8, 8, 3) and len(small) == k + 1
    np.testing.assert_array_equal(small.images[0, 1], resize_frames(ep.images["corner"][:1], (8, 8))[0])
    online = ImageReplayBuffer(["gripperPOV", "corner"], 8, 4, 4, capacity=10)
    mixed = MixedImageReplay(small, online)
    b = mixed.sample(10, np.random.default_rng(0))
    assert torch.all(b["demo"] == 1) and b["obs"]["images"].shape == (10, 2, 8, 8, 3)
    online.add_episode(small.images[:3], small.proprio[:3], np.zeros((2, 4)), np.full(2, -5.0), np.zeros(2),
                       mc_return=np.full(2, -7.0))
    b = mixed.sample(10, np.random.default_rng(0))
    assert b["demo"].sum() == 5 and torch.equal(b["reward"] == -5, b["demo"] == 0)
    assert set(b) == {"obs", "action", "reward", "next_obs", "terminated", "mc_return", "demo"}
    # Cal-QL's bound travels with each row: unknown (-inf) for these demos, as given online
    assert torch.equal(b["mc_return"], torch.where(b["demo"] == 1, -torch.inf, -7.0))
    with pytest.raises(ValueError, match="image_size"):
        MixedImageReplay(small, ImageReplayBuffer(["gripperPOV", "corner"], 16, 4, 4, capacity=10))
    with pytest.raises(ValueError, match=r"\['corner2'\].*available cameras"):  # MissingCameraError
        load_offline_images(path, ["corner2"], 16)
