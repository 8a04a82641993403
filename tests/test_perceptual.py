"""The perceptual-feature reward (reward_models/perceptual.py): segmentation, feature selection,
step rewards, progress, save/load, input errors, the train-rm CLI and the per-task evaluation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import reward_models
from episodes import Episode, EpisodeStore
from reward_models import perceptual as P
from reward_models.base import FramesError
from reward_models.encoders import ENCODERS
from reward_models.evaluation import evaluate, fit_per_task
from reward_models.metrics import voc

torch.set_num_threads(1)
BIN = Path(sys.executable).parent
SIM_CAMERAS = ("corner", "gripperPOV")
SIM_SIZE = 48


# --------------------------------------------------------------------------- synthetic data


def synthetic_frames(t1: int = 30, t2: int = 30, size: int = 16, noise: float = 2.0, seed: int = 0) -> dict[str, np.ndarray]:
    """A two-step "open the drawer" cartoon seen by two cameras, uint8 (t1 + t2, size, size, 3) each.

    Step 1: a blue "arm" box reaches from the top left to the red "drawer" on the right. Step 2:
    the arm pulls down and the drawer grows with it. ``side`` sees the scene rotated. Soft edges
    and Gaussian pixel noise (``seed``) make every draw a little different.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)

    def box(cy: float, cx: float, h: float, w: float) -> np.ndarray:
        edge = lambda v: 1.0 / (1.0 + np.exp(-3.0 * v))  # noqa: E731
        return edge(yy - cy + h / 2) * edge(cy + h / 2 - yy) * edge(xx - cx + w / 2) * edge(cx + w / 2 - xx)

    frames = []
    for t in range(t1 + t2):
        if t < t1:
            a = t / (t1 - 1)
            arm_y, arm_x, pulled = 3 + 2 * a, 3 + 8 * a, 0.0
        else:
            a = (t - t1 + 1) / t2
            arm_y, arm_x, pulled = 5 + 7 * a, 11.0, 7 * a
        img = np.full((size, size, 3), 60.0)
        img[..., 0] += 170 * box(6 + pulled / 2, 11, 4 + pulled, 6)
        arm = box(arm_y, arm_x, 6, 6)[..., None]
        img = img * (1 - arm) + arm * np.array([90.0, 110.0, 200.0])
        frames.append(img + rng.normal(0, noise, img.shape))
    front = np.clip(np.stack(frames), 0, 255).astype(np.uint8)
    return {"front": front, "side": np.ascontiguousarray(front[:, ::-1].transpose(0, 2, 1, 3))}


def synthetic_episode(seed: int = 0, t1: int = 30, t2: int = 30, success: bool = True) -> Episode:
    """An Episode around :func:`synthetic_frames` (keyframes at the two steps' ends)."""
    images = synthetic_frames(t1, t2, seed=seed)
    t = t1 + t2 - 1  # actions
    return Episode(images=images, proprio=np.zeros((t + 1, 4), np.float32), actions=np.zeros((t, 4), np.float32),
                   rewards=np.zeros(t, np.float32), dones=np.zeros(t, bool), task="synthetic/drawer",
                   instruction="open the drawer", fps=10.0, success=success,
                   keyframes=np.array([t1 - 1, t], np.int64))


@pytest.fixture(scope="module")
def synthetic_model() -> P.PerceptualReward:
    return P.fit([synthetic_episode(0)], "pixels", n_steps=2, encoder_kwargs={"grid": 4})


# --------------------------------------------------------------------------- segmentation


@pytest.mark.parametrize("weighting", P.WEIGHTINGS)
def test_segmentation_recovers_piecewise_constant_splits(weighting):
    rng = np.random.default_rng(0)
    true = np.array([0, 20, 35, 60])
    levels = rng.normal(0, 1, (3, 8))
    x = np.concatenate([np.repeat(levels[i][None], true[i + 1] - true[i], 0) for i in range(3)])
    x += rng.normal(0, 0.05, x.shape)
    bounds, cost = P.segment(x, 3, min_len=3, weighting=weighting)
    assert bounds.tolist() == true.tolist()
    assert cost < 0.06  # only the noise is left inside the steps
    assert P.segmentation_jaccard(bounds, true).tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("weighting", P.WEIGHTINGS)
def test_dynamic_programming_equals_brute_force(weighting):
    rng = np.random.default_rng(1)
    for trial in range(12):
        t = int(rng.integers(6, 13))
        x = rng.normal(0, 1, (t, 3)).cumsum(0)  # random walks: segments of varied spread
        for n in (1, 2, 3, 4):
            for min_len in (1, 2, 3):
                if t < n * min_len:
                    continue
                b_dp, c_dp = P.segment(x, n, min_len, weighting)
                b_bf, c_bf = P.segment_bruteforce(x, n, min_len, weighting)
                assert c_dp == pytest.approx(c_bf, rel=1e-9, abs=1e-12), (trial, n, min_len)
                assert b_dp.tolist() == b_bf.tolist(), (trial, n, min_len)
                assert np.diff(b_dp).min() >= min_len


