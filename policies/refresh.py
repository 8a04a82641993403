"""stepwise-train's in-the-loop refresh of the progress model (``refresh.every``).

Every K online episodes the step-PRM that shapes the reward is fine-tuned, from the model in use, on
the adaptation demonstration, the run's successful online episodes (labelled positives, by their
step keyframes) and its failed ones (censored: every frame is "not done", so the late states of a
near-miss stop scoring as done), read from the run's own ``online_episodes.hdf5``. Success here is
the signal the run learns from, the one that ended the episode (``claimed_success``): the
simulator's test under ``reward.source=sparse``, the VLM classifier's verdict under
``reward=vlm_success``, so a classifier-driven run never reads the simulator's answer. Later episodes
are scored by the new model; the rewards already in the replay keep the potential they were shaped
with. RoboFuME re-fits its success classifier on online data the same way.

The classifier itself is not re-fitted: labelled by its own verdicts, every frame of a run would
confirm what it already said (the frames before its claim were below its threshold, the claimed one
above), so such a refresh has nothing to learn from. It needs a label from outside the classifier (a
person's, or the simulator's in a study of the classifier), which the loop does not have.

What this does to the invariance guarantee: each episode is scored by ONE model in one call, so its
shaping telescopes under that model's potential and its shaped return is its sparse return plus
``gamma^T Phi(s_T) - Phi(s_0)`` (Ng et al. 1999). Within a segment between refreshes the learner
sees a potential-shaped MDP whose optimal policy is the sparse MDP's. Across segments the replay mixes
transitions shaped by different potentials. That mixture is not one potential-based shaping, so the
guarantee holds per segment and not for the run as a whole. The refresh keeps each change small
(``refresh.steps`` fine-tuning steps from the current model).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from policies.config import offline_threads, tool_config


def refresh_due(cfg, episode: int, n_episodes: int) -> bool:
    """After online episode count ``episode``: a refresh every ``refresh.every``, and an early one after
    ``refresh.first`` episodes (the potential is hacked most before any refresh); none after the last."""
    every, first = cfg.refresh.every, cfg.refresh.get("first")
    return (bool(every) and 0 < episode < n_episodes
            and (episode % every == 0 or (first is not None and episode == int(first))))


def refresh_progress_model(cfg, run: Path, demo_store: Path, online_store: Path, episode: int, current):
    """The progress model in ``current`` (a directory or a shipped name) fine-tuned for ``refresh.steps``
    on the adaptation demonstration and the run's online episodes, into
    ``<run>/reward_model_refresh/ep<episode>``. Returns (model, its directory); a refresh already on
    disk (a resumed run) is loaded, not trained again."""
    import reward_models
    from reward_models.train import train as train_rm

    out = run / "reward_model_refresh" / f"ep{episode:05d}"
    if (out / "refresh.done").exists():
        return reward_models.load(out), out
    model = train_rm(tool_config("train_rm", {
        "init": str(current), "data": [str(demo_store), str(online_store)], "out": str(out),
        "max_episodes_per_task": 1, "success_kinds": ["expert", "policy"], "failure_kinds": ["policy"],
        "failure_share": cfg.refresh.failure_share, "max_failures_per_task": cfg.refresh.get("max_failures"),
        "failures_from": "newest", "policy_success": "claimed", "freeze_encoder": bool(cfg.refresh.get("freeze_encoder", False)),
        "steps": cfg.refresh.steps, "lr": cfg.refresh.lr,
        "val_every_nth": 0, "checkpoint_every": 50, "seed": cfg.seed + episode, "num_threads": offline_threads(cfg),
    }, reward="step_prm"))
    (out / "refresh.done").write_text(json.dumps({"from": str(current), "episode": episode, "steps": cfg.refresh.steps}))
    return model, out


def refresh_in_loop(cfg, run: Path, state, pipeline, kept, demo_store: Path, model_dir, writer):
    """One refresh inside the online loop: the episode store closed for the trainer to read and reopened,
    the pipeline switched to the new model, the refresh logged in ``state.refreshes`` with the hacking
    count of the segment it closes. Returns (the reopened store, the new model's directory)."""
    from policies.online_store import OnlineEpisodeStore

    t0 = time.perf_counter()
    kept.close()
    pipeline.model, model_dir = refresh_progress_model(cfg, run, demo_store, kept.path, state.episode, model_dir)
    kept = OnlineEpisodeStore(run, kept.task, kept.instruction, kept.cameras, kept.image_size, state.episode)
    seconds = time.perf_counter() - t0
    state.refreshes.append({"episode": state.episode, "dir": str(model_dir), "seconds": seconds})
    state.stage_seconds["refresh_reward_model"] = state.stage_seconds.get("refresh_reward_model", 0.0) + seconds
    segment = state.history[-cfg.refresh.every:]
    writer.add_scalar("refresh/hacking_in_segment", sum(bool(h["hacking"]) for h in segment), state.episode)
    return kept, model_dir


def resume_refreshed_model(run: Path, state, model, model_dir):
    """On resume with ``refresh.every``: the progress model of the run's last refresh the checkpoint
    counts (refreshes past it, made after the checkpoint by a run that was then killed, are deleted:
    the episodes they learned from are played again)."""
    import shutil

    import reward_models

    counted = {Path(r["dir"]).name for r in state.refreshes}  # by name: a moved run directory still resumes
    for stale in sorted((run / "reward_model_refresh").glob("ep*")):
        if stale.name not in counted:
            shutil.rmtree(stale)
    if state.refreshes:
        model_dir = run / "reward_model_refresh" / Path(state.refreshes[-1]["dir"]).name
        model = reward_models.load(model_dir)
    return model, model_dir
