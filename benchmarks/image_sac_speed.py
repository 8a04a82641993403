"""Image SAC update speed: updates/s at batch 128 with 2 cameras, on one CPU thread (and the GPU if present).

Run: ``.venv/bin/python benchmarks/image_sac_speed.py`` (about 2 minutes on a CPU). Prints a table
and writes it to ``benchmarks/results/image_sac_speed.md``. Each rate is the best of ``--repeats``
timed runs, since the CPU may be shared; replay sampling is timed apart from the update.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path

import numpy as np
import torch

from policies.image_replay import ImageReplayBuffer
from policies.image_sac import ImageSAC, ImageSACConfig

CAMERAS = ["corner", "gripperPOV"]
BATCH = 128


def filled_buffer(size: int, rows: int, rng: np.random.Generator) -> ImageReplayBuffer:
    """A buffer of random frames, in episodes of 50 steps."""
    buf = ImageReplayBuffer(CAMERAS, size, 4, 4, capacity=rows)
    for _ in range(rows // 51):
        buf.add_episode(rng.integers(0, 256, (51, len(CAMERAS), size, size, 3), dtype=np.uint8),
                        rng.normal(size=(51, 4)), rng.uniform(-1, 1, (50, 4)), rng.normal(size=50), np.zeros(50))
    return buf


def best_rate(fn, calls: int, repeats: int) -> float:
    """Best calls/s over ``repeats`` timed runs of ``calls`` calls (after 2 warm-up calls)."""
    fn()
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return calls / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3, help="updates per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best counts")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "image_sac_speed.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for size, strides in [(64, (2, 1, 1, 1)), (64, (2, 2, 1, 1)), (32, (2, 1, 1, 1))]:
        buf = filled_buffer(size, 2040, rng)
        sample_rate = best_rate(lambda: buf.sample(BATCH, rng), 20, args.repeats)
        for device in devices:
            cfg = ImageSACConfig(batch_size=BATCH, encoder_strides=strides, device=device)
            agent = ImageSAC(CAMERAS, size, 4, 4, cfg)
            batch = buf.sample(BATCH, rng, device)
            calls = args.calls if device == "cpu" else 50
            rate = best_rate(lambda: agent.update(batch), calls, args.repeats)
            rows.append((f"{size}px", str(strides), device, f"{rate:.2f}", f"{sample_rate:.0f}"))
            print(rows[-1], flush=True)
    header = (
        f"# Image SAC update speed\n\n"
        f"Measured {datetime.date.today()} by `benchmarks/image_sac_speed.py --threads {args.threads}` on "
        f"{os.cpu_count()} cores ({args.threads} torch thread(s)); batch {BATCH}, cameras {', '.join(CAMERAS)}, "
        "2 critics, 256x256 MLPs, utd 1, 32-channel convs, best of "
        f"{args.repeats} runs. GPU: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}.\n\n"
        "| image | conv strides | device | updates/s | replay samples/s (batch 128, CPU) |\n|---|---|---|---|---|\n"
    )
    table = header + "".join("| " + " | ".join(r) + " |\n" for r in rows)
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
