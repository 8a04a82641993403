"""The learners' settings: the names the jobs accept, the checks run before any work, the typed agent
configs built once from a job's config, and the other tools' configs a stage runs with."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
ALGOS = ("calql", "sac", "bc")
SOURCES = ("sparse", "success_prob", "sim_dense")
SHAPINGS = ("progress", "oracle", "none")
POLICIES = ("state", "image")
REWARD_KINDS = ("step_prm", "perceptual", "vlm_success")  # reward=<family>; vlm_success: the classifier's success, step-PRM shaping


class TrainConfigError(ValueError):
    """A setting of stepwise-train that cannot work; the message names it and the fix."""


# ---------------------------------------------------------------- the typed schema of configs/train.yaml
# Every field is MISSING here: the YAML holds the defaults (one source); the schema holds the types.
# `typed_config` merges a composed config into it, so `demos=five` fails naming the key, "5" becomes 5,
# and the jobs read ints and floats without casting.


@dataclass
class PretrainSettings:
    """``pretrain``: the BC warm start and the Cal-QL updates on the demonstrations."""

    bc_steps: int = MISSING
    steps: int = MISSING
    translate: float = 0.0
    critic_only: bool = False
    bc_weighting: str = "none"


@dataclass
class OnlineSettings:
    """``online``: fine-tuning on the train split."""

    episodes: int = MISSING
    max_steps: int = MISSING
    offline_fraction: float = MISSING
    imitate_successes: bool = MISSING
    cql_alpha: float = MISSING
    cql_rows: Optional[int] = MISSING
    bc_final: float = MISSING
    bc_anneal_episodes: int = MISSING
    updates_per_step: int = MISSING
    random_steps: int = MISSING
    capacity: int = MISSING
    warmup_episodes: int = 0


@dataclass
class EvalSettings:
    """``eval``: deterministic evaluations on the eval split."""

    every: int = MISSING
    episodes: int = MISSING
    final_episodes: int = MISSING
    workers: int = 1


@dataclass
class AdaptSettings:
    """``adapt``: the progress model's fine-tuning on one demonstration."""

    steps: int = MISSING
    lr: float = MISSING


@dataclass
class RefreshSettings:
    """``refresh``: the progress model re-fitted on the policy's own episodes during online learning."""

    every: int = MISSING
    steps: int = MISSING
    lr: float = MISSING
    failure_share: float = MISSING
    first: int | None = None
    max_failures: int | None = None
    freeze_encoder: bool = False


@dataclass
class RewardSettings:
    """The learner's keys of ``reward`` (the family's own keys, read by its model, stay untyped beside them)."""

    kind: str = MISSING
    source: str = MISSING
    success_reward: float = MISSING
    shaping: str = MISSING
    weight: float = MISSING
    model: Optional[str] = MISSING
    perspective: str = MISSING
    success_model: Optional[str] = None
    success_threshold: Optional[float] = None
    hacking_progress: float = MISSING


@dataclass
class TrainSettings:
    """configs/train.yaml, typed. ``agent`` and ``encoder`` are typed by `SACConfig` / `ImageSACConfig`
    (`sac_config`, `image_agent_config`), ``robot`` by its driver, ``reward`` by `RewardSettings`."""

    task: str = MISSING
    host: str = MISSING
    port: int = MISSING
    token: Optional[str] = None
    seed: int = MISSING
    demos: int = MISSING
    algo: str = MISSING
    resume: bool = MISSING
    checkpoint_every: Optional[int] = None
    threads: int = MISSING
    offline_threads: Optional[int] = None
    device: str = MISSING
    policy: str = MISSING
    policy_image_size: int = MISSING
    policy_cameras: Optional[list[str]] = None
    image_size: Optional[int] = None
    keep_episodes: str = MISSING
    reward: Any = MISSING
    agent: Any = MISSING
    encoder: Any = MISSING
    robot: Any = MISSING
    adapt: AdaptSettings = field(default_factory=AdaptSettings)
    refresh: RefreshSettings = field(default_factory=RefreshSettings)
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)
    online: OnlineSettings = field(default_factory=OnlineSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)


