"""Potential-based shaping: the formula, terminals vs truncations, telescoping, and a real model."""

import numpy as np
import pytest

import reward_models
from episodes import EpisodeStore
from reward_models.shaping import episode_potentials, shape_rewards


def test_shaping_formula_and_terminal_potential():
    out = shape_rewards([0.0, 0.0, 10.0], [0.1, 0.4, 0.8, 1.0], [False, False, True], gamma=0.9, weight=5.0)
    np.testing.assert_allclose(out.phi_next, [0.4, 0.8, 0.0])  # Phi(s') = 0 at the true terminal
    np.testing.assert_allclose(out.shaping, 5 * (0.9 * np.array([0.4, 0.8, 0.0]) - [0.1, 0.4, 0.8]), rtol=1e-6)
    np.testing.assert_allclose(out.reward, out.env_reward + out.shaping, rtol=1e-6)
    truncated = shape_rewards([0.0], [0.2, 0.6], [False], gamma=0.9)
    assert truncated.phi_next[0] == pytest.approx(0.6)  # a time limit keeps the real Phi(s')


def test_discounted_shaping_telescopes():
    """sum_t gamma^t F_t = gamma^T Phi(s_T) - Phi(s_0): shaping cannot create return from loops."""
    rng = np.random.default_rng(0)
    phi = rng.uniform(0, 1, 51)
    gamma = 0.97
    out = shape_rewards(np.zeros(50), phi, np.zeros(50, bool), gamma=gamma)
    discounted = np.sum(gamma ** np.arange(50) * out.shaping.astype(np.float64))
    assert discounted == pytest.approx(gamma**50 * phi[-1] - phi[0], abs=1e-5)
    term = shape_rewards(np.zeros(50), phi, np.r_[np.zeros(49, bool), True], gamma=gamma)
    discounted = np.sum(gamma ** np.arange(50) * term.shaping.astype(np.float64))
    assert discounted == pytest.approx(-phi[0], abs=1e-5)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="T\\+1"):
        shape_rewards([0.0, 0.0], [0.1, 0.2], [False, False], gamma=0.99)
    with pytest.raises(ValueError, match="NaN"):
        shape_rewards([0.0], [0.1, np.nan], [False], gamma=0.99)


def test_potentials_from_the_general_model_in_one_call(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    run = subprocess.run([str(Path(sys.executable).parent / "stepwise-collect"), "task=metaworld/push",
                          "episodes=2", f"out={tmp_path}"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    store = EpisodeStore(tmp_path / "push.hdf5")
    ref, ep = store[0], store[1]
    model = reward_models.load("general")
    frames = {c: ep.images[c] for c in model.cameras}
    phi = episode_potentials(model, frames, ep.instruction, reference=ref)
    assert phi.shape == (ep.num_steps + 1,) and phi.min() >= 0 and phi.max() <= 1
    assert phi[-5:].mean() > phi[:5].mean() + 0.3  # push is held out: the potential still climbs
    with pytest.raises(ValueError, match="history"):
        episode_potentials(model, frames, ep.instruction, perspective="fused")
    shaped = shape_rewards(ep.rewards, phi, np.zeros(ep.num_steps, bool), gamma=0.99, weight=5.0)
    assert shaped.reward.shape == ep.rewards.shape
