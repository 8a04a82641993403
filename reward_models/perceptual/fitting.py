"""Fitting a :class:`~reward_models.perceptual.model.PerceptualReward` from demonstrations of one task
(:func:`fit`), and the ``stepwise-train-rm reward=perceptual`` trainer (:func:`fit_from_config`)."""

from __future__ import annotations

import itertools
import math
import time
from typing import Any, Mapping, Sequence

import numpy as np

from reward_models.base import FramesError, check_frames
from reward_models.encoders import ENCODERS, FrameEncoder
from reward_models.perceptual.config import PerceptualConfig, fit_kwargs
from reward_models.perceptual.model import Head, PerceptualReward, build_frame_encoder, encode_frames, fuse, head_key
from reward_models.perceptual.segmentation import (
    check_segmentable, choose_num_steps, effective_min_len, segment, segmentation_costs,
)
from reward_models.perceptual.stats import fit_step_stats, logistic_fit



def _subsets(cameras: Sequence[str]) -> list[tuple[str, ...]]:
    return [c for k in range(len(cameras), 0, -1) for c in itertools.combinations(cameras, k)]


def _normaliser(x: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(0), np.maximum(x.std(0), floor)


def _positive_masks(bounds: list[np.ndarray], end_frac: float) -> np.ndarray:
    """bool (n + 1, N) over the concatenated demo frames: row 0 the frames of step 1 before its
    positives (the start state; at least one), row i the final ``end_frac`` of step i."""
    n = len(bounds[0]) - 1
    masks = []
    for b in bounds:
        m = np.zeros((n + 1, int(b[-1])), dtype=bool)
        m[0, :max(1, int(math.floor((1.0 - end_frac) * int(b[1]))))] = True
        for i in range(n):
            length = int(b[i + 1] - b[i])
            m[i + 1, int(b[i + 1]) - max(1, int(math.ceil(end_frac * length))):int(b[i + 1])] = True
        masks.append(m)
    return np.concatenate(masks, axis=1)


def _success_labels(demos: Sequence[Any], bounds: list[np.ndarray], positives_last: np.ndarray) -> np.ndarray:
    """bool (N,): frames from each demo's last keyframe on (the success onset), else the last step's positives."""
    labels, offset = [], 0
    for ep, b in zip(demos, bounds):
        t = int(b[-1])
        keyframes = np.asarray(getattr(ep, "keyframes", None) if getattr(ep, "keyframes", None) is not None else [], dtype=np.int64)
        if len(keyframes) and 0 < int(keyframes[-1]) < t:
            labels.append(np.arange(t) >= int(keyframes[-1]))
        else:
            labels.append(positives_last[offset:offset + t])
        offset += t
    return np.concatenate(labels)


def _fit_head(x: np.ndarray, folds: np.ndarray, positives: np.ndarray, success_pos: np.ndarray,
              failures: np.ndarray | None, cfg: PerceptualConfig) -> Head:
    """Fit one camera subset's head on demo features x (N, D) (see the package docstring)."""
    mean, std = _normaliser(x, cfg.std_floor)
    z = (x - mean) / std
    stats = fit_step_stats(z, positives, cfg.alpha, cfg.top_k, cfg.sigma_floor)
    # cross-fitted log-likelihoods: every demo frame scored by statistics that did not see it
    ll = np.empty((len(x), positives.shape[0]))
    for f in np.unique(folds):
        held = folds == f
        train_pos = positives[:, ~held]
        usable = train_pos.any(1).all() and (~train_pos).any(1).all()
        # a fold leaving some step without positives (or negatives) is scored by the full fit
        sub = fit_step_stats(z[~held], train_pos, cfg.alpha, cfg.top_k, cfg.sigma_floor) if usable else stats
        ll[held] = sub.loglik(z[held], cfg.q_max)
    calib = np.array([logistic_fit(ll[:, i], positives[i]) for i in range(positives.shape[0])])
    ll_last, labels = ll[:, -1], success_pos
    if failures is not None and len(failures):
        ll_last = np.concatenate([ll_last, stats.loglik((failures - mean) / std, cfg.q_max)[:, -1]])
        labels = np.concatenate([labels, np.zeros(len(failures), dtype=bool)])
    success = np.array(logistic_fit(ll_last, labels))
    return Head(mean, std, stats, calib, success)


def _episode_frames(ep: Any, cameras: Sequence[str], image_size: tuple[int, int]) -> dict[str, np.ndarray]:
    """A demonstration's frames of ``cameras``, checked: camera -> uint8 (T, H, W, 3)."""
    images = getattr(ep, "images", None)
    if images is None:
        raise ValueError(f"fit needs episodes.Episode objects (with .images), got {type(ep).__name__}")
    missing = [c for c in cameras if c not in images]
    if missing:
        raise FramesError(f"a demonstration lacks camera(s) {missing} (it has {list(images)}): "
                          f"fit with cameras={list(images)} or record those cameras")
    frames = {c: images[c] for c in cameras}
    size = tuple(frames[cameras[0]].shape[1:3])
    if size != tuple(image_size):
        raise FramesError(f"demonstration frames are {size[0]}x{size[1]} but image_size is {image_size[0]}x{image_size[1]}: "
                          f"set image_size={size[0]} (reward.image_size={size[0]} on the command line)")
    check_frames(frames, cameras, image_size)
    return frames


def fit(
    episodes: Sequence[Any],
    encoder: FrameEncoder | str = "pixels",
    n_steps: int | None = None,
    cameras: Sequence[str] | None = None,
    failures: Sequence[Any] = (),
    encoder_kwargs: Mapping[str, Any] | None = None,
    **config: Any,
) -> PerceptualReward:
    """Fit a :class:`PerceptualReward` from 1 to 10 demonstrations of one task.

    Args:
        episodes: successful demonstrations (``episodes.Episode``; frames of ``cameras``).
        encoder: an encoder name built with ``encoder_kwargs`` (and the config's ``device`` where
            the encoder takes one), or a :class:`~reward_models.encoders.FrameEncoder`. A checkpoint
            rebuilds the encoder from its ``config()``: pass a name (or an instance with a weights
            file) when the model will be saved, since an instance with random weights built
            elsewhere cannot be rebuilt identically.
        n_steps: steps per demonstration (None: automatic, see :func:`choose_num_steps`).
        cameras: the rig (default: the first demo's cameras).
        failures: failed episodes of the task: extra negatives for the success calibration.
        **config: further :class:`PerceptualConfig` fields (fusion, min_len, alpha, top_k, ...).

    Raises:
        ValueError: no demos, a demo too short for the steps asked, bad config, an unknown encoder.
        FramesError: a demo lacking a camera, or frames not of ``image_size``.
        FileNotFoundError: an encoder weights file that does not exist (raised by the encoder).
    """
    started = time.perf_counter()
    episodes = list(episodes)
    if not episodes:
        raise ValueError("fit needs at least one demonstration episode")
    cameras = tuple(cameras) if cameras else tuple(episodes[0].images)
    image_size = tuple(config.pop("image_size", None) or episodes[0].image_size)
    cfg = PerceptualConfig(cameras=cameras, image_size=image_size, n_steps=n_steps, **config)
    cfg.validate()  # a bad option fails before any encoder is built
    if isinstance(encoder, str):
        enc = build_frame_encoder({"name": encoder, **dict(encoder_kwargs or {})}, cfg.device)
    else:
        enc = encoder
    cfg.encoder = dict(enc.config())
    cfg.validate()
    cfg.task = str(getattr(episodes[0], "task", ""))
    cfg.instruction = str(getattr(episodes[0], "instruction", ""))

    demo_feats = [{c: encode_frames(enc, f) for c, f in _episode_frames(ep, cameras, cfg.image_size).items()} for ep in episodes]
    fail_feats = [{c: encode_frames(enc, f) for c, f in _episode_frames(ep, cameras, cfg.image_size).items()} for ep in failures]
    lengths = [len(next(iter(f.values()))) for f in demo_feats]

    # one segmentation, on the whole rig's fused features, shared by every camera subset
    full = [fuse(f, cameras, cfg.fusion) for f in demo_feats]
    mean, std = _normaliser(np.concatenate(full), cfg.std_floor)
    z_demos = [(x - mean) / std for x in full]
    min_lens = [effective_min_len(t, cfg.min_len, cfg.min_frac) for t in lengths]
    if n_steps is None:
        n_cap = min(int(cfg.n_max), *(t // m for t, m in zip(lengths, min_lens)))
        if n_cap < 1:
            k = int(np.argmin([t // m for t, m in zip(lengths, min_lens)]))
            check_segmentable(lengths[k], 1, min_lens[k])
        costs = np.mean([segmentation_costs(z, n_cap, m, cfg.segment_weighting) for z, m in zip(z_demos, min_lens)], axis=0)
        n = choose_num_steps(costs, int(cfg.n_min), float(cfg.auto_threshold))
    else:
        n = int(n_steps)
    for t, m in zip(lengths, min_lens):
        check_segmentable(t, n, m)  # raises, naming the numbers and the fix
    bounds = [segment(z, n, m, cfg.segment_weighting)[0] for z, m in zip(z_demos, min_lens)]

    positives = _positive_masks(bounds, float(cfg.end_frac))
    success_pos = _success_labels(episodes, bounds, positives[-1])
    if len(episodes) > 1:
        folds = np.concatenate([np.full(t, k) for k, t in enumerate(lengths)])
    else:
        folds = np.arange(lengths[0]) % 2  # odd frames scored by statistics of even frames, and back
    heads = {}
    for subset in _subsets(cameras):
        x = np.concatenate([fuse(f, subset, cfg.fusion) for f in demo_feats])
        fx = np.concatenate([fuse(f, subset, cfg.fusion) for f in fail_feats]) if fail_feats else None
        heads[head_key(subset)] = _fit_head(x, folds, positives, success_pos, fx, cfg)
    cfg.n_steps = n
    cfg.fit_info = {"demos": len(episodes), "failures": len(fail_feats), "frames": int(sum(lengths)),
                    "bounds": [b.tolist() for b in bounds], "seconds": round(time.perf_counter() - started, 3)}
    return PerceptualReward(cfg, heads, encoder=enc)



def load_task_episodes(data: Any, cameras: Sequence[str] | None, max_demos: int | None = 10,
                       max_failures: int = 10) -> tuple[list[Any], list[Any]]:
    """Successful expert demos and failed episodes of ONE task from stores (file, directory or list).

    Returns ``(demos, failures)`` in store order, at most ``max_demos`` / ``max_failures``.
    Raises ValueError when the stores hold several tasks (the model is per task) or no success.
    """
    from episodes import EpisodeStore
    from reward_models.data import resolve_stores

    demos, failures, tasks = [], [], set()
    for path in resolve_stores(data):
        with EpisodeStore(path, cameras=list(cameras) if cameras else None) as store:
            for i in range(len(store)):
                attrs = store.episode_attrs(i)
                tasks.add(attrs["task"])
                if attrs["success"] and attrs["kind"] == "expert":
                    if max_demos is None or len(demos) < max_demos:
                        demos.append(store[i])
                elif not attrs["success"] and len(failures) < max_failures:
                    failures.append(store[i])
    if len(tasks) > 1:
        raise ValueError(f"data holds {len(tasks)} tasks {sorted(tasks)}: the perceptual reward is fitted per task, "
                         "give one task's store (e.g. data=data/demos/drawer-open.hdf5)")
    if not demos:
        raise ValueError(f"data {data!r} holds no successful expert demonstration to fit on: collect some with stepwise-collect")
    return demos, failures


def fit_from_config(cfg: Any) -> PerceptualReward:
    """The ``stepwise-train-rm reward=perceptual encoder=<name> data=<store> out=<dir>`` trainer.

    Reads ``cfg.encoder`` (an encoder name; else ``cfg.reward.encoder``), ``cfg.reward``
    (``configs/reward/perceptual.yaml``),
    ``cfg.data`` (one task's store(s)), ``cfg.max_episodes_per_task`` (demos used, default up to
    10) and ``cfg.out``; fits, saves to ``cfg.out`` and returns the model.
    """
    import logging

    from omegaconf import OmegaConf

    log = logging.getLogger(__name__)
    try:
        import torch

        torch.set_num_threads(int(cfg.get("num_threads", 1) or 1))
    except ImportError:  # pragma: no cover - torch is a dependency; numpy-only encoders need none
        pass
    reward = OmegaConf.to_container(cfg.reward, resolve=True) if OmegaConf.is_config(cfg.reward) else dict(cfg.reward)
    encoder = cfg.get("encoder") or reward.get("encoder")
    if not encoder:
        raise ValueError(f"reward=perceptual needs encoder=<name> (or reward.encoder=<name>): one of {sorted(ENCODERS)}")
    kwargs = fit_kwargs(reward)
    data = OmegaConf.to_container(cfg.data) if OmegaConf.is_config(cfg.data) else cfg.data
    cap = cfg.get("max_episodes_per_task")
    demos, failures = load_task_episodes(data, kwargs["cameras"], max_demos=int(cap) if cap else 10)
    model = fit(demos, str(encoder), failures=failures, **kwargs)
    model.save(cfg.out)
    log.info("fitted a %d-step perceptual reward (%s) on %d demos (+%d failures) in %.1f s -> %s", model.n_steps,
             encoder, len(demos), len(failures), model.cfg.fit_info["seconds"], cfg.out)
    return model