def typed_settings(cfg, schema: type, error: type[Exception], source: str, prefix: str = ""):
    """``cfg`` (a composed config, or a mapping) merged into the dataclass ``schema`` (its fields MISSING
    where the YAML holds the default) and converted to its types. A wrong type, a missing value or a key
    the schema does not know raises ``error`` naming the key (after ``prefix``) and ``source`` (the YAML
    that documents each field)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if OmegaConf.is_config(cfg) and OmegaConf.get_type(cfg) is schema:
        return cfg
    plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    plain.pop("hydra", None)
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), plain)
        OmegaConf.to_container(typed, throw_on_missing=True)
    except OmegaConfBaseException as err:
        key = prefix + str(getattr(err, "full_key", "") or "")
        msg = str(getattr(err, "msg", None) or err).splitlines()[0]
        raise error(f"{key or 'the config'}: {msg} ({source} gives each field's type and meaning)") from err
    return typed


def typed_config(cfg):
    """``cfg`` (a composed stepwise-train config) checked against `TrainSettings` and converted to its
    types; a wrong type, a missing value or a key the job does not know raises `TrainConfigError` naming it.
    The ``reward`` block is typed by `RewardSettings` for the learner's keys (the reward model's own keys
    pass through)."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg) and OmegaConf.get_type(cfg) is TrainSettings:
        return cfg
    plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    reward = dict(plain.get("reward") or {})
    learner = {f.name: reward[f.name] for f in fields(RewardSettings) if f.name in reward}
    typed_reward = typed_settings(learner, RewardSettings, TrainConfigError, "configs/train.yaml", prefix="reward.")
    plain["reward"] = {**reward, **OmegaConf.to_container(typed_reward)}
    return typed_settings(plain, TrainSettings, TrainConfigError, "configs/train.yaml")


def check_config(cfg):
    """Refuse settings of stepwise-train that cannot work, before anything is collected or trained;
    returns the config typed (`typed_config`)."""
    from sim.tasks import get_task

    cfg = typed_config(cfg)

    get_task(cfg.task)  # UnknownTaskError names the known tasks
    if cfg.algo not in ALGOS:
        raise TrainConfigError(f"algo={cfg.algo!r} unknown: use one of {ALGOS}")
    driver = cfg.robot.driver
    if driver not in ("sim", "remote"):
        raise TrainConfigError(
            f"robot={driver}: the learner never imports a driver; serve it with "
            f"`stepwise-robot-server robot={driver}` and train with robot=remote host=... port=..."
        )
    if cfg.reward.source not in SOURCES:
        raise TrainConfigError(f"reward.source={cfg.reward.source!r} unknown: use one of {SOURCES}")
    if cfg.reward.shaping not in SHAPINGS:
        raise TrainConfigError(f"reward.shaping={cfg.reward.shaping!r} unknown: use one of {SHAPINGS}")
    translate = cfg.pretrain.get("translate", 0.0)
    if not translate >= 0 or (translate > 0 and cfg.policy != "state"):
        raise TrainConfigError(f"pretrain.translate={translate} moves the cloned states' positions, so it needs a "
                               "non-negative offset in metres and policy=state (pass pretrain.translate=0 otherwise)")
    if cfg.pretrain.get("bc_weighting", "none") not in ("none", "progress"):
        raise TrainConfigError(f"pretrain.bc_weighting={cfg.pretrain.bc_weighting!r}: use none or progress")
    if cfg.pretrain.get("bc_weighting", "none") == "progress" and (cfg.reward.shaping != "progress" or cfg.policy != "state"):
        raise TrainConfigError("pretrain.bc_weighting=progress weights the demonstrations by the shaping potential's "
                               "gain: it needs reward.shaping=progress and policy=state")
    if not 1 <= cfg.demos <= 10:
        raise TrainConfigError(f"demos={cfg.demos}: use 1 to 10 demonstrations")
    if cfg.agent.utd_ratio < 1:
        raise TrainConfigError(f"agent.utd_ratio={cfg.agent.utd_ratio}: the update-to-data ratio must be >= 1")
    if cfg.online.updates_per_step < 0:
        raise TrainConfigError(f"online.updates_per_step={cfg.online.updates_per_step}: must be >= 0")
    if cfg.get("checkpoint_every") is not None and cfg.checkpoint_every < 1:
        raise TrainConfigError(f"checkpoint_every={cfg.checkpoint_every}: a checkpoint every N >= 1 online episodes, "
                               "or null (at every evaluation only)")
    if cfg.online.episodes < 0 or cfg.online.max_steps < 1:
        raise TrainConfigError("online.episodes must be >= 0 and online.max_steps >= 1")
    if cfg.eval.every < 1 or cfg.eval.episodes < 1 or cfg.eval.final_episodes < 1 or cfg.eval.get("workers", 1) < 1:
        raise TrainConfigError("eval.every, eval.episodes, eval.final_episodes and eval.workers must be >= 1")
    if cfg.reward.kind not in REWARD_KINDS:
        raise TrainConfigError(f"reward={cfg.reward.kind}: stepwise-train shapes with one of {REWARD_KINDS}")
    if cfg.reward.kind == "vlm_success" and (cfg.reward.source != "success_prob" or not cfg.reward.success_model):
        raise TrainConfigError(
            f"reward=vlm_success takes success from the classifier: it needs reward.source=success_prob (got "
            f"{cfg.reward.source}) and reward.success_model=<classifier> (got {cfg.reward.success_model}); for the "
            "simulator's success use reward=step_prm"
        )
    if cfg.reward.shaping == "progress" and cfg.reward.perspective not in ("forward", "backward"):
        raise TrainConfigError(
            f"reward.perspective={cfg.reward.perspective!r}: shaping needs a state-only perspective "
            "(forward or backward); incremental and fused depend on the history"
        )
    if cfg.refresh.get("first") is not None and cfg.refresh.first < 1:
        raise TrainConfigError(f"refresh.first={cfg.refresh.first}: the first refresh comes after at least 1 online episode")
    if cfg.refresh.every < 0 or (cfg.refresh.every and cfg.refresh.steps < 1):
        raise TrainConfigError(f"refresh.every={cfg.refresh.every}, refresh.steps={cfg.refresh.steps}: every must be "
                               ">= 0 (0: never) and steps >= 1")
    if cfg.refresh.every:
        if cfg.reward.shaping != "progress" or cfg.reward.kind not in ("step_prm", "vlm_success"):
            raise TrainConfigError(f"refresh.every={cfg.refresh.every} re-fits the step-PRM that shapes the reward; it "
                                   f"needs reward=step_prm or reward=vlm_success with reward.shaping=progress (got "
                                   f"reward={cfg.reward.kind}, reward.shaping={cfg.reward.shaping}): set refresh.every=0 otherwise")
        if str(cfg.keep_episodes).lower() == "false":
            raise TrainConfigError("refresh.every > 0 learns from the run's own episodes, which keep_episodes=false "
                                   "throws away: set keep_episodes=auto")
        if not 0.0 < cfg.refresh.failure_share < 1.0:
            raise TrainConfigError(f"refresh.failure_share={cfg.refresh.failure_share}: must be in (0, 1)")
        if cfg.refresh.get("max_failures") is not None and cfg.refresh.max_failures < 1:
            raise TrainConfigError(f"refresh.max_failures={cfg.refresh.max_failures}: must be >= 1 (null: every failure of the run)")
    if cfg.policy not in POLICIES:
        raise TrainConfigError(f"policy={cfg.policy!r} unknown: use one of {POLICIES}")
    if cfg.policy == "image":
        check_image_policy(cfg)
    if cfg.online.cql_rows is not None and cfg.online.cql_rows < 1:
        raise TrainConfigError(f"online.cql_rows={cfg.online.cql_rows}: the conservative term needs >= 1 row "
                               "(null: every row of the batch)")
    if cfg.agent.n_step < 1:
        raise TrainConfigError(f"agent.n_step={cfg.agent.n_step}: n-step returns need n >= 1 (1: one-step TD)")
    if cfg.agent.proposal and cfg.policy != "state":
        raise TrainConfigError("agent.proposal=true (IBRL's frozen BC actor) works with policy=state only: the image "
                               "policy's encoder keeps learning, so a frozen copy of its actor goes stale; set it false")
    if cfg.agent.proposal and (cfg.algo == "sac" or cfg.pretrain.bc_steps < 1):
        raise TrainConfigError("agent.proposal=true freezes the actor after the BC warm start: it needs algo=calql "
                               "with pretrain.bc_steps >= 1")
    residual = cfg.agent.get("residual_scale")
    if residual is not None and (cfg.policy != "state" or cfg.algo != "calql" or cfg.pretrain.bc_steps < 1):
        raise TrainConfigError(f"agent.residual_scale={residual} freezes the behaviour-cloned actor as the base of a "
                               "residual policy: it needs policy=state, algo=calql and pretrain.bc_steps >= 1 "
                               "(set agent.residual_scale=null otherwise)")
    if cfg.online.warmup_episodes < 0 or cfg.online.warmup_episodes >= max(cfg.online.episodes, 1):
        raise TrainConfigError(f"online.warmup_episodes={cfg.online.warmup_episodes}: give 0 (updates from the first "
                               f"online step) up to online.episodes - 1 = {cfg.online.episodes - 1}")
    if cfg.online.imitate_successes:
        if cfg.algo != "calql":
            raise TrainConfigError(f"online.imitate_successes=true adds successful online episodes to the "
                                   f"demonstrations, which algo={cfg.algo} has no use for: use algo=calql, or set it false")
        if cfg.policy == "image":
            raise TrainConfigError("online.imitate_successes=true works with policy=state only (the image policy keeps "
                                   "its demonstrations' frames in a buffer sized for them): set it false for policy=image")
    return cfg


