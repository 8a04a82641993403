"""Shaping on a small tabular MDP, solved exactly: what `shape_rewards` promises about the optimal policy.

The corridor (actions left / stay / right; with probability SLIP an action does nothing):

    decoy(0) - start(1) - mid(2) - near(3) - goal(4)

Entering ``goal`` pays +10 and ends the episode at a TRUE terminal. Every other step pays 0, so the
true optimum walks right everywhere. The potential rises towards the goal, but the reward model is
fooled by ``decoy``, a dead end at the far side it scores almost as finished (Phi 0.95): the
lingering state a learner could sit in forever. Phi(goal) = 1 is never used, because shaping takes
Phi(s') = 0 at true terminals.
"""

import numpy as np
import pytest

from reward_models.shaping import shape_rewards

NAMES = ("decoy", "start", "mid", "near", "goal")
DECOY, START, MID, NEAR, GOAL = range(5)
LEFT, STAY, RIGHT = range(3)
PHI = np.array([0.95, 0.1, 0.4, 0.7, 1.0])  # the reward model's progress: high near the goal AND at the decoy
GOAL_REWARD = 10.0
GAMMA = 0.9  # the agent's discount
WEIGHT = 10.0  # lambda: shaping as large as the task reward, as in practice with progress in [0, 1]
SLIP = 0.1


def transitions() -> list[tuple[int, int, float, int, float, bool]]:
    """The model as rows (s, a, P(s'|s,a), s', r, terminated) for every non-terminal s."""
    rows = []
    for s in range(GOAL):
        for a, move in zip((LEFT, STAY, RIGHT), (-1, 0, 1)):
            target = min(max(s + move, DECOY), GOAL)  # walls at both ends
            for s2, p in ((target, 1.0 - SLIP), (s, SLIP)):
                rows.append((s, a, p, s2, GOAL_REWARD if s2 == GOAL else 0.0, s2 == GOAL))
    return rows


def shaped(rows, gamma_shaping: float, weight: float = WEIGHT) -> list[float]:
    """r' of every row, each computed by `shape_rewards` as a one-step episode."""
    return [
        float(shape_rewards([r], [PHI[s], PHI[s2]], [term], gamma=gamma_shaping, weight=weight).reward[0])
        for s, _, _, s2, r, term in rows
    ]


def value_iteration(rows, rewards: list[float], gamma: float = GAMMA, tol: float = 1e-10) -> np.ndarray:
    """Optimal Q (4 non-terminal states, 3 actions), float64: Q = sum_s' P [r + gamma (1 - terminated) V(s')]."""
    q = np.zeros((GOAL, 3))
    for _ in range(10_000):
        v = np.r_[q.max(axis=1), 0.0]  # V(goal) is never bootstrapped: entering it is terminal
        new = np.zeros_like(q)
        for (s, a, p, s2, _, term), r in zip(rows, rewards):
            new[s, a] += p * (r + gamma * (1.0 - term) * v[s2])
        if np.abs(new - q).max() < tol:
            return new
        q = new
    raise AssertionError("value iteration did not converge")


def test_discounted_shaping_keeps_the_optimal_policy():
    """Ng et al.: with r' = r + lambda (gamma Phi(s') - Phi(s)) and Phi = 0 at terminals, Q' = Q - lambda Phi(s),
    a per-state offset, so every state's greedy action is unchanged, decoy included."""
    rows = transitions()
    q = value_iteration(rows, [r for *_, r, _ in rows])
    q_shaped = value_iteration(rows, shaped(rows, gamma_shaping=GAMMA))

    assert list(q.argmax(axis=1)) == [RIGHT] * 4  # sanity: the true optimum walks to the goal from everywhere
    np.testing.assert_array_equal(q_shaped.argmax(axis=1), q.argmax(axis=1))
    np.testing.assert_allclose(q_shaped, q - WEIGHT * PHI[:GOAL, None], atol=1e-4)  # float32 rewards
    # the identity needs Phi(s') = 0 at the terminal: with Phi(goal) = 1 kept, entering the goal would be
    # worth lambda * gamma * Phi(goal) more, and the check above would fail for every (s, right) near it


def _episodes(time_limit: int, num: int, seed: int = 0):
    """Uniform-random behaviour from random non-goal starts, cut by `time_limit` (a truncation) or the goal."""
    rng = np.random.default_rng(seed)
    for _ in range(num):
        s, states, actions, rewards, terminated = int(rng.integers(GOAL)), [], [], [], []
        states.append(s)
        for _ in range(time_limit):
            a = int(rng.integers(3))
            s2 = min(max(s + (a - 1), DECOY), GOAL) if rng.random() > SLIP else s
            actions.append(a)
            rewards.append(GOAL_REWARD if s2 == GOAL else 0.0)
            terminated.append(s2 == GOAL)
            states.append(s2)
            s = s2
            if s == GOAL:
                break
        yield np.array(states), np.array(actions), np.array(rewards), np.array(terminated)


