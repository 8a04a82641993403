"""`stepwise-train`: learn a manipulation task from a few demonstrations, with a progress-shaped reward.

The job, in order (each stage resumes after a kill):
1. collect ``demos`` scripted-expert demonstrations (demo split) into ``<run>/demos/``;
2. load the progress model (``reward.model``, the shipped ``general`` by default) and adapt it
   on ONE demonstration (``reward.adapt_steps``) into ``<run>/reward_model/``;
3. pre-train the agent on the demonstrations: a behaviour-cloning warm start of the actor, then
   Cal-QL updates (conservative term lower-bounded by Monte-Carlo returns of the SAME shaped
   rewards the critic learns) with the BC term;
4. fine-tune online on the train split: after each episode its camera frames are scored by the
   progress model in ONE batch, the rewards are shaped, and only then do its transitions enter
   replay (off-policy learning allows the delay); evaluate every ``eval.every`` episodes on the
   eval split (variants the demonstrations and training never saw);
5. write ``report.json``, ``report.md``, ``success_curve.png``, TensorBoard logs (``tb/``) and
   ``checkpoint.pt`` (everything a resume needs: agent with optimisers and temperature, online
   replay, counters, random states, history).

The policy (``policy``): ``state`` is SAC on the simulator's 39-d state (privileged, a simulation
ceiling); ``image`` is ImageSAC on camera frames + proprio, the path that runs on a robot. The image
policy never reads the state: its envs are made without it. Its frames are the env's, rendered at
the reward model's size when a camera-based reward needs them, and resized per step to
``policy_image_size`` (bilinear, antialiased); without such a reward they are rendered at the
policy's size directly. Its online replay (frames stored once) is saved beside ``checkpoint.pt``.

Rewards: r = success_reward on the success step (a true terminal) else 0 (``reward.source=sparse``),
or from a reward model's P(done) (``success_prob``), or Meta-World's dense reward (``sim_dense``,
comparison runs only); plus lambda (gamma Phi(s') - Phi(s)) with Phi from the progress model
(``reward.shaping=progress``) or a privileged simulator potential (``oracle``, a ceiling).
The reward-hacking monitor counts training episodes whose final progress is >= 0.9 without success.
``reward=vlm_success`` (configs/reward/vlm_success.yaml + configs/train_reward/vlm_success.yaml) takes
success and termination from the VLM success classifier ``reward.success_model`` at its own threshold,
shaped by the step-PRM ``reward.model`` (or ``reward.shaping=none``); its false positives and negatives
against the simulator's success are counted in the report.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policies.episode import EpisodeRecord, PolicyView, add_to_replay, demo_records, state_view

log = logging.getLogger("stepwise.train")

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
ALGOS = ("calql", "sac", "bc")
SOURCES = ("sparse", "success_prob", "sim_dense")
SHAPINGS = ("progress", "oracle", "none")
POLICIES = ("state", "image")
CHECKPOINT_VERSION = 1


class TrainConfigError(ValueError):
    """A setting of stepwise-train that cannot work; the message names it and the fix."""


REWARD_KINDS = ("step_prm", "perceptual", "vlm_success")  # reward=<family>; vlm_success: the classifier's success, step-PRM shaping


def check_config(cfg) -> None:
    """Refuse settings that cannot work, before anything is collected or trained."""
    from sim.tasks import get_task

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
    if not 1 <= int(cfg.demos) <= 10:
        raise TrainConfigError(f"demos={cfg.demos}: use 1 to 10 demonstrations")
    if int(cfg.agent.utd_ratio) < 1:
        raise TrainConfigError(f"agent.utd_ratio={cfg.agent.utd_ratio}: the update-to-data ratio must be >= 1")
    if int(cfg.online.updates_per_step) < 0:
        raise TrainConfigError(f"online.updates_per_step={cfg.online.updates_per_step}: must be >= 0")
    if int(cfg.online.episodes) < 0 or int(cfg.online.max_steps) < 1:
        raise TrainConfigError("online.episodes must be >= 0 and online.max_steps >= 1")
    if int(cfg.eval.every) < 1 or int(cfg.eval.episodes) < 1 or int(cfg.eval.final_episodes) < 1:
        raise TrainConfigError("eval.every, eval.episodes and eval.final_episodes must be >= 1")
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
    if cfg.policy not in POLICIES:
        raise TrainConfigError(f"policy={cfg.policy!r} unknown: use one of {POLICIES}")
    if cfg.policy == "image":
        check_image_policy(cfg)
    if cfg.online.get("imitate_successes", False):
        if cfg.algo != "calql":
            raise TrainConfigError(f"online.imitate_successes=true adds successful online episodes to the "
                                   f"demonstrations, which algo={cfg.algo} has no use for: use algo=calql, or set it false")
        if cfg.policy == "image":
            raise TrainConfigError("online.imitate_successes=true works with policy=state only (the image policy keeps "
                                   "its demonstrations' frames in a buffer sized for them): set it false for policy=image")


def check_image_policy(cfg) -> None:
    """policy=image: an even image size the encoder can read, distinct cameras, valid encoder fields."""
    from policies.image_sac import PixelEncoder

    size = int(cfg.policy_image_size)
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


# --------------------------------------------------------------------------- stages 1-2: demos, model


def collect_demos(cfg, run: Path, cameras: tuple[str, ...], image_size: int) -> Path:
    """Stage 1: ``cfg.demos`` expert demonstrations on the demo split (resumes a partial store)."""
    from omegaconf import OmegaConf

    from sim.collect import collect

    base = OmegaConf.load(CONFIG_DIR / "collect.yaml")
    for key in ("defaults", "hydra"):
        base.pop(key, None)
    one = OmegaConf.merge(base, {
        "task": cfg.task, "episodes": int(cfg.demos), "seed": 0, "split": "demo", "out": str(run / "demos"),
        "cameras": list(cameras), "image_size": int(image_size), "failures": 0,
    })
    return Path(collect(one))


def offline_threads(cfg) -> int:
    """Torch threads for the stages that run alone (adaptation, pre-training): every core by default."""
    import os

    return int(cfg.offline_threads or os.cpu_count() or 1)


def fit_perceptual_model(cfg, run: Path, demo_store: Path):
    """Stage 2 for ``reward=perceptual``: the perceptual-feature reward fitted on ONE demonstration
    (its steps discovered without labels), saved in the run directory."""
    from omegaconf import OmegaConf

    import reward_models
    from reward_models.perceptual import fit, fit_kwargs, load_task_episodes

    out = run / "reward_model"
    if (out / "adapted.done").exists():
        return reward_models.load(out)
    rc = OmegaConf.to_container(cfg.reward, resolve=True)
    if not rc.get("encoder"):
        raise TrainConfigError("reward=perceptual needs reward.encoder=<name> (e.g. tcn, pixels, resnet18, clip)")
    kwargs = fit_kwargs(rc, strict=False)
    demos, _ = load_task_episodes(demo_store, kwargs["cameras"], max_demos=1)
    model = fit(demos[:1], rc["encoder"], **kwargs)
    model.save(out)
    (out / "adapted.done").write_text(json.dumps({"from": f"perceptual:{rc['encoder']}", "demos": 1}))
    return model


def adapt_progress_model(cfg, run: Path, demo_store: Path):
    """Stage 2: the progress model, fine-tuned on ONE demonstration (``reward.adapt_steps``)."""
    from omegaconf import OmegaConf

    import reward_models
    from reward_models.train import train as train_rm

    if cfg.reward.kind == "perceptual":
        return fit_perceptual_model(cfg, run, demo_store)
    out = run / "reward_model"
    if (out / "adapted.done").exists():
        return reward_models.load(out)
    if int(cfg.reward.adapt_steps) <= 0:
        return reward_models.load(cfg.reward.model)
    base = OmegaConf.load(CONFIG_DIR / "train_rm.yaml")
    for key in ("defaults", "hydra"):
        base.pop(key, None)
    base.reward = OmegaConf.load(CONFIG_DIR / "reward" / "step_prm.yaml")
    rm_cfg = OmegaConf.merge(base, {
        "init": str(cfg.reward.model), "data": str(demo_store), "out": str(out), "max_episodes_per_task": 1,
        "steps": int(cfg.reward.adapt_steps), "lr": float(cfg.reward.adapt_lr), "val_every_nth": 0,
        "checkpoint_every": 50, "seed": int(cfg.seed), "num_threads": offline_threads(cfg),
    })
    model = train_rm(rm_cfg)
    (out / "adapted.done").write_text(json.dumps({"from": str(cfg.reward.model), "steps": int(cfg.reward.adapt_steps)}))
    return model


# --------------------------------------------------------------------------- rewards


def success_threshold(cfg, judge) -> float:
    """``reward.success_threshold``, or (null) the success model's own threshold chosen on its validation frames."""
    if cfg.reward.success_threshold is not None:
        return float(cfg.reward.success_threshold)
    thr = getattr(getattr(judge, "cfg", None), "threshold", None)
    if thr is None:
        raise TrainConfigError(f"reward.success_threshold=null but the success model {cfg.reward.success_model} "
                               "carries no threshold of its own: pass reward.success_threshold=<P(done) cut>")
    return float(thr)