def check_image_policy(cfg) -> None:
    """policy=image: an even image size the encoder can read, distinct cameras, valid encoder fields."""
    from policies.image_sac import PixelEncoder

    size = cfg.policy_image_size
    if size < 8 or size % 2:
        raise TrainConfigError(f"policy_image_size={size}: use an even size >= 8 (e.g. 32 or 64)")
    cams = cfg.policy_cameras
    if cams is not None and (isinstance(cams, str) or len(cams) == 0 or len(set(cams)) != len(cams)):
        raise TrainConfigError(f"policy_cameras={cams}: give a list of distinct camera names "
                               "(e.g. [corner,gripperPOV]), or null for the reward model's rig")
    config = image_agent_config(cfg)
    try:  # the conv trunk must leave at least one pixel
        PixelEncoder(1, (size, size), 1, config.encoder_channels, config.encoder_strides, config.feature_dim,
                     config.proprio_features)
    except ValueError as err:
        raise TrainConfigError(f"policy_image_size={size} with encoder.encoder_strides={list(config.encoder_strides)}: "
                               f"{err}") from err


def sac_config(cfg, error: type[Exception] = TrainConfigError):
    """`SACConfig` from a job's ``agent`` block and ``device``; ``error`` names a wrong field."""
    from omegaconf import OmegaConf

    from policies.sac import SACConfig

    fields = OmegaConf.to_container(cfg.agent, resolve=True)
    fields["hidden_sizes"] = tuple(fields["hidden_sizes"])
    fields["device"] = cfg.device
    if fields.get("compile") == "auto":
        fields["compile"] = expected_updates(cfg) >= COMPILE_PAYS_BACK and cxx_compiler() is not None
    try:
        return SACConfig(**fields)
    except TypeError as err:
        raise error(f"agent settings: {err}; see policies.sac.SACConfig for the fields") from err


COMPILE_PAYS_BACK = 10_000
"""agent.compile=auto compiles the update (policies/sac_fused.py) for runs of at least this many online
updates: on the 2-core machine the compile took about 40 s per graph (two: pre-training's and the online
one) and each update then saved about 9 ms (benchmarks/results/sac_speed.md), so it repays itself near
here and saves minutes on a 150-episode run"""


def cxx_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU code needs ($CXX, else c++, g++ or clang++ on PATH), or None:
    agent.compile=auto stays eager on a machine without one."""
    import shutil

    found = (shutil.which(name) for name in (os.environ.get("CXX"), "c++", "g++", "clang++") if name)
    return next((path for path in found if path), None)


def expected_updates(cfg) -> int:
    """Online agent updates a stepwise-train run will do at most: episodes x time limit x updates per step
    (0 where the config has no online phase of that shape)."""
    from omegaconf import OmegaConf

    episodes, steps = OmegaConf.select(cfg, "online.episodes"), OmegaConf.select(cfg, "online.max_steps")
    per_step = OmegaConf.select(cfg, "online.updates_per_step", default=1)
    if episodes is None or steps is None or OmegaConf.select(cfg, "algo") == "bc":
        return 0
    return int(episodes) * int(steps) * int(per_step or 1)


def image_agent_config(cfg):
    """`ImageSACConfig` from ``agent`` (the SACConfig fields) plus ``encoder`` (the pixel encoder's)."""
    from omegaconf import OmegaConf

    from policies.image_sac import ImageSACConfig

    fields = {**OmegaConf.to_container(cfg.agent, resolve=True), **OmegaConf.to_container(cfg.encoder, resolve=True)}
    fields["hidden_sizes"] = tuple(fields["hidden_sizes"])
    fields["encoder_strides"] = tuple(fields["encoder_strides"])
    fields["device"] = cfg.device
    fields["state_features"] = "raw"  # actor and critics read pixel features here, not Meta-World's state
    fields["n_step"] = 1  # the image replay stores one-step rows; agent.n_step applies to policy=state
    if fields.get("compile") == "auto":  # the compiled update is the flat-state agent's
        fields["compile"] = False
    try:
        return ImageSACConfig(**fields)
    except (TypeError, ValueError) as err:
        raise TrainConfigError(
            f"agent/encoder settings: {err}; see policies.image_sac.ImageSACConfig for the fields") from err


def offline_threads(cfg) -> int:
    """Torch threads for the stages that run alone (adaptation, pre-training): by default every core this
    process may use, or OMP_NUM_THREADS where set (a Slurm job's share, a test worker beside others)."""
    if cfg.offline_threads:
        return int(cfg.offline_threads)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    omp = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(usable, int(omp))) if omp.isdigit() and int(omp) > 0 else usable


def tool_config(name: str, overrides: Mapping[str, Any], reward: str | None = None):
    """Another tool's config as its command line would compose it: ``configs/<name>.yaml`` without its
    Hydra keys, ``reward`` (a ``configs/reward/<reward>.yaml`` group) as its ``reward`` block, then
    ``overrides`` merged on top (nested keys merge)."""
    from omegaconf import OmegaConf

    base = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    for key in ("defaults", "hydra"):
        base.pop(key, None)
    if reward is not None:
        base.reward = OmegaConf.load(CONFIG_DIR / "reward" / f"{reward}.yaml")
    return OmegaConf.merge(base, dict(overrides))