def test_too_few_frames_for_the_steps_is_a_clear_error():
    with pytest.raises(ValueError, match=r"cannot split 10 frames into 3 steps of at least min_len=4.*n_steps <= 2"):
        P.segment(np.zeros((10, 2)), 3, min_len=4)
    with pytest.raises(ValueError, match="cannot split 12 frames into 4 steps"):
        P.fit([synthetic_episode(0, t1=6, t2=6)], "pixels", n_steps=4, min_len=4, encoder_kwargs={"grid": 4})


def test_automatic_number_of_steps_rule():
    # the step from 2 to 3 improves 4% (< 10%): stop at 2
    assert P.choose_num_steps(np.array([1.0, 0.5, 0.48, 0.3]), n_min=2, threshold=0.1) == 2
    # every extra step pays: the largest feasible n
    assert P.choose_num_steps(np.array([1.0, 0.5, 0.3, 0.2]), n_min=2, threshold=0.1) == 4
    assert P.choose_num_steps(np.array([1.0, 0.5, np.inf]), n_min=2, threshold=0.1) == 2
    rng = np.random.default_rng(0)
    x = np.concatenate([np.zeros((20, 4)), np.ones((20, 4)) * 3]) + rng.normal(0, 0.05, (40, 4))
    costs = P.segmentation_costs(x, 4, 3)
    assert P.choose_num_steps(costs, n_min=1, threshold=0.5) == 2  # two levels: two steps


def test_segmentation_jaccard_and_random_baseline():
    assert P.segmentation_jaccard([0, 5, 10], [0, 4, 10]) == pytest.approx([4 / 5, 5 / 6])
    assert P.keyframe_bounds([3, 7], 10, 2).tolist() == [0, 4, 10]
    assert P.keyframe_bounds([3, 7], 10, 3).tolist() == [0, 4, 8, 10]
    assert P.keyframe_bounds([3, 7], 10, 4) is None
    rng = np.random.default_rng(0)
    draws = np.array([P.random_bounds(20, 3, 4, rng) for _ in range(2000)])
    assert (np.diff(draws, axis=1) >= 4).all() and (draws[:, -1] == 20).all()
    # every valid split is drawn: stars and bars give C(8 + 2, 2) = 45 for 8 spare frames over 3 steps
    assert len({tuple(d) for d in draws}) == 45
    assert 0.0 < P.random_split_jaccard([0, 7, 14, 20], 4).mean() < 1.0


# --------------------------------------------------------------------------- selection and rewards


def test_selection_score_hand_computed():
    z = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 3.0], [4.0, 5.0]])
    pos = np.array([False, False, True, True])
    # feature 0: mu+ 4, sigma+ 0, mu- 1, sigma- 1 -> 5 * 3 - 1 = 14
    # feature 1: mu+ 4, sigma+ 1, mu- 2, sigma- 1 -> 5 * 2 - 2 = 8
    assert P.selection_scores(z, pos, alpha=5.0) == pytest.approx([14.0, 8.0])
    assert P.selection_scores(z, pos, alpha=1.0) == pytest.approx([2.0, 0.0])
    stats = P.fit_step_stats(z, pos[None], alpha=5.0, top_k=1, sigma_floor=0.1)
    assert stats.idx.tolist() == [[0]] and stats.mu.tolist() == [[4.0]] and stats.sigma.tolist() == [[0.1]]
    with pytest.raises(ValueError, match="both positive and negative"):
        P.selection_scores(z, np.ones(4, bool))


def test_step_reward_higher_at_step_end_than_start(synthetic_model):
    r = synthetic_model.step_rewards(synthetic_frames(seed=3))  # a fresh noise draw
    assert r.shape == (60, 2) and synthetic_model.n_steps == 2
    bounds = synthetic_model.cfg.fit_info["bounds"][0]  # the discovered steps
    assert bounds[0] == 0 and abs(bounds[1] - 30) <= 6 and bounds[2] == 60  # the true split: frame 30
    for i in range(2):
        start, end = bounds[i], bounds[i + 1]
        assert r[end - 3:end, i].mean() > r[start:start + 3, i].mean() + 0.4, (i, r[:, i].round(2))


