"""stepwise-train-reset-free's settings: configs/reset_free.yaml typed once (`ResetFreeSettings`) and the
checks run before anything is built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from policies.config import EvalSettings, PretrainSettings, typed_settings
from policies.success import SUCCESS_SIGNALS
from sim.task_pair import ResetFreeConfigError, get_pair

ROBOTS = ("sim", "remote")  # the pair in process, or served by stepwise-robot-server robot=sim_pair

# Every field is MISSING here: the YAML holds the defaults (one source); the schema holds the types.


@dataclass
class ResetFreeAdapt:
    """``adapt``: the classifier's adaptation to the pair's reset-free scenes."""

    steps: int = MISSING
    lr: float = MISSING
    chains: int = MISSING


@dataclass
class ResetFreeOnline:
    """``online``: reset-free fine-tuning."""

    offline_fraction: float = MISSING
    cql_alpha: float = MISSING
    bc_final: float = MISSING
    bc_anneal_episodes: int = MISSING
    updates_per_step: int = MISSING
    random_steps: int = MISSING
    capacity: int = MISSING


@dataclass
class ResetFreeSettings:
    """configs/reset_free.yaml, typed. ``agent`` is typed by `SACConfig` (`policies.config.sac_config`),
    ``robot`` by its driver."""

    pair: str = MISSING
    success: str = MISSING
    classifier: str = MISSING
    threshold: Optional[float] = None
    confirm_steps: int = MISSING
    monitor: bool = MISSING
    reset_every: int = MISSING
    max_steps: int = MISSING
    flip_on_timeout: bool = MISSING
    episodes: int = MISSING
    demos: int = MISSING
    success_reward: float = MISSING
    seed: int = MISSING
    resume: bool = MISSING
    threads: int = MISSING
    offline_threads: Optional[int] = None
    device: str = MISSING
    checkpoint_every: int = MISSING
    host: str = MISSING
    port: int = MISSING
    token: Optional[str] = None
    agent: Any = MISSING
    robot: Any = MISSING
    adapt: ResetFreeAdapt = field(default_factory=ResetFreeAdapt)
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)
    online: ResetFreeOnline = field(default_factory=ResetFreeOnline)
    eval: EvalSettings = field(default_factory=EvalSettings)


def check_config(cfg):
    """Refuse settings that cannot work, before anything is built; returns the config typed
    (a wrong type names its key)."""
    cfg = typed_settings(cfg, ResetFreeSettings, ResetFreeConfigError, "configs/reset_free.yaml")
    get_pair(cfg.pair)
    if cfg.success not in SUCCESS_SIGNALS:
        raise ResetFreeConfigError(f"success={cfg.success!r} unknown: use one of {SUCCESS_SIGNALS}")
    for key in ("reset_every", "max_steps", "confirm_steps", "checkpoint_every"):
        if cfg[key] < 1:
            raise ResetFreeConfigError(f"{key}={cfg[key]}: must be >= 1")
    if cfg.episodes < 0 or cfg.demos < 0:
        raise ResetFreeConfigError("episodes and demos must be >= 0")
    if cfg.eval.every < 1 or cfg.eval.episodes < 1 or cfg.eval.final_episodes < 1:
        raise ResetFreeConfigError("eval.every, eval.episodes and eval.final_episodes must be >= 1")
    driver = cfg.robot.get("driver") if hasattr(cfg.robot, "get") else None
    if driver not in ROBOTS:
        raise ResetFreeConfigError(f"robot={driver}: the reset-free job never imports a driver; use robot=sim, or serve "
                                   "the pair with `stepwise-robot-server robot=sim_pair robot.pair=<pair>` and use robot=remote")
    return cfg
