"""Success signals for the learners and their count against the simulator: a VLM classifier's P(done)
above its threshold for ``confirm_steps`` frames, or the simulator's own test (the reference)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim.task_pair import ResetFreeConfigError
from sim.world import StepSignals

SUCCESS_SIGNALS = ("classifier", "sim")


class ClassifierSuccess:
    """Success from a VLM classifier: P(done | frames, instruction) > ``threshold`` for ``confirm_steps``
    consecutive frames. Call ``start()`` at each episode's start."""

    needs_frames = True

    def __init__(self, model, threshold: float | None = None, confirm_steps: int = 1) -> None:
        self.model = model
        self.cameras = tuple(model.cameras)
        own = getattr(getattr(model, "cfg", None), "threshold", None)
        if threshold is None and own is None:
            raise ResetFreeConfigError("threshold=null but the classifier carries no threshold: pass threshold=<P(done)>")
        self.threshold = float(own if threshold is None else threshold)
        self.confirm_steps = max(1, int(confirm_steps))
        self._run = 0

    def start(self) -> None:
        """A new episode: forget the run of positive frames."""
        self._run = 0

    def prob(self, frames: Mapping[str, np.ndarray], instruction: str) -> float:
        """P(done) of one instant: camera -> uint8 (H, W, 3)."""
        return float(self.model.success_prob({c: frames[c][None] for c in self.cameras}, instruction)[0])

    def __call__(self, frames: Mapping[str, np.ndarray] | None, signals: StepSignals, instruction: str) -> tuple[bool, float]:
        """(done, P(done)) after a step; the simulator's ``signals`` are not read."""
        p = self.prob(frames, instruction)
        self._run = self._run + 1 if p > self.threshold else 0
        return self._run >= self.confirm_steps, p


class SimSuccess:
    """Success from the simulator's own test (the reference signal)."""

    needs_frames = False

    def start(self) -> None:
        """Nothing to forget between episodes."""

    def __call__(self, frames, signals: StepSignals, instruction: str) -> tuple[bool, float]:
        """(done, 1.0 or 0.0) from the ground truth."""
        return bool(signals.success), float(signals.success)


def first_confirmed(said: np.ndarray, confirm_steps: int) -> int | None:
    """The first index where ``said`` (bool (T,)) has held for ``confirm_steps`` frames in a row, or None."""
    run = 0
    for i, v in enumerate(np.asarray(said, bool)):
        run = run + 1 if v else 0
        if run >= confirm_steps:
            return i
    return None


@dataclass
class DetectorCounts:
    """A success signal against the simulator's ground truth, per episode and per frame.

    Episode level: a false positive is an episode the signal ended as done while the simulator's test
    fails at that step; a false negative one the signal never ended although the simulator's test held
    at some step. Frame level: every scored frame, P(done) > threshold against the test of that frame.
    """

    false_positives: int = 0
    false_negatives: int = 0
    true_positives: int = 0
    true_negatives: int = 0
    frame_fp: int = 0
    frame_fn: int = 0
    frame_tp: int = 0
    frame_tn: int = 0

    def add_episode(self, claimed: bool, truth_at_claim: bool, truth_any: bool) -> tuple[bool, bool]:
        """Count one episode; returns (false positive, false negative)."""
        fp = claimed and not truth_at_claim
        fn = (not claimed) and truth_any
        self.false_positives += fp
        self.false_negatives += fn
        self.true_positives += claimed and truth_at_claim
        self.true_negatives += (not claimed) and not truth_any
        return fp, fn

    def add_frames(self, said_done: np.ndarray, truth: np.ndarray) -> None:
        """Count frames: bool (T,) verdicts against bool (T,) ground truth."""
        said, truth = np.asarray(said_done, bool), np.asarray(truth, bool)
        self.frame_tp += int((said & truth).sum())
        self.frame_fp += int((said & ~truth).sum())
        self.frame_fn += int((~said & truth).sum())
        self.frame_tn += int((~said & ~truth).sum())

    def summary(self) -> dict:
        """Counts plus frame-level false-positive and false-negative rates."""
        out = dict(self.__dict__)
        neg, pos = self.frame_fp + self.frame_tn, self.frame_tp + self.frame_fn
        out["frame_fpr"] = self.frame_fp / neg if neg else None
        out["frame_fnr"] = self.frame_fn / pos if pos else None
        return out


def load_classifier(name: str | Path, threshold: float | None = None, confirm_steps: int = 2) -> ClassifierSuccess:
    """The success classifier ``name`` (checkpoint directory or shipped name), wrapped with its threshold."""
    import reward_models

    model = reward_models.load(name)
    if not hasattr(model, "success_prob") or getattr(model, "kind", None) != "vlm_success":
        raise ResetFreeConfigError(f"classifier={name} is not a success classifier: use a vlm_success checkpoint "
                                   "(e.g. vlm-general)")
    return ClassifierSuccess(model, threshold, int(confirm_steps))

