"""The shipped general step-PRM scores frames straight from the environment (DESIGN's contract)."""

import numpy as np

import real
import reward_models
from reward_models.metrics import spearman


def test_general_model_scores_env_frames_of_a_heldout_task():
    model = reward_models.load("general")
    assert model.kind == "step_prm" and model.cameras == ("corner", "corner2", "gripperPOV")
    env = real.make_env("metaworld/drawer-open", split="eval", terminate_on_success=True)
    obs, _ = env.reset(seed=0)
    frames = [obs["images"]]
    done = False
    while not done:
        obs, _, terminated, truncated, _ = env.step(env.robot.expert_action())
        frames.append(obs["images"])
        done = terminated or truncated
    env.close()
    assert terminated, "the expert should open the drawer"
    stacked = {cam: np.stack([f[cam] for f in frames]) for cam in model.cameras}
    progress = model.progress(stacked, "open the drawer")
    assert progress.shape == (len(frames),) and progress.dtype == np.float32
    assert progress.min() >= 0.0 and progress.max() <= 1.0
    # drawer-open is a held-out task: the general model never saw it, yet orders the episode in time.
    assert spearman(np.arange(len(frames)), model.progress(stacked, "open the drawer", perspective="forward")) > 0.5
    assert progress[-5:].mean() > progress[:5].mean() + 0.3


def test_the_previous_general_model_stays_loadable_by_name():
    new, old = reward_models.load("general"), reward_models.load("general-v1")
    assert new.cfg.fusion == "mixture" and new.cfg.success_calibration is not None
    assert old.cfg.fusion == "attention" and old.cfg.success_calibration is None
    frames = {cam: np.zeros((3, 96, 96, 3), np.uint8) for cam in old.cameras}
    assert old.progress(frames, "open the drawer").shape == new.progress(frames, "open the drawer").shape == (3,)
