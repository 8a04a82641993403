"""The evaluation loop (:func:`evaluate`): every row scores every episode of the stores, and the
per-task metrics are computed from those scores (the package docstring defines each metric)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from reward_models.data import resolve_stores
from reward_models.evaluation.scorers import (
    PerTaskModels,
    Scorer,
    dense_reward_scorer,
    model_accepts_cameras,
    model_scorer,
    model_threshold,
    random_scorer,
)
from reward_models.metrics import (
    THRESHOLD_METRICS,
    auroc,
    binary_scores,
    choose_threshold,
    error_rates,
    expected_calibration_error,
    mean_of,
    voc,
)


DENSITIES = (1, 4, 16)
BASELINES = ("random", "sim_dense_gt")
REFERENCE_RULES = ("first_success", "none")
THRESHOLD_RULES = (*THRESHOLD_METRICS, "model")  # "model": the model's own cfg.threshold, nothing tuned here
METRIC_NAMES_EXTRA = ("voc_reversed", "auroc", "success_acc", "success_f1", "success_ece", "success_auroc",
                      "success_fpr", "success_fnr", "threshold")


# --------------------------------------------------------------------------- evaluation


@dataclass
class _Scored:
    """One row's scores of one episode."""

    label: str
    success: bool
    kind: str
    keyframes: list[int]
    progress: dict[int, np.ndarray]  # density -> float (ceil(T+1 / d),) progress at frames 0::d
    reversed_progress: np.ndarray  # float (T+1,) progress of the time-reversed episode
    success_prob: np.ndarray  # float (T+1,) at every frame
    success_true: np.ndarray | None  # float (T+1,) per-frame success label, None if unknown


@dataclass
class _Row:
    privileged: bool = False
    scored: dict[str, list[_Scored]] = field(default_factory=dict)  # task -> episodes
    states: int = 0
    seconds: float = 0.0


def _frame_success(episode: Any) -> np.ndarray | None:
    """Per-frame success float (T+1,) (:func:`reward_models.calibration.frame_labels`), None without a signal."""
    from reward_models.calibration import frame_labels

    return frame_labels(episode) if episode.infos.get("success") is not None else None