def oracle_potential(dense_rewards: np.ndarray) -> np.ndarray:
    """Privileged potential: Meta-World's dense reward (in [0, 10]) of each frame, mapped to [0, 1].

    A ceiling for comparison only: it reads simulator state no robot has."""
    return np.clip(np.asarray(dense_rewards, np.float64) / 10.0, 0.0, 1.0).astype(np.float32)


class RewardPipeline:
    """Turns a finished episode into the learner's rewards, scored in ONE model call per episode."""

    def __init__(self, cfg, model, instruction: str, reference: Any = None) -> None:
        self.cfg, self.model, self.instruction, self.reference = cfg, model, instruction, reference
        self.gamma = float(cfg.agent.gamma)

    @property
    def needs_frames(self) -> bool:
        """Camera frames are scored: progress shaping or the hacking monitor of a progress model."""
        return self.cfg.reward.shaping == "progress" or self.cfg.reward.source == "success_prob"

    def potentials(self, ep: EpisodeRecord) -> np.ndarray:
        """Phi of every frame (T+1,)."""
        from reward_models.shaping import episode_potentials

        kind = self.cfg.reward.shaping
        if kind == "progress":
            return episode_potentials(self.model, ep.frames, self.instruction, self.reference, self.cfg.reward.perspective)
        if kind == "oracle":
            return oracle_potential(ep.dense)
        return np.zeros(len(ep.actions) + 1, np.float32)

    def __call__(self, ep: EpisodeRecord) -> dict[str, np.ndarray]:
        """Shaped rewards with every term apart, plus Monte-Carlo returns of the shaped rewards."""
        from policies.replay import discounted_returns
        from reward_models.shaping import shape_rewards

        phi = self.potentials(ep)
        weight = float(self.cfg.reward.weight) if self.cfg.reward.shaping != "none" else 0.0
        shaped = shape_rewards(ep.env_rewards, phi, ep.terminated, self.gamma, weight)
        # Cal-QL's bound: the return actually collected; after a time limit the shaped future is
        # bounded below by -weight * Phi(s_T) (future env rewards >= 0, the shaping telescopes).
        tail = 0.0 if ep.terminated[-1] else -weight * float(phi[-1])
        return {
            "reward": shaped.reward, "env_reward": shaped.env_reward, "phi": shaped.phi,
            "phi_next": shaped.phi_next, "shaping": shaped.shaping,
            "mc_return": discounted_returns(shaped.reward, self.gamma, bootstrap=tail),
            "final_progress": float(phi[-1]) if self.cfg.reward.shaping == "progress" else float("nan"),
        }


