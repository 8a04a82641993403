"""Replay for state-based SAC: a numpy ring buffer, RLPD's symmetric offline/online mixing, and
demonstrations loaded from an episode store.

Every sampler returns the batch contract of `policies.sac` (float32 torch tensors):
obs (n, S), action (n, A), reward (n,), next_obs (n, S), terminated (n,) 1.0 only at true
terminals (a time-limit truncation is not terminal and is stored as terminated = 0), and
mc_return (n,): the discounted return-to-go the row's episode actually collected (Cal-QL's
lower bound; -inf where none was given), horizon (n,): the env steps the row spans (1, or up to
n_step for a buffer of n-step transitions; the critic discounts its bootstrap by gamma ** horizon).
`MixedReplay` adds demo (n,): 1.0 on rows drawn from the offline buffer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Callable

import numpy as np
import torch

__all__ = ["ReplayBuffer", "MixedReplay", "load_offline", "discounted_returns", "n_step_transitions", "success_cut"]

_FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "mc_return", "horizon")


def discounted_returns(rewards: np.ndarray, gamma: float, bootstrap: float = 0.0) -> np.ndarray:
    """G_t = r_t + gamma * G_{t+1} over one episode, with G_T = ``bootstrap`` (0 after a true
    terminal; after a time limit, a lower bound on the value of the last state). float32 (T,)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    out = np.empty(len(rewards))
    g = float(bootstrap)
    for t in range(len(rewards) - 1, -1, -1):
        g = rewards[t] + gamma * g
        out[t] = g
    return out.astype(np.float32)


