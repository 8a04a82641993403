"""How each row of the evaluation scores an episode: a :data:`Scorer` per row (the model, one camera
of it, uniform random, the simulator's dense reward), :class:`PerTaskModels` (a model fitted per
task) and the decision threshold a model carries."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Sequence

import numpy as np

Scorer = Callable[[Any, np.ndarray, Any, bool], tuple[np.ndarray, "np.ndarray | None"]]
"""``score(episode, frame_idx int (n,), reference episode or None, want_success) ->
(progress float (n,), success_prob float (n,) or None)``: scores the frames ``frame_idx`` of an
episode, in that order (reversed or subsampled sequences are passed as such)."""


def model_threshold(model: Any) -> float:
    """The decision threshold a model carries (``model.cfg.threshold`` or ``model.threshold``).

    Raises:
        ValueError: the model has none (use threshold_metric=accuracy or f1 for it).
    """
    t = getattr(getattr(model, "cfg", None), "threshold", None)
    t = getattr(model, "threshold", None) if t is None else t
    if t is None:
        raise ValueError(f"threshold_metric=model: the {getattr(model, 'kind', type(model).__name__)} model has no "
                         "decision threshold (cfg.threshold); use threshold_metric=accuracy or f1")
    return float(t)


# --------------------------------------------------------------------------- scorers


class PerTaskModels:
    """One reward model per task, fitted for an evaluation (e.g. the perceptual reward from a
    task's first demonstrations); :func:`evaluate` scores each episode with its task's model.

    Attributes:
        models: task -> model (each with ``progress``/``success_prob``/``score``).
        cameras: the rig every model uses.
        kind: the models' kind; path: a name for the report (e.g. ``perceptual:pixels``).
        excluded: (store path, episode index) of every episode used for fitting: never scored.
        fit_info: task -> {"demos": [labels], "seconds": fit seconds, ...}.
    """

    def __init__(self, models: dict[str, Any], cameras: Sequence[str], kind: str, path: str,
                 excluded: Iterable[tuple[str, int]] = (), fit_info: dict | None = None) -> None:
        if not models:
            raise ValueError("PerTaskModels needs at least one task's model")
        self.models, self.cameras, self.kind, self.path = dict(models), list(cameras), kind, path
        self.excluded = {(str(p), int(i)) for p, i in excluded}
        self.fit_info = fit_info or {}

    def for_task(self, task: str) -> Any:
        """The model of ``task``; ValueError naming the fitted tasks when there is none."""
        if task not in self.models:
            raise ValueError(f"no model was fitted for task {task!r} (fitted: {sorted(self.models)}): "
                             "give demonstrations of it in demo_data or the eval stores")
        return self.models[task]


def model_accepts_cameras(model: Any) -> bool:
    """Whether ``model.progress`` takes a ``cameras=`` argument (single-camera ablation possible)."""
    if isinstance(model, PerTaskModels):
        model = next(iter(model.models.values()))
    try:
        params = inspect.signature(model.progress).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "cameras" or p.kind == p.VAR_KEYWORD for p in params)


def model_scorer(model: Any, cameras: Sequence[str] | None = None) -> Scorer:
    """A :data:`Scorer` calling ``model.progress`` / ``model.success_prob`` on the episode's frames.

    ``cameras`` (a subset of ``model.cameras``) is passed on as ``cameras=[...]``; None uses the rig.
    """
    cams = tuple(cameras) if cameras else tuple(model.cameras)
    kwargs = {"cameras": list(cameras)} if cameras else {}

    def score(episode: Any, idx: np.ndarray, reference: Any, want_success: bool):
        missing = [c for c in cams if c not in episode.images]
        if missing:
            raise ValueError(
                f"episode of task {episode.task!r} lacks camera(s) {missing} the model uses "
                f"({list(cams)}); evaluate on stores rendered with those cameras"
            )
        frames = {c: episode.images[c][idx] for c in cams}
        m = model.for_task(episode.task) if isinstance(model, PerTaskModels) else model
        if want_success and hasattr(m, "score"):  # one pass for both outputs
            prog, succ = m.score(frames, episode.instruction, reference=reference, **kwargs)
            return _check_output("progress", prog, len(idx)), _check_output("success_prob", succ, len(idx))
        prog = _check_output("progress", m.progress(frames, episode.instruction, reference=reference, **kwargs), len(idx))
        succ = None
        if want_success:
            succ = _check_output(
                "success_prob", m.success_prob(frames, episode.instruction, reference=reference, **kwargs), len(idx)
            )
        return prog, succ

    return score


def _check_output(what: str, values: Any, n: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"the model's {what}() returned shape {arr.shape} for {n} frames: it must return ({n},)")
    return arr


def random_scorer(seed: int = 0) -> Scorer:
    """Uniform random progress and success probability (a chance-level reference row)."""
    rng = np.random.default_rng(seed)

    def score(episode: Any, idx: np.ndarray, reference: Any, want_success: bool):
        return rng.random(len(idx)), (rng.random(len(idx)) if want_success else None)

    return score


def dense_reward_scorer() -> Scorer:
    """The simulator's dense reward of each frame, UNNORMALISED (normalised per task afterwards).

    Frame t >= 1 takes ``infos["dense_reward"][t-1]`` (the reward after action t); frame 0 has
    no reward of its own and takes that of the first action, its nearest neighbour.
    """

    def score(episode: Any, idx: np.ndarray, reference: Any, want_success: bool):
        dense = np.asarray(episode.infos["dense_reward"], dtype=np.float64)
        per_frame = np.concatenate([dense[:1], dense])
        values = per_frame[idx]
        return values, (values.copy() if want_success else None)

    return score