# --------------------------------------------------------------------------- the run


@dataclass
class RunState:
    """Counters and history that a resume restores (the agent and replay travel beside it)."""

    phase: str = "pretrain"              # pretrain -> online -> done
    episode: int = 0                     # online episodes finished
    env_steps: int = 0
    wall_time_s: float = 0.0             # summed over sessions (resumes)
    history: list[dict] = field(default_factory=list)   # one row per online episode
    evals: list[dict] = field(default_factory=list)     # one row per evaluation
    stage_seconds: dict = field(default_factory=dict)


def make_agent(cfg, obs_dim: int, act_dim: int):
    from omegaconf import OmegaConf

    from policies.sac import SAC, SACConfig

    agent_cfg = OmegaConf.to_container(cfg.agent, resolve=True)
    agent_cfg["hidden_sizes"] = tuple(agent_cfg["hidden_sizes"])
    agent_cfg["device"] = cfg.device
    try:
        return SAC(obs_dim, act_dim, SACConfig(**agent_cfg))
    except TypeError as err:
        raise TrainConfigError(f"agent settings: {err}; see policies.sac.SACConfig for the fields") from err


def image_agent_config(cfg):
    """`ImageSACConfig` from ``agent`` (the SACConfig fields) plus ``encoder`` (the pixel encoder's)."""
    from omegaconf import OmegaConf

    from policies.image_sac import ImageSACConfig

    fields = {**OmegaConf.to_container(cfg.agent, resolve=True), **OmegaConf.to_container(cfg.encoder, resolve=True)}
    fields["hidden_sizes"] = tuple(fields["hidden_sizes"])
    fields["encoder_strides"] = tuple(fields["encoder_strides"])
    fields["device"] = cfg.device
    fields["state_features"] = "raw"  # actor and critics read pixel features here, not Meta-World's state
    try:
        return ImageSACConfig(**fields)
    except (TypeError, ValueError) as err:
        raise TrainConfigError(
            f"agent/encoder settings: {err}; see policies.image_sac.ImageSACConfig for the fields") from err


def make_image_agent(cfg, view: PolicyView, proprio_dim: int, act_dim: int):
    """ImageSAC over ``view``'s cameras at its image size, plus proprio."""
    from policies.image_sac import ImageSAC

    return ImageSAC(view.cameras, view.image_size, proprio_dim, act_dim, image_agent_config(cfg))


def evaluate(agent, env, seeds: list[int], observe: Callable[[Mapping], Any] = state_view) -> dict:
    """Deterministic episodes on ``env`` (eval split): success rate and lengths. ``observe``: env
    observation -> the policy's input (`state_view`, or the image policy's `PolicyView`)."""
    successes, lengths = [], []
    for s in seeds:
        obs, _ = env.reset(seed=int(s))
        done, steps, success = False, 0, False
        while not done:
            obs, _, term, trunc, info = env.step(agent.act(observe(obs), deterministic=True))
            steps += 1
            success = success or bool(info["sim/success"])
            done = term or trunc
        successes.append(success)
        lengths.append(steps)
    return {"success_rate": float(np.mean(successes)), "episodes": len(seeds), "mean_length": float(np.mean(lengths))}


REPLAY_PREFIX = "online_replay_ep"  # the image policy's online replay: <prefix><episode>.npz beside checkpoint.pt


