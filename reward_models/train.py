"""`stepwise-train-rm`: train a reward model (general pre-training, or adaptation with ``init=``).

    stepwise-train-rm reward=step_prm data=data/train out=runs/general
    stepwise-train-rm reward=step_prm init=general data=data/demo/drawer-open.hdf5 \
        max_episodes_per_task=1 steps=300 lr=1e-4 out=runs/drawer-open-1shot

``calibrate_data=<stores>`` (episodes the model is not trained on, successes and failures) fits the
Platt scaling of ``success_prob`` after training (:mod:`reward_models.calibration`); on a finished
run it calibrates without training again.

Progress bar, TensorBoard logs in ``out/tb``, and resumable: a killed run restarts from
``out/trainer_state.pt`` when run again with the same ``out``. The finished model is a checkpoint
directory at ``out`` (``reward_models.load(out)``).

Data-parallel over N processes (gloo on CPUs, NCCL on GPUs; step_prm, tcn and vlm_success), the same
global batch split over the ranks (:mod:`reward_models.distributed`)::

    torchrun --nproc_per_node=2 -m reward_models.train reward=step_prm data=... out=... num_threads=1
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from reward_models import distributed
from reward_models.base import load
from reward_models.augment import random_shift
from reward_models.metrics import spearman
from reward_models.pairs import PairSampler
from reward_models.train_episodes import load_episodes, load_failures
from reward_models.progress import bin_centers
from reward_models.step_prm import StepPRM, StepPRMConfig

log = logging.getLogger(__name__)


def two_hot(hops: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Soft targets (P, K) splitting each hop between its two nearest bin centres, so the
    expected value of the target distribution equals the hop exactly."""
    centers = torch.tensor(bin_centers(num_bins), dtype=hops.dtype, device=hops.device)
    width = float(centers[1] - centers[0])
    pos = ((hops.clamp(-1, 1) - centers[0]) / width).clamp(0, num_bins - 1)
    lo = pos.floor().long().clamp(max=num_bins - 2)
    frac = (pos - lo.float()).clamp(0, 1)
    target = torch.zeros(len(hops), num_bins, device=hops.device)
    target.scatter_(1, lo[:, None], (1 - frac)[:, None])
    target.scatter_add_(1, (lo + 1)[:, None], frac[:, None])
    return target


