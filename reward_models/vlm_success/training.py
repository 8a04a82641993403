"""Training (and adapting) the success classifier: :func:`train` and the ``stepwise-train-rm
reward=vlm_success`` trainer :func:`train_from_config`."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from reward_models.base import load
from reward_models.metrics import auroc
from reward_models.vlm_success.calibration import binary_nll, calibrate
from reward_models.vlm_success.data import BalancedSampler, FrameSet, load_frame_set, split_episodes
from reward_models.vlm_success.model import DEFAULT_PROMPTS, VLMSuccessClassifier, VLMSuccessConfig

log = logging.getLogger(__name__)


def color_jitter(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Per-image brightness, contrast and saturation jitter of float images (N, 3, H, W) in [0, 1]."""
    if strength <= 0:
        return x
    n = x.shape[0]

    def factor():
        return (1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * strength).to(x.device)

    x = x * factor()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor() + mean
    gray = x.mean(dim=1, keepdim=True)
    x = (x - gray) * factor() + gray
    return x.clamp(0, 1)


TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 2000, "batch_size": 32, "lr": 2e-3, "tower_lr_scale": 1.0, "weight_decay": 0.05, "warmup": 100,
    "adapt_steps": 300, "adapt_lr": 2e-4, "shift_pad": 4, "color_jitter": 0.15, "camera_keep_prob": 0.7,
    "mismatch_share": 0.1, "negative_stride": 3, "val_fraction": 0.15, "eval_every": 500,
    "checkpoint_every": 100, "threshold_metric": "accuracy", "calibrate_bias": True,
}


def _model_config_from(reward: Mapping) -> VLMSuccessConfig:
    size = reward.get("image_size", 96)
    size = (int(size), int(size)) if isinstance(size, (int, float, str)) else tuple(int(s) for s in size)
    arch_config = reward.get("arch_config")
    if arch_config is not None:
        arch_config = json.loads(json.dumps(_plain(arch_config)))
    return VLMSuccessConfig(
        cameras=tuple(reward.get("cameras", VLMSuccessConfig.cameras)), image_size=size,
        arch=str(reward.get("arch", VLMSuccessConfig.arch)), arch_config=arch_config,
        pretrained=reward.get("pretrained"), text_encoder=str(reward.get("text_encoder", "minilm")),
        zero_shot=bool(reward.get("zero_shot", False)),
        prompts=tuple(reward.get("prompts", DEFAULT_PROMPTS)), head_dim=int(reward.get("head_dim", 256)),
        device=str(reward.get("device", "auto")))


def _plain(obj: Any) -> Any:
    """OmegaConf containers -> plain Python (dicts and lists), other values unchanged."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(obj):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return obj


@torch.no_grad()
def frame_set_logits(model: VLMSuccessClassifier, frames: FrameSet, cameras: Sequence[str] | None = None,
                     batch: int = 128) -> np.ndarray:
    """Uncalibrated logits float64 (N,) of every frame of ``frames`` (all cameras, or a subset)."""
    cams = list(cameras or model.cameras)
    ids = [model.cameras.index(c) for c in cams]
    net = model.net
    net.eval()
    table = model.text_table(frames.instructions)
    out = []
    for i in range(0, len(frames.labels), batch):
        chunk = torch.from_numpy(frames.images[i : i + batch][:, ids]).to(model.device)
        b, v = chunk.shape[:2]
        x = chunk.reshape(b * v, *chunk.shape[2:]).permute(0, 3, 1, 2).float() / 255.0
        fused = net.fuse(net.encode_views(x).view(b, v, -1), ids)
        out.append(net.head_logits(fused, table[torch.from_numpy(frames.text[i : i + batch]).to(model.device)]).cpu())
    return torch.cat(out).double().numpy() if out else np.zeros(0)


def _frame_logits(net, views: torch.Tensor, mask: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Success logits (B,) of B frames: ``views`` float (N, 3, S, S) the kept views of ``mask`` bool
    (B, V) in row order, ``text`` (B, D) their instructions' embeddings. One forward pass."""
    feats = net.encode_views(views)
    full = torch.zeros(*mask.shape, feats.shape[-1], device=feats.device, dtype=feats.dtype)
    full[mask] = feats
    return net.head_logits(net.fuse(full, list(range(mask.shape[1])), mask), text)


