"""SAC update throughput on CPU: this project's `policies.sac.SAC` against Stable-Baselines3's SAC.

Run: ``.venv/bin/python benchmarks/sac_speed.py`` (about 10 minutes per thread count at the default 5 s per loop;
needs ``pip install stable-baselines3``). Prints a table and writes it to
``benchmarks/results/sac_speed.md``. Both agents learn from replay buffers holding the same
100,000 random Meta-World-sized transitions (39 state dims, 4 action dims), batch 256, on the
CPU, with 1 and then 2 torch threads. Every timed loop includes sampling the batch from replay:
SB3 samples inside ``model.train``, ours is ``ReplayBuffer.sample`` then ``SAC.update``. Loops of
all agents are interleaved, repeat by repeat, so a change of load on a shared machine hits every
row alike; the table gives the median of the repeats.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from policies.replay import ReplayBuffer
from policies.sac import SAC, SACConfig

from machine import cpu_name  # benchmarks/machine.py (scripts here run with benchmarks/ on sys.path)

OBS_DIM, ACT_DIM, BATCH, BUFFER = 39, 4, 256, 100_000
SB3_CHUNK = 5  # gradient steps per model.train call: per-call overhead (logging, lr schedule) is ~1% of 5 steps


@dataclass
class Contender:
    """One row of the table: a label, its settings, and a step function doing one update."""

    agent: str
    critics: str
    width: int
    utd: int
    layer_norm: bool
    precision: str
    step: Callable[[], int]
    conservative: str = "-"
    """the Cal-QL term's rows ('-': none)"""
    compiled: bool = False
    """the update as one compiled graph (`SACConfig.compile`)"""
    """does some updates (sampling included), returns how many"""


def random_transitions(seed: int = 0) -> dict[str, np.ndarray]:
    """BUFFER random transitions: obs/next_obs N(0, 1) (BUFFER, 39), actions U[-1, 1] (BUFFER, 4), float32."""
    rng = np.random.default_rng(seed)
    return {
        "obs": rng.standard_normal((BUFFER, OBS_DIM), np.float32),
        "action": rng.uniform(-1, 1, (BUFFER, ACT_DIM)).astype(np.float32),
        "reward": rng.standard_normal(BUFFER, np.float32),
        "next_obs": rng.standard_normal((BUFFER, OBS_DIM), np.float32),
        "terminated": (rng.random(BUFFER) < 0.01).astype(np.float32),
    }


def ours(data: dict[str, np.ndarray], width: int, critics: int, subsample: int | None, utd: int,
         layer_norm: bool = True, precision: str = "fp32", cql_rows: int | None | str = "-",
         compile: bool = False) -> Contender:
    """`SAC.update` on batches of utd * 256 rows drawn by `ReplayBuffer.sample`. With ``cql_rows`` (an
    int, or None for every row): stepwise-train's online learner, with Cal-QL's conservative term on
    that many rows, the TD3+BC term on half the rows, relative state features, no entropy backup."""
    buf = ReplayBuffer(OBS_DIM, ACT_DIM, BUFFER)
    buf.add_batch(data["obs"], data["action"], data["reward"], data["next_obs"], data["terminated"],
                  np.zeros(BUFFER, np.float32))
    learner = {} if cql_rows == "-" else dict(cql_alpha=1.0, cql_rows=cql_rows, bc_weight=0.5, backup_entropy=False,
                                               state_features="relative")
    cfg = SACConfig(hidden_sizes=(width, width), num_critics=critics, critic_subsample=subsample, utd_ratio=utd,
                    batch_size=BATCH, layer_norm=layer_norm, device="cpu", precision=precision, compile=compile,
                    **learner)
    agent, rng = SAC(OBS_DIM, ACT_DIM, cfg), np.random.default_rng(0)
    demo = (torch.arange(utd * BATCH) % 2 == 0).float()  # the offline half of a mixed batch

    def step() -> int:
        batch = buf.sample(utd * BATCH, rng)
        if learner:
            batch["demo"] = demo
        agent.update(batch)
        return 1

    label = f"{critics}" if subsample is None else f"{critics}, target min of {subsample}"
    term = "-" if cql_rows == "-" else f"{BATCH if cql_rows is None else cql_rows} rows"
    if compile:  # the first update compiles (tens of seconds): not part of any timed loop
        step()
    return Contender("ours", label, width, utd, layer_norm, precision, step, term, compile)