def evaluate(
    model: Any,
    stores: str | os.PathLike | Iterable[str | os.PathLike],
    cameras_ablation: bool = True,
    reference: str = "first_success",
    densities: Sequence[int] = DENSITIES,
    baselines: Sequence[str] = BASELINES,
    threshold_metric: str = "accuracy",
    seed: int = 0,
    max_episodes_per_task: int | None = None,
    plot_episodes: int = 3,
) -> dict:
    """Score ``model`` on every episode of ``stores``; returns the JSON-serialisable results.

    Args:
        model: a RewardModel (anything with ``progress``/``success_prob`` and ``cameras``), or a
            :class:`PerTaskModels` (each task scored by its own model; its fitting episodes skipped).
        stores: a store file, a directory of ``*.hdf5`` stores, or a list of either.
        cameras_ablation: also score each camera alone (needs ``progress(..., cameras=[...])``).
        reference: ``first_success`` (per task, the first successful expert episode is the
            reference and is not scored) or ``none``.
        densities: frame strides for VOC (1 = every frame); 1 is always scored.
        baselines: reference rows among ``random`` and ``sim_dense_gt``.
        threshold_metric: what the success threshold maximises on the validation half.
        seed: seed of the ``random`` row.
        max_episodes_per_task: score at most this many episodes per task, half successes and
            half failures (None: all).
        plot_episodes: successes and failures per task whose fused progress curves are kept
            (``results["curves"]``) for plotting.

    Returns:
        ``{"settings", "tasks", "rows": {row: {"privileged", "per_task": {task: metrics},
        "mean": metrics, "states", "seconds", "states_per_s"}}, "throughput", "curves", "notes"}``.

    Raises:
        FileNotFoundError / episodes.StoreError: a missing or damaged store.
        ValueError: bad options, or frames the model cannot score.
    """
    from episodes import EpisodeStore

    if reference not in REFERENCE_RULES:
        raise ValueError(f"reference={reference!r} unknown: use one of {REFERENCE_RULES}")
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"baselines {unknown} unknown: use a subset of {list(BASELINES)}")
    densities = sorted({1, *(int(d) for d in densities)})
    if densities[0] < 1:
        raise ValueError(f"densities must be positive frame strides, got {densities}")
    if threshold_metric not in THRESHOLD_RULES:
        raise ValueError(f"threshold_metric={threshold_metric!r} unknown: use one of {THRESHOLD_RULES}")
    paths = resolve_stores(stores)
    notes: list[str] = []
    cameras = list(getattr(model, "cameras", []) or [])

    scorers: dict[str, tuple[Scorer, _Row]] = {"model": (model_scorer(model), _Row())}
    if cameras_ablation:
        if not model_accepts_cameras(model):
            notes.append("camera ablation skipped: the model's progress() takes no cameras= argument")
        elif len(cameras) < 2:
            notes.append("camera ablation skipped: the model uses a single camera")
        else:
            for cam in cameras:
                scorers[f"camera:{cam}"] = (model_scorer(model, [cam]), _Row())
    if "random" in baselines:
        scorers["random"] = (random_scorer(seed), _Row())
    if "sim_dense_gt" in baselines:
        scorers["sim_dense_gt"] = (dense_reward_scorer(), _Row(privileged=True))
    model_rows = [name for name in scorers if name == "model" or name.startswith("camera:")]
    excluded = model.excluded if isinstance(model, PerTaskModels) else set()  # fitting episodes

    # references first, so that every scored episode of a task sees the same one
    references: dict[str, tuple[Path, int, Any]] = {}  # task -> (store, index, episode)
    if reference == "first_success":
        for path in paths:
            with EpisodeStore(path, cameras=cameras or None) as store:
                for i in range(len(store)):
                    attrs = store.episode_attrs(i)
                    if attrs["task"] not in references and attrs["success"] and attrs["kind"] == "expert":
                        references[attrs["task"]] = (path, i, store[i])

    tasks: dict[str, dict] = {}
    dense_range: dict[str, list[float]] = {}  # task -> [min, max] of the dense reward over the store
    curves: dict[str, list[dict]] = {}
    started = time.perf_counter()
    for path in paths:
        # load only the cameras the model sees; a store lacking one fails here, naming it
        with EpisodeStore(path, cameras=cameras or None) as store:
            for i in range(len(store)):
                attrs = store.episode_attrs(i)
                task = attrs["task"]
                info = tasks.setdefault(task, {"stores": [], "reference": None, "scored": 0, "successes": 0,
                                               "failures": 0, "instruction": attrs["instruction"]})
                if str(path) not in info["stores"]:
                    info["stores"].append(str(path))
                ref_path, ref_index, ref_episode = references.get(task, (None, None, None))
                is_ref = (ref_path, ref_index) == (path, i)
                if (str(path), i) in excluded:  # the model was fitted on it: never scored
                    info["fit_excluded"] = info.get("fit_excluded", 0) + 1
                    if is_ref:
                        info["reference"] = f"{path.name}:{attrs['name']}"
                    continue
                if not is_ref and max_episodes_per_task is not None:
                    # half the budget each for successes and failures, so AUROC stays defined
                    cap_fail = max_episodes_per_task // 2
                    if attrs["success"] and info["successes"] >= max_episodes_per_task - cap_fail:
                        continue
                    if not attrs["success"] and info["failures"] >= cap_fail:
                        continue
                episode = ref_episode if is_ref else store[i]
                label = f"{path.name}:{attrs['name']}"
                if "dense_reward" in episode.infos:
                    lo_hi = dense_range.setdefault(task, [np.inf, -np.inf])
                    lo_hi[0] = min(lo_hi[0], float(np.min(episode.infos["dense_reward"])))
                    lo_hi[1] = max(lo_hi[1], float(np.max(episode.infos["dense_reward"])))
                if is_ref:  # anchors never come from the scored episode: the reference is not scored
                    info["reference"] = label
                    info["reference_voc"] = reference_voc(scorers["model"][0], episode)
                    continue
                info["scored"] += 1
                info["successes" if episode.success else "failures"] += 1
                for name, (scorer, row) in scorers.items():
                    if name == "sim_dense_gt" and "dense_reward" not in episode.infos:
                        continue
                    scored = _score_episode(scorer, row, episode, ref_episode, label, densities)
                    row.scored.setdefault(task, []).append(scored)
                    if name == "model":
                        _keep_curve(curves.setdefault(task, []), scored, plot_episodes)
    wall = time.perf_counter() - started
    if not tasks:
        raise ValueError(f"the stores {[str(p) for p in paths]} hold no episodes")
    for task, info in tasks.items():
        if reference == "first_success" and info["reference"] is None:
            notes.append(f"{task}: no successful expert episode, scored without a reference")
        if info["scored"] == 0:
            notes.append(f"{task}: no episode left to score besides the reference")
        if info.get("reference_voc") is not None and info["reference_voc"] < REFERENCE_VOC_WARN:
            notes.append(f"{task}: the model orders its own reference demonstration poorly (VOC {info['reference_voc']:.2f} "
                         f"< {REFERENCE_VOC_WARN}): its progress on this task is not to be trusted as it is; adapt it on "
                         "the demonstration first (stepwise-train-rm init=<model> data=<demo store> max_episodes_per_task=1)")
    if "sim_dense_gt" in scorers:
        if not dense_range:
            notes.append("sim_dense_gt skipped: the episodes have no infos['dense_reward'] (not simulated?)")
            del scorers["sim_dense_gt"]
        else:
            _normalise_dense(scorers["sim_dense_gt"][1], dense_range)

    def fixed_threshold(name: str, task: str) -> float | None:  # threshold_metric=model: the model's own
        if threshold_metric != "model" or name not in model_rows:
            return None
        return model_threshold(model.for_task(task) if isinstance(model, PerTaskModels) else model)

    rows = {}
    for name, (_, row) in scorers.items():
        metric = "accuracy" if threshold_metric == "model" else threshold_metric
        per_task = {task: _task_metrics(scored, densities, metric, fixed_threshold(name, task))
                    for task, scored in sorted(row.scored.items())}
        keys = _metric_keys(densities)
        rows[name] = {
            "privileged": row.privileged,
            "per_task": per_task,
            "mean": {k: mean_of(m[k] for m in per_task.values()) for k in keys},
            "states": row.states,
            "seconds": row.seconds,
            "states_per_s": row.states / row.seconds if row.seconds > 0 else None,
        }
    model_states = sum(scorers[r][1].states for r in model_rows)
    model_seconds = sum(scorers[r][1].seconds for r in model_rows)
    return _jsonable({
        "settings": {
            "model": str(getattr(model, "path", None) or type(model).__name__),
            "model_kind": getattr(model, "kind", type(model).__name__),
            "fit": getattr(model, "fit_info", None) if isinstance(model, PerTaskModels) else None,
            "cameras": cameras,
            "stores": [str(p) for p in paths],
            "episodes_scored": sum(t["scored"] for t in tasks.values()),
            "reference": reference,
            "densities": densities,
            "threshold_metric": threshold_metric,
            "split": "validation = even positions of each task's scored episodes, test = odd",
            "seed": seed,
            "cpu_cores": os.cpu_count(),
            "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        },
        "tasks": tasks,
        "rows": rows,
        "throughput": {
            "states": model_states,
            "model_seconds": model_seconds,
            "states_per_s": model_states / model_seconds if model_seconds > 0 else None,
            "wall_seconds": wall,
            "note": "states = time steps (all cameras of the row) passed to progress(); seconds = "
                    "wall time inside progress()/success_prob() of the model rows",
        },
        "curves": curves,
        "notes": notes,
    })


REFERENCE_VOC_WARN = 0.5
"""A model whose progress on the task's reference demonstration correlates with time below this is flagged."""


def reference_voc(scorer: Scorer, reference: Any) -> float | None:
    """VOC of the model's progress on the reference demonstration itself, up to its goal keyframe (the
    reference as its own reference): a self-check that needs no labels beyond the demonstration. A
    general model that reads the task as its reverse twin (door-open as door-close) fails it, which
    says before any scoring that zero-shot progress on the task is wrong. None when too short."""
    keyframes = getattr(reference, "keyframes", None)
    end = int(keyframes[-1]) + 1 if keyframes is not None and len(keyframes) else reference.num_steps + 1
    if end < 3:
        return None
    progress, _ = scorer(reference, np.arange(end), reference, False)
    return voc(progress)


def _score_episode(scorer: Scorer, row: _Row, episode: Any, reference: Any, label: str,
                   densities: Sequence[int]) -> _Scored:
    """Every pass a row needs on one episode: each density, reversed, success at every frame."""
    n = int(episode.num_steps) + 1
    every = np.arange(n)
    tic = time.perf_counter()
    progress: dict[int, np.ndarray] = {}
    prog, succ = scorer(episode, every, reference, True)
    progress[1] = prog
    for d in densities:
        if d > 1:  # subsampled BEFORE scoring: incremental models see the sparser sequence
            progress[d] = scorer(episode, every[::d], reference, False)[0]
    reversed_progress = scorer(episode, every[::-1].copy(), reference, False)[0]
    row.seconds += time.perf_counter() - tic
    row.states += sum(len(p) for p in progress.values()) + n
    return _Scored(label, bool(episode.success), str(episode.kind), [int(k) for k in episode.keyframes],
                   progress, reversed_progress, succ, _frame_success(episode))


def _keep_curve(kept: list[dict], s: _Scored, per_class: int) -> None:
    if sum(c["success"] == s.success for c in kept) < per_class:
        kept.append({"episode": s.label, "success": s.success, "kind": s.kind, "keyframes": s.keyframes,
                     "progress": s.progress[1].tolist()})


def _normalise_dense(row: _Row, dense_range: dict[str, list[float]]) -> None:
    """Map the dense-reward row to [0, 1] per task with the task's min/max over the store."""
    for task, scored in row.scored.items():
        lo, hi = dense_range[task]
        scale = hi - lo if hi > lo else 1.0
        for s in scored:
            s.progress = {d: (p - lo) / scale for d, p in s.progress.items()}
            s.reversed_progress = (s.reversed_progress - lo) / scale
            s.success_prob = (s.success_prob - lo) / scale


def _metric_keys(densities: Sequence[int]) -> list[str]:
    return [f"voc_d{d}" for d in densities] + list(METRIC_NAMES_EXTRA)


def _task_metrics(scored: list[_Scored], densities: Sequence[int], threshold_metric: str,
                  fixed_threshold: float | None = None) -> dict:
    """The metrics of one row on one task's scored episodes; with ``fixed_threshold`` (the model's
    own) the success metrics use it on every labelled episode, else a threshold chosen on the
    validation half is applied to the test half."""
    successes = [s for s in scored if s.success]
    out: dict[str, Any] = {f"voc_d{d}": mean_of(voc(s.progress[d]) for s in successes) for d in densities}
    out["voc_reversed"] = mean_of(voc(s.reversed_progress) for s in successes)
    out["auroc"] = auroc([s.progress[1][-1] for s in successes], [s.progress[1][-1] for s in scored if not s.success])
    labelled = [s for s in scored if s.success_true is not None]
    val, test = ([], labelled) if fixed_threshold is not None else (labelled[0::2], labelled[1::2])
    for key in ("threshold", "success_acc", "success_f1", "success_ece", "success_auroc", "success_fpr", "success_fnr"):
        out[key] = None
    if test:
        join = lambda group, attr: np.concatenate([getattr(s, attr) for s in group])  # noqa: E731
        if fixed_threshold is not None:
            t = float(fixed_threshold)
        else:
            t = choose_threshold(join(val, "success_prob"), join(val, "success_true"), threshold_metric) if val else 0.5
        prob, label = join(test, "success_prob"), join(test, "success_true")
        out["threshold"] = t
        out["success_acc"], out["success_f1"] = binary_scores(prob >= t, label)
        out["success_ece"] = expected_calibration_error(np.clip(prob, 0, 1), label)
        out["success_auroc"] = auroc(prob[label > 0.5], prob[label <= 0.5])
        out["success_fpr"], out["success_fnr"] = error_rates(prob >= t, label > 0.5)
    out["episodes"] = len(scored)
    out["successes"] = len(successes)
    return out


def _jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars to Python, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj
