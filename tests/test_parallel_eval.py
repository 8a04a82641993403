"""Evaluation through gymnasium's vector envs (eval.workers): N simulator processes, the same result for any N."""

from __future__ import annotations

import numpy as np
import pytest

from policies.episode import state_view
from policies.loop import evaluate
from real import make_env, make_vec_env

KW = dict(cameras=[], max_episode_steps=40, terminate_on_success=True, split="eval")


class Reacher:
    """A deterministic state policy for reach: the hand moves toward the goal (the state's last 3 values)."""

    act_dim = 4

    def act(self, state: np.ndarray, deterministic: bool = False) -> np.ndarray:
        assert deterministic
        return np.clip(np.r_[25 * (state[-3:] - state[:3]), 0.0], -1, 1).astype(np.float32)


@pytest.fixture(scope="module")
def sequential():
    env = make_env("metaworld/reach", **KW)
    try:
        yield evaluate(Reacher(), env, [0, 1, 2], state_view), [evaluate(Reacher(), env, [s], state_view) for s in (0, 1, 2)]
    finally:
        env.close()


def test_two_env_processes_give_the_sequential_result(sequential):
    whole, per_seed = sequential
    assert whole["episodes"] == 3 and 0 < whole["success_rate"] <= 1  # the reacher succeeds, not always at once
    vec = make_vec_env("metaworld/reach", num_envs=2, **KW)
    try:
        res = evaluate(Reacher(), vec, [0, 1, 2], state_view)  # waves of 2 + 1 episodes
        again = evaluate(Reacher(), vec, [2], state_view)       # one episode, the spare env idles
    finally:
        vec.close()
    assert res == whole
    assert again == per_seed[2]
    assert len({r["mean_length"] for r in per_seed}) > 1  # the seeds differ, so the order of results matters


def test_eval_workers_need_the_simulator():
    from hydra import compose, initialize_config_module

    from policies.config import TrainConfigError, check_config

    with initialize_config_module(config_module="configs", version_base="1.3"):
        with pytest.raises(TrainConfigError, match="eval.workers"):
            check_config(compose(config_name="train", overrides=["eval.workers=0"]))