def save_checkpoint(path: Path, agent, online, state: RunState, rng: np.random.Generator, cfg_dict: dict,
                    imitated: dict | None = None) -> None:
    """Everything a resume needs, written atomically (tmp + rename). ``imitated``: the rows of
    successful online episodes added to the demonstrations (online.imitate_successes), by field.

    The state policy's online replay is embedded in the checkpoint. The image policy's
    (`ImageReplayBuffer`, GBs at full size) goes to its own file, named by the episode count and
    written before the checkpoint that names it; older ones are deleted after. A kill at any point
    leaves a checkpoint whose replay file is complete."""
    from policies.image_replay import ImageReplayBuffer

    payload = {
        "version": CHECKPOINT_VERSION, "kind": "stepwise-train", "task": cfg_dict["task"],
        "policy": cfg_dict.get("policy", "state"),
        "obs_dim": agent.obs_dim, "act_dim": agent.act_dim, "config": cfg_dict,
        "agent": agent.state_dict(), "state": state.__dict__,
        "replay_capacity": online.capacity, "imitated": imitated,
        "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
    }
    replay_file = None
    if isinstance(online, ImageReplayBuffer):
        replay_file = f"{REPLAY_PREFIX}{state.episode}.npz"
        tmp_replay = path.parent / f"{REPLAY_PREFIX}{state.episode}.tmp.npz"  # numpy appends .npz to other names
        online.save(tmp_replay)
        os.replace(tmp_replay, path.parent / replay_file)
        payload.update(replay=None, replay_file=replay_file, replay_size=len(online),
                       replay_bytes=(path.parent / replay_file).stat().st_size)
    else:
        payload["replay"] = online.rows()
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    if replay_file is not None:
        for old in path.parent.glob(f"{REPLAY_PREFIX}*.npz"):
            if old.name != replay_file:
                old.unlink(missing_ok=True)


def load_online_images(run: Path, ckpt: dict):
    """The image policy's online replay that ``ckpt`` names, checked against the size it recorded."""
    from policies.image_replay import ImageReplayBuffer

    path = run / ckpt["replay_file"]
    if not path.exists():
        raise TrainConfigError(f"{path}, the online replay of {run / 'checkpoint.pt'}, is missing: restore it, "
                               "or delete checkpoint.pt to start the run over")
    try:
        online = ImageReplayBuffer.load(path)
    except Exception as err:  # truncated or not written by ImageReplayBuffer.save
        raise TrainConfigError(f"{path} cannot be read ({err}); delete checkpoint.pt to start the run over") from err
    if len(online) != ckpt["replay_size"]:
        raise TrainConfigError(f"{path} holds {len(online)} transitions but the checkpoint recorded "
                               f"{ckpt['replay_size']}: it belongs to another checkpoint; delete checkpoint.pt "
                               "to start over")
    return online


