"""Pre-training options of stepwise-train: the workspace translation of cloned states
(pretrain.translate) and Cal-QL pre-training of the critics alone (pretrain.critic_only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policies.augment import translate_xy
from policies.networks import StateFeatures
from policies.pretrain import bc_warm_start, calql_pretrain
from policies.replay import ReplayBuffer
from policies.sac import SAC, SACConfig

HAND, OBJ, GOAL = StateFeatures.HAND, StateFeatures.OBJ1, StateFeatures.GOAL


def reach_states(n: int, rng: np.random.Generator, x_range: tuple[float, float]) -> np.ndarray:
    """n Meta-World-shaped states (39-d, no second object): hand and object with x in ``x_range``,
    the previous frame equal to the current one, a goal beside the object."""
    s = np.zeros((n, 39), np.float32)
    s[:, 0] = rng.uniform(*x_range, n)
    s[:, 1] = rng.uniform(0.55, 0.65, n)
    s[:, 2] = 0.15
    s[:, 3] = 1.0
    s[:, 4] = s[:, 0] + rng.uniform(-0.08, 0.08, n)
    s[:, 5] = s[:, 1] + rng.uniform(-0.08, 0.08, n)
    s[:, 6] = 0.02
    s[:, 7] = 1.0  # the quaternion
    s[:, 18:36] = s[:, 0:18]
    s[:, 36:39] = s[:, 4:7] + np.array([0.0, 0.2, 0.1], np.float32)
    return s


def expert(states: np.ndarray) -> np.ndarray:
    """A translation-invariant expert: move the hand towards the object in the table plane."""
    a = np.zeros((len(states), 4), np.float32)
    a[:, :2] = np.clip((states[:, 4:6] - states[:, 0:2]) * 10.0, -0.9, 0.9)
    return a


def test_translation_moves_every_position_by_one_offset_and_keeps_the_rest():
    s = torch.as_tensor(reach_states(64, np.random.default_rng(0), (-0.1, 0.1)))
    out = translate_xy(s, 0.05, torch.Generator().manual_seed(0))
    shift = out[:, 0:2] - s[:, 0:2]
    assert shift.abs().max() <= 0.05 and shift.abs().max() > 0.03 and shift.std(0).min() > 0.01
    for i in (4, 18, 22, 36):  # object, previous hand and object, goal: the same offset as the hand
        torch.testing.assert_close(out[:, i:i + 2] - s[:, i:i + 2], shift)
    z_and_rest = [c for c in range(39) if c not in (0, 1, 4, 5, 11, 12, 18, 19, 22, 23, 29, 30, 36, 37)]
    assert torch.equal(out[:, z_and_rest], s[:, z_and_rest])  # heights, gripper, quaternions, the absent object 2
    assert torch.equal(out[:, 11:14], torch.zeros(64, 3))
    torch.testing.assert_close(out[:, OBJ] - out[:, HAND], s[:, OBJ] - s[:, HAND])
    torch.testing.assert_close(out[:, GOAL] - out[:, OBJ], s[:, GOAL] - s[:, OBJ])
    with pytest.raises(ValueError, match="39-d state.*pretrain.translate=0"):
        translate_xy(torch.zeros(4, 12), 0.05)


def bc_error_beyond_the_demonstrations(translate: float) -> float:
    """BC on states with x in [0, 0.05]; mean |action error| on states with x in [-0.15, -0.10]."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    obs = reach_states(400, rng, (0.0, 0.05))
    buf = ReplayBuffer(39, 4, capacity=1000)
    buf.add_batch(obs, expert(obs), np.zeros(400), obs, np.zeros(400))
    agent = SAC(39, 4, SACConfig(hidden_sizes=(64, 64), state_features="raw"))
    bc_warm_start(agent, buf, steps=800, batch_size=64, rng=rng, translate=translate)
    far = reach_states(200, np.random.default_rng(1), (-0.15, -0.10))
    with torch.no_grad():
        mean, _ = agent.actor(torch.as_tensor(far))
    return float((torch.tanh(mean).numpy() - expert(far))[:, :2].__abs__().mean())


def test_translated_cloning_generalises_beyond_the_demonstrated_placements():
    plain, translated = bc_error_beyond_the_demonstrations(0.0), bc_error_beyond_the_demonstrations(0.2)
    assert translated < 0.6 * plain, (plain, translated)  # measured: 0.54 against 0.28


def test_critic_only_pretraining_fits_the_critics_and_leaves_the_cloned_actor_alone():
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    buf = ReplayBuffer(39, 4, capacity=2000)
    for _ in range(10):  # 10 episodes of 20 steps towards the object; success reward at the end
        obs = reach_states(21, rng, (0.0, 0.05))
        obs[-2, 3] = -1.0  # the state before success is told apart by its gripper reading
        buf.add_episode(obs, expert(obs[:-1]), np.r_[np.zeros(19), 10.0], np.r_[np.zeros(19), 1.0],
                        mc_return=10.0 * 0.99 ** np.arange(19, -1, -1))
    agent = SAC(39, 4, SACConfig(hidden_sizes=(64, 64), batch_size=32, utd_ratio=2))
    bc_warm_start(agent, buf, steps=50, batch_size=32, rng=rng)
    actor = {k: v.clone() for k, v in agent.actor.state_dict().items()}
    log_alpha = agent.log_alpha.detach().clone()
    critic = {k: v.clone() for k, v in agent.critic.state_dict().items()}
    calql_pretrain(agent, buf, steps=200, batch_rows=64, rng=rng, critic_only=True)
    assert all(torch.equal(actor[k], v) for k, v in agent.actor.state_dict().items())
    assert torch.equal(agent.log_alpha.detach(), log_alpha)
    assert any(not torch.equal(critic[k], v) for k, v in agent.critic.state_dict().items())
    b = buf.sample(256, rng, agent.device)
    with torch.no_grad():  # the critics now rank a terminal success row above the others
        q = agent.critic(b["obs"], b["action"]).mean(0)
    final = b["terminated"] > 0
    assert final.any() and q[final].mean() > q[~final].mean() + 1.0


def test_the_options_are_refused_where_they_cannot_apply():
    from hydra import compose, initialize_config_module

    from policies.config import TrainConfigError, check_config

    with initialize_config_module(config_module="configs", version_base="1.3"):
        with pytest.raises(TrainConfigError, match="policy=state"):
            check_config(compose(config_name="train", overrides=["pretrain.translate=0.05", "policy=image"]))
        with pytest.raises(TrainConfigError, match="non-negative"):
            check_config(compose(config_name="train", overrides=["pretrain.translate=-0.1"]))
        check_config(compose(config_name="train", overrides=["pretrain.translate=0.05", "pretrain.critic_only=true"]))
