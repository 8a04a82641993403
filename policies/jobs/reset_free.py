"""`stepwise-train-reset-free`: reset-free forward/backward fine-tuning on a task pair (after RoboFuME).

Two tasks that share one scene (drawer open / close, door, window, faucet) run in ONE continuing
simulation. The policy, conditioned on the instruction (the simulator state plus a one-hot of the
direction), attempts the current task; when the success signal says it is done, the episode ends as a
true terminal and the instruction flips to the other task, from wherever the scene now is. An attempt
that runs into ``max_steps`` is a truncation; the same instruction is tried again from where it stopped
(``flip_on_timeout=true`` flips anyway). Every ``reset_every`` episodes the scene is reset (the only
resets used, counted). The success signal is ``success=classifier`` (a VLM success classifier's
P(done) above its threshold on the rendered cameras: the only success signal learning sees) or
``success=sim`` (the simulator's own test, the reference run). Either way the simulator's ground truth
is logged beside every verdict, and the classifier's false positives / negatives are counted (with
``success=sim`` the classifier still scores every frame when ``monitor=true``).

The job, in order (a killed run resumes from its last checkpoint with ``resume=true``):
1. demonstrations: ``demos`` expert chains in the shared scene (forward until done, flip, backward until
   done), cut where the demonstrator is done (the simulator's success here: a person teleoperating
   would stop there); they seed the offline replay;
2. pre-training: a behaviour-cloning warm start, then Cal-QL updates on the demonstrations;
3. reset-free online fine-tuning (RLPD symmetric sampling of demos and online data, TD3+BC term);
   every ``eval.every`` episodes each direction is evaluated on its own task with resets (eval split,
   deterministic policy, the simulator's success): the curve of the report;
4. ``report.json``, ``report.md``, ``success_curve.png``, ``checkpoint.pt``, ``policy/`` (config.json +
   model.safetensors: loads without unpickling).

Usage::

    stepwise-train-reset-free                                   # drawer pair, classifier success
    stepwise-train-reset-free success=sim                       # the same run on the simulator's success
    stepwise-train-reset-free pair=door reset_every=20 classifier=runs/vlm-adapted
    stepwise-train-reset-free robot=remote port=5555             # attempts through a robot server

``robot=remote`` sends the reset-free attempts (the episodes whose resets are counted) through a
``stepwise-robot-server robot=sim_pair robot.pair=<pair>``: its safety layer, watchdog and ``select_task``
(the flip). The demonstrations, the classifier's adaptation data and the evaluation with resets drive
the scripted expert and stay in this process's simulator.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from policies.agents import make_agent
from policies.config import offline_threads
from policies.deploy import POLICY_DIR, save_policy
from policies.pretrain import anneal_bc, bc_warm_start, calql_pretrain, start_online
from policies.report import write_reset_free_report
from policies.reset_free.checkpoint import RunState, load_checkpoint, save_checkpoint
from policies.reset_free.classifier_data import adapt_classifier
from policies.reset_free.loop import (
    DIRECTIONS,
    LoopCounters,
    ResetFreeLoop,
    add_attempt,
    collect_demo_chains,
    evaluate_directions,
    score_expert_chains,
)
from policies.run_dir import existing_checkpoint
from policies.reset_free.config import check_config
from policies.reset_free.scene import training_scene
from policies.success import DetectorCounts, SimSuccess, load_classifier
from sim.task_pair import OBS_DIM, ResetFreeConfigError, TaskPairScene, get_pair

log = logging.getLogger("stepwise.reset_free")


def run(cfg, run_dir: str | Path) -> dict:
    """The whole job (see the module docstring). Returns the report dict."""
    from omegaconf import OmegaConf
    from tqdm import tqdm

    from policies.replay import MixedReplay, ReplayBuffer

    cfg = check_config(cfg)
    run_path = Path(run_dir)
    run_path.mkdir(parents=True, exist_ok=True)
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    ckpt_path = run_path / "checkpoint.pt"
    ckpt = load_checkpoint(ckpt_path, cfg) if existing_checkpoint(run_path, cfg.resume, ResetFreeConfigError) else None
    state = RunState(**ckpt["state"]) if ckpt else RunState()
    wall_before, session_start = state.wall_time_s, time.perf_counter()
    gamma, success_reward = float(cfg.agent.gamma), cfg.success_reward
    threads = offline_threads(cfg)

    classifier = None
    if cfg.success == "classifier" or cfg.monitor:
        t0 = time.perf_counter()
        name = adapt_classifier(cfg, run_path)
        classifier = load_classifier(name, cfg.threshold, cfg.confirm_steps)
        state.stage_seconds.setdefault("classifier", time.perf_counter() - t0)
        state.classifier = name
    success = classifier if cfg.success == "classifier" else SimSuccess()
    cams = classifier.cameras if classifier is not None else ()
    size = int(classifier.model.image_size[0]) if classifier is not None else 96
    scene = training_scene(OmegaConf.to_container(cfg.robot, resolve=True), cfg.pair, cams, size)  # in process or served
    eval_scene = TaskPairScene(cfg.pair, cameras=(), split="eval")
    loop = ResetFreeLoop(scene, success, cfg.max_steps, cfg.reset_every, cfg.seed, cfg.flip_on_timeout,
                         classifier if cfg.success == "sim" else None)

    # -- stage 1: demonstrations ---------------------------------------------------------------
    t0 = time.perf_counter()
    demos = collect_demo_chains(cfg.pair, cfg.demos, cfg.max_steps, seed=0) if cfg.demos else []
    steps = (int(cfg.agent.n_step), float(cfg.agent.gamma))  # n-step transitions where the agent reads them
    offline = ReplayBuffer(OBS_DIM, 4, max(1, sum(len(d.actions) for d in demos)), *steps)
    for d in demos:
        add_attempt(offline, d, success_reward, gamma)
    state.stage_seconds.setdefault("demos", time.perf_counter() - t0)
    online = ReplayBuffer(OBS_DIM, 4, cfg.online.capacity, *steps)
    torch.manual_seed(cfg.seed)  # the networks' initialisation too: one seed, one run
    agent = make_agent(cfg, OBS_DIM, 4, ResetFreeConfigError)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    if ckpt:
        agent.load_state_dict(ckpt["agent"])
        online.add_rows(ckpt["replay"])
        rng.bit_generator.state = ckpt["rng"]
        torch.set_rng_state(ckpt["torch_rng"])
        loop.counters = LoopCounters(**state.loop)
        loop.detector = DetectorCounts(**state.detector)
        loop.force_reset()  # the physics was not saved: a resumed run starts from a reset (counted)
        log.info("resumed %s at phase %s, attempt %d", run_path, state.phase, loop.counters.episodes)
    use_demos = len(offline) > 0 and len(demos) > 0
    replay = MixedReplay(offline if use_demos else ReplayBuffer(OBS_DIM, 4, 1), online,
                         cfg.online.offline_fraction if use_demos else 0.0)
    if not use_demos:
        agent.cfg.bc_weight = 0.0
    batch_rows = int(cfg.agent.batch_size) * int(cfg.agent.utd_ratio)
    eval_seeds = list(range(cfg.eval.episodes))

    def checkpoint() -> None:
        state.loop, state.detector = dict(loop.counters.__dict__), dict(loop.detector.__dict__)
        state.wall_time_s = wall_before + time.perf_counter() - session_start
        save_checkpoint(ckpt_path, agent, online, state, rng, cfg_dict)

    def run_eval() -> None:
        res = evaluate_directions(agent, cfg.pair, eval_seeds, cfg.max_steps, eval_scene)
        res.update(episode=loop.counters.episodes, resets=loop.counters.resets, env_steps=loop.counters.env_steps)
        state.evals.append(res)
        log.info("eval after %d attempts (%d resets): forward %.2f, backward %.2f (from its own reset %.2f)",
                 res["episode"], res["resets"], res["forward"], res["backward"], res["backward_own_reset"])

    # -- stage 2: pre-training on the demonstrations -------------------------------------------
    if state.phase == "pretrain":
        t0 = time.perf_counter()
        torch.set_num_threads(threads)
        if use_demos:
            bc_warm_start(agent, offline, cfg.pretrain.bc_steps, int(cfg.agent.batch_size), rng)
            calql_pretrain(agent, offline, cfg.pretrain.steps, batch_rows, rng)
        state.stage_seconds["pretrain"] = time.perf_counter() - t0
        torch.set_num_threads(cfg.threads)  # scoring one frame at a time: more threads only contend
        if classifier is not None and demos:  # the classifier on expert chains it never saw, before any learning
            t0 = time.perf_counter()
            state.demo_detector = score_expert_chains(cfg.pair, cfg.demos, cfg.max_steps, classifier)
            state.stage_seconds["classifier_on_expert_chains"] = time.perf_counter() - t0
        state.phase = "online"
        run_eval()
        checkpoint()
    start_online(agent, cfg.online)
    torch.set_num_threads(cfg.threads)

    # -- stage 3: reset-free online fine-tuning ------------------------------------------------
    n_attempts = cfg.episodes
    if state.phase == "done" and loop.counters.episodes < n_attempts:
        state.phase = "online"
    ready = lambda: len(online) > 0 or use_demos  # noqa: E731
    sums: dict[str, float] = {}

    def learn() -> None:
        if not ready():
            return
        for _ in range(cfg.online.updates_per_step):
            for k, v in agent.update(replay.sample(batch_rows, rng, agent.device)).items():
                sums[k] = sums.get(k, 0.0) + v

    def policy(obs: np.ndarray) -> np.ndarray:
        if loop.counters.env_steps < cfg.online.random_steps:
            return rng.uniform(-1, 1, 4).astype(np.float32)
        return agent.act(obs)

    bar = tqdm(total=n_attempts, initial=loop.counters.episodes, desc="reset-free", unit="ep")
    t0 = time.perf_counter()
    while state.phase == "online" and loop.counters.episodes < n_attempts:
        anneal_bc(agent, loop.counters.episodes, cfg.online.bc_anneal_episodes, cfg.online.bc_final)
        sums.clear()
        rec = loop.attempt(policy, learn)
        add_attempt(online, rec, success_reward, gamma)
        c = loop.counters
        row = {"episode": c.episodes - 1, "direction": DIRECTIONS[rec.direction], "length": len(rec.actions),
               "claimed": rec.claimed, "sim_success": bool(rec.truth.any()), "sim_success_at_end": bool(rec.truth[-1]),
               "reset_before": rec.reset_before, "resets": c.resets, "env_steps": c.env_steps,
               "detector_false_positive": rec.detector_fp, "detector_false_negative": rec.detector_fn,
               **{f"agent/{k}": v / max(1, len(rec.actions)) for k, v in sums.items()}}
        state.history.append(row)
        bar.update(1)
        bar.set_postfix(dir=row["direction"][0], done=rec.claimed, truth=row["sim_success"], resets=c.resets,
                        fp=loop.detector.false_positives, fn=loop.detector.false_negatives)
        if c.episodes % cfg.eval.every == 0 or c.episodes == n_attempts:
            run_eval()
            checkpoint()
        elif c.episodes % cfg.checkpoint_every == 0:
            checkpoint()
    bar.close()
    if state.phase == "online":
        state.stage_seconds["online"] = state.stage_seconds.get("online", 0.0) + time.perf_counter() - t0
        state.phase = "done"
        checkpoint()

    # -- stage 4: final evaluation and report --------------------------------------------------
    final = evaluate_directions(agent, cfg.pair, list(range(cfg.eval.final_episodes)), cfg.max_steps, eval_scene)
    state.loop, state.detector = dict(loop.counters.__dict__), dict(loop.detector.__dict__)
    state.wall_time_s = wall_before + time.perf_counter() - session_start
    report = write_reset_free_report(run_path, cfg, state, final, classifier)
    save_policy(run_path / POLICY_DIR, {"kind": "stepwise-policy", "pair": cfg.pair, "tasks": list(get_pair(cfg.pair)),
                                        "policy": "state", "obs_key": "state+direction_onehot", "agent": agent.state_dict()})
    scene.close()
    eval_scene.close()
    return report


def main() -> None:
    """Console entry point (Hydra): ``stepwise-train-reset-free pair=drawer success=classifier``."""
    from configs.entry import hydra_job
    from reward_models.base import CheckpointError
    from sim.tasks import UnknownTaskError

    hydra_job("stepwise-train-reset-free", "reset_free", _job,
              errors=(ResetFreeConfigError, UnknownTaskError, CheckpointError))


def _job(cfg, run_dir: Path) -> str:
    """The reset-free job in Hydra's run folder; returns the closing line."""
    report = run(cfg, run_dir)
    f = report["final"]
    return (f"final success forward {f['forward']:.2f}, backward {f['backward']:.2f} over {f['episodes']} episodes "
            f"each, after {report['attempts']} attempts and {report['resets']} resets; "
            f"report: {Path(run_dir) / 'report.md'}")



if __name__ == "__main__":
    main()
