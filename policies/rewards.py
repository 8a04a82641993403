"""The learner's rewards from a finished episode: the sparse (or classifier's) success reward, plus
potential-based shaping from a progress model or a privileged simulator potential, with the Monte-Carlo
returns Cal-QL's bound needs; and the reward-hacking check.

Rewards: r = success_reward on the success step (a true terminal) else 0 (``reward.source=sparse``),
or from a reward model's P(done) (``success_prob``), or Meta-World's dense reward (``sim_dense``,
comparison runs only); plus lambda (gamma Phi(s') - Phi(s)) with Phi from the progress model
(``reward.shaping=progress``) or a privileged simulator potential (``oracle``, a ceiling).
The reward-hacking monitor counts training episodes whose final progress is >= 0.9 without success.
``reward=vlm_success`` (configs/reward/vlm_success.yaml + configs/train_reward/vlm_success.yaml) takes
success and termination from the VLM success classifier ``reward.success_model`` at its own threshold,
shaped by the step-PRM ``reward.model`` (or ``reward.shaping=none``); its false positives and negatives
against the simulator's success are counted in the report.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from policies.config import TrainConfigError
from policies.episode import EpisodeRecord


def success_threshold(cfg, judge) -> float:
    """``reward.success_threshold``, or (null) the success model's own threshold chosen on its validation frames."""
    if cfg.reward.success_threshold is not None:
        return cfg.reward.success_threshold
    thr = getattr(getattr(judge, "cfg", None), "threshold", None)
    if thr is None:
        raise TrainConfigError(f"reward.success_threshold=null but the success model {cfg.reward.success_model} "
                               "carries no threshold of its own: pass reward.success_threshold=<P(done) cut>")
    return float(thr)


def oracle_potential(dense_rewards: np.ndarray) -> np.ndarray:
    """Privileged potential: Meta-World's dense reward (in [0, 10]) of each frame, mapped to [0, 1].

    A ceiling for comparison only: it reads simulator state no robot has."""
    return np.clip(np.asarray(dense_rewards, np.float64) / 10.0, 0.0, 1.0).astype(np.float32)


def is_hacking(final_progress: float, success: bool, threshold: float) -> bool:
    """The reward-hacking monitor's test: the progress model rates the episode's end >= ``threshold``
    although the task did not succeed (NaN progress, no progress model: never)."""
    return bool(final_progress >= float(threshold) and not success)


class RewardPipeline:
    """Turns a finished episode into the learner's rewards, scored in ONE model call per episode."""

    def __init__(self, cfg, model, instruction: str, reference: Any = None) -> None:
        self.cfg, self.model, self.instruction, self.reference = cfg, model, instruction, reference
        self.gamma = cfg.agent.gamma

    @property
    def needs_frames(self) -> bool:
        """Camera frames are scored: progress shaping or the hacking monitor of a progress model."""
        return self.cfg.reward.shaping == "progress" or self.cfg.reward.source == "success_prob"

    def potentials(self, ep: EpisodeRecord) -> np.ndarray:
        """Phi of every frame (T+1,)."""
        from reward_models.shaping import episode_potentials

        kind = self.cfg.reward.shaping
        if kind == "progress":
            return episode_potentials(self.model, ep.frames, self.instruction, self.reference, self.cfg.reward.perspective)
        if kind == "oracle":
            return oracle_potential(ep.dense)
        return np.zeros(len(ep.actions) + 1, np.float32)

    def __call__(self, ep: EpisodeRecord) -> dict[str, np.ndarray]:
        """Shaped rewards with every term apart, plus Monte-Carlo returns of the shaped rewards."""
        from policies.replay import discounted_returns
        from reward_models.shaping import shape_rewards

        phi = self.potentials(ep)
        weight = float(self.cfg.reward.weight) if self.cfg.reward.shaping != "none" else 0.0
        shaped = shape_rewards(ep.env_rewards, phi, ep.terminated, self.gamma, weight)
        # Cal-QL's bound: the return actually collected; after a time limit the shaped future is
        # bounded below by -weight * Phi(s_T) (future env rewards >= 0, the shaping telescopes).
        tail = 0.0 if ep.terminated[-1] else -weight * float(phi[-1])
        return {
            "reward": shaped.reward, "env_reward": shaped.env_reward, "phi": shaped.phi,
            "phi_next": shaped.phi_next, "shaping": shaped.shaping,
            "mc_return": discounted_returns(shaped.reward, self.gamma, bootstrap=tail),
            "final_progress": float(phi[-1]) if self.cfg.reward.shaping == "progress" else float("nan"),
        }
