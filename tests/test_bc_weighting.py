"""Reward-aligned BC (pretrain.bc_weighting=progress): demonstration actions drawn in proportion to
the progress they made under the shaping potential; stalls and reversals are never cloned."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from policies.pretrain import bc_warm_start, demo_bc_weights
from policies.replay import ReplayBuffer


def test_weights_follow_the_progress_gain_and_a_success_ends_at_one():
    cfg = OmegaConf.create({"pretrain": {"bc_weighting": "progress"}})
    rec = types.SimpleNamespace(terminated=np.array([0, 0, 0, 0, 1], bool))
    terms = {"phi": np.array([0.0, 0.2, 0.2, 0.5, 0.4]), "phi_next": np.array([0.2, 0.2, 0.5, 0.4, 0.0])}
    w = demo_bc_weights(cfg, [rec, rec], [terms, terms])
    gains = np.array([0.2, 0.0, 0.3, -0.1, 0.6])  # the last step reaches success: progress 1
    expected = np.clip(gains / gains[gains > 0].mean(), 0, 3)
    np.testing.assert_allclose(w, np.r_[expected, expected], rtol=1e-6)
    assert w[1] == 0 and w[3] == 0 and w[4] > w[2] > w[0]  # the stall and the reversal are never cloned
    assert demo_bc_weights(OmegaConf.create({"pretrain": {"bc_weighting": "none"}}), [rec], [terms]) is None


class Recorder:
    """An agent whose BC step records the observations it was given."""

    device = torch.device("cpu")
    cfg = types.SimpleNamespace(proposal=False)

    def __init__(self):
        self.seen = []

    def bc_update(self, obs, action):
        self.seen += obs[:, 0].tolist()
        return 0.0


def test_the_warm_start_draws_rows_in_proportion_to_their_weight():
    buf = ReplayBuffer(2, 1, capacity=100)
    t = np.arange(6, dtype=np.float32)
    buf.add_episode(np.stack([t, t], 1), np.zeros((5, 1)), np.zeros(5), np.zeros(5))  # rows 0..4: obs[:, 0] = row
    weights = np.array([1.0, 0.0, 3.0, 0.0, 0.0])
    agent = Recorder()
    bc_warm_start(agent, buf, steps=200, batch_size=20, rng=np.random.default_rng(0), weights=weights)
    counts = np.bincount(np.array(agent.seen, int), minlength=5)
    assert counts[1] == counts[3] == counts[4] == 0
    assert 2.5 < counts[2] / counts[0] < 3.5  # 4000 draws, expected 3
    with pytest.raises(ValueError, match="one non-negative weight per row"):
        bc_warm_start(agent, buf, steps=1, batch_size=2, rng=np.random.default_rng(0), weights=np.ones(3))


def test_progress_weighting_needs_a_progress_potential():
    from hydra import compose, initialize_config_module

    from policies.config import TrainConfigError, check_config

    with initialize_config_module(config_module="configs", version_base="1.3"):
        with pytest.raises(TrainConfigError, match="reward.shaping=progress"):
            check_config(compose(config_name="train", overrides=["pretrain.bc_weighting=progress", "reward.shaping=none"]))
        with pytest.raises(TrainConfigError, match="none or progress"):
            check_config(compose(config_name="train", overrides=["pretrain.bc_weighting=sarm"]))
        check_config(compose(config_name="train", overrides=["pretrain.bc_weighting=progress"]))
