"""`stepwise-train`: learn a manipulation task from a few demonstrations, with a progress-shaped reward.

The job, in order (each stage resumes after a kill):
1. collect ``demos`` scripted-expert demonstrations (demo split) into ``<run>/demos/``;
2. load the progress model (``reward.model``, the shipped ``general`` by default) and adapt it
   on ONE demonstration (``adapt.steps``) into ``<run>/reward_model/``;
3. pre-train the agent on the demonstrations: a behaviour-cloning warm start of the actor, then
   Cal-QL updates (conservative term lower-bounded by Monte-Carlo returns of the SAME shaped
   rewards the critic learns) with the BC term;
4. fine-tune online on the train split: after each episode its camera frames are scored by the
   progress model in ONE batch, the rewards are shaped, and only then do its transitions enter
   replay (off-policy learning allows the delay); evaluate every ``eval.every`` episodes on the
   eval split (variants the demonstrations and training never saw);
5. write ``report.json``, ``report.md``, ``success_curve.png``, TensorBoard logs (``tb/``) and
   ``checkpoint.pt`` (everything a resume needs: agent with optimisers and temperature, online
   replay, counters, random states, history); with ``keep_episodes`` every online episode goes to
   ``online_episodes.hdf5`` as it ends (`policies.online_store`), the data of ``stepwise-failures``.

The policy (``policy``): ``state`` is SAC on the simulator's 39-d state (privileged, a simulation
ceiling); ``image`` is ImageSAC on camera frames + proprio, the path that runs on a robot. The image
policy never reads the state: its envs are made without it. Its frames are the env's, rendered at
the reward model's size when a camera-based reward needs them, and resized per step to
``policy_image_size`` (bilinear, antialiased); without such a reward they are rendered at the
policy's size directly. Its online replay (frames stored once) is saved beside ``checkpoint.pt``.

Rewards (sparse, a classifier's success, or dense; shaped by a progress model or the oracle): see
`policies.rewards`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from policies.agents import make_learner
from policies.config import TrainConfigError, check_config, offline_threads
from policies.deploy import POLICY_DIR, save_policy
from policies.episode import add_to_replay, demo_records, state_view
from policies.loop import episode_row, evaluate, run_episode
from policies.pretrain import anneal_bc, bc_warm_start, calql_pretrain, demo_bc_weights, start_online
from policies.report import closing_line, write_train_report
from policies.rewards import RewardPipeline
from policies.online_store import OnlineEpisodeStore, keeps_episodes
from policies.run_dir import RunState, existing_checkpoint, load_checkpoint, resume_learner, save_checkpoint
from policies.refresh import refresh_due, refresh_in_loop, resume_refreshed_model
from policies.stages import adapt_progress_model, collect_demos, load_reward_models, make_envs, plan_rig

log = logging.getLogger("stepwise.train")


def run(cfg, run_dir: str | Path) -> dict:
    """The whole job (see the module docstring). Returns the report dict."""
    from omegaconf import OmegaConf
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from policies.image_replay import MixedImageReplay
    from policies.replay import MixedReplay
    from sim.tasks import get_task

    cfg = check_config(cfg)  # typed once (a wrong type names its key): no casts below
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    spec = get_task(cfg.task)
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    ckpt_path = run / "checkpoint.pt"
    ckpt = load_checkpoint(ckpt_path, cfg) if existing_checkpoint(run, cfg.resume, TrainConfigError) else None
    state = RunState(**ckpt["state"]) if ckpt else RunState()
    wall_before, session_start = state.wall_time_s, time.perf_counter()

    def stage_done(name: str, t0: float) -> None:
        state.stage_seconds[name] = state.stage_seconds.get(name, 0.0) + time.perf_counter() - t0

    # -- stages 1-2: demonstrations, progress model ------------------------------------------
    t0 = time.perf_counter()
    model, judge, uses_model = load_reward_models(cfg)
    rig = plan_rig(cfg, model, judge, uses_model)
    view, image_policy = rig.view, rig.view is not None
    demo_store = collect_demos(cfg, run, tuple(rig.env_cams) if image_policy else rig.cameras, rig.render_size)
    stage_done("collect_demos", t0)
    reference = None
    model_dir = None  # where the progress model in use lives (a refresh fine-tunes from it)
    if uses_model:
        t0 = time.perf_counter()
        model = adapt_progress_model(cfg, run, demo_store)
        model_dir = run / "reward_model" if (run / "reward_model" / "config.json").exists() else cfg.reward.model
        stage_done("adapt_reward_model", t0)
        if cfg.refresh.every:
            model, model_dir = resume_refreshed_model(run, state, model, model_dir)
    records = demo_records(demo_store, list(rig.cameras) if uses_model else [], cfg.reward.success_reward, view)
    if model is not None and cfg.reward.perspective == "backward":
        from episodes import EpisodeStore

        with EpisodeStore(demo_store, cameras=list(rig.cameras)) as store:
            reference = store[0]
    pipeline = RewardPipeline(cfg, model, spec.instruction, reference)

    # -- environments ----------------------------------------------------------------------
    env, eval_env = make_envs(cfg, rig, judge or model, spec.instruction)
    observe = view if image_policy else state_view
    imitate = bool(cfg.online.get("imitate_successes", False))  # check_config allows it for policy=state only

    # -- agent and replay ---------------------------------------------------------------------
    torch.manual_seed(cfg.seed)  # the networks' initialisation too: one seed, one run
    agent, offline, new_buffer = make_learner(cfg, env, view, records, imitate)
    demo_terms = []
    for rec in records:
        demo_terms.append(terms := pipeline(rec))
        add_to_replay(offline, rec, terms)
    demo_rows = len(offline)  # rows beyond these are imitated online episodes (online.imitate_successes)
    online = new_buffer(cfg.online.capacity)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    if ckpt:
        online = resume_learner(run, ckpt, agent, online, offline, rng, image_policy, imitate)
        log.info("resumed %s at phase %s, episode %d (%d env steps)", run, state.phase, state.episode, state.env_steps)
    use_demos = cfg.algo in ("calql", "bc")
    mixer = MixedImageReplay if image_policy else MixedReplay
    replay = mixer(offline if use_demos else new_buffer(1), online,
                   cfg.online.offline_fraction if use_demos else 0.0)
    if not use_demos:
        agent.cfg.bc_weight = 0.0  # online-only baseline: no demonstrations reach the agent
    writer = SummaryWriter(str(run / "tb"))
    eval_seeds = list(range(cfg.eval.episodes))
    batch_rows = cfg.agent.batch_size * cfg.agent.utd_ratio

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
            bc_warm_start(agent, offline, cfg.pretrain.bc_steps, cfg.agent.batch_size, rng, writer,
                          weights=demo_bc_weights(cfg, records, demo_terms), translate=cfg.pretrain.translate)
        if cfg.algo == "calql":
            calql_pretrain(agent, offline, cfg.pretrain.steps, batch_rows, rng, writer, critic_only=cfg.pretrain.critic_only)
        stage_done("pretrain", t0)
        state.phase = "online" if cfg.algo != "bc" else "done"
        run_eval(eval_seeds)
        checkpoint()
    start_online(agent, cfg.online)
    torch.set_num_threads(cfg.threads)

    # -- stage 4: online fine-tuning ------------------------------------------------------------
    n_episodes = cfg.online.episodes if cfg.algo != "bc" else 0
    if state.phase == "done" and state.episode < n_episodes:  # resumed with more episodes: extend the run
        state.phase = "online"
    kept = (OnlineEpisodeStore(run, spec.name, spec.instruction, rig.env_cams, rig.render_size, state.episode)
            if keeps_episodes(cfg, renders=bool(rig.env_cams)) else None)
    bar = tqdm(total=n_episodes, initial=state.episode, desc="online", unit="ep")
    t_online = time.perf_counter()
    while state.phase == "online" and state.episode < n_episodes:
        anneal_bc(agent, state.episode, cfg.online.bc_anneal_episodes, cfg.online.bc_final)
        rec, stats = run_episode(cfg, env, agent, replay, rng, state, batch_rows, rig.score_cams, view,
                                 rig.env_cams if kept is not None else ())
        terms = pipeline(rec)
        add_to_replay(online, rec, terms)
        if kept is not None:
            kept.add(state.episode, rec, terms)
        # self-imitation: an episode that ended at the learner's own success signal (the true terminal
        # the env gave: the simulator's success, or the classifier's) joins the demonstrations, for the
        # offline half of each batch and the BC term
        imitated = imitate and bool(rec.terminated[-1])
        if imitated:
            add_to_replay(offline, rec, terms)
        row = episode_row(cfg, state.episode, rec, terms, stats, imitated)
        state.history.append(row)
        for k, v in row.items():
            if isinstance(v, (int, float, bool)) and k != "episode" and not (isinstance(v, float) and math.isnan(v)):
                writer.add_scalar(f"train/{k}", float(v), state.episode)
        state.episode += 1
        if refresh_due(cfg, state.episode, n_episodes):  # the progress model re-fitted on the run's episodes
            kept, model_dir = refresh_in_loop(cfg, run, state, pipeline, kept, demo_store, model_dir, writer)
        bar.update(1)
        bar.set_postfix(success=rec.success, steps=state.env_steps, alpha=f"{agent.alpha:.3f}")
        if evaluating := state.episode % cfg.eval.every == 0 or state.episode == n_episodes:
            run_eval(eval_seeds)
        if evaluating or (cfg.checkpoint_every and state.episode % cfg.checkpoint_every == 0):
            checkpoint()
    bar.close()
    if kept is not None:
        kept.close()
    if state.phase == "online":
        stage_done("online", t_online)
        state.phase = "done"
        checkpoint()

    # -- stage 5: final evaluation and report ---------------------------------------------------
    final = evaluate(agent, eval_env, list(range(cfg.eval.final_episodes)), observe)
    state.wall_time_s = wall_before + time.perf_counter() - session_start
    seen = ({"cameras": view.cameras, "image_size": list(view.image_size), "render_size": rig.render_size}
            if image_policy else None)
    report = write_train_report(run, cfg, state, final, demo_terms, seen)
    policy = {"kind": "stepwise-policy", "task": cfg.task, "policy": cfg.policy, "obs_key": "state", "agent": agent.state_dict()}
    if image_policy:  # load with ImageSAC.from_state_dict; frames rendered at render_size, resized to image_size
        policy.update(obs_key="images+proprio", **seen)
    save_policy(run / POLICY_DIR, policy)  # config.json + model.safetensors: loads without unpickling
    writer.close()
    env.close()
    eval_env.close()
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
    finished = Path(run_dir) / "report.json"
    if cfg.resume and finished.exists():  # a sweep launched again: its finished runs are kept, not redone
        report = json.loads(finished.read_text())
        return (f"already finished: final success rate {report['final_success_rate']:.2f} after "
                f"{report['online_episodes']} online episodes; report: {Path(run_dir) / 'report.md'}")
    report = run(cfg, run_dir)
    return closing_line(report, Path(run_dir) / "report.md")


if __name__ == "__main__":
    main()
