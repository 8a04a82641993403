"""reward_models.wrappers: potential-based shaping and a learned success signal as gymnasium wrappers,
on a registered Stepwise env, with the shipped progress model and success classifier, under
gymnasium's env checker and in a short Stable-Baselines3 SAC run."""

import os
import warnings

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import real  # noqa: F401  (registers stepwise/<task>-v0)
import reward_models
from reward_models.shaping import episode_potentials
from reward_models.wrappers import LearnedSuccess, ProgressShaping

TASK = "stepwise/drawer-close-v0"  # an instruction both shipped models have cached


pytestmark = pytest.mark.usefixtures("one_torch_thread_per_module")  # tests/conftest.py


@pytest.fixture(scope="module")
def prm():
    return reward_models.load("general")


@pytest.fixture(scope="module")
def classifier():
    return reward_models.load("vlm-general")


def test_shaping_terms_follow_the_potential_and_the_episode_scorer(prm):
    env = ProgressShaping(gym.make(TASK, max_episode_steps=12), prm, weight=5.0, gamma=0.9)
    obs, info = env.reset(seed=0)
    frames = {c: [obs["images"][c]] for c in prm.cameras}
    phis, rng, truncated = [info["phi"]], np.random.default_rng(0), False
    while not truncated:
        obs, reward, terminated, truncated, info = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
        assert not terminated
        assert info["phi"] == pytest.approx(phis[-1])  # Phi(s) of this step = Phi(s') of the last
        assert info["shaping"] == pytest.approx(5.0 * (0.9 * info["phi_next"] - info["phi"]))
        assert reward == pytest.approx(info["env_reward"] + info["shaping"])
        phis.append(info["phi_next"])  # truncation: the real Phi(s'), not 0
        for c in prm.cameras:
            frames[c].append(obs["images"][c])
    assert len(phis) == 13
    # per-step scoring = the batched episode scorer the project's own learner uses (forward perspective)
    batched = episode_potentials(prm, {c: np.stack(v) for c, v in frames.items()}, env.instruction, perspective="forward")
    np.testing.assert_allclose(phis, batched, atol=1e-4)
    assert phis[0] == pytest.approx(0.0, abs=0.05) and max(phis) > 0.05  # it moves off the start
    # backward: towards a reference demonstration's goal (here the recorded episode, its last frame the goal)
    from episodes import Episode

    ref = Episode(images={c: np.stack(v) for c, v in frames.items()}, proprio=np.zeros((13, 4), np.float32),
                  actions=np.zeros((12, 4), np.float32), rewards=np.zeros(12, np.float32), dones=np.zeros(12, bool),
                  task="metaworld/drawer-close", instruction=env.instruction, fps=80.0, success=True, keyframes=np.array([12]))
    back = ProgressShaping(gym.make(TASK, max_episode_steps=12), prm, perspective="backward", reference=ref)
    obs, info = back.reset(seed=0)
    seen, rng = [info["phi"]], np.random.default_rng(0)
    for _ in range(2):
        seen.append(back.step(rng.uniform(-1, 1, 4).astype(np.float32))[4]["phi_next"])  # the same actions as above
    want = episode_potentials(prm, {c: v[:3] for c, v in ref.images.items()}, env.instruction, reference=ref)
    np.testing.assert_allclose(seen, want, atol=1e-4)
    with pytest.raises(ValueError, match="not potential-based"):
        ProgressShaping(env.env, prm, perspective="fused")
    with pytest.raises(ValueError, match="lacks camera"):
        ProgressShaping(gym.make(TASK, cameras=["corner"]), prm).reset(seed=0)


def test_learned_success_terminates_and_shaping_zeroes_the_terminal_potential(prm, classifier):
    inner = LearnedSuccess(gym.make(TASK), classifier, threshold=1e-6, success_reward=10.0)  # every frame is "done"
    env = ProgressShaping(inner, prm, weight=2.0, gamma=0.99)
    _, info0 = env.reset(seed=1)
    obs, reward, terminated, truncated, info = env.step(np.zeros(4, np.float32))
    assert terminated and not truncated and info["learned_success"] and info["true_success"] is False
    p = classifier.success_prob({c: obs["images"][c][None] for c in classifier.cameras}, inner.instruction)[0]
    assert info["learned_success_prob"] == pytest.approx(float(p), abs=1e-5)
    assert info["phi_next"] == 0.0 and info["env_reward"] == 10.0  # Phi(s') = 0 at a true terminal
    assert reward == pytest.approx(10.0 - 2.0 * info0["phi"])
    strict = LearnedSuccess(gym.make(TASK), classifier)  # the classifier's calibrated threshold
    assert strict.threshold == pytest.approx(classifier.cfg.threshold)
    strict.reset(seed=1)
    _, r, terminated, _, info = strict.step(np.zeros(4, np.float32))
    assert terminated == (info["learned_success_prob"] >= strict.threshold) and r == 0.0
    with pytest.raises(ValueError, match="threshold"):
        LearnedSuccess(gym.make(TASK), classifier, threshold=1.5)


def test_wrapped_env_passes_gymnasium_check_env(prm):
    env = ProgressShaping(gym.make(TASK, cameras=["corner"]).unwrapped, prm, weight=1.0, cameras=["corner"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    # the only message: check_env's note that a wrapper is not its unwrapped env
    assert [str(w.message) for w in caught if "unwrapped" not in str(w.message)] == []


def test_stable_baselines3_sac_learns_from_the_shaped_reward(prm):
    from stable_baselines3 import SAC

    class Record(gym.Wrapper):
        def __init__(self, env):
            super().__init__(env)
            self.rewards, self.shaping = [], []

        def step(self, action):
            obs, r, term, trunc, info = self.env.step(action)
            self.rewards.append(r)
            self.shaping.append(info["shaping"])
            return obs, r, term, trunc, info

    # one camera rendered and scored (the model fuses any subset of its cameras): a faster test
    env = ProgressShaping(gym.make(TASK, cameras=["corner"], max_episode_steps=40), prm, weight=5.0, gamma=0.99,
                          cameras=["corner"])
    env = Record(gym.wrappers.FlattenObservation(gym.wrappers.FilterObservation(env, ["state"])))
    agent = SAC("MlpPolicy", env, gamma=0.99, learning_starts=40, batch_size=32, buffer_size=500,
                policy_kwargs={"net_arch": [32, 32]}, seed=0, device="cpu")
    agent.learn(total_timesteps=100)
    n = agent.replay_buffer.pos
    assert n == 100 and agent._n_updates == 60
    # SAC's replay holds exactly the shaped rewards, and the episode ends are time limits (bootstrapped)
    np.testing.assert_allclose(agent.replay_buffer.rewards[:n, 0], env.rewards, rtol=1e-5, atol=1e-6)
    assert np.abs(env.shaping).max() > 0
    assert agent.replay_buffer.timeouts[:n, 0].sum() == 2 and agent.replay_buffer.timeouts[39, 0] == 1
