"""What the success classifier meets reset-free, rendered as episode stores (expert successes of both
directions chained in the shared scene, and their stalls and near misses), and the classifier adapted
on them through stepwise-train-rm's adaptation path."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from policies.config import offline_threads, tool_config
from sim.task_pair import ResetFreeConfigError, TaskPairScene, get_pair
from sim.tasks import get_task

log = logging.getLogger("stepwise.reset_free")


def _record(scene: TaskPairScene, n_steps: int, action_of: Callable[[int], np.ndarray], post_success_steps: int | None):
    """Run ``action_of(t)`` on the active task with rendering; stop ``post_success_steps`` after the
    first success (None: run all ``n_steps``). Returns an `episodes.Episode` of the active task."""
    from episodes import Episode
    from sim.keyframes import step_keyframes
    from sim.world import FPS

    task = scene.active
    frames, proprio, state, actions, success = [task.render()], [task.proprio], [task.state], [], []
    first = None
    for t in range(n_steps):
        a = np.clip(np.asarray(action_of(t), np.float32), -1, 1)
        sig = scene.step(a)
        actions.append(a)
        frames.append(task.render())
        proprio.append(task.proprio)
        state.append(task.state)
        success.append(bool(sig.success))
        first = t + 1 if first is None and sig.success else first
        if post_success_steps is not None and first is not None and t + 1 >= first + post_success_steps:
            break
    ok = np.asarray(success, bool)
    dones = np.zeros(len(actions), bool)
    dones[-1] = True
    return Episode(images={c: np.stack([f[c] for f in frames]) for c in task.rig.cameras}, proprio=np.stack(proprio),
                   state=np.stack(state), actions=np.stack(actions), rewards=ok.astype(np.float32), dones=dones,
                   task=task.spec.name, instruction=task.spec.instruction, fps=FPS, success=bool(ok.any()),
                   keyframes=step_keyframes({}, ok), infos={"success": ok.astype(np.float32)},
                   kind="expert" if ok.any() else "near_miss", extra_attrs={"split": task.split, "reset_free": True})


def _expert_length(scene: TaskPairScene, max_steps: int) -> int | None:
    """Steps the active task's expert needs from the current state (it steps the scene; no rendering)."""
    for t in range(max_steps):
        if scene.step(scene.active.expert_action()).success:
            return t + 1
    return None


def collect_classifier_data(pair: str, chains: int, out: str | Path, cameras: Sequence[str], image_size: int,
                            max_steps: int = 300, post_success_steps: int = 10,
                            miss_fracs: Sequence[float] = (0.5, 0.85), hold_steps: int = 30) -> Path:
    """Episode stores (``<out>/<task>.hdf5``, one per task of the pair) of what the classifier meets
    reset-free, on the demo split: per chain seed, a forward expert success, then (flipped, from where
    it ended) a backward expert success; and the stalls / near misses of both from the same starts (the
    expert stopped at each of ``miss_fracs`` of its length, then holding). Frames are labelled by the
    simulator's per-step success (a "miss" that still ends in success is labelled so). Returns ``out``;
    a finished collection is reused."""
    from episodes import EpisodeWriter

    out = Path(out)
    names = get_pair(pair)
    done_flag = out / "collected.done"
    if done_flag.exists():
        return out
    for n in names:  # a killed collection starts over
        (out / f"{get_task(n).short_name}.hdf5").unlink(missing_ok=True)
    scene = TaskPairScene(pair, cameras=cameras, image_size=image_size, split="demo")
    writers = [EpisodeWriter(out / f"{get_task(n).short_name}.hdf5", fsync=False,
                             env_args={"task": n, "cameras": list(cameras), "image_size": int(image_size),
                                       "split": "demo", "reset_free_pair": pair}) for n in names]
    expert = lambda _t: scene.active.expert_action()  # noqa: E731
    try:
        for seed in range(int(chains)):
            scene.reset(seed)
            lf = _expert_length(scene, max_steps)
            if lf is None:
                continue
            scene.flip()
            lb = _expert_length(scene, max_steps)
            if lb is None:
                continue
            scene.reset(seed)  # successes: forward, flip, backward
            writers[0].add(_record(scene, max_steps, expert, post_success_steps))
            scene.flip()
            writers[1].add(_record(scene, max_steps, expert, post_success_steps))
            for d, length, frac in ((d, n, f) for d, n in ((0, lf), (1, lb)) for f in miss_fracs):
                scene.reset(seed)  # stalls and near misses from the same starts
                if d == 1:
                    _expert_length(scene, max_steps)
                    scene.flip()
                cut = max(1, round(frac * length))
                last = {}

                def near_miss(t: int) -> np.ndarray:
                    if t < cut:
                        last["a"] = scene.active.expert_action()
                        return last["a"]
                    return np.array([0, 0, 0, last["a"][3]], np.float32)  # hold, the gripper as it was

                writers[d].add(_record(scene, cut + hold_steps, near_miss, None))
    finally:
        for w in writers:
            w.close()
        scene.close()
    if not any(len(w) for w in writers):
        raise ResetFreeConfigError(f"pair={pair}: the scripted experts completed no forward-backward chain in "
                                   f"{max_steps} steps on {chains} seeds; there is nothing to adapt the classifier on")
    done_flag.write_text(json.dumps({"pair": pair, "chains": int(chains)}))
    return out


def adapt_classifier(cfg, run_path: Path) -> str:
    """The classifier adapted to the pair's reset-free scenes through stepwise-train-rm's adaptation path
    (``reward=vlm_success init=<classifier> data=<reset-free chains>``), into ``<run>/classifier``.
    Returns the checkpoint to load (``cfg.classifier`` itself with ``adapt.steps=0``)."""
    if int(cfg.adapt.steps) <= 0:
        return str(cfg.classifier)
    import reward_models
    from reward_models.vlm_success import train_from_config

    out = run_path / "classifier"
    if (out / "adapted.done").exists():
        return str(out)
    base = reward_models.load(cfg.classifier)
    data = collect_classifier_data(cfg.pair, int(cfg.adapt.chains), run_path / "classifier_data", base.cameras,
                                   int(base.image_size[0]))
    rm = tool_config("train_rm", {
        "reward": {"adapt_steps": int(cfg.adapt.steps), "adapt_lr": float(cfg.adapt.lr)},
        "init": str(cfg.classifier), "data": str(data), "out": str(out), "seed": int(cfg.seed),
        "num_threads": offline_threads(cfg),
    }, reward="vlm_success")
    log.info("adapting %s to reset-free %s scenes: stepwise-train-rm reward=vlm_success init=%s data=%s out=%s "
             "reward.adapt_steps=%d", cfg.classifier, cfg.pair, cfg.classifier, data, out, int(cfg.adapt.steps))
    train_from_config(rm)
    (out / "adapted.done").write_text(json.dumps({"from": str(cfg.classifier), "data": str(data),
                                                  "steps": int(cfg.adapt.steps), "chains": int(cfg.adapt.chains)}))
    return str(out)