def n_step_transitions(rewards: np.ndarray, n: int, gamma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An episode's n-step transitions: row t sums r_t + gamma r_{t+1} + ... over m = min(n, T - t)
    steps and bootstraps from observation t + m with gamma ** m. Returns (rewards float32 (T,),
    index of the next observation int (T,), horizon m float32 (T,)). A sum of potential-based
    shaping terms telescopes to gamma^m Phi(s_{t+m}) - Phi(s_t): the shaping stays potential-based."""
    rewards = np.asarray(rewards, np.float64)
    T = len(rewards)
    t = np.arange(T)
    m = np.minimum(n, T - t)
    out = np.zeros(T)
    for k in range(n):
        live = k < m
        out[live] += gamma ** k * rewards[t[live] + k]
    return out.astype(np.float32), t + m, m.astype(np.float32)


def success_cut(success: np.ndarray) -> tuple[int, bool]:
    """(transitions kept, terminated): collectors keep stepping after success, so an episode ends
    at its FIRST success step, which is a true terminal; without success all steps are kept."""
    success = np.asarray(success, dtype=np.float32) > 0.5
    if success.any():
        return int(np.argmax(success)) + 1, True
    return len(success), False


class ReplayBuffer:
    """Fixed-capacity FIFO of transitions in preallocated float32 numpy arrays.

    Args:
        obs_dim: S, length of a flat observation.
        act_dim: A, length of an action.
        capacity: most transitions kept; when full the oldest are overwritten.
        n_step: `add_episode` stores n-step transitions (1: one-step).
        gamma: the discount of the n-step rewards (the agent's).
    """

    def __init__(self, obs_dim: int, act_dim: int, capacity: int, n_step: int = 1, gamma: float = 0.99) -> None:
        if obs_dim < 1 or act_dim < 1 or capacity < 1 or n_step < 1:
            raise ValueError(f"obs_dim, act_dim, capacity and n_step must be >= 1, got {obs_dim}, {act_dim}, {capacity}, {n_step}")
        self.obs_dim, self.act_dim, self.capacity = int(obs_dim), int(act_dim), int(capacity)
        self.n_step, self.gamma = int(n_step), float(gamma)
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.action = np.zeros((capacity, act_dim), np.float32)
        self.reward = np.zeros((capacity,), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.terminated = np.zeros((capacity,), np.float32)
        self.mc_return = np.full((capacity,), -np.inf, np.float32)
        self.horizon = np.ones((capacity,), np.float32)
        self.pos = 0  # next row to write
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, obs: np.ndarray, action: np.ndarray, reward: float, next_obs: np.ndarray, terminated: bool,
            mc_return: float = -np.inf) -> None:
        """Add one transition. ``terminated``: true terminal only (pass False on time-limit truncation)."""
        self.add_batch(
            np.asarray(obs)[None], np.asarray(action)[None], np.asarray([reward]), np.asarray(next_obs)[None],
            np.asarray([terminated]), np.asarray([mc_return]),
        )

    def add_batch(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, next_obs: np.ndarray,
                  terminated: np.ndarray, mc_return: np.ndarray | None = None,
                  horizon: np.ndarray | None = None) -> None:
        """Add N transitions: obs/next_obs (N, S), action (N, A), reward (N,), terminated (N,) bool or 0/1,
        mc_return (N,) or None (unknown: -inf, no Cal-QL bound), horizon (N,) or None (one-step rows)."""
        if mc_return is None:
            mc_return = np.full(len(np.asarray(reward)), -np.inf, np.float32)
        if horizon is None:
            horizon = np.ones(len(np.asarray(reward)), np.float32)
        rows = {"obs": obs, "action": action, "reward": reward, "next_obs": next_obs, "terminated": terminated,
                "mc_return": mc_return, "horizon": horizon}
        rows = {k: np.asarray(v, dtype=np.float32) for k, v in rows.items()}
        n = rows["obs"].shape[0]
        for k, v in rows.items():
            want = (n, *getattr(self, k).shape[1:])
            if v.shape != want:
                raise ValueError(f"add_batch: {k} has shape {v.shape}, expected {want}")
        if n > self.capacity:  # only the newest `capacity` rows would survive anyway
            rows = {k: v[-self.capacity:] for k, v in rows.items()}
            n = self.capacity
        idx = (self.pos + np.arange(n)) % self.capacity
        for k, v in rows.items():
            getattr(self, k)[idx] = v
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def sample(self, n: int, rng: np.random.Generator, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """n transitions drawn uniformly with replacement, as float32 torch tensors on ``device``."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty ReplayBuffer: add transitions first")
        idx = rng.integers(0, self.size, size=n)
        return {k: torch.as_tensor(getattr(self, k)[idx], device=device) for k in _FIELDS}

    def add_episode(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray, terminated: np.ndarray,
                    mc_return: np.ndarray | None = None) -> None:
        """Add one episode: obs (T+1, S), action (T, A), reward (T,), terminated (T,), mc_return (T,) or
        None; as one-step transitions, or with ``n_step`` > 1 as n-step ones (`n_step_transitions`)."""
        obs = np.asarray(obs, np.float32)
        if self.n_step == 1:
            self.add_batch(obs[:-1], action, reward, obs[1:], terminated, mc_return)
            return
        rewards, next_idx, horizon = n_step_transitions(reward, self.n_step, self.gamma)
        done = np.asarray(terminated, np.float32)[next_idx - 1]  # a true terminal can only be the episode's last step
        self.add_batch(obs[:-1], action, rewards, obs[next_idx], done, mc_return, horizon)

    def rows(self) -> dict[str, np.ndarray]:
        """Copies of the filled rows, oldest first, by field (what `add_rows` takes back)."""
        order = (np.arange(self.size) + (self.pos - self.size)) % self.capacity
        return {k: getattr(self, k)[order] for k in _FIELDS}

    def add_rows(self, rows: Mapping[str, np.ndarray]) -> None:
        """Append rows given by field, as `rows` returns them (``mc_return`` optional)."""
        self.add_batch(*(rows[k] for k in _FIELDS[:5]), rows.get("mc_return"), rows.get("horizon"))

    def save(self, path: str | os.PathLike) -> None:
        """Write the filled rows (oldest first) and the capacity to a compressed .npz."""
        np.savez_compressed(path, capacity=self.capacity, **self.rows())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ReplayBuffer":
        """Read a buffer written by `save` (same capacity, rows in the same order)."""
        with np.load(path) as z:
            missing = [k for k in (*_FIELDS, "capacity") if k not in z and k not in ("mc_return", "horizon")]
            if missing:
                raise ValueError(f"{str(path)!r} lacks {missing}: not written by ReplayBuffer.save")
            buf = cls(z["obs"].shape[1], z["action"].shape[1], int(z["capacity"]))
            buf.add_rows(z)
        return buf


class MixedReplay:
    """RLPD's symmetric sampling: each batch takes ``offline_fraction`` of its rows from ``offline``
    (demonstrations) and the rest from ``online``; all rows come from ``offline`` while ``online`` is empty.

    Batches carry ``demo`` (n,) = 1.0 on the offline rows (the behaviour-cloning mask of `SAC.update`).
    """

    def __init__(self, offline: ReplayBuffer, online: ReplayBuffer, offline_fraction: float = 0.5) -> None:
        if not 0.0 <= offline_fraction <= 1.0:
            raise ValueError(f"offline_fraction must be in [0, 1], got {offline_fraction}")
        if self.spec(offline) != self.spec(online):
            raise ValueError(
                f"offline buffer is {self.spec(offline)} but online is {self.spec(online)}: {self.mismatch_hint}"
            )
        self.offline, self.online, self.offline_fraction = offline, online, float(offline_fraction)

    mismatch_hint = "build both with the same (obs_dim, act_dim)"

    @staticmethod
    def spec(buffer) -> tuple:
        """What the two buffers must share."""
        return ("obs", buffer.obs_dim, "act", buffer.act_dim)

    def __len__(self) -> int:
        return len(self.offline) + len(self.online)

    def sample(self, n: int, rng: np.random.Generator, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """n rows: round(n * offline_fraction) offline then the rest online (all offline if online is empty)."""
        n_off = n if len(self.online) == 0 else int(round(n * self.offline_fraction))
        if n_off > 0 and len(self.offline) == 0:
            raise ValueError("offline buffer is empty: load demonstrations, or use offline_fraction=0")
        parts = []
        if n_off > 0:
            parts.append(self.offline.sample(n_off, rng, device))
        if n - n_off > 0:
            parts.append(self.online.sample(n - n_off, rng, device))
        batch = concat_batches(parts)
        batch["demo"] = (torch.arange(n, device=device) < n_off).float()
        return batch


def concat_batches(parts: list[dict]) -> dict:
    """Concatenate batches row-wise, recursing into dict observations (image batches)."""
    return {k: concat_batches([p[k] for p in parts]) if isinstance(v, dict) else torch.cat([p[k] for p in parts])
            for k, v in parts[0].items()}


def store_files(path: Path) -> list[Path]:
    """The .hdf5 files at ``path``: the file itself, or every *.hdf5 in a directory (sorted)."""
    if path.is_dir():
        files = sorted(path.glob("*.hdf5"))
        if not files:
            raise FileNotFoundError(f"no *.hdf5 episode store in directory {str(path)!r}; pass the store file")
        return files
    if not path.exists():
        raise FileNotFoundError(f"episode store {str(path)!r} does not exist; collect demos with stepwise-collect")
    return [path]


def load_offline(
    store_path: str | os.PathLike,
    obs_key: str = "state",
    reward_fn: Callable[..., np.ndarray] | None = None,
    capacity: int | None = None,
    gamma: float | None = None,
) -> ReplayBuffer:
    """Transitions (obs[t], actions[t], reward[t], obs[t+1], terminated[t]) of every episode in a store.

    Args:
        store_path: an episode store (.hdf5), or a directory whose *.hdf5 stores are all read
            (``stepwise-collect out=DIR`` writes one per task there).
        obs_key: the episode's flat observation array, ``state`` (privileged sim state) or ``proprio``.
        reward_fn: ``episode -> float (T,)`` rewards for its T actions (e.g. success scaled, or a
            shaped reward); default: the store's ``rewards``.
        capacity: buffer capacity; default exactly the number of transitions loaded.
        gamma: when given, rows carry ``mc_return``, the discounted return-to-go of the kept
            rewards (0 after the terminal; after a time limit the sum so far, exact for rewards >= 0).

    Termination: collectors keep stepping after success, so an episode is cut at its FIRST step
    with ``infos["success"][t] > 0.5``; that transition is terminated = 1 and the later ones are
    dropped. Actions are clipped to [-1, 1]. Episodes without a success step (or without ``infos["success"]``) keep all their
    transitions, none terminal: their end was a time limit, which bootstraps. ``dones`` is not
    read, because it does not separate success from the time limit.
    """
    from episodes.store import EpisodeStore  # imported here: only this loader needs h5py

    columns: dict[str, list[np.ndarray]] = {k: [] for k in _FIELDS[:6]}
    for file in store_files(Path(store_path)):
        store = EpisodeStore(file, cameras=[])  # no images: state-based
        try:
            for i in range(len(store)):
                ep = store[i]
                obs = getattr(ep, obs_key, None)
                if obs_key not in ("state", "proprio") or obs is None:
                    raise ValueError(
                        f"episode {i} of {str(file)!r} has no {obs_key!r} observations; use obs_key='state' "
                        "(simulation stores) or 'proprio'"
                    )
                T = ep.num_steps
                reward = np.asarray(ep.rewards if reward_fn is None else reward_fn(ep), np.float32)
                if reward.shape != (T,):
                    raise ValueError(f"reward_fn returned shape {reward.shape} for episode {i}; expected ({T},)")
                end, solved = success_cut(ep.infos.get("success", np.zeros(T)))  # transitions kept: [0, end)
                terminated = np.zeros(end, np.float32)
                terminated[-1] = float(solved)
                columns["obs"].append(obs[:end])
                columns["action"].append(np.clip(ep.actions[:end], -1.0, 1.0))  # the actor's range
                columns["reward"].append(reward[:end])
                columns["next_obs"].append(obs[1 : end + 1])
                columns["terminated"].append(terminated)
                columns["mc_return"].append(
                    discounted_returns(reward[:end], gamma) if gamma is not None else np.full(end, -np.inf, np.float32)
                )
        finally:
            store.close()
    if not columns["obs"]:
        raise ValueError(f"episode store {str(store_path)!r} holds no episodes; collect some first")
    data = {k: np.concatenate(v) for k, v in columns.items()}
    n = len(data["obs"])
    buf = ReplayBuffer(data["obs"].shape[1], data["action"].shape[1], capacity or n)
    buf.add_batch(*(data[k] for k in _FIELDS[:6]))
    return buf