def test_progress_rises_along_a_synthetic_demonstration(synthetic_model):
    frames = synthetic_frames(seed=4)
    prog, succ = synthetic_model.score(frames, "open the drawer")
    assert prog.dtype == np.float32 and prog.shape == (60,) and (0 <= prog).all() and (prog <= 1).all()
    assert voc(prog) > 0.95
    assert prog[-5:].mean() > 0.85 and prog[:5].mean() < 0.2
    assert succ.dtype == np.float32 and succ[-1] > 0.5 > succ[:30].max()
    for cam in ("front", "side"):  # every camera alone
        single = synthetic_model.progress({cam: frames[cam]}, "open the drawer", cameras=[cam])
        assert voc(single) > 0.95
    reversed_frames = {c: f[::-1].copy() for c, f in frames.items()}
    assert voc(synthetic_model.progress(reversed_frames, "")) < -0.95


def test_progress_combination_rules():
    # columns: start detector, step 1, step 2
    r = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]])
    assert P.combine_progress(r, "anchored") == pytest.approx([0.0, 0.5, 0.75, 1.0], abs=2e-3)
    assert P.combine_progress(r, "furthest") == pytest.approx([0.0, 0.5, 0.375, 1.0])
    assert P.combine_progress(r, "weighted") == pytest.approx([0.0, 1 / 3, 0.5, 2 / 3])
    # a frame no detector recognises falls to 0 under the anchored rule
    assert P.combine_progress(np.zeros((1, 3)), "anchored")[0] == 0.0
    with pytest.raises(ValueError, match="progress rule 'max' unknown"):
        P.combine_progress(r, "max")


def test_mean_fusion_and_several_demos():
    eps = [synthetic_episode(s) for s in range(3)]
    model = P.fit(eps, "pixels", n_steps=2, fusion="mean", failures=[synthetic_episode(9, t2=10, success=False)],
                  encoder_kwargs={"grid": 4})
    assert model.cfg.fit_info["demos"] == 3 and model.cfg.fit_info["failures"] == 1
    assert voc(model.progress(synthetic_frames(seed=5), "")) > 0.95


def test_save_load_gives_identical_outputs(synthetic_model, tmp_path):
    synthetic_model.save(tmp_path / "ckpt")
    loaded = reward_models.load(tmp_path / "ckpt")
    assert isinstance(loaded, P.PerceptualReward) and loaded.n_steps == synthetic_model.n_steps
    frames = synthetic_frames(seed=6)
    for cameras in (None, ["side"]):
        sub = frames if cameras is None else {c: frames[c] for c in cameras}
        a, b = synthetic_model.score(sub, "", cameras=cameras), loaded.score(sub, "", cameras=cameras)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert loaded.config() == synthetic_model.config()


# --------------------------------------------------------------------------- input errors


def test_mismatched_cameras_and_bad_frames_are_clear_errors(synthetic_model):
    frames = synthetic_frames()
    with pytest.raises(FramesError, match="lack camera"):
        synthetic_model.progress({"front": frames["front"]}, "")
    with pytest.raises(FramesError, match="does not know"):
        synthetic_model.progress({**frames, "wrist": frames["front"]}, "")
    with pytest.raises(FramesError, match="not distinct cameras of this model's rig"):
        synthetic_model.progress(frames, "", cameras=["wrist"])
    with pytest.raises(FramesError, match="dtype float32"):
        synthetic_model.progress({c: f.astype(np.float32) for c, f in frames.items()}, "")
    with pytest.raises(FramesError, match="add the time axis"):
        synthetic_model.progress({c: f[0] for c, f in frames.items()}, "")
    with pytest.raises(FramesError, match="render at image_size=16"):
        synthetic_model.progress({c: np.zeros((3, 8, 8, 3), np.uint8) for c in frames}, "")
    with pytest.raises(FramesError, match="lacks camera"):
        P.fit([synthetic_episode(0)], "pixels", cameras=["front", "wrist"], encoder_kwargs={"grid": 4})
    with pytest.raises(FramesError, match="set image_size=16"):
        P.fit([synthetic_episode(0)], "pixels", image_size=(96, 96), encoder_kwargs={"grid": 4})


def test_unknown_encoder_and_missing_weights_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown encoder 'no-such-encoder'.*pixels"):
        P.fit([synthetic_episode(0)], "no-such-encoder")
    with pytest.raises(ValueError, match="fusion='sum' unknown"):
        P.fit([synthetic_episode(0)], "pixels", fusion="sum", encoder_kwargs={"grid": 4})
    if "resnet18" not in ENCODERS:
        pytest.skip("the resnet18 encoder is not registered in this checkout")
    with pytest.raises((FileNotFoundError, ValueError), match="no-such-weights"):
        P.fit([synthetic_episode(0)], "resnet18", encoder_kwargs={"weights": "/no-such-weights.pt"})


# --------------------------------------------------------------------------- real sim frames, CLI, eval


