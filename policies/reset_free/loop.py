"""The reset-free loop on a task pair's shared scene (after RoboFuME): attempts that flip the instruction
when the success signal says done and reset the scene every K attempts, the expert's demonstration
chains, the attempts' transitions for replay, and the evaluation of each direction with resets."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from policies.success import ClassifierSuccess, DetectorCounts, SimSuccess, first_confirmed
from policies.reset_free.scene import RobotPairScene
from sim.task_pair import ResetFreeConfigError, TaskPairScene

DIRECTIONS = ("forward", "backward")


@dataclass
class AttemptRecord:
    """One reset-free episode (one attempt at one direction): T actions, T+1 observations."""

    direction: int
    obs: np.ndarray                  # (T+1, 41) float32
    actions: np.ndarray              # (T, 4) float32
    terminated: np.ndarray           # (T,) bool: the success signal said done after action t (the last only)
    claimed: bool                    # the success signal ended the episode as done
    truth: np.ndarray                # (T,) bool: the simulator's success test after each action (logged only)
    probs: np.ndarray                # (T,) float32: the classifier's P(done), NaN where not scored
    reset_before: bool               # the scene was reset before this episode
    flipped: bool                    # the instruction flipped after it
    detector_fp: bool = False        # the classifier's verdict on this attempt was a false positive ...
    detector_fn: bool = False        # ... or a false negative (both False without a classifier)

    @property
    def truth_at_claim(self) -> bool:
        """The simulator's test at the step the signal said done (False when it never did)."""
        return bool(self.claimed and self.truth[-1])


@dataclass
class LoopCounters:
    """Where the reset-free loop stands (restored on resume)."""

    episodes: int = 0                # attempts finished
    since_reset: int = 0             # attempts since the last reset
    resets: int = 0                  # scene resets used (the first included)
    flips: int = 0
    env_steps: int = 0


class ResetFreeLoop:
    """Runs reset-free attempts on a pair's shared scene: act, check the success signal after every step,
    flip the instruction when it says done, reset the scene every ``reset_every`` attempts.

    Args:
        scene: the shared scene: a `RobotPairScene` (the job's: in process or behind a robot server) or
            a `TaskPairScene` (the simulator directly: the expert's chains, tests).
        success: a `ClassifierSuccess` or `SimSuccess`.
        max_steps: the step limit of one attempt (a truncation).
        reset_every: K: a forced reset before every K-th attempt since the last one.
        seed: resets draw variants from ``seed * 100_000 + reset index``.
        flip_on_timeout: flip the instruction after a truncated attempt too.
        monitor: a `ClassifierSuccess` that scores every frame when ``success`` is the simulator's
            (its verdicts are only counted), or None.
    """

    def __init__(self, scene: RobotPairScene | TaskPairScene, success, max_steps: int, reset_every: int, seed: int = 0,
                 flip_on_timeout: bool = False, monitor: ClassifierSuccess | None = None) -> None:
        if int(max_steps) < 1 or int(reset_every) < 1:
            raise ResetFreeConfigError(f"max_steps={max_steps} and reset_every={reset_every} must be >= 1")
        self.scene, self.success, self.monitor = scene, success, monitor
        self.max_steps, self.reset_every, self.seed = int(max_steps), int(reset_every), int(seed)
        self.flip_on_timeout = bool(flip_on_timeout)
        self.counters = LoopCounters()
        self.detector = DetectorCounts()
        self._needs_reset = True

    def force_reset(self) -> None:
        """Reset the scene before the next attempt (e.g. after a resume: the physics was not saved)."""
        self._needs_reset = True

    def _classifier(self):
        return self.success if isinstance(self.success, ClassifierSuccess) else self.monitor

    def attempt(self, policy: Callable[[np.ndarray], np.ndarray],
                on_step: Callable[[], None] | None = None) -> AttemptRecord:
        """One attempt at the current instruction. ``policy``: obs (41,) -> action (4,);
        ``on_step``: called after every env step (the learner's updates)."""
        c = self.counters
        reset_before = self._needs_reset or c.since_reset >= self.reset_every
        if reset_before:
            self.scene.reset(self.seed * 100_000 + c.resets, direction=0)
            c.resets += 1
            c.since_reset = 0
            self._needs_reset = False
        else:
            self.scene.resume()  # reset-free: the scene as the last attempt left it
        judge = self._classifier()
        self.success.start()
        if judge is not None:
            judge.start()
        direction, instruction = self.scene.direction, self.scene.instruction
        obs, actions, truth, probs = [self.scene.observation()], [], [], []
        claimed = False
        for _ in range(self.max_steps):
            action = np.clip(np.asarray(policy(obs[-1]), np.float32), -1.0, 1.0)
            signals = self.scene.step(action)
            c.env_steps += 1
            frames = self.scene.render() if judge is not None else None
            done, p = self.success(frames, signals, instruction)
            if judge is not None and judge is not self.success:
                p = judge.prob(frames, instruction)
            obs.append(self.scene.observation())
            actions.append(action)
            truth.append(bool(signals.success))
            probs.append(p if judge is not None else math.nan)
            if on_step is not None:
                on_step()
            if done:
                claimed = True
                break
        c.episodes += 1
        c.since_reset += 1
        flipped = claimed or self.flip_on_timeout
        if flipped:
            self.scene.flip()
            c.flips += 1
        term = np.zeros(len(actions), bool)
        term[-1] = claimed
        rec = AttemptRecord(direction, np.asarray(obs, np.float32), np.asarray(actions, np.float32), term, claimed,
                            np.asarray(truth, bool), np.asarray(probs, np.float32), reset_before, flipped)
        # the classifier's verdict on the episode: the signal itself, or (monitor) its first "done" frame
        if judge is not None:
            said = rec.probs > judge.threshold
            self.detector.add_frames(said, rec.truth)
            if judge is self.success:
                verdict = self.detector.add_episode(claimed, rec.truth_at_claim, bool(rec.truth.any()))
            else:  # the monitor would have ended the attempt where it first confirmed "done"
                first = first_confirmed(said, judge.confirm_steps)
                if first is None and claimed and said[-1]:  # the simulator ended it while the classifier confirmed
                    first = len(said) - 1
                verdict = self.detector.add_episode(first is not None, first is not None and bool(rec.truth[first]),
                                                    bool(rec.truth[: (first + 1) if first is not None else None].any()))
            rec.detector_fp, rec.detector_fn = verdict
        return rec


