"""`stepwise-eval-rm`: score any :class:`~reward_models.base.RewardModel` on episode stores.

Usage::

    stepwise-eval-rm model=general data=data/demos out=results/eval_rm
    stepwise-eval-rm model=runs/prm/ckpt data=[a.hdf5,b.hdf5] out=out reference=none
    stepwise-eval-rm model=perceptual:pixels fit_demos=1 demo_data=data/heldout_demo data=data/heldout_eval out=out

writes ``out/report.json`` (every number), ``out/report.md`` (tables) and PNG plots. The same
evaluation is available in Python as :func:`evaluate` (returns the JSON-able results dict) and
:func:`render_report` (writes the files).

Rows of the report: ``model`` (the fused camera rig), ``camera:<name>`` (each camera alone, when
the model's ``progress`` accepts ``cameras=``), ``random`` (uniform random scores, fixed seed)
and ``sim_dense_gt`` (the simulator's dense reward normalised per task: PRIVILEGED, an upper
reference, not a competitor).

Metrics per task (overall = mean over tasks):

* ``voc_d<k>``: value-order correlation, the Spearman correlation between time index and predicted
  progress over successful episodes scored at every k-th frame (frames are subsampled BEFORE the
  model sees them), averaged over episodes.
* ``voc_reversed``: the same on successful episodes played backwards (good models: close to -1).
* ``auroc``: AUROC of final-frame progress, successful vs failed episodes (None without both).
* ``success_acc`` / ``success_f1`` / ``success_ece``: per-frame ``success_prob`` against the
  per-frame success label; the threshold is chosen on a validation half of the episodes (even
  positions, in store order) and the metrics are reported on the other half.
* ``success_auroc`` / ``success_fpr`` / ``success_fnr``: on the same frames, the frame-level AUROC of
  ``success_prob`` (threshold-free), and the false-positive rate (not-done frames called done) and
  false-negative rate (done frames missed) at that threshold.
* ``threshold_metric="model"``: the model rows use the MODEL's own decision threshold
  (``cfg.threshold``, e.g. the VLM classifier's, chosen on its own validation frames) instead of one
  chosen on the evaluated episodes, and report on every scored episode (nothing is tuned on them);
  rows without a model (``random``, ``sim_dense_gt``) keep the validation-half choice (accuracy).

Reference demonstration (``reference="first_success"``): per task, the first successful expert
episode is passed as ``reference=`` to the model and is excluded from the scored episodes, so
anchors never come from the episode being scored.

Models fitted per task (``model=perceptual:<encoder> fit_demos=1``): the perceptual-feature reward
(:mod:`reward_models.perceptual`) is fitted for each task in the eval stores from that task's first
``fit_demos`` successful expert episodes, taken from ``demo_data`` first and then from the eval
stores themselves (:func:`fit_per_task`); episodes used for fitting are never scored. Scoring is
then the same as for any model (the reference rule still applies, so with ``fit_demos=1`` and a
separate demo store the scored set equals that of a checkpoint's evaluation).
"""

from __future__ import annotations

import inspect
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

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
from reward_models.data import resolve_stores


DENSITIES = (1, 4, 16)
BASELINES = ("random", "sim_dense_gt")
REFERENCE_RULES = ("first_success", "none")
THRESHOLD_RULES = (*THRESHOLD_METRICS, "model")  # "model": the model's own cfg.threshold, nothing tuned here
METRIC_NAMES_EXTRA = ("voc_reversed", "auroc", "success_acc", "success_f1", "success_ece", "success_auroc",
                      "success_fpr", "success_fnr", "threshold")

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


# --------------------------------------------------------------------------- models fitted per task

RECIPES = ("perceptual",)
"""Model kinds :func:`fit_per_task` can fit per task: ``model=<kind>:<encoder>``."""