def _replay_fixed_point(data: list[tuple[int, int, float, int, bool]]) -> np.ndarray:
    """What a tabular off-policy learner converges to on a replay of (s, a, r', s', terminated) rows: value
    iteration on the empirical model. A truncation row is terminated = False, so it bootstraps."""
    rows, rewards = [], []
    counts = np.zeros((GOAL, 3))
    for s, a, *_ in data:
        counts[s, a] += 1
    assert counts.min() > 0, "the behaviour data must cover every (state, action)"
    for s, a, r, s2, term in data:
        rows.append((s, a, 1.0 / counts[s, a], s2, r, term))
        rewards.append(r)
    return value_iteration(rows, rewards)


def test_time_limits_keep_the_real_next_potential():
    """A time limit is not a terminal: the learner bootstraps through it, so shaping must keep Phi(s') there.

    Episodes of at most 4 steps go into a replay; each is shaped by one `shape_rewards` call with
    terminated True only on entering the goal. The replay's fixed point then obeys Q' = Q - lambda Phi(s)
    exactly. Zeroing Phi(s') at the time limit too (passing the truncation as terminated to shaping while
    still bootstrapping) charges an extra -lambda gamma Phi(s') on every cut step, which no per-state offset
    absorbs: the identity breaks (by up to 4.7 here, through bootstrapping), always downwards.
    """
    plain, right, wrong = [], [], []
    for states, actions, rewards, terminated in _episodes(time_limit=4, num=600):
        cut = np.zeros_like(terminated)
        cut[-1] = not terminated[-1]  # the last step of an episode that did not reach the goal: a time limit
        good = shape_rewards(rewards, PHI[states], terminated, gamma=GAMMA, weight=WEIGHT).reward
        bad = shape_rewards(rewards, PHI[states], terminated | cut, gamma=GAMMA, weight=WEIGHT).reward
        for t, a in enumerate(actions):
            s, s2, term = int(states[t]), int(states[t + 1]), bool(terminated[t])  # replay stores the TRUE terminal
            plain.append((s, int(a), float(rewards[t]), s2, term))
            right.append((s, int(a), float(good[t]), s2, term))
            wrong.append((s, int(a), float(bad[t]), s2, term))

    q, q_right, q_wrong = (_replay_fixed_point(d) for d in (plain, right, wrong))
    offset = WEIGHT * PHI[:GOAL, None]
    np.testing.assert_allclose(q_right, q - offset, atol=1e-4)
    np.testing.assert_array_equal(q_right.argmax(axis=1), q.argmax(axis=1))
    error = q_wrong - (q - offset)
    assert error.max() < 1e-4  # zeroing only ever removes value ...
    assert error.min() < -1.0  # ... and by a lot: the learner is told the time limit is a cliff


def test_undiscounted_shaping_with_a_discounted_agent_lingers_at_the_decoy():
    """The semantic trap: the naive difference Phi(s') - Phi(s) (shaping gamma 1) with an agent gamma < 1.

    Naive shaping pays the whole rise lambda (Phi(decoy) - Phi(start)) = 8.5 the moment the agent steps
    into the decoy, and charges nothing for staying (Phi(s') - Phi(s) = 0 on a self-loop). Every penalty
    for leaving a high-Phi state comes later and is discounted by gamma^k, and the largest one,
    -lambda Phi(near) on entering the goal (Phi = 0 at terminals), is paid exactly when the task is done.
    So from the start, going to sit at the decoy forever is worth 8.4 (8.5 less the cost of slips), more
    than walking to the goal (8.0): the naive agent never finishes the task.
    Discounted shaping charges a per-step rent lambda (gamma - 1) Phi(s) for every step spent in s, whose
    discounted sum over forever is -lambda Phi(s): the entry bonus is paid back, and the trap is gone.
    """
    rows = transitions()
    q = value_iteration(rows, [r for *_, r, _ in rows])
    q_naive = value_iteration(rows, shaped(rows, gamma_shaping=1.0))
    q_right = value_iteration(rows, shaped(rows, gamma_shaping=GAMMA))

    assert q[START].argmax() == RIGHT and q_right[START].argmax() == RIGHT
    # naive: from the start the agent walks AWAY from the goal, to the decoy, and stays there
    assert q_naive[START, LEFT] > q_naive[START, RIGHT] + 0.3, NAMES[START]
    assert max(q_naive[DECOY, LEFT], q_naive[DECOY, STAY]) > q_naive[DECOY, RIGHT] + 0.5, NAMES[DECOY]
    assert q_naive[DECOY, STAY] == pytest.approx(0.0, abs=1e-4)  # lingering forever: no reward, no rent
    assert q_right[DECOY, STAY] < q_right[DECOY, RIGHT]  # with the rent, lingering is a loss
    # the naive greedy policy never finishes from the start: the goal is unreachable under it
    policy = q_naive.argmax(axis=1)
    reachable, frontier = {START}, [START]
    while frontier:
        s = frontier.pop()
        for s0, a, p, s2, _, _ in rows:
            if s0 == s and a == policy[s] and p > 0 and s2 not in reachable:
                reachable.add(s2)
                if s2 != GOAL:
                    frontier.append(s2)
    assert GOAL not in reachable and DECOY in reachable