def train(data, out: str | Path, reward: Mapping | None = None, init: str | Path | None = None, seed: int = 0,
          max_episodes_per_task: int | None = None, num_threads: int = 2) -> VLMSuccessClassifier:
    """Train (or, with ``init``, adapt) a success classifier on episode stores; save it to ``out``.

    Args:
        data: store file, directory of stores, or a list of them (successes and failures).
        out: checkpoint directory; holds ``trainer_state.pt`` (resume by running again) and ``tb/``.
        reward: the ``reward`` config group (``configs/reward/vlm_success.yaml``): model settings and
            training settings (``steps``, ``batch_size``, ``lr``, ... see :data:`TRAIN_DEFAULTS`).
        init: checkpoint (or shipped name) to adapt; the model settings then come from the checkpoint,
            and ``adapt_steps`` / ``adapt_lr`` replace ``steps`` / ``lr``.
        seed: seeds the model, sampling, augmentation and the validation split.
        max_episodes_per_task: keep at most this many successful episodes per task.
        num_threads: torch CPU threads.
    Returns:
        The trained, calibrated model (also saved at ``out``).
    """
    from tqdm import tqdm

    from reward_models import distributed
    from reward_models.augment import random_shift

    r = {**TRAIN_DEFAULTS, **dict(_plain(reward) or {})}
    torch.set_num_threads(int(num_threads))
    torch.manual_seed(int(seed))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    if init:
        model = load(init, device=r.get("device"))
        if not isinstance(model, VLMSuccessClassifier):
            raise ValueError(f"init={init} is a {model.kind} model; vlm_success training needs a vlm_success checkpoint")
        steps, lr = int(r["adapt_steps"]), float(r["adapt_lr"])
    else:
        model = VLMSuccessClassifier(_model_config_from(r))
        steps, lr = int(r["steps"]), float(r["lr"])
    frames = load_frame_set(data, model.cameras, model.image_size, max_episodes_per_task, int(r["negative_stride"]))
    val_eps = split_episodes(frames.episodes, float(r["val_fraction"]), int(seed))
    is_val = val_eps[frames.episode]
    train_set, val_set = frames.subset(~is_val), frames.subset(is_val)
    log.info("vlm_success: %d train frames (%d done) from %d episodes, %d validation frames (%d done) from %d episodes",
             len(train_set.labels), int(train_set.labels.sum()), int((~val_eps).sum()),
             len(val_set.labels), int(val_set.labels.sum()), int(val_eps.sum()))
    sampler = BalancedSampler(train_set.labels, seed=int(seed))
    table = model.text_table(frames.instructions)  # cached into the config: saved with the model
    net = model.net
    tower = [p for p in net.visual.parameters() if p.requires_grad]
    tower_ids = {id(p) for p in tower}
    rest = [p for p in net.parameters() if p.requires_grad and id(p) not in tower_ids]
    opt = torch.optim.AdamW([{"params": tower, "lr": lr * float(r["tower_lr_scale"])}, {"params": rest, "lr": lr}],
                            weight_decay=float(r["weight_decay"]))
    warmup = max(1, min(int(r["warmup"]), steps // 5 + 1))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1))))
    gen = torch.Generator().manual_seed(int(seed))
    state_path = out / "trainer_state.pt"
    step = 0
    if state_path.exists():
        state = distributed.load_state(state_path, map_location=model.device)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        sampler.rng.bit_generator.state = state["sampler_rng"]
        gen.set_state(state["gen"])
        step = int(state["step"])
        log.info("resuming from step %d of %d (%s)", step, steps, state_path)
    ranks = distributed.current()
    wrapped = distributed.data_parallel(net)
    writer = distributed.summary_writer(str(out / "tb"))
    v = len(model.cameras)
    batch_size = int(r["batch_size"])
    local = torch.from_numpy(distributed.shard(batch_size, ranks))  # this rank's frames of each batch
    pos_by_text = {k: np.flatnonzero((train_set.labels == 1) & (train_set.text == k)) for k in range(len(frames.instructions))}
    bar = tqdm(range(step, steps), initial=step, total=steps, desc="train vlm_success", unit="step", disable=not ranks.main)
    t0 = time.perf_counter()
    for step in bar:
        net.train()
        idx = sampler.sample(batch_size)
        labels = train_set.labels[idx].astype(np.float32)
        text = train_set.text[idx].copy()
        if len(frames.instructions) > 1 and float(r["mismatch_share"]) > 0:
            # a done frame of another task with THIS instruction is "not done": the text must matter
            neg_slots = np.arange(batch_size // 2, batch_size)
            swap = neg_slots[sampler.rng.random(len(neg_slots)) < float(r["mismatch_share"])]
            for j in swap:
                k = int(text[j])
                others = [o for o in pos_by_text if o != k and len(pos_by_text[o])]
                if others:
                    idx[j] = sampler.rng.choice(pos_by_text[int(sampler.rng.choice(others))])
        images = torch.from_numpy(train_set.images[idx])
        mask = torch.rand(batch_size, v, generator=gen) < float(r["camera_keep_prob"])  # camera dropout
        empty = ~mask.any(1)
        mask[empty, torch.randint(0, v, (int(empty.sum()),), generator=gen)] = True
        # the whole batch is augmented on every rank (one generator state), then each keeps its frames
        flat = random_shift(images[mask], int(r["shift_pad"]), gen)  # only kept views are encoded
        x = color_jitter(flat.permute(0, 3, 1, 2).float() / 255.0, float(r["color_jitter"]), gen)
        mine = torch.isin(mask.nonzero()[:, 0], local)
        logit = wrapped(_frame_logits, x[mine].to(model.device), mask[local].to(model.device),
                        table[torch.from_numpy(text).to(model.device)[local.to(model.device)]])
        target = torch.from_numpy(labels)[local].to(model.device)
        loss = F.binary_cross_entropy_with_logits(logit, target)
        opt.zero_grad(set_to_none=True)
        (loss * distributed.share_weight(len(local), batch_size)).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        means = distributed.global_means({"loss": (loss.item(), len(local)),
                                          "acc": (float(((logit.detach() > 0).float() == target).float().mean()), len(local))})
        writer.add_scalar("train/loss", means["loss"], step)
        writer.add_scalar("train/accuracy", means["acc"], step)
        bar.set_postfix(loss=f"{means['loss']:.3f}", acc=f"{means['acc']:.2f}")
        last = step + 1 == steps
        if (step + 1) % int(r["checkpoint_every"]) == 0 or last:
            distributed.save_main({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                                   "sampler_rng": sampler.rng.bit_generator.state, "gen": gen.get_state(), "step": step + 1}, state_path)
        if ranks.main and len(val_set.labels) and ((step + 1) % int(r["eval_every"]) == 0 or last):
            z = frame_set_logits(model, val_set)
            y = val_set.labels
            val_auc = auroc(z[y == 1], z[y == 0])
            val_loss = binary_nll(z, y)
            writer.add_scalar("val/loss", val_loss, step)
            if val_auc is not None:
                writer.add_scalar("val/auroc", val_auc, step)
            log.info("step %d: loss %.3f val loss %.3f AUROC %s (%.2f steps/s)", step + 1, means["loss"], val_loss,
                     f"{val_auc:.3f}" if val_auc is not None else "n/a", (step + 1 - 0) / (time.perf_counter() - t0 + 1e-9))
    if not ranks.main:  # rank 0 calibrates and writes the checkpoint
        writer.close()
        return model
    # Calibration: temperature and threshold on validation episodes (training frames if it lacks a class).
    calib_set, calibrated_on = val_set, "validation"
    if len(val_set.labels) == 0 or val_set.labels.min() == val_set.labels.max():
        calib_set, calibrated_on = train_set, "train (validation lacked a class: optimistic)"
    z = frame_set_logits(model, calib_set)
    report = calibrate(z, calib_set.labels, str(r["threshold_metric"]), fit_bias=bool(r["calibrate_bias"]))
    report["per_camera_auroc"] = {}
    for cam in model.cameras if len(model.cameras) > 1 else ():
        zc = frame_set_logits(model, calib_set, [cam])
        report["per_camera_auroc"][cam] = auroc(zc[calib_set.labels == 1], zc[calib_set.labels == 0])
    report.update(calibrated_on=calibrated_on, steps=steps, seed=int(seed), init=str(init) if init else None,
                  train_frames=int(len(train_set.labels)), train_episodes=int((~val_eps).sum()),
                  val_episodes=int(val_eps.sum()), wall_s=round(time.perf_counter() - t_start, 1))
    model.cfg.temperature, model.cfg.bias = float(report["temperature"]), float(report["bias"])
    model.cfg.threshold = float(report["threshold"])
    model.cfg.calibration = json.loads(json.dumps(report))
    for k in ("auroc", "ece_before", "ece_after", "accuracy", "fpr"):
        if report[k] is not None:
            writer.add_scalar(f"calibration/{k}", report[k], steps)
    writer.close()
    log.info("calibration on %s: T %.3f bias %.3f threshold %.3f ECE %.4f -> %.4f, AUROC %s, accuracy %s, FPR %s",
             calibrated_on, report["temperature"], report["bias"], report["threshold"], report["ece_before"] or float("nan"),
             report["ece_after"] or float("nan"), report["auroc"], report["accuracy"], report["fpr"])
    model.save(out)
    return model


def train_from_config(cfg) -> VLMSuccessClassifier:
    """``stepwise-train-rm reward=vlm_success``: :func:`train` with the Hydra config of ``configs/train_rm.yaml``.

    Reads ``cfg.data``, ``cfg.out``, ``cfg.init``, ``cfg.seed``, ``cfg.max_episodes_per_task`` and
    ``cfg.num_threads`` from the top level and everything else from ``cfg.reward`` (the top-level
    ``steps``/``lr``/... belong to the step-PRM trainer and are ignored here: use ``reward.steps=``).
    """
    mept = cfg.get("max_episodes_per_task")
    data = _plain(cfg.data)
    return train(data, cfg.out, cfg.reward, init=cfg.get("init"), seed=int(cfg.get("seed", 0)),
                 max_episodes_per_task=int(mept) if mept is not None else None,
                 num_threads=int(cfg.get("num_threads", 2)))