def fit_demos_per_task(
    stores: Sequence[Path], demo_stores: Sequence[Path], fit_demos: int, cameras: Sequence[str] | None = None
) -> dict[str, list[tuple[Path, int, Any]]]:
    """Per task of ``stores``, its first ``fit_demos`` successful expert episodes: from
    ``demo_stores`` first, then from ``stores`` (in store order); task -> [(store, index, Episode)]."""
    from episodes import EpisodeStore

    tasks: set[str] = set()
    for path in stores:
        with EpisodeStore(path) as store:
            tasks |= {store.episode_attrs(i)["task"] for i in range(len(store))}
    chosen: dict[str, list[tuple[Path, int, Any]]] = {t: [] for t in tasks}
    seen: set[tuple[str, int]] = set()
    for path in [*demo_stores, *stores]:
        with EpisodeStore(path, cameras=list(cameras) if cameras else None) as store:
            for i in range(len(store)):
                attrs = store.episode_attrs(i)
                picked = chosen.get(attrs["task"])
                key = (str(Path(path).resolve()), i)
                if picked is None or len(picked) >= fit_demos or key in seen:
                    continue
                if attrs["success"] and attrs["kind"] == "expert":
                    seen.add(key)
                    picked.append((Path(path), i, store[i]))
    return chosen


def fit_per_task(
    recipe: str,
    stores: str | os.PathLike | Iterable[str | os.PathLike],
    demo_data: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
    fit_demos: int = 1,
    settings: dict | None = None,
) -> PerTaskModels:
    """Fit ``recipe`` (``perceptual:<encoder>``) for every task of ``stores``.

    Args:
        recipe: ``perceptual:<encoder name>`` (see :data:`reward_models.encoders.ENCODERS`).
        stores: the eval stores (file, directory or list); their tasks get a model each.
        demo_data: stores searched first for demonstrations (None: only ``stores``).
        fit_demos: demonstrations per task (the first successful expert episodes found).
        settings: ``configs/reward/perceptual.yaml`` keys overriding its defaults.

    Returns:
        :class:`PerTaskModels` whose ``excluded`` lists the fitting episodes taken from ``stores``.

    Raises:
        ValueError: an unknown recipe or encoder, or a task without enough demonstrations.
    """
    kind, _, encoder = str(recipe).partition(":")
    if kind not in RECIPES or not encoder:
        raise ValueError(f"model={recipe!r}: a per-task recipe is <kind>:<encoder> with kind in {RECIPES}, "
                         "e.g. perceptual:pixels")
    if int(fit_demos) < 1:
        raise ValueError(f"fit_demos={fit_demos}: give at least 1 demonstration per task")
    from omegaconf import OmegaConf

    from reward_models import perceptual
    from reward_models.encoders import ENCODERS

    if encoder not in ENCODERS:
        raise ValueError(f"model={recipe!r}: unknown encoder {encoder!r}, use one of {sorted(ENCODERS)}")
    base = OmegaConf.to_container(OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "reward" / "perceptual.yaml"))
    kwargs = perceptual.fit_kwargs({**base, **(settings or {})})
    eval_paths = resolve_stores(stores)
    demo_paths = resolve_stores(demo_data) if demo_data else []
    chosen = fit_demos_per_task(eval_paths, demo_paths, int(fit_demos), kwargs["cameras"])
    eval_set = {str(p.resolve()) for p in eval_paths}
    models, excluded, info = {}, [], {}
    for task, demos in sorted(chosen.items()):
        if len(demos) < int(fit_demos):
            raise ValueError(f"task {task!r} has {len(demos)} successful expert demonstrations in demo_data and the "
                             f"eval stores, fit_demos={fit_demos} asked: lower fit_demos or collect more")
        models[task] = perceptual.fit([ep for _, _, ep in demos], encoder, **kwargs)
        excluded += [(str(p), i) for p, i, _ in demos if str(p.resolve()) in eval_set]
        cfg = models[task].cfg
        info[task] = {"demos": [f"{p.parent.name}/{p.name}:{i}" for p, i, _ in demos], "n_steps": cfg.n_steps,
                      "bounds": cfg.fit_info["bounds"], "seconds": cfg.fit_info["seconds"]}
    first = next(iter(models.values()))
    return PerTaskModels(models, first.cameras, first.kind, str(recipe), excluded, info)


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
    """Per-frame success float (T+1,): frame t >= 1 has the success after action t, frame 0 has 0."""
    succ = episode.infos.get("success")
    if succ is None:
        return None
    return np.concatenate([[0.0], np.asarray(succ, dtype=np.float64) > 0.5]).astype(np.float64)


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