def expert_policy(scene: TaskPairScene) -> Callable[[np.ndarray], np.ndarray]:
    """The active task's scripted expert (it reads the simulator state, not the observation given)."""
    return lambda _obs: scene.active.expert_action()


def collect_demo_chains(pair: str, n: int, max_steps: int, seed: int = 0) -> list[AttemptRecord]:
    """``n`` expert chains in the shared scene (demo split): forward until the simulator's success,
    flip, backward until its success. Returns the attempts (2 per chain when both succeed)."""
    scene = TaskPairScene(pair, cameras=(), split="demo")
    loop = ResetFreeLoop(scene, SimSuccess(), max_steps=max_steps, reset_every=2, seed=seed)
    out = []
    try:
        for _ in range(2 * int(n)):
            out.append(loop.attempt(expert_policy(scene)))
    finally:
        scene.close()
    return out


def attempt_rewards(rec: AttemptRecord, success_reward: float) -> np.ndarray:
    """The sparse reward (T,): ``success_reward`` on the step the success signal said done."""
    return np.where(rec.terminated, float(success_reward), 0.0).astype(np.float32)


def add_attempt(buffer, rec: AttemptRecord, success_reward: float, gamma: float) -> None:
    """An attempt's transitions into a `ReplayBuffer`, with Monte-Carlo returns (Cal-QL's bound)."""
    from policies.replay import discounted_returns

    r = attempt_rewards(rec, success_reward)
    buffer.add_episode(rec.obs, rec.actions, r, rec.terminated, discounted_returns(r, gamma))


def evaluate_directions(agent, pair: str, seeds: Sequence[int], max_steps: int, scene: TaskPairScene | None = None) -> dict:
    """Each direction in episodes WITH a reset (eval split, deterministic policy, the simulator's success).

    ``forward``: from the forward task's reset. ``backward``: from the scene the forward task leaves (the
    reset, then the forward expert until done, then the flip): where the backward task starts reset-free.
    ``backward_own_reset``: from the backward task's own reset (Meta-World's drawer-close start, say).
    Returns those success rates and ``episodes`` (per direction)."""
    own = scene is None
    scene = scene or TaskPairScene(pair, cameras=(), split="eval")

    def attempt() -> bool:
        for _ in range(max_steps):
            if scene.step(agent.act(scene.observation(), deterministic=True)).success:
                return True
        return False

    wins: dict[str, list[bool]] = {"forward": [], "backward": [], "backward_own_reset": []}
    try:
        for s in seeds:
            scene.reset(int(s), direction=0)
            wins["forward"].append(attempt())
            scene.reset(int(s), direction=0)
            for _ in range(max_steps):
                if scene.step(scene.active.expert_action()).success:
                    break
            scene.flip()
            wins["backward"].append(attempt())
            scene.reset(int(s), direction=1)
            wins["backward_own_reset"].append(attempt())
    finally:
        if own:
            scene.close()
    return {**{k: float(np.mean(v)) for k, v in wins.items()}, "episodes": len(seeds)}


def score_expert_chains(pair: str, n: int, max_steps: int, classifier: ClassifierSuccess) -> dict:
    """The classifier on ``n`` rendered expert chains (demo split, variants from seed 1's stream: neither the
    demonstrations' nor the adaptation data's): frame- and attempt-level counts against the simulator's
    test, a check of the classifier on this pair before learning starts."""
    scene = TaskPairScene(pair, cameras=classifier.cameras, image_size=int(classifier.model.image_size[0]), split="demo")
    loop = ResetFreeLoop(scene, SimSuccess(), max_steps=max_steps, reset_every=2, seed=1, monitor=classifier)
    try:
        for _ in range(2 * n):
            loop.attempt(expert_policy(scene))
    finally:
        scene.close()
    return loop.detector.summary()

