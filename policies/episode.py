"""What the learner keeps of an episode, and what each policy sees of an observation.

`EpisodeRecord` is one finished episode (online or a demonstration); `PolicyView` and `state_view`
turn an env observation into the image or the state policy's input; `demo_records` reads the
demonstrations as records; `add_to_replay` puts a scored record into a replay buffer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class EpisodeRecord:
    """One finished episode as the learner needs it (T actions, T+1 observations)."""

    obs: np.ndarray | None               # (T+1, S) the state policy's observations; None for the image policy
    actions: np.ndarray                  # (T, A)
    env_rewards: np.ndarray              # (T,) from the env (sparse / classifier / dense)
    terminated: np.ndarray               # (T,) true terminal after action t
    success: bool                        # simulator ground truth (never learned from with success_prob)
    frames: dict[str, np.ndarray]        # camera -> (T+1, H, W, 3), empty without a camera-based potential
    dense: np.ndarray                    # (T+1,) simulator dense reward per frame (oracle potential)
    proprio: np.ndarray | None = None    # (T+1, P) float32: the image policy's, and every online episode's
    policy_frames: dict[str, np.ndarray] = field(default_factory=dict)  # image policy: camera -> uint8 (T+1, h, w, 3)
    kept_frames: dict[str, np.ndarray] = field(default_factory=dict)  # online: env camera -> uint8 (T+1, H, W, 3)
    signals: dict[str, np.ndarray] = field(default_factory=dict)  # online: info's sim/<key> -> float32 (T,)
    truncated: bool = False              # online: ended at the time limit (else at a true terminal)
    seed: int = -1                       # online: the env seed of its reset


class PolicyView:
    """What the image policy sees of an env observation: its cameras at its image size, and proprio.

    Frames of another size (rendered for the reward model) are resized, all cameras in one call
    (`policies.image_replay.resize_frames`: bilinear, antialiased); the privileged ``state`` is never read.
    """

    def __init__(self, cameras: Sequence[str], image_size: int) -> None:
        self.cameras = [str(c) for c in cameras]
        self.image_size = (int(image_size), int(image_size))

    def frames(self, images: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """camera -> uint8 (H, W, 3) or (T, H, W, 3) at any size -> the policy's cameras at its size."""
        from policies.image_replay import resize_frames

        stack = np.stack([images[c] for c in self.cameras])  # (V, [T,] H, W, 3)
        lead = stack.shape[:-3]
        small = resize_frames(stack.reshape(-1, *stack.shape[-3:]), self.image_size)
        return dict(zip(self.cameras, small.reshape(*lead, *self.image_size, 3)))

    def __call__(self, obs: Mapping) -> dict:
        """An env observation -> ImageSAC.act's input {"images": {camera: uint8 (h, w, 3)}, "proprio": float32 (P,)}."""
        return {"images": self.frames(obs["images"]), "proprio": np.asarray(obs["proprio"], np.float32)}


def state_view(obs: Mapping) -> np.ndarray:
    """What the state policy sees: the simulator's state (S,)."""
    return obs["state"]


def demo_records(store_path: Path, cameras: list[str], success_reward: float,
                 view: PolicyView | None = None) -> list[EpisodeRecord]:
    """The demonstrations as episode records, cut at their first success (a true terminal).

    ``cameras``: frames for the reward model, as stored. ``view`` (the image policy): the records
    carry its frames resized to its size and the proprio instead of the state."""
    from episodes import EpisodeStore
    from policies.replay import success_cut

    records = []
    load = list(dict.fromkeys([*cameras, *(view.cameras if view is not None else [])]))
    with EpisodeStore(store_path, cameras=load) as store:
        for i in range(len(store)):
            ep = store[i]
            end, solved = success_cut(ep.infos.get("success", np.zeros(ep.num_steps)))
            terminated = np.zeros(end, bool)
            terminated[-1] = solved
            rewards = np.where(terminated, success_reward, 0.0).astype(np.float32)
            dense = ep.infos.get("sim/dense_reward", ep.infos.get("dense_reward", np.zeros(ep.num_steps)))
            dense = np.concatenate([[0.0], np.asarray(dense, np.float32)[:end]])
            rec = EpisodeRecord(
                obs=ep.state[: end + 1] if view is None else None, actions=np.clip(ep.actions[:end], -1, 1),
                env_rewards=rewards, terminated=terminated, success=solved,
                frames={c: ep.images[c][: end + 1] for c in cameras}, dense=dense)
            if view is not None:
                rec.proprio = np.asarray(ep.proprio[: end + 1], np.float32)
                rec.policy_frames = view.frames({c: ep.images[c][: end + 1] for c in view.cameras})
            records.append(rec)
    return records


def add_to_replay(buffer, rec: EpisodeRecord, terms: dict) -> None:
    """A scored episode into replay: state transitions, or (image policy) its frames + proprio, each stored once."""
    from policies.image_replay import ImageReplayBuffer

    if isinstance(buffer, ImageReplayBuffer):
        buffer.add_episode(rec.policy_frames, rec.proprio, rec.actions, terms["reward"], rec.terminated,
                           terms["mc_return"])
    else:
        buffer.add_episode(rec.obs, rec.actions, terms["reward"], rec.terminated, terms["mc_return"])