def hop_loss(logits: torch.Tensor, hops: torch.Tensor, censored: torch.Tensor | None, centers: torch.Tensor,
             lower: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss over pairs: cross-entropy against the two-hot target of each labelled hop, and for
    censored pairs (failures: the hop is only known to be at most ``hops``; where ``lower``, at least)
    minus the log of the probability mass on the bins whose centre is on the allowed side of the bound."""
    logp = logits.log_softmax(-1)
    loss = -(two_hot(hops, logits.shape[-1]) * logp).sum(-1)
    if censored is not None and bool(censored.any()):
        allowed = centers[None, :] <= hops[:, None] + 1e-6
        if lower is not None:
            allowed = torch.where(lower[:, None], centers[None, :] >= hops[:, None] - 1e-6, allowed)
        bounded = -torch.logsumexp(logp.masked_fill(~allowed, float("-inf")), dim=-1)
        loss = torch.where(censored, bounded, loss)
    return loss.mean()


def train(cfg) -> StepPRM:
    """Train (or adapt, with ``cfg.init``) a step-discretized progress model as ``cfg`` says."""
    from tqdm import tqdm

    torch.set_num_threads(int(cfg.num_threads))
    torch.manual_seed(int(cfg.seed))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.init:
        model = load(cfg.init, device=cfg.reward.device)
        if not isinstance(model, StepPRM):
            raise ValueError(f"init={cfg.init} is a {model.kind} model; step_prm training needs a step_prm checkpoint")
    else:
        r = cfg.reward
        model = StepPRM(StepPRMConfig(cameras=tuple(r.cameras), image_size=(int(r.image_size), int(r.image_size)),
                                      encoder_size=int(r.encoder_size), width=int(r.width), dim=int(r.dim),
                                      num_bins=int(r.num_bins), perspective=r.model_perspective,
                                      fusion=str(r.get("fusion", "attention")), device=r.device))
    policy_success = str(cfg.get("policy_success", "sim"))
    if policy_success not in ("sim", "claimed"):
        raise ValueError(f"policy_success={policy_success}: use sim (the store's success) or claimed (the signal that ended the episode)")
    episodes = load_episodes(cfg.data, model.cameras, cfg.max_episodes_per_task, resize_to=model.cfg.encoder_size,
                             kinds=tuple(cfg.get("success_kinds", ("expert",))), policy_success=policy_success)
    val = [ep for k, ep in enumerate(episodes) if cfg.val_every_nth and k % int(cfg.val_every_nth) == 0]
    train_eps = [ep for ep in episodes if not any(ep is v for v in val)] or episodes
    log.info("training on %d episodes of %d tasks (%d validation)", len(train_eps), len({e.task for e in train_eps}), len(val))
    failures = []
    share = float(cfg.get("failure_share", 0.0))
    if share > 0:
        failures = load_failures(cfg.data, model.cameras, tasks={e.task for e in train_eps},
                                 kinds=tuple(cfg.get("failure_kinds", ("noise", "stall", "near_miss", "reversal", "policy"))),
                                 max_per_task=cfg.get("max_failures_per_task"), resize_to=model.cfg.encoder_size,
                                 newest_first=cfg.get("failures_from", "oldest") == "newest", policy_success=policy_success)
        log.info("failures as negatives: %d episodes of %d tasks (share %.2f of each batch)",
                 len(failures), len({f.task for f in failures}), share)
    sampler = PairSampler(train_eps, model.cfg.num_bins, int(cfg.frames_per_episode), int(cfg.pairs_per_episode),
                          seed=int(cfg.seed), failures=failures, failure_share=share,
                          instruction_negative_share=float(cfg.get("instruction_negative_share", 0.0)),
                          reverse_twin_share=float(cfg.get("reverse_twin_share", 0.0)))
    model.cache_instructions(sampler.instructions + [e.instruction for e in val])  # saved with the model
    net = model.net
    if cfg.get("freeze_encoder", False):
        net.view.net.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=float(cfg.lr),
                            weight_decay=float(cfg.weight_decay))
    steps = int(cfg.steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: float(min(1.0, (s + 1) / 50) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps))))
    state_path = out / "trainer_state.pt"
    step = 0
    gen = torch.Generator().manual_seed(int(cfg.seed))
    if state_path.exists():
        state = distributed.load_state(state_path, map_location=model.device)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        sampler.rng.bit_generator.state = state["sampler_rng"]
        step = int(state["step"])
        if "gen" in state:  # older states re-seeded the augmentation from the step
            gen.set_state(state["gen"])
        else:
            gen.manual_seed(int(cfg.seed) + step)
        log.info("resuming from step %d of %d (%s)", step, steps, state_path)
    ranks = distributed.current()
    wrapped = distributed.data_parallel(net)
    writer = distributed.summary_writer(str(out / "tb"))
    text_table = torch.stack([model.text_embedding(t) for t in sampler.instructions])
    view_weight = float(cfg.get("view_loss_weight", 0.5))
    bar = tqdm(range(step, steps), initial=step, total=steps, desc="train step_prm", unit="step", disable=not ranks.main)
    t0 = time.perf_counter()
    for step in bar:
        net.train()
        batch = augmented_share(sampler.sample(int(cfg.batch_episodes)), cfg, gen, ranks)
        loss, logits, hops, exact = wrapped(pair_loss, batch, text_table, model.centers, view_weight)
        weight = distributed.share_weight(len(hops), batch["pairs_global"])
        opt.zero_grad(set_to_none=True)
        (loss * weight).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():  # on the labelled pairs (a censored pair has a bound, not a target)
            err = ((logits.softmax(-1) * model.centers).sum(-1) - hops)[exact].abs()
        means = distributed.global_means({"loss": (loss.item(), len(hops)),
                                          "mae": (err.mean().item() if len(err) else 0.0, len(err))})
        writer.add_scalar("train/loss", means["loss"], step)
        writer.add_scalar("train/hop_mae", means["mae"], step)
        bar.set_postfix(loss=f"{means['loss']:.3f}", hop_mae=f"{means['mae']:.3f}")
        last = step + 1 == steps
        if (step + 1) % int(cfg.checkpoint_every) == 0 or last:
            distributed.save_main({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                                   "sampler_rng": sampler.rng.bit_generator.state, "gen": gen.get_state(), "step": step + 1}, state_path)
        if ranks.main and val and ((step + 1) % int(cfg.eval_every) == 0 or last):
            voc = validation_voc(model, val)
            writer.add_scalar("val/voc_forward", voc, step)
            log.info("step %d: loss %.3f hop_mae %.3f val VOC(forward) %.3f (%.1f steps/s)",
                     step + 1, means["loss"], means["mae"], voc, (step + 1) / (time.perf_counter() - t0))
    if not ranks.main:  # rank 0 calibrates and writes the checkpoint
        writer.close()
        return model
    if cfg.get("calibrate_data"):
        from reward_models.calibration import calibrate

        fit = calibrate(model, cfg.calibrate_data)
        log.info("success_prob calibrated on %d frames of %d episodes (%d tasks): a=%.3f b=%.3f, ECE %.3f -> %.3f",
                 fit["frames"], fit["episodes"], fit["tasks"], fit["a"], fit["b"], fit["ece_before"], fit["ece_after"])
        writer.add_scalar("calibration/ece_after", fit["ece_after"], steps)
    writer.close()
    model.save(out)
    return model


def augmented_share(batch, cfg, gen: torch.Generator, ranks) -> dict:
    """This rank's share of a global pair batch, augmented: tensors for :func:`pair_loss`.

    Every rank augments the WHOLE batch with the same generator (random shift, camera dropout), so
    that the generator's state stays every rank's, then keeps the states and pairs of its own episode
    slots (:func:`reward_models.distributed.shard`), with the pairs' indices renumbered.
    """
    images = torch.from_numpy(batch.states)
    s, v = images.shape[:2]
    images = random_shift(images.view(s * v, *images.shape[2:]), int(cfg.shift_pad), gen).view(images.shape)
    mask = torch.ones(s, v, dtype=torch.bool)
    single = torch.rand(s, generator=gen) < float(cfg.single_view_prob)  # camera dropout
    pick = torch.randint(0, v, (s,), generator=gen)
    mask[single] = F.one_hot(pick[single], v).bool()
    n_pairs = len(batch.hop)
    keep_state = np.ones(s, dtype=bool)
    keep_pair = np.ones(n_pairs, dtype=bool)
    if ranks.parallel:
        mine = np.isin(batch.state_slot, distributed.shard(int(batch.state_slot.max()) + 1, ranks))
        keep_state, keep_pair = mine, mine[batch.after]
    renumber = np.cumsum(keep_state) - 1  # old state index -> index among the kept states
    take = lambda a: torch.from_numpy(np.ascontiguousarray(a[keep_pair]))  # noqa: E731
    goal = batch.goal[keep_pair]
    return {"images": images[torch.from_numpy(keep_state)], "mask": mask[torch.from_numpy(keep_state)],
            "start": torch.from_numpy(renumber[batch.start[keep_pair]]),
            "goal": torch.from_numpy(np.where(goal >= 0, renumber[np.maximum(goal, 0)], -1)),
            "before": torch.from_numpy(renumber[batch.before[keep_pair]]),
            "after": torch.from_numpy(renumber[batch.after[keep_pair]]),
            "hop": take(batch.hop), "text": take(batch.text),
            "censored": None if batch.censored is None else take(batch.censored),
            "lower": None if batch.lower is None else take(batch.lower),
            "pairs_global": n_pairs}


def pair_loss(net, batch: dict, text_table: torch.Tensor, centers: torch.Tensor, view_weight: float):
    """The hop loss of one (share of a) batch: ``(loss, logits, hops, exact)``, the mean over its pairs.

    Runs as one forward pass (under DistributedDataParallel when several processes train)."""
    device = centers.device
    mask = batch["mask"].to(device)
    enc = net.encode_states(batch["images"].to(device), list(range(mask.shape[1])), mask)
    goal_idx = batch["goal"].to(device)
    goal = torch.where((goal_idx >= 0).view(-1, *[1] * (enc.dim() - 1)), enc[goal_idx.clamp(min=0)],
                       net.no_goal_like(enc, len(goal_idx)))
    text = net.text(text_table[batch["text"].to(device)])
    hops = batch["hop"].to(device)
    censored = None if batch["censored"] is None else batch["censored"].to(device)
    lower = None if batch["lower"] is None else batch["lower"].to(device)
    before, after = batch["before"].to(device), batch["after"].to(device)
    # mixture fusion: the pair's view mask is its AFTER state's (camera dropout per state)
    logits, views = net.hop_logp(enc[batch["start"].to(device)], goal, enc[before], enc[after], text,
                                 view_mask=mask[after], per_view=True)
    loss = hop_loss(logits, hops, censored, centers, lower)
    if views is not None and view_weight > 0:  # each camera's own estimate, trained alone
        flat = views.reshape(-1, views.shape[-1])
        rep = lambda t: None if t is None else t.repeat_interleave(views.shape[1])  # noqa: E731
        loss = loss + view_weight * hop_loss(flat, rep(hops), rep(censored), centers, rep(lower))
    exact = ~censored if censored is not None else torch.ones_like(hops, dtype=torch.bool)
    return loss, logits.detach(), hops, exact


@torch.no_grad()
def validation_voc(model: StepPRM, episodes) -> float:
    """Mean Spearman(time, forward progress) over validation episodes (up to the goal frame)."""
    vocs = []
    for ep in episodes:
        states = model.net.encode_states(torch.from_numpy(ep.images[: ep.goal_index + 1]).to(model.device), list(range(len(model.cameras))))
        vocs.append(spearman(np.arange(len(states)), model.progress_from_states(states, ep.instruction, perspective="forward")))
    return float(np.nanmean(vocs))


# reward=<kind> -> "module:function(cfg) -> the trained model (saved to cfg.out)"
TRAINERS = {
    "step_prm": "reward_models.train:train",
    "tcn": "reward_models.tcn_train:train_from_config",
    "perceptual": "reward_models.perceptual:fit_from_config",
    "vlm_success": "reward_models.vlm_success:train_from_config",
}

DATA_PARALLEL = ("step_prm", "tcn", "vlm_success")  # the families torchrun can train over several processes


def main() -> None:
    """Console entry point (Hydra): ``stepwise-train-rm reward=<kind> data=... out=...``."""
    from configs.entry import hydra_job
    from episodes import StoreError
    from reward_models.base import CheckpointError

    hydra_job("stepwise-train-rm", "train_rm", _job, errors=(StoreError, CheckpointError, ValueError))


def _job(cfg, run_dir: Path) -> str:
    """Train the model family ``reward.kind`` names with its own trainer; returns the closing line."""
    import importlib

    kind = cfg.reward.kind
    if kind not in TRAINERS:
        raise ValueError(f"reward={kind} has no trainer; use one of {sorted(TRAINERS)}")
    module, fn = TRAINERS[kind].split(":")
    with distributed.launch() as ranks:
        if ranks.parallel and kind not in DATA_PARALLEL:
            raise ValueError(f"reward={kind} is fitted, not trained by gradient steps: run it in one process "
                             f"(without torchrun); data-parallel training covers {sorted(DATA_PARALLEL)}")
        model = getattr(importlib.import_module(module), fn)(cfg)
    if not ranks.main:
        return None
    return f"saved {model.kind} model to {cfg.out}" + (f" ({ranks.world} processes)" if ranks.parallel else "")


if __name__ == "__main__":
    main()
