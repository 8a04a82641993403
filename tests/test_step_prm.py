"""The step-discretized progress model: labels, reconstructions, sampler, learning, save/load, errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import reward_models
from episodes import EpisodeStore
from reward_models.base import CheckpointError, FramesError
from reward_models.pairs import PairSampler
from reward_models.train_episodes import TrainEpisode
from reward_models.progress import (
    backward, bin_centers, forward, hop, hop_to_bin, incremental, step_progress,
)
from reward_models.step_prm import StepPRM, StepPRMConfig
from reward_models.metrics import spearman
from reward_models.train import two_hot

BIN = Path(sys.executable).parent
CAMS = ("corner", "gripperPOV")


def test_step_progress_each_step_worth_one_over_n():
    phi = step_progress([4, 6], 9)  # step 1: frames 0..4, step 2: frames 4..6, then done
    np.testing.assert_allclose(phi, [0, 0.125, 0.25, 0.375, 0.5, 0.75, 1, 1, 1])
    phi3 = step_progress([10, 20, 40], 41)
    assert phi3[10] == pytest.approx(1 / 3) and phi3[20] == pytest.approx(2 / 3) and phi3[30] == pytest.approx(5 / 6)


def test_hop_labels_progress_and_regress():
    assert hop(0.5, 0.75) == pytest.approx(0.5)   # half of what was left
    assert hop(0.5, 0.25) == pytest.approx(-0.5)  # half of what was done
    assert hop(0.0, 1.0) == 1.0 and hop(1.0, 0.0) == -1.0
    assert hop(0.25, 0.25) == 0.0 and hop(1.0, 1.0) == 0.0 and hop(0.0, 0.0) == 0.0
    centers = bin_centers(25)
    assert len(centers) == 25 and centers[12] == pytest.approx(0.0)
    np.testing.assert_array_equal(hop_to_bin([-1.0, 0.0, 1.0], 25), [0, 12, 24])


def test_reconstructions_match_hand_computed_sequences():
    phi = np.array([0.0, 0.2, 0.5, 0.4, 1.0])
    inc = incremental(hop(phi[:-1], phi[1:]))
    np.testing.assert_allclose(inc, phi, atol=1e-12)
    np.testing.assert_allclose(incremental([0.5, 0.5, -0.5]), [0, 0.5, 0.75, 0.375])
    np.testing.assert_allclose(forward(hop(0.0, phi)), phi)
    np.testing.assert_allclose(backward(hop(1.0, phi)), phi)
    np.testing.assert_allclose(backward([-0.25, 0.0]), [0.75, 1.0])


def test_two_hot_targets_have_the_hop_as_expectation():
    import torch

    hops = torch.tensor([-1.0, -0.33, 0.0, 0.1234, 1.0])
    target = two_hot(hops, 25)
    centers = torch.tensor(bin_centers(25), dtype=torch.float32)
    np.testing.assert_allclose((target * centers).sum(-1).numpy(), hops.numpy().clip(-0.96, 0.96), atol=1e-5)
    np.testing.assert_allclose(target.sum(-1).numpy(), 1.0, atol=1e-6)


def test_pair_sampler_balances_hop_bins():
    eps = [TrainEpisode(np.zeros((201, 1, 8, 8, 3), np.uint8), step_progress([60, 200], 201), 200, "t", "x")
           for _ in range(3)]
    sampler = PairSampler(eps, num_bins=9, frames_per_episode=12, pairs_per_episode=64, seed=0)
    batch = sampler.sample(40)
    counts = np.bincount(hop_to_bin(batch.hop, 9), minlength=9)
    # Every bin is represented and none dominates (unweighted pairs crowd the small-hop bins).
    assert counts.min() > 0.3 * counts.mean() and counts.max() < 3 * counts.mean()
    assert np.mean(batch.hop == 0.0) >= 0.04  # the share of exact zero hops
    assert (batch.hop < 0).mean() > 0.2  # regressions are seen too
    assert set(np.unique(batch.goal)) - {-1} and (batch.goal == -1).any()  # goal sometimes dropped


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("store")
    run = subprocess.run([str(BIN / "stepwise-collect"), "task=metaworld/reach", "episodes=6", "image_size=32",
                          f"cameras=[{','.join(CAMS)}]", f"out={out}"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return out / "reach.hdf5"


def _voc(model, ep, **kw):
    frames = {c: ep.images[c][: ep.keyframes[-1] + 1] for c in CAMS}
    return spearman(np.arange(len(frames[CAMS[0]])), model.progress(frames, ep.instruction, **kw))


def _progress_error(model, ep) -> float:
    """Mean |forward progress - step-progress label| over the frames up to the goal."""
    end = ep.keyframes[-1] + 1
    frames = {c: ep.images[c][:end] for c in CAMS}
    truth = step_progress(ep.keyframes, ep.num_steps + 1)[:end]
    return float(np.abs(model.progress(frames, ep.instruction, perspective="forward") - truth).mean())


def test_small_training_run_learns_progress(tiny_store, tmp_path):
    """A fixed-seed run of 150 steps on 5 reach demos orders an unseen demo's frames in time."""
    out = tmp_path / "model"
    run = subprocess.run(
        [str(BIN / "stepwise-train-rm"), f"data={tiny_store}", f"out={out}", "steps=150", "batch_episodes=4",
         "frames_per_episode=8", "pairs_per_episode=32", "val_every_nth=6", "eval_every=150",
         "reward.image_size=32", "reward.encoder_size=32", f"reward.cameras=[{','.join(CAMS)}]", "reward.dim=64",
         "reward.width=16"],
        capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    model = reward_models.load(out)
    held_out = EpisodeStore(tiny_store)[0]  # val_every_nth=6: episode 0 was held out
    torch.manual_seed(0)
    untrained = StepPRM(StepPRMConfig(**{**model.config(), "text_cache": model.cfg.text_cache}))
    assert _voc(model, held_out, perspective="forward") > 0.8
    assert _voc(model, held_out, perspective="fused") > 0.8
    # Not only the order: the values approach the step-progress labels; an untrained net does not.
    assert _progress_error(model, held_out) < 0.2
    assert _progress_error(untrained, held_out) > _progress_error(model, held_out) + 0.1
    # Resuming a finished run is a no-op that still yields the same model.
    before = model.progress({c: held_out.images[c] for c in CAMS}, held_out.instruction)
    run = subprocess.run(
        [str(BIN / "stepwise-train-rm"), f"data={tiny_store}", f"out={out}", "steps=150", "batch_episodes=4",
         "frames_per_episode=8", "pairs_per_episode=32", "val_every_nth=6", "eval_every=150",
         "reward.image_size=32", "reward.encoder_size=32", f"reward.cameras=[{','.join(CAMS)}]", "reward.dim=64",
         "reward.width=16"], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0
    after = reward_models.load(out).progress({c: held_out.images[c] for c in CAMS}, held_out.instruction)
    np.testing.assert_allclose(before, after, atol=1e-6)


def test_mixture_fusion_learns_per_camera_and_fused_progress(tiny_store, tmp_path):
    """fusion=mixture: every camera alone and their confidence-weighted mixture order an unseen demo
    in time after a short fixed-seed run; weights are a distribution per pair; save/load is exact."""
    out = tmp_path / "mixture"
    run = subprocess.run(
        [str(BIN / "stepwise-train-rm"), f"data={tiny_store}", f"out={out}", "steps=150", "batch_episodes=4",
         "frames_per_episode=8", "pairs_per_episode=32", "val_every_nth=6", "eval_every=150",
         "reward.image_size=32", "reward.encoder_size=32", f"reward.cameras=[{','.join(CAMS)}]", "reward.dim=64",
         "reward.width=16", "reward.fusion=mixture"],
        capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    model = reward_models.load(out)
    assert model.cfg.fusion == "mixture" and model.net.head[-1].out_features == model.cfg.num_bins + 1
    held_out = EpisodeStore(tiny_store)[0]
    fused = _voc(model, held_out, perspective="forward")
    singles = {}
    for cam in CAMS:
        frames = {cam: held_out.images[cam][: held_out.keyframes[-1] + 1]}
        single = model.progress(frames, held_out.instruction, perspective="forward", cameras=[cam])
        singles[cam] = spearman(np.arange(len(single)), single)
    assert fused > 0.8 and max(singles.values()) > 0.7, (fused, singles)
    assert fused >= max(singles.values()) - 0.05, (fused, singles)  # the mixture follows the surer camera
    frames = {c: held_out.images[c] for c in CAMS}
    states = model.encode(frames)
    assert states.shape == (held_out.num_steps + 1, len(CAMS), 64)
    text = model.net.text(model.text_embedding(held_out.instruction)).expand(len(states), -1)
    with torch.no_grad():
        w = model.net.view_weights(states[:1].expand_as(states), model.net.no_goal_like(states, len(states)),
                                   states[:1].expand_as(states), states, text)
    np.testing.assert_allclose(w.sum(-1).numpy(), 1.0, atol=1e-5)
    ref = EpisodeStore(tiny_store)[1]
    before = model.progress(frames, held_out.instruction, reference=ref)
    np.testing.assert_array_equal(before, reward_models.load(out).progress(frames, held_out.instruction, reference=ref))
    # the reference's camera prior: each camera's VOC on the reference / temperature, as log-weights
    prior = model.view_prior(ref, held_out.instruction, CAMS)
    assert prior.shape == (len(CAMS),) and float(prior.exp().sum()) == pytest.approx(1.0, abs=1e-5)
    assert model.view_prior(ref, held_out.instruction, CAMS) is prior  # cached per reference
    ref_voc = []
    for cam in CAMS:
        end = ref.keyframes[-1] + 1
        single = model.progress({cam: ref.images[cam][:end]}, ref.instruction, perspective="forward", cameras=[cam])
        ref_voc.append(spearman(np.arange(end), single))
    expected = torch.tensor(ref_voc, dtype=torch.float32) / model.cfg.view_prior_temperature
    np.testing.assert_allclose(prior.numpy(), expected.log_softmax(-1).numpy(), atol=1e-5)
    model.cfg.view_prior_temperature = None
    assert model.view_prior(ref, held_out.instruction, CAMS) is None
    without = model.progress(frames, held_out.instruction, reference=ref)
    assert without.shape == before.shape and ((prior.exp() - 0.5).abs().max().item() < 1e-3 or not np.allclose(without, before))


def test_attention_is_the_fusion_of_checkpoints_that_name_none(tmp_path):
    model = _small_model()
    model.save(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    config["config"].pop("fusion")  # a checkpoint written before fusion= existed
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    assert reward_models.load(tmp_path / "old").cfg.fusion == "attention"
    with pytest.raises(ValueError, match="fusion 'pool' unknown"):
        StepPRM(StepPRMConfig(fusion="pool"))


def _small_model():
    model = StepPRM(StepPRMConfig(cameras=CAMS, image_size=(32, 32), encoder_size=32, width=16, dim=64))
    model.cfg.text_cache["reach the goal position"] = list(np.linspace(-0.1, 0.1, 384))
    return model


def test_save_load_gives_identical_outputs(tiny_store, tmp_path):
    model = _small_model()
    ep = EpisodeStore(tiny_store)[1]
    ref = EpisodeStore(tiny_store)[2]
    frames = {c: ep.images[c] for c in CAMS}
    before = {p: model.progress(frames, ep.instruction, reference=ref, perspective=p)
              for p in ("fused", "incremental", "forward", "backward")}
    model.save(tmp_path / "ckpt")
    loaded = reward_models.load(tmp_path / "ckpt")
    for p, values in before.items():
        np.testing.assert_array_equal(values, loaded.progress(frames, ep.instruction, reference=ref, perspective=p))
        assert values.shape == (ep.num_steps + 1,) and values.min() >= 0 and values.max() <= 1
    prog, succ = loaded.score(frames, ep.instruction)
    np.testing.assert_array_equal(succ, loaded.success_prob(frames, ep.instruction))
    single = loaded.progress({"corner": frames["corner"]}, ep.instruction, cameras=["corner"])
    assert single.shape == prog.shape


def test_bad_frames_are_clear_errors(tiny_store):
    model = _small_model()
    ep = EpisodeStore(tiny_store)[1]
    frames = {c: ep.images[c] for c in CAMS}
    instr = ep.instruction
    with pytest.raises(FramesError, match="gripperPOV"):
        model.progress({"corner": frames["corner"]}, instr)
    with pytest.raises(FramesError, match="topview"):
        model.progress({**frames, "topview": frames["corner"]}, instr)
    with pytest.raises(FramesError, match="uint8"):
        model.progress({c: f.astype(np.float32) / 255 for c, f in frames.items()}, instr)
    with pytest.raises(FramesError, match="96"):
        model.progress({c: np.zeros((3, 96, 96, 3), np.uint8) for c in CAMS}, instr)
    with pytest.raises(FramesError, match="empty"):
        model.progress({c: f[:0] for c, f in frames.items()}, instr)
    with pytest.raises(FramesError, match="time axis"):
        model.progress({c: f[0] for c, f in frames.items()}, instr)
    with pytest.raises(ValueError, match="reference"):
        model.progress(frames, instr, perspective="backward")


def test_bad_checkpoints_are_clear_errors(tmp_path):
    model = _small_model()
    path = model.save(tmp_path / "ok")
    meta = json.loads((path / "config.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**meta, "kind": "no_such_model"}))
    with pytest.raises(CheckpointError, match="no_such_model"):
        reward_models.load(other)
    for kind in ("vlm_success", "perceptual"):  # a step_prm config labelled as another known kind
        (other / "config.json").write_text(json.dumps({**meta, "kind": kind}))
        with pytest.raises(CheckpointError, match=f"does not fit this code's {kind} config"):
            reward_models.load(other)
    (other / "config.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(CheckpointError, match="version 99"):
        reward_models.load(other)
    (other / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="damaged"):
        reward_models.load(other)
    with pytest.raises(CheckpointError, match="no reward-model checkpoint"):
        reward_models.load(tmp_path / "missing")
    (path / "model.safetensors").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="weights"):
        reward_models.load(path)


def test_censored_loss_bounds_the_hop_and_equals_cross_entropy_when_labelled():
    from reward_models.train import hop_loss

    centers = torch.tensor(bin_centers(25), dtype=torch.float32)
    logits = torch.zeros(3, 25)
    labelled = hop_loss(logits, torch.tensor([0.5, -0.2, 0.0]), None, centers)
    expected = -(two_hot(torch.tensor([0.5, -0.2, 0.0]), 25) * logits.log_softmax(-1)).sum(-1).mean()
    assert labelled.item() == pytest.approx(expected.item())
    top = torch.full((1, 25), -20.0)
    top[0, -1] = 20.0  # all mass on "done"
    below = torch.full((1, 25), -20.0)
    below[0, 5] = 20.0  # all mass well under the bound
    bound, cens = torch.tensor([1.0 - 2 / 25]), torch.tensor([True])
    assert hop_loss(top, bound, cens, centers).item() > 10      # "done" for a failure costs
    assert hop_loss(below, bound, cens, centers).item() < 1e-3  # anything under the bound is free
    # The gradient moves mass off the top bin only.
    x = torch.zeros(1, 25, requires_grad=True)
    hop_loss(x, bound, cens, centers).backward()
    assert x.grad[0, -1] > 0 and (x.grad[0, :-1] < 0).all()


def test_pair_sampler_draws_censored_failure_pairs():
    succ = [TrainEpisode(np.full((41, 1, 8, 8, 3), k, np.uint8), step_progress([20, 40], 41), 40, "t", "x")
            for k in range(3)]
    fails = [TrainEpisode(np.full((30, 1, 8, 8, 3), 9, np.uint8), np.zeros(0), -1, "t", "x"),
             TrainEpisode(np.full((30, 1, 8, 8, 3), 7, np.uint8), np.zeros(0), -1, "other task", "y")]
    plain = PairSampler(succ, num_bins=25, seed=3).sample(20)
    again = PairSampler(succ, num_bins=25, seed=3, failures=[], failure_share=0.25).sample(20)
    np.testing.assert_array_equal(plain.hop, again.hop)  # without failures: the sampler as before
    assert not plain.censored.any()
    batch = PairSampler(succ, num_bins=25, seed=3, failures=fails, failure_share=0.5).sample(40)
    c = batch.censored
    assert 0.3 < c.mean() < 0.7
    np.testing.assert_allclose(np.unique(batch.hop[c]), [-2 / 25, 1 - 2 / 25], atol=1e-6)
    # censored pairs end on failure frames (pixel value 9), never on the other task's failure (7)
    assert (batch.states[batch.after[c]] == 9).all() and not (batch.states == 7).any()
    # their goal anchors are a success's goal frame; the goal -> frame pairs always have one
    goal_pairs = c & (batch.hop < 0)
    assert (batch.goal[goal_pairs] >= 0).all() and (batch.states[batch.goal[goal_pairs]] < 9).all()
    with pytest.raises(ValueError, match="failure_share"):
        PairSampler(succ, num_bins=25, failures=fails, failure_share=1.0)


def test_wrong_instruction_pairs_are_censored_under_a_confusable_tasks_text():
    from reward_models.pairs import confusable_tasks

    tasks = ["metaworld/door-close", "metaworld/door-lock", "metaworld/reach", "metaworld/reach-wall"]
    assert confusable_tasks("metaworld/door-close", tasks) == (["metaworld/door-lock"], ["metaworld/reach", "metaworld/reach-wall"])
    assert confusable_tasks("metaworld/reach", tasks) == ([], ["metaworld/door-close", "metaworld/door-lock"])  # never reach-wall
    texts = {t: t.split("/")[1] for t in tasks}
    succ = [TrainEpisode(np.full((41, 1, 8, 8, 3), 10 * k + j, np.uint8), step_progress([20, 40], 41), 40, t, texts[t])
            for k, t in enumerate(tasks) for j in range(2)]
    plain = PairSampler(succ, num_bins=25, seed=3).sample(30)
    assert not plain.censored.any()
    batch = PairSampler(succ, num_bins=25, seed=3, instruction_negative_share=0.5).sample(60)
    c = batch.censored
    assert 0.3 < c.mean() < 0.7
    np.testing.assert_allclose(np.unique(batch.hop[c]), [-2 / 25, 1 - 2 / 25], atol=1e-6)
    owner = {10 * k + j: t for k, t in enumerate(tasks) for j in range(2)}
    for i in np.flatnonzero(c):
        task = owner[int(batch.states[batch.after[i]].flat[0])]  # the episode's own task (a success of it)
        named = tasks[[texts[t] for t in tasks].index(batch.instructions[batch.text[i]])]
        assert named != task and named in sum(confusable_tasks(task, tasks), [])
        if batch.goal[i] >= 0:  # goal anchors are the named task's goal frames
            assert owner[int(batch.states[batch.goal[i]].flat[0])] == named
    assert not batch.censored[~c].any() and all(  # labelled pairs keep their own instruction
        batch.instructions[batch.text[i]] == texts[owner[int(batch.states[batch.after[i]].flat[0])]] for i in np.flatnonzero(~c))
    with pytest.raises(ValueError, match="instruction_negative_share"):
        PairSampler(succ, num_bins=25, failure_share=0.5, instruction_negative_share=0.5)


@pytest.fixture(scope="module")
def near_miss_stores(tmp_path_factory):
    """reach: 6 demos + 4 near-misses to train on; 1 demo and 4 near-misses of later seeds to test on."""
    out = tmp_path_factory.mktemp("near_miss")
    common = [str(BIN / "stepwise-collect"), "task=metaworld/reach", "image_size=32", f"cameras=[{','.join(CAMS)}]",
              "failure_kinds=[near_miss]"]
    for sub, extra in (("train", ["episodes=6", "failures=4"]), ("test", ["episodes=1", "failures=4", "seed=40"])):
        run = subprocess.run(common + extra + [f"out={out / sub}"], capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
    return out / "train" / "reach.hdf5", out / "test" / "reach.hdf5"


def test_failures_as_negatives_stop_near_misses_being_rated_done(near_miss_stores, tmp_path):
    """Same seed and budget with and without the censored failure pairs: only the model that saw
    failures rates unseen near-misses' last frames as not done (success_prob), and it still orders
    a demo in time."""
    train_store, test_store = near_miss_stores
    probs = {}
    for share in (0.0, 0.3):
        out = tmp_path / f"share{share}"
        run = subprocess.run(
            [str(BIN / "stepwise-train-rm"), f"data={train_store}", f"out={out}", "steps=200", "batch_episodes=4",
             "frames_per_episode=8", "pairs_per_episode=32", "val_every_nth=0", f"failure_share={share}",
             "reward.image_size=32", "reward.encoder_size=32", f"reward.cameras=[{','.join(CAMS)}]", "reward.dim=64",
             "reward.width=16"], capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stderr[-3000:]
        model = reward_models.load(out)
        with EpisodeStore(test_store) as store:
            demo = store[0]
            misses = [ep for ep in (store[i] for i in range(1, len(store))) if not ep.success]
        assert demo.success and misses  # (a reach near-miss can end inside the success radius)
        probs[share] = float(np.mean([model.success_prob({c: ep.images[c] for c in CAMS}, ep.instruction)[-1]
                                      for ep in misses]))
        if share:  # still a progress model: the unseen demo ordered in time, its goal rated done
            assert _voc(model, demo, perspective="forward") > 0.8
            done = model.success_prob({c: demo.images[c] for c in CAMS}, demo.instruction)[demo.keyframes[-1]:].mean()
            assert done > probs[share] + 0.2, (done, probs)
    # measured: 0.56 without failures, 0.34 with (fixed seeds, 200 steps)
    assert probs[0.3] < 0.45 and probs[0.3] < probs[0.0] - 0.1, probs


@pytest.fixture(scope="module")
def stall_store(tmp_path_factory):
    """reach: one demo, then three stalls (failures), 32 px."""
    out = tmp_path_factory.mktemp("stalls")
    run = subprocess.run([str(BIN / "stepwise-collect"), "task=metaworld/reach", "image_size=32", f"cameras=[{','.join(CAMS)}]",
                          "failure_kinds=[stall]", "episodes=1", "failures=3", f"out={out}"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return out / "reach.hdf5"


def test_failure_cap_keeps_the_oldest_or_the_newest_failures(stall_store):
    """max_per_task caps the failures read: the first N in store order, or with newest_first the last N
    (an in-the-loop refresh reads the run's most recent failures, at a cost that stops growing)."""
    from reward_models.train_episodes import load_failures

    train_store = stall_store
    with EpisodeStore(train_store) as store:
        failed = [i for i in range(len(store)) if not store.episode_attrs(i)["success"]]
        frames = {i: np.stack([store[i].images[c] for c in CAMS], axis=1) for i in failed}
    assert len(failed) >= 3
    every = load_failures(train_store, tuple(CAMS))
    assert len(every) == len(failed)
    for newest, expected in ((False, failed[:2]), (True, failed[::-1][:2])):
        got = load_failures(train_store, tuple(CAMS), max_per_task=2, newest_first=newest)
        assert [e.images.shape for e in got] == [frames[i].shape for i in expected]
        assert all(np.array_equal(e.images, frames[i]) for e, i in zip(got, expected))


def test_freeze_encoder_trains_all_but_the_convolutions(stall_store, tmp_path):
    """freeze_encoder=true (the refresh's cheap mode): the conv stack keeps its weights, the rest learns."""
    common = [str(BIN / "stepwise-train-rm"), f"data={stall_store}", "batch_episodes=2", "frames_per_episode=4",
              "pairs_per_episode=8", "val_every_nth=0", "failure_share=0.5", "reward.image_size=32", "reward.encoder_size=32",
              f"reward.cameras=[{','.join(CAMS)}]", "reward.dim=32", "reward.width=8", "num_threads=1"]
    for extra in (["steps=2", f"out={tmp_path / 'init'}"],
                  ["steps=3", f"init={tmp_path / 'init'}", "freeze_encoder=true", f"out={tmp_path / 'frozen'}"]):
        run = subprocess.run(common + extra, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
    before, after = (reward_models.load(tmp_path / d).net.state_dict() for d in ("init", "frozen"))
    convs = [k for k in before if k.startswith("view.net.")]
    assert convs and all(torch.equal(before[k], after[k]) for k in convs)
    rest = [k for k in before if k.startswith(("view.proj.", "head."))]
    assert all(not torch.equal(before[k], after[k]) for k in rest if k.endswith("weight"))


def test_platt_fit_recovers_a_known_calibration_map():
    from reward_models.calibration import apply_platt, fit_platt, logit

    rng = np.random.default_rng(0)
    raw = rng.uniform(0.01, 0.99, 20000)
    truth = 1 / (1 + np.exp(-(0.5 * logit(raw) - 1.0)))  # an overconfident, too-eager P(done)
    label = rng.uniform(size=raw.shape) < truth
    a, b = fit_platt(raw, label)
    assert a == pytest.approx(0.5, abs=0.05) and b == pytest.approx(-1.0, abs=0.05)
    np.testing.assert_allclose(apply_platt(raw, (a, b)), truth, atol=0.03)
    with pytest.raises(ValueError, match="both classes"):
        fit_platt(raw, np.zeros_like(raw))


def test_calibrated_success_prob_keeps_the_ranking_and_lowers_ece(tiny_store, tmp_path):
    from reward_models.calibration import calibrate

    torch.manual_seed(0)  # an untrained net: fixed, so the test does not depend on the tests before it
    model = _small_model()
    ep = EpisodeStore(tiny_store)[3]
    frames = {c: ep.images[c] for c in CAMS}
    raw = model.success_prob(frames, ep.instruction)
    fit = calibrate(model, tiny_store)
    assert model.cfg.success_calibration == [fit["a"], fit["b"]] and fit["episodes"] == 6
    assert fit["ece_after"] <= fit["ece_before"] + 1e-9, fit
    cal = model.success_prob(frames, ep.instruction)
    assert not np.allclose(cal, raw)
    if fit["a"] > 0:  # a monotonic map: the order of frames by P(done) is kept
        assert spearman(raw, cal) > 0.999
    np.testing.assert_array_equal(model.score(frames, ep.instruction)[1], cal)
    model.save(tmp_path / "cal")
    np.testing.assert_array_equal(reward_models.load(tmp_path / "cal").success_prob(frames, ep.instruction), cal)


def test_reverse_twin_pairs_bound_the_last_phase_by_its_direction_in_time():
    from reward_models.pairs import reverse_twins

    tasks = ["metaworld/door-lock", "metaworld/door-unlock", "metaworld/plate-slide-side",
             "metaworld/plate-slide-back-side", "metaworld/reach", "metaworld/reach-wall"]
    assert reverse_twins("metaworld/door-lock", tasks) == ["metaworld/door-unlock"]
    assert reverse_twins("metaworld/plate-slide-back-side", tasks) == ["metaworld/plate-slide-side"]
    assert reverse_twins("metaworld/reach", tasks) == [] and reverse_twins("door-open", ["door-close"]) == ["door-close"]
    texts = {t: t.split("/")[1] for t in tasks}
    # frame value = 100 * task index + time, so every state says whose episode and which frame it is
    succ = [TrainEpisode(np.arange(41, dtype=np.uint8).reshape(41, 1, 1, 1, 1).repeat(8, 2).repeat(8, 3).repeat(3, 4) + 50 * (k % 4),
                         step_progress([20, 40], 41), 40, t, texts[t], np.array([20, 40]))
            for k, t in enumerate(tasks)]
    batch = PairSampler(succ, num_bins=25, seed=3, reverse_twin_share=0.5).sample(80)
    w = 2 / 25
    twin_text = {texts[a]: texts[b] for a in tasks for b in reverse_twins(a, tasks)}
    c = batch.censored
    assert 0.15 < c.mean() < 0.6 and batch.lower[c].any() and not batch.lower[~c].any()
    frame = lambda i: int(batch.states[i].flat[0]) % 50  # noqa: E731
    for i in np.flatnonzero(c):
        assert batch.instructions[batch.text[i]] in twin_text.values()  # the twin's instruction
        assert frame(batch.after[i]) >= 20  # only the last phase (keyframe 20 -> goal 40)
        if batch.before[i] == batch.goal[i]:  # twin goal -> a late frame: below the zero bin
            assert batch.hop[i] == pytest.approx(-w) and not batch.lower[i] and frame(batch.after[i]) >= 33
        else:  # frame -> frame: backwards in time forward, forwards in time backward
            forward = frame(batch.before[i]) < frame(batch.after[i])
            assert batch.hop[i] == pytest.approx(-w if forward else w) and batch.lower[i] == (not forward)
    with pytest.raises(ValueError, match="reverse_twin_share"):
        PairSampler(succ, num_bins=25, instruction_negative_share=0.5, reverse_twin_share=0.5)


def test_hop_loss_lower_bounds_put_the_mass_above_the_bound():
    import torch

    from reward_models.train import hop_loss

    centers = torch.linspace(-1, 1, 5)
    up = torch.tensor([[0.0, 0, 0, 0, 9.0]])  # all mass on +1
    bound = torch.tensor([0.5])
    yes = torch.tensor([True])
    assert hop_loss(up, bound, yes, centers, lower=yes) < 0.01  # at least 0.5: satisfied
    assert hop_loss(up, bound, yes, centers, lower=~yes) > 5  # at most 0.5: violated