def load_checkpoint(path: Path, cfg) -> dict:
    """Read a stepwise-train checkpoint and check it belongs to this run's task."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or not a torch file
        raise TrainConfigError(f"checkpoint {path} cannot be read ({err}); delete it to start over") from err
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "stepwise-train":
        raise TrainConfigError(f"{path} is not a stepwise-train checkpoint; use another hydra.run.dir")
    if ckpt["version"] != CHECKPOINT_VERSION:
        raise TrainConfigError(f"{path} has checkpoint version {ckpt['version']}, this code reads {CHECKPOINT_VERSION}")
    if ckpt["task"] != cfg.task:
        raise TrainConfigError(
            f"{path} is a run of {ckpt['task']}, not {cfg.task}: pass task={ckpt['task']} or another hydra.run.dir"
        )
    theirs = ckpt.get("policy", "state")  # checkpoints from before the image policy are state runs
    if theirs != cfg.policy:
        raise TrainConfigError(
            f"{path} is a run of the {theirs} policy, not policy={cfg.policy}: pass policy={theirs} to resume it, "
            "or use another hydra.run.dir"
        )
    return ckpt


def run(cfg, run_dir: str | Path) -> dict:
    """The whole job (see the module docstring). Returns the report dict."""
    from omegaconf import OmegaConf
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    import reward_models
    from policies.image_replay import ImageReplayBuffer, MixedImageReplay
    from policies.replay import MixedReplay, ReplayBuffer
    from real import make_env
    from sim.tasks import get_task

    check_config(cfg)
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(cfg.threads))
    spec = get_task(cfg.task)
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    ckpt_path = run / "checkpoint.pt"
    ckpt = None
    if ckpt_path.exists():
        if not cfg.resume:
            raise TrainConfigError(
                f"{run} already holds a run ({ckpt_path.name}): pass resume=true to continue it, "
                "or give another hydra.run.dir"
            )
        ckpt = load_checkpoint(ckpt_path, cfg)
    state = RunState(**ckpt["state"]) if ckpt else RunState()
    session_start = time.perf_counter()
    wall_before = state.wall_time_s

    def stage_done(name: str, t0: float) -> None:
        state.stage_seconds[name] = state.stage_seconds.get(name, 0.0) + time.perf_counter() - t0

    # -- stages 1-2: demonstrations, progress model ------------------------------------------
    uses_model = cfg.reward.shaping == "progress" or cfg.reward.source == "success_prob"
    t0 = time.perf_counter()
    perceptual = cfg.reward.kind == "perceptual"  # fitted from a demo below: its rig comes from its config
    # the success classifier, loaded first so that a wrong name fails before any work
    judge = (reward_models.load(cfg.reward.success_model)
             if cfg.reward.source == "success_prob" and cfg.reward.success_model else None)
    if cfg.reward.kind == "vlm_success" and cfg.reward.shaping != "progress":
        uses_model = False  # the classifier alone: no progress model to load or adapt
    model = reward_models.load(cfg.reward.model) if uses_model and not perceptual else None
    if model is not None:
        cameras, model_size = tuple(model.cameras), model.image_size[0]
    elif judge is not None and not perceptual:
        cameras, model_size = tuple(judge.cameras), judge.image_size[0]
    else:
        cameras, model_size = tuple(cfg.reward.get("cameras") or ("corner", "corner2", "gripperPOV")), int(cfg.reward.get("image_size") or 96)
    image_size = int(cfg.image_size or model_size)
    # the env renders what the reward model scores; the image policy adds its cameras, rendered at
    # the reward model's size and resized per step, or at its own size when no reward reads frames
    image_policy = cfg.policy == "image"  # its envs carry no state: it cannot read what a robot lacks
    view = PolicyView(cfg.policy_cameras or cameras, int(cfg.policy_image_size)) if image_policy else None
    score_cams = list(cameras) if uses_model else []  # frames the reward model scores
    if judge is not None:
        if judge.image_size[0] != image_size:
            raise TrainConfigError(f"the success model {cfg.reward.success_model} reads {judge.image_size[0]} px frames "
                                   f"but the env renders {image_size} px for the progress model: pass image_size="
                                   f"{judge.image_size[0]} or a classifier trained at {image_size} px")
        score_cams = list(dict.fromkeys([*score_cams, *judge.cameras]))
    env_cams, render_size = score_cams, image_size
    if image_policy:
        env_cams = list(dict.fromkeys([*env_cams, *view.cameras]))
        render_size = image_size if score_cams else view.image_size[0]
    demo_store = collect_demos(cfg, run, tuple(env_cams) if image_policy else cameras, render_size)
    stage_done("collect_demos", t0)
    reference = None
    if uses_model:
        t0 = time.perf_counter()
        model = adapt_progress_model(cfg, run, demo_store)
        stage_done("adapt_reward_model", t0)
    records = demo_records(demo_store, list(cameras) if uses_model else [], float(cfg.reward.success_reward), view)
    if model is not None and cfg.reward.perspective == "backward":
        from episodes import EpisodeStore

        with EpisodeStore(demo_store, cameras=list(cameras)) as store:
            reference = store[0]
    pipeline = RewardPipeline(cfg, model, spec.instruction, reference)

    # -- environments ----------------------------------------------------------------------
    success_fn = None
    if cfg.reward.source == "success_prob":
        judge = judge or model
        thr = success_threshold(cfg, judge)
        judge_cams = tuple(judge.cameras)
        success_fn = lambda o: float(judge.success_prob({c: o["images"][c][None] for c in judge_cams}, spec.instruction)[0]) > thr  # noqa: E731
    # robot=remote: online and evaluation episodes run on the robot behind a stepwise-robot-server
    # (its split, its safety layer and watchdog); the demonstrations still come from the simulator
    robot_cfg = OmegaConf.to_container(cfg.robot, resolve=True)
    if robot_cfg["driver"] == "sim":
        robot_kw = {"safety": robot_cfg["safety"]}
    else:
        robot_kw = {"robot": "remote", **{k: v for k, v in robot_cfg.items() if k != "driver"}}
    env = make_env(cfg.task, cameras=env_cams, image_size=render_size, max_episode_steps=int(cfg.online.max_steps),
                   terminate_on_success=True, reward_mode="sim_dense" if cfg.reward.source == "sim_dense" else "sparse",
                   success_reward=float(cfg.reward.success_reward), split="train", include_state=not image_policy, **robot_kw)
    if success_fn is not None:
        env.success_fn = success_fn
    # the image policy is evaluated on frames made as in training (same render size, same resize)
    eval_env = make_env(cfg.task, cameras=view.cameras if image_policy else [], image_size=render_size,
                        max_episode_steps=int(cfg.online.max_steps), terminate_on_success=True, split="eval",
                        include_state=not image_policy, **robot_kw)
    observe = view if image_policy else state_view
    act_dim = env.action_space.shape[0]
    imitate = bool(cfg.online.get("imitate_successes", False))  # check_config allows it for policy=state only

    # -- agent and replay ---------------------------------------------------------------------
    if image_policy:
        proprio_dim = env.observation_space["proprio"].shape[0]
        agent = make_image_agent(cfg, view, proprio_dim, act_dim)
        layout = (view.cameras, view.image_size, proprio_dim, act_dim)
        new_buffer = lambda rows: ImageReplayBuffer(*layout, max(2, rows))  # noqa: E731
        offline = new_buffer(sum(len(r.actions) + 1 for r in records))  # T+1 frame rows per episode
    else:
        obs_dim = env.observation_space["state"].shape[0]
        agent = make_agent(cfg, obs_dim, act_dim)
        new_buffer = lambda rows: ReplayBuffer(obs_dim, act_dim, rows)  # noqa: E731
        # self-imitation: successful online episodes join the demonstrations, so the buffer has room for them
        offline = new_buffer(sum(len(r.actions) for r in records) + (int(cfg.online.capacity) if imitate else 0))
    demo_terms = []
    for rec in records:
        terms = pipeline(rec)
        demo_terms.append(terms)
        add_to_replay(offline, rec, terms)
    demo_rows = len(offline)  # rows beyond these are imitated online episodes (online.imitate_successes)
    online = new_buffer(int(cfg.online.capacity))
    rng = np.random.default_rng(int(cfg.seed))
    torch.manual_seed(int(cfg.seed))
    if ckpt:
        try:
            agent.load_state_dict(ckpt["agent"])
        except (ValueError, RuntimeError, KeyError) as err:
            raise TrainConfigError(f"{ckpt_path} does not fit these settings ({err}): resume with the run's own "
                                   f"settings ({run / '.hydra' / 'config.yaml'}) or use another hydra.run.dir") from err
        if image_policy:
            online = load_online_images(run, ckpt)
        else:
            online.add_rows(ckpt["replay"])
            if ckpt.get("imitated") is not None:
                if not imitate:
                    raise TrainConfigError(
                        f"{ckpt_path} holds {len(ckpt['imitated']['obs'])} imitated transitions (a run with "
                        "online.imitate_successes=true): resume it with online.imitate_successes=true")
                offline.add_rows(ckpt["imitated"])
        rng.bit_generator.state = ckpt["rng"]
        torch.set_rng_state(ckpt["torch_rng"])
        log.info("resumed %s at phase %s, episode %d (%d env steps)", run, state.phase, state.episode, state.env_steps)
    use_demos = cfg.algo in ("calql", "bc")
    mixer = MixedImageReplay if image_policy else MixedReplay
    replay = mixer(offline if use_demos else new_buffer(1), online,
                   float(cfg.online.offline_fraction) if use_demos else 0.0)
    if not use_demos:
        agent.cfg.bc_weight = 0.0  # online-only baseline: no demonstrations reach the agent
    writer = SummaryWriter(str(run / "tb"))
    eval_seeds = list(range(int(cfg.eval.episodes)))
    batch_rows = int(cfg.agent.batch_size) * int(cfg.agent.utd_ratio)

    def checkpoint() -> None:
        state.wall_time_s = wall_before + time.perf_counter() - session_start
        imitated = None
        if imitate and len(offline) > demo_rows:
            imitated = {k: v[demo_rows:] for k, v in offline.rows().items()}
        save_checkpoint(ckpt_path, agent, online, state, rng, cfg_dict, imitated)

    def run_eval(n_seeds: list[int]) -> dict:
        res = evaluate(agent, eval_env, n_seeds, observe)
        res.update(episode=state.episode, env_steps=state.env_steps)
        state.evals.append(res)
        writer.add_scalar("eval/success_rate", res["success_rate"], state.episode)
        log.info("eval after %d online episodes: success %.2f over %d episodes", state.episode, res["success_rate"], res["episodes"])
        return res

    # -- stage 3: pre-training on the demonstrations ------------------------------------------
    if state.phase == "pretrain":
        t0 = time.perf_counter()
        torch.set_num_threads(offline_threads(cfg))
        if use_demos:
            for step in tqdm(range(int(cfg.pretrain.bc_steps)), desc="BC warm start", unit="step"):
                b = offline.sample(int(cfg.agent.batch_size), rng, agent.device)
                loss = agent.bc_update(b["obs"], b["action"])
                if step % 50 == 0:
                    writer.add_scalar("pretrain/bc_loss", loss, step)
        if cfg.algo == "calql":
            for step in tqdm(range(int(cfg.pretrain.steps)), desc="Cal-QL pre-training", unit="step"):
                b = offline.sample(batch_rows, rng, agent.device)
                b["demo"] = torch.ones(batch_rows, device=agent.device)
                stats = agent.update(b)
                if step % 50 == 0:
                    for k, v in stats.items():
                        writer.add_scalar(f"pretrain/{k}", v, step)
        stage_done("pretrain", t0)
        state.phase = "online" if cfg.algo != "bc" else "done"
        run_eval(eval_seeds)
        checkpoint()
    agent.cql_alpha = float(cfg.online.cql_alpha)
    torch.set_num_threads(int(cfg.threads))

    # -- stage 4: online fine-tuning ------------------------------------------------------------
    n_episodes = int(cfg.online.episodes) if cfg.algo != "bc" else 0
    if state.phase == "done" and state.episode < n_episodes:  # resumed with more episodes: extend the run
        state.phase = "online"
    bar = tqdm(total=n_episodes, initial=state.episode, desc="online", unit="ep")
    t_online = time.perf_counter()
    while state.phase == "online" and state.episode < n_episodes:
        frac = min(1.0, state.episode / max(1, int(cfg.online.bc_anneal_episodes)))
        agent.bc_coef = 1.0 + frac * (float(cfg.online.bc_final) - 1.0)
        rec, stats = run_episode(cfg, env, agent, replay, rng, state, batch_rows, score_cams, view)
        terms = pipeline(rec)
        add_to_replay(online, rec, terms)
        # self-imitation: an episode that ended at the learner's own success signal (the true terminal
        # the env gave: the simulator's success, or the classifier's) joins the demonstrations, for the
        # offline half of each batch and the BC term
        imitated = imitate and bool(rec.terminated[-1])
        if imitated:
            add_to_replay(offline, rec, terms)
        hacked = bool(terms["final_progress"] >= float(cfg.reward.hacking_progress) and not rec.success)
        row = {
            "episode": state.episode, "length": len(rec.actions), "success": rec.success,
            "return": float(terms["reward"].sum()), "env_reward": float(terms["env_reward"].sum()),
            "shaping": float(terms["shaping"].sum()), "phi_mean": float(terms["phi"].mean()),
            "phi_next_mean": float(terms["phi_next"].mean()), "final_progress": terms["final_progress"],
            "hacking": hacked, "imitated": imitated, **stats,
        }
        if cfg.reward.source == "success_prob":
            claimed = bool(rec.terminated[-1])
            row["detector_false_positive"] = claimed and not rec.success
            row["detector_false_negative"] = (not claimed) and rec.success
        state.history.append(row)
        for k, v in row.items():
            if isinstance(v, (int, float, bool)) and k != "episode" and not (isinstance(v, float) and math.isnan(v)):
                writer.add_scalar(f"train/{k}", float(v), state.episode)
        state.episode += 1
        bar.update(1)
        bar.set_postfix(success=rec.success, steps=state.env_steps, alpha=f"{agent.alpha:.3f}")
        if state.episode % int(cfg.eval.every) == 0 or state.episode == n_episodes:
            run_eval(eval_seeds)
            checkpoint()
    bar.close()
    if state.phase == "online":
        stage_done("online", t_online)
        state.phase = "done"
        checkpoint()

    # -- stage 5: final evaluation and report ---------------------------------------------------
    final = evaluate(agent, eval_env, list(range(int(cfg.eval.final_episodes))), observe)
    state.wall_time_s = wall_before + time.perf_counter() - session_start
    seen = ({"cameras": view.cameras, "image_size": list(view.image_size), "render_size": render_size}
            if image_policy else None)
    report = write_report(run, cfg, state, final, demo_terms, seen)
    policy = {"kind": "stepwise-policy", "task": cfg.task, "policy": cfg.policy, "obs_key": "state",
              "agent": agent.state_dict()}
    if image_policy:  # load with ImageSAC.from_state_dict; frames rendered at render_size, resized to image_size
        policy.update(obs_key="images+proprio", **seen)
    torch.save(policy, run / "policy.pt")
    writer.close()
    env.close()
    eval_env.close()
    return report


def run_episode(cfg, env, agent, replay, rng, state: RunState, batch_rows: int, cameras: list[str],
                view: PolicyView | None = None):
    """One online episode: act, update every step, and keep what the reward pipeline needs.

    ``cameras``: frames kept for the reward model. ``view``: the image policy's (None: the state policy)."""
    observe = view if view is not None else state_view
    obs, info = env.reset(seed=int(cfg.seed) * 100_000 + state.episode)
    seen, actions, rewards, terms = [observe(obs)], [], [], []
    frames = {c: [obs["images"][c]] for c in cameras}
    dense = [0.0]
    success = False
    sums: dict[str, float] = {}
    n_updates = 0
    while True:
        if state.env_steps < int(cfg.online.random_steps):
            action = rng.uniform(-1, 1, agent.act_dim).astype(np.float32)
        else:
            action = agent.act(seen[-1])
        obs, reward, terminated, truncated, info = env.step(action)
        state.env_steps += 1
        seen.append(observe(obs))
        actions.append(info["applied_action"])
        rewards.append(reward)
        terms.append(terminated)
        dense.append(info.get("sim/dense_reward", 0.0))
        for c in cameras:
            frames[c].append(obs["images"][c])
        success = success or bool(info.get("sim/success", False))
        ready = len(replay.offline) > 0 and replay.offline_fraction > 0 or len(replay.online) > 0
        for _ in range(int(cfg.online.updates_per_step) if ready else 0):
            out = agent.update(replay.sample(batch_rows, rng, agent.device))
            n_updates += 1
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v
        if terminated or truncated:
            break
    rec = EpisodeRecord(
        obs=np.asarray(seen, np.float32) if view is None else None, actions=np.asarray(actions, np.float32),
        env_rewards=np.asarray(rewards, np.float32), terminated=np.asarray(terms, bool), success=success,
        frames={c: np.stack(v) for c, v in frames.items()}, dense=np.asarray(dense, np.float32))
    if view is not None:
        rec.proprio = np.stack([s["proprio"] for s in seen])
        rec.policy_frames = {c: np.stack([s["images"][c] for s in seen]) for c in view.cameras}
    return rec, {f"agent/{k}": v / n_updates for k, v in sums.items()} if n_updates else {}