# --------------------------------------------------------------------------- report


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def render_report(results: dict, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``report.json``, ``report.md`` and the PNG plots of :func:`evaluate`'s results.

    Returns the paths written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json", out / "report.md"]
    (out / "report.json").write_text(json.dumps(results, indent=2))
    (out / "report.md").write_text(_markdown(results))
    written += _plots(results, out)
    return written


def _markdown(results: dict) -> str:
    s = results["settings"]
    lines = [
        "# Reward-model evaluation",
        "",
        f"- model: `{s['model']}` ({s['model_kind']}, cameras {', '.join(s['cameras']) or '–'})",
        f"- stores: {', '.join(f'`{p}`' for p in s['stores'])}",
        f"- episodes scored: {s['episodes_scored']} (references excluded)",
        f"- reference rule: {s['reference']}",
        ("- success threshold: the model's own (cfg.threshold), success metrics on every scored episode; "
         "baseline rows: chosen for accuracy on the validation half" if s["threshold_metric"] == "model" else
         f"- success threshold: chosen for {s['threshold_metric']} on the validation half; {s['split']}"),
        f"- machine: {s['cpu_cores']} CPU cores ({s['cpu_cores_usable']} usable)",
    ]
    if s.get("fit"):  # a model fitted per task: say on what, so nobody mistakes it for zero-shot
        lines.append("- fitted per task (fitting episodes never scored): " + "; ".join(
            f"{task}: {', '.join(f['demos'])} ({f['n_steps']} steps, {f['seconds']:.1f} s)" for task, f in s["fit"].items()))
    tp = results["throughput"]
    lines.append(f"- scoring throughput: {_fmt(tp['states_per_s'])} states/s ({tp['states']} states in "
                 f"{tp['model_seconds']:.1f} s of model calls; whole evaluation {tp['wall_seconds']:.1f} s)")
    lines += ["", "| task | reference | scored | successes | failures |", "|---|---|---|---|---|"]
    for task, info in results["tasks"].items():
        lines.append(f"| {task} | {info['reference'] or '–'} | {info['scored']} | {info['successes']} | {info['failures']} |")
    for name, row in results["rows"].items():
        tasks = list(row["per_task"])
        title = f"## {name}" + (" (PRIVILEGED: simulator state, a reference, not a competitor)" if row["privileged"] else "")
        lines += ["", title, ""]
        if name == "model" or name.startswith("camera:"):
            lines += [f"throughput: {_fmt(row['states_per_s'])} states/s", ""]
        lines.append("| metric | " + " | ".join(tasks) + " | mean |")
        lines.append("|---" * (len(tasks) + 2) + "|")
        for key in row["mean"]:
            cells = [_fmt(row["per_task"][t].get(key)) for t in tasks]
            lines.append(f"| {key} | " + " | ".join(cells) + f" | {_fmt(row['mean'][key])} |")
    if results["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _plots(results: dict, out: Path) -> list[Path]:
    """Progress curves per task (one PNG each) and per-task VOC / AUROC bars (one PNG)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on the robot / CI machines
    import matplotlib.pyplot as plt

    written: list[Path] = []
    for task, kept in results["curves"].items():
        fig, ax = plt.subplots(figsize=(7, 4))
        for j, c in enumerate(kept):
            color = f"C{j % 10}"
            ax.plot(c["progress"], color=color, linestyle="-" if c["success"] else "--",
                    label=f"{c['episode']} ({c['kind']}, {'success' if c['success'] else 'failure'})")
            for k in c["keyframes"]:
                ax.axvline(k, color=color, alpha=0.5, linewidth=0.8, linestyle=":")
        ax.set(title=f"{task}: predicted progress (keyframes as vertical lines)", xlabel="frame",
               ylabel="progress", ylim=(-0.05, 1.05))
        ax.legend(fontsize=6)
        path = out / f"progress_{_safe(task)}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    rows = results["rows"]
    tasks = sorted(results["tasks"])
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 2 + 1.5 * len(tasks) * 2), 4))
    width = 0.8 / max(len(rows), 1)
    for ax, key in zip(axes, ("voc_d1", "auroc")):
        for j, (name, row) in enumerate(rows.items()):
            vals = [row["per_task"].get(t, {}).get(key) for t in tasks]
            ax.bar(np.arange(len(tasks)) + j * width, [np.nan if v is None else v for v in vals], width,
                   label=name + (" (privileged)" if row["privileged"] else ""))
        ax.set_xticks(np.arange(len(tasks)) + width * (len(rows) - 1) / 2)
        ax.set_xticklabels(tasks, rotation=30, ha="right", fontsize=7)
        ax.axhline(0.5 if key == "auroc" else 0.0, color="gray", linewidth=0.8)
        ax.set(title=key, ylim=(-1.05, 1.05) if key == "voc_d1" else (0, 1.05))
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    path = out / "metrics_per_task.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return written + [path]


# --------------------------------------------------------------------------- CLI


def run(cfg: Any) -> dict:
    """Load the model named by ``cfg.model``, evaluate it on ``cfg.data`` and write ``cfg.out``."""
    from omegaconf import OmegaConf

    from reward_models.base import load

    data = OmegaConf.to_container(cfg.data) if OmegaConf.is_config(cfg.data) else cfg.data
    stores = resolve_stores(data)  # a wrong data= path fails before the (slower) model load
    if str(cfg.model).split(":", 1)[0] in RECIPES:  # fitted per task on its first demonstrations
        demo = cfg.get("demo_data")
        demo = OmegaConf.to_container(demo) if OmegaConf.is_config(demo) else demo
        overrides = cfg.get("perceptual") or {}
        overrides = OmegaConf.to_container(overrides) if OmegaConf.is_config(overrides) else dict(overrides)
        if cfg.device is not None:
            overrides["device"] = cfg.device
        model = fit_per_task(str(cfg.model), stores, demo_data=demo, fit_demos=int(cfg.get("fit_demos", 1)),
                             settings=overrides)
    else:
        model = load(cfg.model, device=cfg.device)
    results = evaluate(
        model, stores, cameras_ablation=bool(cfg.cameras_ablation), reference=str(cfg.reference),
        densities=list(cfg.densities), baselines=list(cfg.baselines), threshold_metric=str(cfg.threshold_metric),
        seed=int(cfg.seed), max_episodes_per_task=cfg.max_episodes_per_task, plot_episodes=int(cfg.plot_episodes),
    )
    results["settings"]["model"] = str(cfg.model)
    if isinstance(model, PerTaskModels):
        results["settings"]["fit_demos"] = int(cfg.get("fit_demos", 1))
    render_report(results, cfg.out)
    return results


def main() -> None:
    """Console entry point (Hydra): ``stepwise-eval-rm model=<ckpt> data=<stores> out=<dir>``."""
    from configs.entry import hydra_job
    from episodes import StoreError
    from reward_models.base import CheckpointError

    hydra_job("stepwise-eval-rm", "eval_rm", _job, errors=(StoreError, CheckpointError, ValueError))


def _job(cfg, run_dir: Path) -> str:
    """Evaluate and write the report; returns the one-line summary."""
    mean = run(cfg)["rows"]["model"]["mean"]
    return (f"VOC {_fmt(mean['voc_d1'])}  reversed {_fmt(mean['voc_reversed'])}  AUROC {_fmt(mean['auroc'])}  "
            f"success acc {_fmt(mean['success_acc'])}  ->  {Path(cfg.out) / 'report.md'}")


if __name__ == "__main__":
    main()