@pytest.fixture(scope="module")
def drawer_store(tmp_path_factory) -> Path:
    """A tiny real store: 2 drawer-open demos and 1 stall failure, 2 cameras at 48x48."""
    out = tmp_path_factory.mktemp("perceptual_store")
    run = subprocess.run(
        [str(BIN / "stepwise-collect"), "task=metaworld/drawer-open", "episodes=2", "failures=1",
         "failure_kinds=[stall]", f"image_size={SIM_SIZE}", f"cameras=[{','.join(SIM_CAMERAS)}]", f"out={out}"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return out / "drawer-open.hdf5"


def test_progress_rises_along_a_real_demonstration(drawer_store):
    with EpisodeStore(drawer_store) as store:
        demo, other, failure = store[0], store[1], store[2]
    model = P.fit([demo], "pixels")
    assert voc(model.progress(demo.images, demo.instruction)) > 0.9  # the training demo
    assert voc(model.progress(other.images, other.instruction)) > 0.8  # another variant of the task
    prog_fail = model.progress(failure.images, failure.instruction)
    assert prog_fail[-1] < model.progress(other.images, "")[-1]  # a stall ends below a success


def test_train_rm_cli_then_load_and_score_env_frames(drawer_store, tmp_path):
    out = tmp_path / "perceptual"
    run = subprocess.run(
        [str(BIN / "stepwise-train-rm"), "reward=perceptual", "encoder=pixels", f"data={drawer_store}", f"out={out}",
         f"reward.image_size={SIM_SIZE}", f"reward.cameras=[{','.join(SIM_CAMERAS)}]"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "saved perceptual model" in run.stdout
    model = reward_models.load(out)
    assert model.kind == "perceptual" and model.cfg.fit_info["demos"] == 2 and model.cfg.fit_info["failures"] == 1

    import sim

    task = sim.SimTask("metaworld/drawer-open", cameras=list(SIM_CAMERAS), image_size=SIM_SIZE, split="eval")
    task.reset(seed=3)
    shots = [task.render()]
    for _ in range(60):
        task.step(task.expert_action())
        shots.append(task.render())
    task.close()
    frames = {c: np.stack([s[c] for s in shots]) for c in SIM_CAMERAS}
    prog = model.progress(frames, "open the drawer")
    assert prog.shape == (61,) and prog.dtype == np.float32 and (0 <= prog).all() and (prog <= 1).all()
    assert prog[-5:].mean() > prog[:5].mean()

    bad = subprocess.run([str(BIN / "stepwise-train-rm"), "reward=perceptual", "reward.encoder=null", f"data={drawer_store}", f"out={out}_x"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "needs encoder=<name>" in bad.stderr


def test_eval_fits_per_task_and_never_scores_fitting_episodes(drawer_store):
    models = fit_per_task("perceptual:pixels", drawer_store, fit_demos=2,
                          settings={"image_size": SIM_SIZE, "cameras": list(SIM_CAMERAS)})
    assert len(models.excluded) == 2
    res = evaluate(models, drawer_store, baselines=(), densities=(1,))
    info = res["tasks"]["metaworld/drawer-open"]
    assert info["scored"] == 1 and info["failures"] == 1 and info["fit_excluded"] == 2
    assert set(res["rows"]) == {"model", "camera:corner", "camera:gripperPOV"}
    demos = res["settings"]["fit"]["metaworld/drawer-open"]["demos"]
    assert [d.split("/")[-1] for d in demos] == ["drawer-open.hdf5:0", "drawer-open.hdf5:1"]
    with pytest.raises(ValueError, match="a per-task recipe is <kind>:<encoder>"):
        fit_per_task("tcn-only", drawer_store)
    with pytest.raises(ValueError, match="unknown encoder"):
        fit_per_task("perceptual:no-such-encoder", drawer_store)
    with pytest.raises(ValueError, match="has 2 successful expert demonstrations"):
        fit_per_task("perceptual:pixels", drawer_store, fit_demos=3,
                     settings={"image_size": SIM_SIZE, "cameras": list(SIM_CAMERAS)})


def test_a_torch_encoder_works_unchanged_and_round_trips(tmp_path):
    if "resnet18" not in ENCODERS:
        pytest.skip("the resnet18 encoder is not registered in this checkout")
    model = P.fit([synthetic_episode(0)], "resnet18", n_steps=2, encoder_kwargs={"image_size": 32}, device="cpu")
    assert model.cfg.encoder["name"] == "resnet18" and model.heads["front+side"].mean.shape == (2 * model.encoder.feature_dim,)
    model.save(tmp_path / "ckpt")
    loaded = reward_models.load(tmp_path / "ckpt", device="cpu")
    frames = synthetic_frames(seed=7)
    a, b = model.score(frames, ""), loaded.score(frames, "")
    assert np.allclose(a[0], b[0], atol=1e-5) and np.allclose(a[1], b[1], atol=1e-5)