# --------------------------------------------------------------------------- report


def write_report(run: Path, cfg, state: RunState, final: dict, demo_terms: list[dict],
                 image_policy: dict | None = None) -> dict:
    """report.json, report.md and success_curve.png in the run directory. ``image_policy``: its
    cameras, image_size and render_size (None: the state policy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = state.history
    hacked = [h["episode"] for h in hist if h.get("hacking")]
    report = {
        "task": cfg.task, "algo": cfg.algo, "demos": int(cfg.demos), "seed": int(cfg.seed),
        "reward": {"source": cfg.reward.source, "shaping": cfg.reward.shaping, "weight": float(cfg.reward.weight),
                   "model": str(cfg.reward.model), "adapt_steps": int(cfg.reward.adapt_steps), "kind": cfg.reward.kind,
                   **({"success_model": str(cfg.reward.success_model),
                       "success_threshold": cfg.reward.success_threshold} if cfg.reward.source == "success_prob" else {})},
        "final_success_rate": final["success_rate"], "final_eval_episodes": final["episodes"],
        "online_episodes": state.episode, "env_steps": state.env_steps, "wall_time_s": round(state.wall_time_s, 1),
        "stage_seconds": {k: round(v, 1) for k, v in state.stage_seconds.items()},
        "evals": state.evals,
        "first_episode_at_full_success": next((e["episode"] for e in state.evals if e["success_rate"] >= 1.0), None),
        "train_success_rate_last_20": float(np.mean([h["success"] for h in hist[-20:]])) if hist else None,
        "hacking_monitor": {"threshold": float(cfg.reward.hacking_progress), "episodes": len(hacked),
                            "of": len(hist), "episode_ids": hacked},
        "imitated_episodes": sum(bool(h.get("imitated")) for h in hist),
        "demo_final_progress": [float(t["final_progress"]) for t in demo_terms],
        "policy": {"kind": cfg.policy, **(image_policy or {})},
    }
    if cfg.reward.source == "success_prob":
        report["detector"] = {"false_positives": sum(h.get("detector_false_positive", 0) for h in hist),
                              "false_negatives": sum(h.get("detector_false_negative", 0) for h in hist)}
    (run / "report.json").write_text(json.dumps(report, indent=1))

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([e["episode"] for e in state.evals], [e["success_rate"] for e in state.evals], "o-", label="eval (deterministic)")
    if hist:
        s = np.array([h["success"] for h in hist], float)
        k = min(10, len(s))
        ax.plot(np.arange(k - 1, len(s)), np.convolve(s, np.ones(k) / k, "valid"), alpha=0.6, label=f"train ({k}-episode mean)")
    ax.set(xlabel="online episodes", ylabel="success rate", ylim=(-0.05, 1.05), title=f"{cfg.task} ({cfg.algo}, {cfg.reward.shaping})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(run / "success_curve.png", dpi=100)
    plt.close(fig)

    lines = [f"# stepwise-train: {cfg.task}", "",
             f"algo {cfg.algo}, {cfg.demos} demonstrations, reward {cfg.reward.source} + shaping {cfg.reward.shaping} "
             f"(lambda {cfg.reward.weight}), seed {cfg.seed}"
             + (f"; image policy: {len(image_policy['cameras'])} cameras at {image_policy['image_size'][0]} px."
                if image_policy is not None else "."), "",
             f"**Final success rate: {final['success_rate']:.2f}** over {final['episodes']} evaluation episodes "
             f"(eval split), after {state.episode} online episodes ({state.env_steps} env steps), "
             f"{state.wall_time_s / 60:.1f} min wall time.", "",
             "| online episodes | eval success | eval episodes |", "|---|---|---|"]
    lines += [f"| {e['episode']} | {e['success_rate']:.2f} | {e['episodes']} |" for e in state.evals]
    lines += ["", f"Reward-hacking monitor: {len(hacked)} of {len(hist)} training episodes ended with progress >= "
              f"{cfg.reward.hacking_progress} and no success" + (f" (episodes {hacked[:20]})" if hacked else "") + ".",
              *(["", f"Self-imitation: {report['imitated_episodes']} successful online episodes joined the "
                  f"{cfg.demos} demonstrations."] if cfg.online.get("imitate_successes", False) else []),
              "", "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in state.stage_seconds.items()),
              "", "![success curve](success_curve.png)"]
    if "detector" in report:
        lines.insert(-2, f"Success detector against ground truth: {report['detector']['false_positives']} false positives, "
                         f"{report['detector']['false_negatives']} false negatives.")
    (run / "report.md").write_text("\n".join(lines) + "\n")
    return report


def main() -> None:
    """Console entry point (Hydra): ``stepwise-train task=metaworld/drawer-open``."""
    from configs.entry import hydra_job
    from episodes import StoreError
    from reward_models.base import CheckpointError
    from sim.rendering import CameraError
    from sim.tasks import UnknownTaskError

    hydra_job("stepwise-train", "train", _job,
              errors=(TrainConfigError, UnknownTaskError, CheckpointError, StoreError, CameraError))


def _job(cfg, run_dir: Path) -> str:
    """The main job in Hydra's run folder; returns the closing line."""
    report = run(cfg, run_dir)
    return (f"final success rate {report['final_success_rate']:.2f} over {report['final_eval_episodes']} eval "
            f"episodes after {report['online_episodes']} online episodes, {report['wall_time_s'] / 60:.1f} min; "
            f"report: {Path(run_dir) / 'report.md'}")


if __name__ == "__main__":
    main()
