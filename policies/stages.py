"""stepwise-train's stages before learning: the reward models it loads, the camera rig the envs render
for them and for the image policy, the demonstrations, the adapted progress model, and the envs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from policies.config import TrainConfigError, offline_threads, tool_config
from policies.episode import PolicyView
from policies.online_store import keeps_episodes
from policies.rewards import success_threshold


@dataclass
class Rig:
    """What the envs render and who reads it."""

    cameras: tuple[str, ...]          # the reward model's cameras (its demonstrations' frames)
    image_size: int                   # the reward model's frame size
    score_cams: list[str]             # frames the reward models score after each episode
    env_cams: list[str]               # frames the training env renders (scored + the image policy's + the online store's)
    render_size: int
    view: PolicyView | None           # the image policy's cameras and size (None: the state policy)


def load_reward_models(cfg):
    """(progress model or None, success classifier or None, whether frames feed a progress model).

    The classifier is loaded first, so that a wrong name fails before any work; a perceptual model is
    fitted later, from a demonstration (None here)."""
    import reward_models

    uses_model = cfg.reward.shaping == "progress" or cfg.reward.source == "success_prob"
    judge = (reward_models.load(cfg.reward.success_model)
             if cfg.reward.source == "success_prob" and cfg.reward.success_model else None)
    if cfg.reward.kind == "vlm_success" and cfg.reward.shaping != "progress":
        uses_model = False  # the classifier alone: no progress model to load or adapt
    model = reward_models.load(cfg.reward.model) if uses_model and cfg.reward.kind != "perceptual" else None
    return model, judge, uses_model


def plan_rig(cfg, model, judge, uses_model: bool) -> Rig:
    """The env renders what the reward model scores; the image policy adds its cameras, rendered at the
    reward model's size and resized per step, or at its own size when no reward reads frames. A state
    policy whose reward reads no frames renders the reward rig for the online store with ``keep_episodes=true``."""
    perceptual = cfg.reward.kind == "perceptual"  # its rig comes from its config
    if model is not None:
        cameras, model_size = tuple(model.cameras), model.image_size[0]
    elif judge is not None and not perceptual:
        cameras, model_size = tuple(judge.cameras), judge.image_size[0]
    else:
        cameras = tuple(cfg.reward.get("cameras") or ("corner", "corner2", "gripperPOV"))
        model_size = int(cfg.reward.get("image_size") or 96)
    image_size = int(cfg.image_size or model_size)
    view = PolicyView(cfg.policy_cameras or cameras, cfg.policy_image_size) if cfg.policy == "image" else None
    score_cams = list(cameras) if uses_model else []
    if judge is not None:
        if judge.image_size[0] != image_size:
            raise TrainConfigError(f"the success model {cfg.reward.success_model} reads {judge.image_size[0]} px frames "
                                   f"but the env renders {image_size} px for the progress model: pass image_size="
                                   f"{judge.image_size[0]} or a classifier trained at {image_size} px")
        score_cams = list(dict.fromkeys([*score_cams, *judge.cameras]))
    env_cams, render_size = score_cams, image_size
    if view is not None:
        env_cams = list(dict.fromkeys([*env_cams, *view.cameras]))
        render_size = image_size if score_cams else view.image_size[0]
    elif not env_cams and keeps_episodes(cfg, renders=False):  # keep_episodes=true: the store's frames, the reward rig's
        env_cams = list(cameras)
    return Rig(cameras, image_size, score_cams, env_cams, render_size, view)


def collect_demos(cfg, run: Path, cameras: tuple[str, ...], image_size: int) -> Path:
    """Stage 1: ``cfg.demos`` expert demonstrations on the demo split (resumes a partial store)."""
    from sim.collect import collect

    return Path(collect(tool_config("collect", {
        "task": cfg.task, "episodes": cfg.demos, "seed": 0, "split": "demo", "out": str(run / "demos"),
        "cameras": list(cameras), "image_size": int(image_size), "failures": 0,
    })))


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
    """Stage 2: the progress model, fine-tuned on ONE demonstration (``adapt.steps``) through
    stepwise-train-rm's training, into ``<run>/reward_model``."""
    import reward_models
    from reward_models.train import train as train_rm

    if cfg.reward.kind == "perceptual":
        return fit_perceptual_model(cfg, run, demo_store)
    out = run / "reward_model"
    if (out / "adapted.done").exists():
        return reward_models.load(out)
    if cfg.adapt.steps <= 0:
        return reward_models.load(cfg.reward.model)
    model = train_rm(tool_config("train_rm", {
        "init": str(cfg.reward.model), "data": str(demo_store), "out": str(out), "max_episodes_per_task": 1,
        "steps": cfg.adapt.steps, "lr": cfg.adapt.lr, "val_every_nth": 0,
        "checkpoint_every": 50, "seed": cfg.seed, "num_threads": offline_threads(cfg),
    }, reward="step_prm"))
    (out / "adapted.done").write_text(json.dumps({"from": str(cfg.reward.model), "steps": cfg.adapt.steps}))
    return model


def make_envs(cfg, rig: Rig, judge=None, instruction: str = ""):
    """(training env, eval env) through `real.make_env`: the simulator, or with ``robot=remote`` the robot
    behind a stepwise-robot-server (its split, safety layer and watchdog). ``judge``: the model whose
    P(done) above its threshold is the training env's success (``reward.source=success_prob``)."""
    from omegaconf import OmegaConf

    from real import make_env

    success_fn = None
    if cfg.reward.source == "success_prob":  # checked before any env is made
        thr, cams = success_threshold(cfg, judge), tuple(judge.cameras)
        success_fn = lambda o: float(judge.success_prob({c: o["images"][c][None] for c in cams}, instruction)[0]) > thr  # noqa: E731
    robot_cfg = OmegaConf.to_container(cfg.robot, resolve=True)
    if robot_cfg["driver"] == "sim":
        robot_kw = {"safety": robot_cfg["safety"]}
    else:
        robot_kw = {"robot": "remote", **{k: v for k, v in robot_cfg.items() if k != "driver"}}
    image_policy = rig.view is not None  # its envs carry no state: it cannot read what a robot lacks
    steps = cfg.online.max_steps
    env = make_env(cfg.task, cameras=rig.env_cams, image_size=rig.render_size, max_episode_steps=steps,
                   terminate_on_success=True, reward_mode="sim_dense" if cfg.reward.source == "sim_dense" else "sparse",
                   success_reward=cfg.reward.success_reward, split="train", include_state=not image_policy,
                   **robot_kw)
    if success_fn is not None:
        env.success_fn = success_fn
    # the image policy is evaluated on frames made as in training (same render size, same resize)
    eval_kw = dict(cameras=rig.view.cameras if image_policy else [], image_size=rig.render_size,
                   max_episode_steps=steps, terminate_on_success=True, split="eval", include_state=not image_policy,
                   **robot_kw)
    workers = int(cfg.eval.get("workers", 1))
    if workers > 1:  # N simulator processes play the eval episodes side by side (gymnasium's AsyncVectorEnv)
        from real import make_vec_env

        if robot_cfg["driver"] != "sim":
            raise TrainConfigError(f"eval.workers={workers} needs robot=sim (one robot plays one episode at a time): "
                                   "set eval.workers=1")
        return env, make_vec_env(cfg.task, num_envs=workers, **eval_kw)
    return env, make_env(cfg.task, **eval_kw)
