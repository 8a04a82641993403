"""stepwise-train's episodes: one online episode that updates the agent every step, and the
deterministic evaluation on the eval split, and the history row of an episode."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from policies.episode import EpisodeRecord, PolicyView, state_view
from policies.rewards import is_hacking


def evaluate(agent, env, seeds: list[int], observe: Callable[[Mapping], Any] = state_view) -> dict:
    """Deterministic episodes on ``env`` (eval split): success rate and lengths. ``observe``: env
    observation -> the policy's input (`state_view`, or the image policy's `PolicyView`).

    ``env`` may be a gymnasium vector env (``eval.workers`` > 1: `real.make_vec_env`): its N copies
    then play N of the seeds at a time, each episode reset with its own seed and acted on alone,
    so the result is the same for any N."""
    import gymnasium as gym

    if isinstance(env, gym.vector.VectorEnv):
        successes, lengths = _evaluate_vector(agent, env, seeds, observe)
    else:
        successes, lengths = [], []
        for s in seeds:
            obs, _ = env.reset(seed=int(s))
            done, steps, success = False, 0, False
            while not done:
                obs, _, term, trunc, info = env.step(agent.act(observe(obs), deterministic=True))
                steps += 1
                success = success or bool(info["sim/success"])
                done = term or trunc
            successes.append(success)
            lengths.append(steps)
    return {"success_rate": float(np.mean(successes)), "episodes": len(seeds), "mean_length": float(np.mean(lengths))}


def _row(tree, i: int):
    """Env ``i``'s observation out of a vector env's batched (nested dict) observation."""
    return {k: _row(v, i) for k, v in tree.items()} if isinstance(tree, Mapping) else tree[i]


def _evaluate_vector(agent, vec, seeds: list[int], observe) -> tuple[list[bool], list[int]]:
    """The seeds in waves of ``vec.num_envs`` episodes; an env whose episode ended idles (zero
    actions, its auto-reset ignored) until the wave's last episode ends."""
    n = vec.num_envs
    successes, lengths = [], []
    for start in range(0, len(seeds), n):
        wave = [int(s) for s in seeds[start:start + n]]
        obs, _ = vec.reset(seed=wave + [wave[-1]] * (n - len(wave)))  # spare envs replay the last seed
        live = np.arange(n) < len(wave)
        steps, success = np.zeros(n, dtype=int), np.zeros(n, dtype=bool)
        while live.any():
            action = np.zeros((n, *vec.single_action_space.shape), dtype=np.float32)
            for i in np.flatnonzero(live):
                action[i] = agent.act(observe(_row(obs, i)), deterministic=True)
            obs, _, term, trunc, info = vec.step(action)
            ended = term | trunc
            # an env that ended was reset in the same step: its last info is under "final_info"
            last = info.get("final_info", {}).get("sim/success", np.zeros(n))
            now = np.where(ended, np.asarray(last, dtype=float), np.asarray(info["sim/success"], dtype=float))
            steps[live] += 1
            success[live] |= now.astype(bool)[live]
            live &= ~ended
        successes += success[: len(wave)].tolist()
        lengths += steps[: len(wave)].tolist()
    return successes, lengths


def run_episode(cfg, env, agent, replay, rng, state, batch_rows: int, cameras: list[str],
                view: PolicyView | None = None, keep: Sequence[str] = ()):
    """One online episode: act, update every step, and keep what the reward pipeline needs.

    ``state``: the run's counters (``episode`` seeds the reset, ``env_steps`` is advanced).
    ``cameras``: frames kept for the reward model. ``view``: the image policy's (None: the state policy).
    ``keep``: cameras whose frames (with proprio, simulator signals and the end) the online store keeps."""
    observe = view if view is not None else state_view
    seed = cfg.seed * 100_000 + state.episode
    obs, info = env.reset(seed=seed)
    seen, actions, rewards, terms = [observe(obs)], [], [], []
    frames = {c: [obs["images"][c]] for c in dict.fromkeys([*cameras, *keep])}  # one list per camera, shared
    proprio, signals = [obs["proprio"]], {}
    dense = [0.0]
    success = False
    sums: dict[str, float] = {}
    n_updates = 0
    while True:
        if state.env_steps < cfg.online.random_steps:
            action = rng.uniform(-1, 1, agent.act_dim).astype(np.float32)
        else:
            action = agent.act(seen[-1])
        obs, reward, terminated, truncated, info = env.step(action)
        state.env_steps += 1
        seen.append(observe(obs))
        actions.append(info["applied_action"])
        rewards.append(reward)
        terms.append(terminated)
        dense.append(info.get("sim/dense_reward", 0.0))
        proprio.append(obs["proprio"])
        for k, v in info.items():
            if k.startswith("sim/"):
                signals.setdefault(k, []).append(float(v))
        for c in frames:
            frames[c].append(obs["images"][c])
        success = success or bool(info.get("sim/success", False))
        ready = (len(replay.offline) > 0 and replay.offline_fraction > 0 or len(replay.online) > 0) \
            and state.episode >= cfg.online.warmup_episodes  # WSRL's warm-up: the first episodes only collect
        for _ in range(cfg.online.updates_per_step if ready else 0):
            out = agent.update(replay.sample(batch_rows, rng, agent.device))
            n_updates += 1
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v
        if terminated or truncated:
            break
    kept = {c: np.stack(v) for c, v in frames.items()}
    rec = EpisodeRecord(
        obs=np.asarray(seen, np.float32) if view is None else None, actions=np.asarray(actions, np.float32),
        env_rewards=np.asarray(rewards, np.float32), terminated=np.asarray(terms, bool), success=success,
        frames={c: kept[c] for c in cameras}, dense=np.asarray(dense, np.float32),
        proprio=np.asarray(proprio, np.float32), kept_frames={c: kept[c] for c in keep},
        signals={k: np.asarray(v, np.float32) for k, v in signals.items()}, truncated=bool(truncated), seed=seed)
    if view is not None:
        rec.policy_frames = {c: np.stack([s["images"][c] for s in seen]) for c in view.cameras}
    return rec, {f"agent/{k}": v / n_updates for k, v in sums.items()} if n_updates else {}


def episode_row(cfg, episode: int, rec: EpisodeRecord, terms: dict, stats: dict, imitated: bool) -> dict:
    """The history row of online episode ``episode``: its length, success, return and its terms, the
    progress it ended at and the hacking monitor's verdict, the agent's update statistics ``stats``;
    with a learned success signal, whether its verdict was a false positive or negative."""
    row = {
        "episode": episode, "length": len(rec.actions), "success": rec.success,
        "return": float(terms["reward"].sum()), "env_reward": float(terms["env_reward"].sum()),
        "shaping": float(terms["shaping"].sum()), "phi_mean": float(terms["phi"].mean()),
        "phi_next_mean": float(terms["phi_next"].mean()), "final_progress": terms["final_progress"],
        "hacking": is_hacking(terms["final_progress"], rec.success, cfg.reward.hacking_progress),
        "imitated": imitated, **stats,
    }
    if cfg.reward.source == "success_prob":
        claimed = bool(rec.terminated[-1])
        row["detector_false_positive"] = claimed and not rec.success
        row["detector_false_negative"] = (not claimed) and rec.success
    return row
