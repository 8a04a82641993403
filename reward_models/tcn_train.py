"""Training the multi-view time-contrastive network (the model is :mod:`reward_models.tcn`).

``train_tcn`` / ``train_from_config`` (``stepwise-train-rm reward=tcn``): the episode videos in
memory, the multi-view batch sampler, augmentation, the InfoNCE loss and the resumable training
loop (``time_gap_correlation`` in :mod:`reward_models.tcn_eval` checks a trained encoder on
held-out video). The design and the recipe are in :mod:`reward_models.tcn`'s docstring.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from reward_models.data import resolve_stores
from reward_models.devices import resolve_device
from reward_models.frames import resize_frames
from reward_models.tcn import TCNConfig, TCNEncoder, TCNNet, save_checkpoint

log = logging.getLogger(__name__)


@dataclass
class TCNTrainConfig:
    """Everything :func:`train_tcn` needs besides the data and the output directory.

    In ``stepwise-train-rm`` these are the ``reward`` group (``configs/reward/tcn.yaml``): override
    as ``reward.steps=...``; ``seed``, ``num_threads`` and ``max_episodes_per_task`` come from the
    top level.

    Attributes:
        cameras: cameras read from the stores; anchor and positive are two distinct ones of these.
        image_size, channels, embed_dim, proj_dim: the architecture (:class:`TCNConfig`).
        steps: optimiser steps.
        batch_episodes: episodes per batch (task-balanced, without replacement).
        times_per_episode: instants drawn per episode (stratified over its length).
        negative_margin: frames of the same episode closer than this (in frames) to an anchor are
            not used as its negatives.
        negatives: ``episode`` (distant frames of the same episode only) or ``batch`` (also other
            tasks' episodes in the batch).
        single_view_prob: share of pairs whose positive is the same camera a few frames away
            (single-view TCN) instead of another camera at the same instant (multi-view TCN).
        single_view_window: the largest time offset of a single-view positive, in frames.
        temperature: InfoNCE softmax temperature.
        lr, weight_decay: AdamW; the learning rate warms up over ``warmup_steps`` then decays (cosine).
        shift_pad: random-shift augmentation, pixels at ``image_size``.
        color_jitter: brightness / contrast / channel-gain augmentation strength (0 = off).
        checkpoint_every: steps between ``trainer_state.pt`` saves.
        seed: seeds the network, the sampler and the augmentation.
        num_threads: torch CPU threads.
        max_episodes_per_task: use at most this many episodes of each task (None = all).
        allow_heldout: train on tasks the default task split holds out (off: refused).
        device: ``auto`` (GPU when present), ``cpu`` or ``cuda``.
    """

    cameras: tuple[str, ...] = ("corner", "corner2", "gripperPOV")
    image_size: int = 64
    channels: tuple[int, int, int, int] = (16, 32, 64, 64)
    embed_dim: int = 32
    proj_dim: int = 64
    steps: int = 600
    batch_episodes: int = 12
    times_per_episode: int = 8
    negative_margin: int = 8
    negatives: str = "episode"
    single_view_prob: float = 0.5
    single_view_window: int = 2
    temperature: float = 0.1
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    shift_pad: int = 4
    color_jitter: float = 0.2
    checkpoint_every: int = 100
    seed: int = 0
    num_threads: int = 2
    max_episodes_per_task: int | None = None
    allow_heldout: bool = False
    device: str = "auto"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "TCNTrainConfig":
        """Build from a dict / DictConfig; unknown keys are an error naming them (catches typos)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in dict(values).items() if k != "kind"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"tcn training: unknown setting(s) {unknown}; known: {sorted(known)}")
        for key in ("cameras", "channels"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def model_config(self) -> TCNConfig:
        """The architecture part."""
        return TCNConfig(int(self.image_size), tuple(self.channels), int(self.embed_dim), int(self.proj_dim), tuple(self.cameras))


# --------------------------------------------------------------------------- data


@dataclass
class VideoEpisode:
    """One multi-camera episode in memory: ``images`` uint8 (T, V, S, S, 3) at the network's size."""

    images: np.ndarray
    task: str


def load_videos(data, cameras: tuple[str, ...], size: int, max_per_task: int | None = None) -> list[VideoEpisode]:
    """Every episode (any kind: the loss needs no labels) with all of ``cameras`` from the stores in
    ``data`` (a store, a directory of stores, or a list), resized to ``size``."""
    from episodes import EpisodeStore

    out: list[VideoEpisode] = []
    per_task: dict[str, int] = {}
    for path in resolve_stores(data):
        with EpisodeStore(path, cameras=list(cameras)) as store:
            for i in range(len(store)):
                task = store.episode_attrs(i)["task"]
                if max_per_task is not None and per_task.get(task, 0) >= max_per_task:
                    continue
                ep = store[i]
                images = np.stack([ep.images[c] for c in cameras], axis=1)
                if len(images) < 2:
                    continue
                out.append(VideoEpisode(resize_frames(images, size), task))
                per_task[task] = per_task.get(task, 0) + 1
    if not out:
        raise ValueError(f"no episodes with cameras {list(cameras)} in {data}")
    return out


@dataclass
class ViewBatch:
    """One batch of N instants: anchor and positive uint8 (N, S, S, 3); episode, task, time (of
    the anchor) int (N,); single_view bool (N,): the positive is the anchor's camera, not another."""

    anchor: np.ndarray
    positive: np.ndarray
    episode: np.ndarray
    task: np.ndarray
    time: np.ndarray
    single_view: np.ndarray


class MultiViewSampler:
    """Draws :class:`ViewBatch` es (see the module docstring); ``rng`` is its whole state."""

    def __init__(self, episodes: list[VideoEpisode], batch_episodes: int, times_per_episode: int, seed: int = 0,
                 single_view_prob: float = 0.0, single_view_window: int = 2) -> None:
        self.episodes = episodes
        self.batch_episodes, self.times = int(batch_episodes), int(times_per_episode)
        self.single_view_prob, self.window = float(single_view_prob), max(int(single_view_window), 1)
        tasks = sorted({e.task for e in episodes})
        self.task_ids = np.array([tasks.index(e.task) for e in episodes])
        counts = np.bincount(self.task_ids)
        self.weights = 1.0 / counts[self.task_ids]  # every task equally likely, whatever its episode count
        self.weights /= self.weights.sum()
        self.rng = np.random.default_rng(seed)

    def sample(self) -> ViewBatch:
        """One batch."""
        rng = self.rng
        n_eps = min(self.batch_episodes, len(self.episodes))
        chosen = rng.choice(len(self.episodes), size=n_eps, replace=False, p=self.weights)
        anchor, positive, ep_ids, times, single = [], [], [], [], []
        for e in chosen:
            images = self.episodes[e].images
            t_len, views = images.shape[:2]
            edges = np.linspace(0, t_len, self.times + 1)
            ts = np.unique(np.minimum(rng.uniform(edges[:-1], edges[1:]).astype(int), t_len - 1))
            for t in ts:
                if rng.random() < self.single_view_prob:  # single-view TCN: same camera, a nearby instant
                    a = b = int(rng.integers(views))
                    shift = int(rng.integers(1, self.window + 1)) * (1 if rng.random() < 0.5 else -1)
                    t_pos = int(np.clip(t + shift, 0, t_len - 1))
                else:  # multi-view TCN: another camera, the same instant
                    a, b = rng.choice(views, size=2, replace=False)
                    t_pos = t
                anchor.append(images[t, a])
                positive.append(images[t_pos, b])
                single.append(a == b)
            ep_ids += [int(e)] * len(ts)
            times += list(ts)
        ep_ids = np.array(ep_ids)
        return ViewBatch(np.stack(anchor), np.stack(positive), ep_ids, self.task_ids[ep_ids], np.array(times),
                         np.array(single, dtype=bool))


def color_jitter(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Float pixels (N, 3, H, W) in [0, 255]: random brightness, contrast and per-channel gain."""
    if strength <= 0:
        return x
    n = len(x)

    def u(*shape: int) -> torch.Tensor:
        return 1 + strength * (2 * torch.rand(*shape, generator=generator) - 1)

    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * u(n, 1, 1, 1) + mean  # contrast
    x = x * u(n, 1, 1, 1) * (1 + 0.5 * (u(n, 3, 1, 1) - 1))  # brightness and channel gain
    return x.clamp(0, 255)


def time_contrastive_loss(z: torch.Tensor, episode: torch.Tensor, task: torch.Tensor, time_: torch.Tensor,
                          temperature: float, margin: int, negatives: str = "episode") -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-view InfoNCE over 2N unit vectors ``z`` = [anchors; positives] (row i pairs with i+N).

    ``episode``, ``task``, ``time_``: int (N,) of each instant. ``negatives``: ``episode`` (only
    distant frames of the same episode, the paper's negatives) or ``batch`` (also other tasks'
    episodes). Returns (loss, hits): hits bool (2N,) says whether each row's most similar
    candidate is its positive."""
    if negatives not in ("episode", "batch"):
        raise ValueError(f"negatives must be 'episode' or 'batch', got {negatives!r}")
    n = len(episode)
    ep, tk, tt = episode.repeat(2), task.repeat(2), time_.repeat(2)
    idx = torch.arange(2 * n)
    pos = (idx + n) % (2 * n)
    same_ep = ep[:, None] == ep[None]
    near = same_ep & ((tt[:, None] - tt[None]).abs() <= margin)  # includes self
    other = ~same_ep if negatives == "episode" else (tk[:, None] == tk[None]) & ~same_ep
    invalid = near | other
    invalid[idx, pos] = False
    logits = (z @ z.T / temperature).masked_fill(invalid, float("-inf"))
    return F.cross_entropy(logits, pos), logits.argmax(1) == pos


# --------------------------------------------------------------------------- training


def _check_not_heldout(episodes: list[VideoEpisode]) -> None:
    from sim.tasks import task_split

    heldout = set(task_split()["heldout"])
    bad = sorted({e.task for e in episodes} & heldout)
    if bad:
        raise ValueError(f"tcn training data holds held-out task(s) {bad} of the default task split: train on "
                         "training tasks only (e.g. data=/work/data/train), or set reward.allow_heldout=true")


def train_tcn(stores, out: str | Path, cfg: TCNTrainConfig | Mapping[str, Any], stop_after: int | None = None) -> TCNEncoder:
    """Train a TCN on the multi-camera episodes of ``stores`` and save it as a checkpoint at ``out``.

    Args:
        stores: a store file, a directory of stores, or a list of either.
        out: checkpoint directory; a ``trainer_state.pt`` there is resumed (same settings required).
        cfg: a :class:`TCNTrainConfig` or a mapping of its fields.
        stop_after: return after this many steps of THIS call without the final save, as a killed
            run would (time-boxed runs, resume tests); run again to continue.

    Returns:
        The trained encoder, loaded back from ``out`` (or from the live network when stopped early).
    """
    from tqdm import tqdm

    from reward_models import distributed
    from reward_models.augment import random_shift

    cfg = cfg if isinstance(cfg, TCNTrainConfig) else TCNTrainConfig.from_mapping(cfg)
    if len(cfg.cameras) < 2:
        raise ValueError(f"tcn training needs at least 2 cameras (multi-view positives), got {list(cfg.cameras)}")
    if int(cfg.steps) < 1:
        raise ValueError(f"tcn training: steps must be >= 1, got {cfg.steps}")
    torch.set_num_threads(int(cfg.num_threads))
    torch.manual_seed(int(cfg.seed))
    out = Path(out)
    device = resolve_device(cfg.device)
    t_load = time.perf_counter()
    episodes = load_videos(stores, tuple(cfg.cameras), int(cfg.image_size), cfg.max_episodes_per_task)
    if not cfg.allow_heldout:
        _check_not_heldout(episodes)
    tasks = sorted({e.task for e in episodes})
    log.info("tcn: %d episodes of %d tasks, %d frames x %d cameras, loaded in %.0f s", len(episodes), len(tasks),
             sum(len(e.images) for e in episodes), len(cfg.cameras), time.perf_counter() - t_load)
    net = TCNNet(cfg.model_config()).to(device)
    sampler = MultiViewSampler(episodes, cfg.batch_episodes, cfg.times_per_episode, seed=int(cfg.seed),
                               single_view_prob=float(cfg.single_view_prob), single_view_window=int(cfg.single_view_window))
    opt = torch.optim.AdamW(net.parameters(), lr=float(cfg.lr), weight_decay=float(cfg.weight_decay))
    steps, warm = int(cfg.steps), max(int(cfg.warmup_steps), 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: float(min(1.0, (s + 1) / warm) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps))))
    gen = torch.Generator().manual_seed(int(cfg.seed))
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "trainer_state.pt"
    step, losses = 0, []
    model_cfg = asdict(cfg.model_config())
    if state_path.exists():
        state = distributed.load_state(state_path, map_location=device)
        if state["model_config"] != model_cfg:
            raise ValueError(f"{state_path} was written for architecture {state['model_config']}, not {model_cfg}: "
                             "resume with the same settings or use a fresh out=")
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        sampler.rng.bit_generator.state = state["sampler_rng"]
        gen.set_state(state["gen"])
        step, losses = int(state["step"]), list(state["losses"])
        log.info("tcn: resuming from step %d of %d (%s)", step, steps, state_path)
    ranks = distributed.current()
    wrapped = distributed.data_parallel(net)
    writer = distributed.summary_writer(str(out / "tb"))
    bar = tqdm(range(step, steps), initial=step, total=steps, desc="train tcn", unit="step", disable=not ranks.main)
    t0, done_here = time.perf_counter(), 0
    for step in bar:
        net.train()
        batch = sampler.sample()
        views = torch.from_numpy(np.concatenate([batch.anchor, batch.positive]))  # (2N, S, S, 3) uint8
        views = random_shift(views, int(cfg.shift_pad), gen).permute(0, 3, 1, 2).float()
        views = color_jitter(views, float(cfg.color_jitter), gen)  # the whole batch on every rank: one generator
        # each rank encodes its block of rows; the loss sees every rank's rows (contrastive negatives)
        proj = distributed.gather_rows(wrapped(_project, views[distributed.block(len(views), ranks)].to(device)))
        loss, hits = time_contrastive_loss(proj, torch.from_numpy(batch.episode), torch.from_numpy(batch.task),
                                          torch.from_numpy(batch.time), float(cfg.temperature), int(cfg.negative_margin),
                                          cfg.negatives)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.item()))
        multi = ~torch.from_numpy(np.concatenate([batch.single_view, batch.single_view]))
        cross_view = float(hits[multi].float().mean()) if multi.any() else float("nan")
        writer.add_scalar("train/loss", losses[-1], step)
        writer.add_scalar("train/top1", float(hits.float().mean()), step)
        writer.add_scalar("train/top1_cross_view", cross_view, step)  # the multi-view pairs alone
        bar.set_postfix(loss=f"{losses[-1]:.3f}", top1=f"{float(hits.float().mean()):.2f}", top1_cross=f"{cross_view:.2f}")
        done_here += 1
        last = step + 1 == steps
        if (step + 1) % int(cfg.checkpoint_every) == 0 or last or (stop_after is not None and done_here >= stop_after):
            distributed.save_main({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                                   "sampler_rng": sampler.rng.bit_generator.state, "gen": gen.get_state(),
                                   "step": step + 1, "losses": losses, "model_config": model_cfg}, state_path)
        if stop_after is not None and done_here >= stop_after and not last:
            writer.close()
            return _live_encoder(net)
    writer.close()
    if not ranks.main:  # rank 0 writes the checkpoint
        return _live_encoder(net)
    k = max(1, min(100, len(losses) // 10))
    training = {**{k_: (list(v) if isinstance(v, tuple) else v) for k_, v in asdict(cfg).items()},
                "steps_done": len(losses), "loss_first": float(np.mean(losses[:k])), "loss_last": float(np.mean(losses[-k:])),
                "loss_window": k, "episodes": len(episodes), "tasks": tasks,
                "seconds_this_run": round(time.perf_counter() - t0, 1)}
    log.info("tcn: loss %.3f (first %d steps) -> %.3f (last %d)", training["loss_first"], k, training["loss_last"], k)
    save_checkpoint(net.cpu(), out, training)
    return TCNEncoder(out)


def _project(net: TCNNet, views: torch.Tensor) -> torch.Tensor:
    """float (B, 3, S, S) augmented views in [0, 255] -> projection-head embeddings (B, D); one forward pass."""
    _, emb = net(net.normalise(views))
    return net.project(emb)


def _live_encoder(net: TCNNet) -> TCNEncoder:
    """An encoder around a network in memory (no checkpoint read)."""
    enc = TCNEncoder.__new__(TCNEncoder)
    enc.name, enc.checkpoint, enc.batch_size = "tcn", None, 256
    enc.net, enc.meta = net.cpu().eval(), {}
    enc.device, enc.feature_dim = torch.device("cpu"), net.feature_dim
    return enc


def train_from_config(cfg) -> TCNEncoder:
    """``stepwise-train-rm reward=tcn``: :func:`train_tcn` with ``cfg.reward`` (configs/reward/tcn.yaml),
    ``cfg.data``, ``cfg.out``, ``cfg.seed``, ``cfg.num_threads`` and ``cfg.max_episodes_per_task``."""
    from omegaconf import OmegaConf

    reward = OmegaConf.to_container(cfg.reward, resolve=True) if OmegaConf.is_config(cfg.reward) else dict(cfg.reward)
    reward.setdefault("seed", int(cfg.seed))
    reward.setdefault("num_threads", int(cfg.num_threads))
    reward.setdefault("max_episodes_per_task", cfg.get("max_episodes_per_task"))
    data = OmegaConf.to_container(cfg.data) if OmegaConf.is_config(cfg.data) else cfg.data
    return train_tcn(data, cfg.out, TCNTrainConfig.from_mapping(reward))
