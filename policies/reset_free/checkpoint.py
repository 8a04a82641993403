"""stepwise-train-reset-free's run state and checkpoint: agent (optimisers included), online replay,
loop and detector counters, history and random states, written atomically."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from policies.run_dir import CHECKPOINT_VERSION, read_checkpoint, save_atomic
from sim.task_pair import ResetFreeConfigError

KIND = "stepwise-train-reset-free"


@dataclass
class RunState:
    """Counters and history that a resume restores (agent and replay travel beside it)."""

    phase: str = "pretrain"            # pretrain -> online -> done
    loop: dict = field(default_factory=dict)       # LoopCounters
    detector: dict = field(default_factory=dict)   # DetectorCounts
    history: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    wall_time_s: float = 0.0
    stage_seconds: dict = field(default_factory=dict)
    demo_detector: dict | None = None
    classifier: str | None = None      # the classifier used (adapted: <run>/classifier)


def save_checkpoint(path: Path, agent, online, state: RunState, rng: np.random.Generator, cfg_dict: dict) -> None:
    """Agent (optimisers included), online replay, counters, history and random states; atomic."""
    save_atomic({"version": CHECKPOINT_VERSION, "kind": KIND, "pair": cfg_dict["pair"],
                 "success": cfg_dict["success"], "config": cfg_dict, "agent": agent.state_dict(),
                 "state": state.__dict__, "replay": online.rows(),
                 "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}, path)


def load_checkpoint(path: Path, cfg) -> dict:
    """Read a reset-free checkpoint and check it is a run of this pair and success signal."""
    ckpt = read_checkpoint(path, KIND, ResetFreeConfigError)
    if (ckpt["pair"], ckpt["success"]) != (cfg.pair, cfg.success):
        raise ResetFreeConfigError(f"{path} is a run of pair={ckpt['pair']} success={ckpt['success']}: pass those "
                                   "to resume it, or use another hydra.run.dir")
    return ckpt