def theirs(data: dict[str, np.ndarray], width: int) -> Contender:
    """SB3 SAC, 2 critics, ``model.train`` on its own replay buffer filled with the same transitions."""
    import gymnasium as gym
    from stable_baselines3 import SAC as SB3SAC
    from stable_baselines3.common.logger import Logger

    class MetaWorldSized(gym.Env):
        """Only the spaces matter: the env is never stepped."""

        observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
        action_space = gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)

        def reset(self, *, seed=None, options=None):
            return np.zeros(OBS_DIM, np.float32), {}

        def step(self, action):
            return np.zeros(OBS_DIM, np.float32), 0.0, False, False, {}

    model = SB3SAC("MlpPolicy", MetaWorldSized(), buffer_size=BUFFER, batch_size=BATCH, learning_starts=0,
                   policy_kwargs={"net_arch": [width, width], "n_critics": 2}, device="cpu", seed=0)
    model.set_logger(Logger(folder=None, output_formats=[]))
    rb = model.replay_buffer  # shape (buffer, n_envs=1, ...); write the arrays directly rather than 100k add() calls
    rb.observations[:] = data["obs"][:, None]
    rb.next_observations[:] = data["next_obs"][:, None]
    rb.actions[:] = data["action"][:, None]
    rb.rewards[:] = data["reward"][:, None]
    rb.dones[:] = data["terminated"][:, None]
    rb.pos, rb.full = 0, True

    def step() -> int:
        model.train(gradient_steps=SB3_CHUNK, batch_size=BATCH)
        return SB3_CHUNK

    return Contender("SB3", "2", width, 1, False, "fp32", step)


def timed(step: Callable[[], int], seconds: float) -> float:
    """Updates per second over a loop of about ``seconds``."""
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        n += step()
    return n / (time.perf_counter() - start)


