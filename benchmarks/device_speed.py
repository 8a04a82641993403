"""What a GPU buys: reward-model training and scoring throughput and image-SAC updates/s on one device.

    python benchmarks/device_speed.py                    # device=auto: the GPU when present (about 3-5 min)
    python benchmarks/device_speed.py --device cpu --quick   # the same rows on the CPU, fewer calls

Rows, each the best of ``--repeats`` timed runs (synthetic frames; nothing is collected or downloaded):
- step-PRM training steps/s at the shipped configuration (3 cameras at 96 px, 8 episodes x 10 frames x
  48 pairs per step, mixture fusion as `general`), float32 and, on a GPU, bfloat16 autocast;
- step-PRM scoring: states/s of ``progress`` on a 200-frame, 3-camera video (the shipped `general`);
- VLM success classifier scoring: frames/s of ``success_prob`` (the shipped `vlm-general`);
- image SAC updates/s (batch 128, 2 cameras at 64 px), as benchmarks/image_sac_speed.py measures it.

Writes ``benchmarks/results/device_speed.md`` (``--out``) naming the device (GPU model or CPU model
and threads). bfloat16 is timed here only for speed: whether it learns as well is a separate question
(on the CPU it was 10x slower on an AMD EPYC without bf16 units, see docs/policy-learning.md).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
from pathlib import Path

import numpy as np
import torch

from image_sac_speed import best_rate, filled_buffer
from machine import cpu_name

CAMS = ("corner", "corner2", "gripperPOV")
INSTRUCTION = "close the drawer"  # a training task's instruction (its embedding ships with `general`)


def synthetic_episodes(n: int, frames: int, size: int, rng: np.random.Generator):
    """``n`` demonstrations of random frames with linear step progress (shapes as the trainer's)."""
    from reward_models.train_episodes import TrainEpisode

    return [TrainEpisode(rng.integers(0, 256, (frames, len(CAMS), size, size, 3), dtype=np.uint8),
                         np.linspace(0, 1, frames), frames - 1, "metaworld/drawer-close", INSTRUCTION,
                         np.array([0, frames // 2, frames - 1])) for _ in range(n)]


def step_prm_training(device: torch.device, bf16: bool, calls: int, repeats: int) -> float:
    """Optimiser steps/s of the step-PRM trainer's own loss on one device."""
    from omegaconf import OmegaConf

    import reward_models
    from reward_models.distributed import Ranks
    from reward_models.pairs import PairSampler
    from reward_models.train import augmented_share, pair_loss

    model = reward_models.load("general", device=str(device))
    net = model.net.train()
    sampler = PairSampler(synthetic_episodes(16, 60, model.cfg.image_size[0], np.random.default_rng(0)),
                          model.cfg.num_bins, 10, 48, seed=0)
    table = torch.stack([model.text_embedding(INSTRUCTION)])
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    cfg = OmegaConf.create({"shift_pad": 4, "single_view_prob": 0.3})
    gen = torch.Generator().manual_seed(0)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext)

    def step():
        batch = augmented_share(sampler.sample(8), cfg, gen, Ranks())
        batch["text"] = torch.zeros_like(batch["text"])  # every pair under the one instruction embedded
        with autocast() if bf16 else contextlib.nullcontext():
            loss = pair_loss(net, batch, table, model.centers, 0.5)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return best_rate(step, calls, repeats)


def scoring(name: str, device: torch.device, frames: int, calls: int, repeats: int) -> float:
    """Frames scored per second by a shipped model's ``progress`` (step-PRM) or ``success_prob`` (VLM)."""
    import reward_models

    model = reward_models.load(name, device=str(device))
    size = model.image_size[0] if hasattr(model, "image_size") else model.cfg.image_size[0]
    rng = np.random.default_rng(0)
    video = {c: rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8) for c in model.cameras}
    fn = model.progress if model.kind == "step_prm" else model.success_prob
    return frames * best_rate(lambda: fn(video, INSTRUCTION), calls, repeats)


def image_sac(device: torch.device, calls: int, repeats: int) -> float:
    from policies.image_sac import ImageSAC, ImageSACConfig

    rng = np.random.default_rng(0)
    buf = filled_buffer(64, 2040, rng)
    agent = ImageSAC(["corner", "gripperPOV"], 64, 4, 4, ImageSACConfig(batch_size=128, device=str(device)))
    batch = buf.sample(128, rng, str(device))
    return best_rate(lambda: agent.update(batch), calls, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda")
    parser.add_argument("--quick", action="store_true", help="fewer calls per timed run (CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "device_speed.md"))
    args = parser.parse_args()
    from reward_models.devices import resolve_device

    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gpu = device.type == "cuda"
    calls = 3 if args.quick else (50 if gpu else 10)
    rows = []

    def row(what: str, rate: float, unit: str) -> None:
        rows.append((what, f"{rate:.1f}", unit))
        print(f"{what}: {rate:.1f} {unit}", flush=True)

    row("step-PRM training, float32", step_prm_training(device, False, calls, args.repeats), "steps/s (8 episodes x 48 pairs)")
    if gpu:
        row("step-PRM training, bfloat16 autocast", step_prm_training(device, True, calls, args.repeats), "steps/s")
    row("step-PRM scoring (`general`, 3 cameras, 96 px)", scoring("general", device, 200, max(1, calls // 3), args.repeats), "states/s")
    row("VLM success scoring (`vlm-general`)", scoring("vlm-general", device, 200, max(1, calls // 3), args.repeats), "frames/s")
    row("image SAC update (batch 128, 2 cameras, 64 px)", image_sac(device, calls, args.repeats), "updates/s")
    name = torch.cuda.get_device_name(device) if gpu else f"{cpu_name()}, {args.threads} torch thread(s) of {os.cpu_count()} cores"
    table = (f"# Device speed\n\nMeasured {datetime.date.today()} by `benchmarks/device_speed.py --device {args.device}"
             f"{' --quick' if args.quick else ''}` on {device.type}: {name}. Best of {args.repeats} timed runs of "
             f"{calls} calls; synthetic frames; load average {os.getloadavg()[0]:.1f} at the end (other jobs on the "
             f"machine slow every row).\n\n| what | rate | unit |\n|---|---|---|\n"
             + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
