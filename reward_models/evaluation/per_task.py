"""Models fitted per task for an evaluation (``model=perceptual:<encoder> fit_demos=1``): each task
of the eval stores gets the perceptual-feature reward fitted on its first successful expert
demonstrations, and those episodes are never scored."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from reward_models.data import resolve_stores
from reward_models.evaluation.scorers import PerTaskModels

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
    base = OmegaConf.to_container(OmegaConf.load(Path(__file__).resolve().parents[2] / "configs" / "reward" / "perceptual.yaml"))
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