def matmul_flops(step: Callable[[], int]) -> float:
    """Floating-point operations of the matrix products in one call of ``step``, per update it reports."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        n = step()
    return counter.get_total_flops() / n


def gemm_rate(dtype: torch.dtype, width: int, seconds: float) -> float:
    """FLOP/s of (BATCH x width) @ (width x width) products in ``dtype`` on the current threads."""
    a, b = torch.randn(BATCH, width, dtype=dtype), torch.randn(width, width, dtype=dtype)
    for _ in range(20):
        a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return 2 * BATCH * width * width * n / (time.perf_counter() - start)


def rounded(rate: float) -> str:
    """A rate to 2-3 significant figures: 70, 7.4, 0.42 (a contended run can fall below 1 update/s)."""
    return f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}"




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each timed loop")
    parser.add_argument("--repeats", type=int, default=3, help="timed loops per row; the table gives their median")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to measure")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "sac_speed.md"),
                        help="markdown file the table is written to")
    args = parser.parse_args()

    import stable_baselines3

    torch.manual_seed(0)
    torch.set_num_threads(min(args.threads))  # compiled contenders compile their element-wise loops for this count
    data = random_transitions()
    contenders = [
        theirs(data, 256),
        ours(data, 256, 2, None, 1),
        ours(data, 256, 2, None, 1, layer_norm=False),  # SB3's architecture exactly
        ours(data, 256, 2, None, 1, precision="bf16"),
        ours(data, 256, 2, None, 1, layer_norm=False, precision="bf16"),
        ours(data, 256, 2, None, 1, cql_rows=None),  # stepwise-train online, the conservative term on every row
        ours(data, 256, 2, None, 1, cql_rows=64),  # ... on a quarter of the rows (online.cql_rows=64)
        ours(data, 256, 2, None, 1, compile=True),  # the same updates as one compiled graph (agent.compile)
        ours(data, 256, 2, None, 1, layer_norm=False, compile=True),
        ours(data, 256, 2, None, 1, cql_rows=64, compile=True),  # stepwise-train's online learner, compiled
        ours(data, 256, 2, None, 2),
        ours(data, 256, 10, 2, 1),
        theirs(data, 512),
        ours(data, 512, 2, None, 1),
        ours(data, 512, 2, None, 1, layer_norm=False, precision="bf16"),
    ]
    # the compute floor: matrix-product FLOPs per update over the rate of a plain product of the same
    # sizes on one thread; no implementation of these networks at this batch can go below it
    torch.set_num_threads(1)
    flops = {c.width: matmul_flops(c.step) for c in contenders if c.agent == "SB3"}  # per SB3 update
    gemm = {(dt, w): gemm_rate(dt, w, min(2.0, args.seconds)) for dt in (torch.float32, torch.bfloat16)
            for w in sorted({c.width for c in contenders})}
    load_before = os.getloadavg()
    rates: dict[tuple[int, int], list[float]] = {}
    section_load: dict[int, float] = {}  # 1-minute load average as each thread count's loops began
    for threads in args.threads:
        section_load[threads] = os.getloadavg()[0]
        torch.set_num_threads(threads)
        for c in contenders:  # warm up: allocator, Adam state, thread pool
            timed(c.step, min(1.0, args.seconds))
        for _ in range(args.repeats):
            for i, c in enumerate(contenders):
                rates.setdefault((threads, i), []).append(timed(c.step, args.seconds))
    load_after = os.getloadavg()

    sb3 = {(threads, c.width): statistics.median(rates[threads, i])
           for threads in args.threads for i, c in enumerate(contenders) if c.agent == "SB3"}
    floor_rate = {w: gemm[torch.float32, w] / f for w, f in flops.items()}  # fp32 updates/s at the floor
    rows = []
    for threads in args.threads:
        for i, c in enumerate(contenders):
            runs = rates[threads, i]
            rate = statistics.median(runs)
            ratio = rate / sb3[threads, c.width]
            of_floor = f"{rate / floor_rate[c.width]:.0%}" if threads == 1 and c.width in floor_rate else "-"
            rows.append(
                f"| {c.agent} | {c.critics} | {c.width}x{c.width} | {'yes' if c.layer_norm else 'no'} | {c.precision} "
                f"| {'yes' if c.compiled else 'no'} "
                f"| {c.conservative} | {c.utd} | {threads} | {section_load[threads]:.1f} "
                f"| {rounded(rate)} ({rounded(min(runs))}-{rounded(max(runs))}) "
                f"| {rounded(rate * c.utd)} | {ratio:.2f}x | {of_floor} |"
            )
    header = (
        f"# SAC update throughput (CPU)\n\n"
        f"Measured {datetime.date.today()} by `benchmarks/sac_speed.py --seconds {args.seconds:g} "
        f"--repeats {args.repeats} --threads {' '.join(map(str, args.threads))}` on {os.cpu_count()} cores ({cpu_name()}), torch {torch.__version__}, "
        f"stable-baselines3 {stable_baselines3.__version__}, load average (1, 5, 15 min) "
        f"{', '.join(f'{x:.2f}' for x in load_before)} before and {', '.join(f'{x:.2f}' for x in load_after)} after. "
        f"Observations {OBS_DIM}-d, actions {ACT_DIM}-d, batch {BATCH}, replay of {BUFFER:,} random transitions; "
        f"every rate includes sampling the batch from replay. An update is what one env step buys: utd critic "
        f"steps, then one actor and one temperature step (SB3: one gradient step). Median of {args.repeats} "
        f"loops of {args.seconds:g} s (min-max in brackets), interleaved across rows. Ratio: updates/s against "
        f"SB3 of the same width and threads. Ours has LayerNorm in the critics by default; the 'no' rows match SB3's networks. "
        f"Ours uses Adam's fused kernel (the default, `fused_adam`); 'bf16' rows run the forward passes under "
        f"bfloat16 autocast (`precision: bf16`; weights, optimiser and losses stay float32). "
        f"'load' is the 1-minute load average as that thread count's loops began (after the first thread count "
        f"it includes about 1 from this benchmark itself): where threads + the others' load exceed "
        f"the {os.cpu_count()} cores, other processes hold cores this run's threads wait on, and the rates "
        f"measure that contention more than the agents. 'Cal-QL term' rows are stepwise-train's online learner "
        f"(conservative term with 4 actions from each of 3 sources on that many rows of the batch, the TD3+BC term, "
        f"relative state features; `online.cql_rows`); the others are plain SAC. 'of floor': updates/s over the "
        f"float32 compute floor below (1 thread). 'compiled' rows run the whole update as one graph compiled "
        f"by torch.compile (`agent.compile`, policies/sac_fused.py); their compile, before the timed loops, is not counted.\n\n"
        "| agent | critics | width | LayerNorm | precision | compiled | Cal-QL term | utd | threads | load | updates/s | critic steps/s | vs SB3 | of floor |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    floor_rows = []
    for width, f in flops.items():
        sb3_rate = sb3.get((1, width), float("nan"))  # the 1-thread rate, when measured
        for dt, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            floor_ms = f / gemm[dt, width] * 1e3
            floor_rows.append(f"| {width}x{width} | {f / 1e6:.0f} | {name} | {gemm[dt, width] / 1e9:.0f} | {floor_ms:.2f} "
                              f"| {1e3 / floor_ms:.0f} | {1e3 / floor_ms / sb3_rate:.1f}x |")
    floor = (
        "\n## The compute floor (1 thread)\n\n"
        "Matrix-product FLOPs of one SB3 update (counted by `torch.utils.flop_counter`) over the measured rate "
        f"of a plain ({BATCH} x width) @ (width x width) product on one thread: the fastest any implementation of "
        "these networks at this batch can update, with every other operation free. 'ceiling vs SB3' divides that "
        "by SB3's measured 1-thread rate above: no float32 implementation can beat SB3 by more than this.\n\n"
        "| width | MFLOP per update | precision | GEMM GFLOP/s | floor ms per update | updates/s at the floor | ceiling vs SB3 |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(floor_rows) + "\n"
    )
    table = header + "\n".join(rows) + "\n" + floor
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
