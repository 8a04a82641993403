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
4. ``report.json``, ``report.md``, ``success_curve.png``, ``checkpoint.pt``, ``policy.pt``.

Usage::

    stepwise-train-reset-free                                   # drawer pair, classifier success
    stepwise-train-reset-free success=sim                       # the same run on the simulator's success
    stepwise-train-reset-free pair=door reset_every=20 classifier=runs/vlm-adapted
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sim.task_pair import OBS_DIM, ResetFreeConfigError, TaskPairScene, get_pair
from sim.tasks import get_task
from sim.world import StepSignals

log = logging.getLogger("stepwise.reset_free")

SUCCESS_SIGNALS = ("classifier", "sim")
DIRECTIONS = ("forward", "backward")
CHECKPOINT_VERSION = 1


# --------------------------------------------------------------------------- success signals


class ClassifierSuccess:
    """Success from a VLM classifier: P(done | frames, instruction) > ``threshold`` for ``confirm_steps``
    consecutive frames. Call ``start()`` at each episode's start."""

    needs_frames = True

    def __init__(self, model, threshold: float | None = None, confirm_steps: int = 1) -> None:
        self.model = model
        self.cameras = tuple(model.cameras)
        own = getattr(getattr(model, "cfg", None), "threshold", None)
        if threshold is None and own is None:
            raise ResetFreeConfigError("threshold=null but the classifier carries no threshold: pass threshold=<P(done)>")
        self.threshold = float(own if threshold is None else threshold)
        self.confirm_steps = max(1, int(confirm_steps))
        self._run = 0

    def start(self) -> None:
        """A new episode: forget the run of positive frames."""
        self._run = 0

    def prob(self, frames: Mapping[str, np.ndarray], instruction: str) -> float:
        """P(done) of one instant: camera -> uint8 (H, W, 3)."""
        return float(self.model.success_prob({c: frames[c][None] for c in self.cameras}, instruction)[0])

    def __call__(self, frames: Mapping[str, np.ndarray] | None, signals: StepSignals, instruction: str) -> tuple[bool, float]:
        """(done, P(done)) after a step; the simulator's ``signals`` are not read."""
        p = self.prob(frames, instruction)
        self._run = self._run + 1 if p > self.threshold else 0
        return self._run >= self.confirm_steps, p


class SimSuccess:
    """Success from the simulator's own test (the reference signal)."""

    needs_frames = False

    def start(self) -> None:
        """Nothing to forget between episodes."""

    def __call__(self, frames, signals: StepSignals, instruction: str) -> tuple[bool, float]:
        """(done, 1.0 or 0.0) from the ground truth."""
        return bool(signals.success), float(signals.success)


def first_confirmed(said: np.ndarray, confirm_steps: int) -> int | None:
    """The first index where ``said`` (bool (T,)) has held for ``confirm_steps`` frames in a row, or None."""
    run = 0
    for i, v in enumerate(np.asarray(said, bool)):
        run = run + 1 if v else 0
        if run >= confirm_steps:
            return i
    return None


@dataclass
class DetectorCounts:
    """A success signal against the simulator's ground truth, per episode and per frame.

    Episode level: a false positive is an episode the signal ended as done while the simulator's test
    fails at that step; a false negative one the signal never ended although the simulator's test held
    at some step. Frame level: every scored frame, P(done) > threshold against the test of that frame.
    """

    false_positives: int = 0
    false_negatives: int = 0
    true_positives: int = 0
    true_negatives: int = 0
    frame_fp: int = 0
    frame_fn: int = 0
    frame_tp: int = 0
    frame_tn: int = 0

    def add_episode(self, claimed: bool, truth_at_claim: bool, truth_any: bool) -> tuple[bool, bool]:
        """Count one episode; returns (false positive, false negative)."""
        fp = claimed and not truth_at_claim
        fn = (not claimed) and truth_any
        self.false_positives += fp
        self.false_negatives += fn
        self.true_positives += claimed and truth_at_claim
        self.true_negatives += (not claimed) and not truth_any
        return fp, fn

    def add_frames(self, said_done: np.ndarray, truth: np.ndarray) -> None:
        """Count frames: bool (T,) verdicts against bool (T,) ground truth."""
        said, truth = np.asarray(said_done, bool), np.asarray(truth, bool)
        self.frame_tp += int((said & truth).sum())
        self.frame_fp += int((said & ~truth).sum())
        self.frame_fn += int((~said & truth).sum())
        self.frame_tn += int((~said & ~truth).sum())

    def summary(self) -> dict:
        """Counts plus frame-level false-positive and false-negative rates."""
        out = dict(self.__dict__)
        neg, pos = self.frame_fp + self.frame_tn, self.frame_tp + self.frame_fn
        out["frame_fpr"] = self.frame_fp / neg if neg else None
        out["frame_fnr"] = self.frame_fn / pos if pos else None
        return out


# --------------------------------------------------------------------------- the loop


@dataclass
class AttemptRecord:
    """One reset-free episode (one attempt at one direction): T actions, T+1 observations."""

    direction: int
    obs: np.ndarray                  # (T+1, 41) float32
    actions: np.ndarray              # (T, 4) float32
    terminated: np.ndarray           # (T,) bool: the success signal said done after action t (the last only)
    claimed: bool                    # the success signal ended the episode as done
    truth: np.ndarray                # (T,) bool: the simulator's success test after each action (logged only)
    probs: np.ndarray                # (T,) float32: the classifier's P(done), NaN where not scored
    reset_before: bool               # the scene was reset before this episode
    flipped: bool                    # the instruction flipped after it
    detector_fp: bool = False        # the classifier's verdict on this attempt was a false positive ...
    detector_fn: bool = False        # ... or a false negative (both False without a classifier)

    @property
    def truth_at_claim(self) -> bool:
        """The simulator's test at the step the signal said done (False when it never did)."""
        return bool(self.claimed and self.truth[-1])


@dataclass
class LoopCounters:
    """Where the reset-free loop stands (restored on resume)."""

    episodes: int = 0                # attempts finished
    since_reset: int = 0             # attempts since the last reset
    resets: int = 0                  # scene resets used (the first included)
    flips: int = 0
    env_steps: int = 0


class ResetFreeLoop:
    """Runs reset-free attempts on a `TaskPairScene`: act, check the success signal after every step,
    flip the instruction when it says done, reset the scene every ``reset_every`` attempts.

    Args:
        scene: the shared scene.
        success: a `ClassifierSuccess` or `SimSuccess`.
        max_steps: the step limit of one attempt (a truncation).
        reset_every: K: a forced reset before every K-th attempt since the last one.
        seed: resets draw variants from ``seed * 100_000 + reset index``.
        flip_on_timeout: flip the instruction after a truncated attempt too.
        monitor: a `ClassifierSuccess` that scores every frame when ``success`` is the simulator's
            (its verdicts are only counted), or None.
    """

    def __init__(self, scene: TaskPairScene, success, max_steps: int, reset_every: int, seed: int = 0,
                 flip_on_timeout: bool = False, monitor: ClassifierSuccess | None = None) -> None:
        if int(max_steps) < 1 or int(reset_every) < 1:
            raise ResetFreeConfigError(f"max_steps={max_steps} and reset_every={reset_every} must be >= 1")
        self.scene, self.success, self.monitor = scene, success, monitor
        self.max_steps, self.reset_every, self.seed = int(max_steps), int(reset_every), int(seed)
        self.flip_on_timeout = bool(flip_on_timeout)
        self.counters = LoopCounters()
        self.detector = DetectorCounts()
        self._needs_reset = True

    def force_reset(self) -> None:
        """Reset the scene before the next attempt (e.g. after a resume: the physics was not saved)."""
        self._needs_reset = True

    def _classifier(self):
        return self.success if isinstance(self.success, ClassifierSuccess) else self.monitor

    def attempt(self, policy: Callable[[np.ndarray], np.ndarray],
                on_step: Callable[[], None] | None = None) -> AttemptRecord:
        """One attempt at the current instruction. ``policy``: obs (41,) -> action (4,);
        ``on_step``: called after every env step (the learner's updates)."""
        c = self.counters
        reset_before = self._needs_reset or c.since_reset >= self.reset_every
        if reset_before:
            self.scene.reset(self.seed * 100_000 + c.resets, direction=0)
            c.resets += 1
            c.since_reset = 0
            self._needs_reset = False
        judge = self._classifier()
        self.success.start()
        if judge is not None:
            judge.start()
        direction, instruction = self.scene.direction, self.scene.instruction
        obs, actions, truth, probs = [self.scene.observation()], [], [], []
        claimed = False
        for _ in range(self.max_steps):
            action = np.clip(np.asarray(policy(obs[-1]), np.float32), -1.0, 1.0)
            signals = self.scene.step(action)
            c.env_steps += 1
            frames = self.scene.render() if judge is not None else None
            done, p = self.success(frames, signals, instruction)
            if judge is not None and judge is not self.success:
                p = judge.prob(frames, instruction)
            obs.append(self.scene.observation())
            actions.append(action)
            truth.append(bool(signals.success))
            probs.append(p if judge is not None else math.nan)
            if on_step is not None:
                on_step()
            if done:
                claimed = True
                break
        c.episodes += 1
        c.since_reset += 1
        flipped = claimed or self.flip_on_timeout
        if flipped:
            self.scene.flip()
            c.flips += 1
        term = np.zeros(len(actions), bool)
        term[-1] = claimed
        rec = AttemptRecord(direction, np.asarray(obs, np.float32), np.asarray(actions, np.float32), term, claimed,
                            np.asarray(truth, bool), np.asarray(probs, np.float32), reset_before, flipped)
        # the classifier's verdict on the episode: the signal itself, or (monitor) its first "done" frame
        if judge is not None:
            said = rec.probs > judge.threshold
            self.detector.add_frames(said, rec.truth)
            if judge is self.success:
                verdict = self.detector.add_episode(claimed, rec.truth_at_claim, bool(rec.truth.any()))
            else:  # the monitor would have ended the attempt where it first confirmed "done"
                first = first_confirmed(said, judge.confirm_steps)
                if first is None and claimed and said[-1]:  # the simulator ended it while the classifier confirmed
                    first = len(said) - 1
                verdict = self.detector.add_episode(first is not None, first is not None and bool(rec.truth[first]),
                                                    bool(rec.truth[: (first + 1) if first is not None else None].any()))
            rec.detector_fp, rec.detector_fn = verdict
        return rec


# --------------------------------------------------------------------------- demonstrations


def expert_policy(scene: TaskPairScene) -> Callable[[np.ndarray], np.ndarray]:
    """The active task's scripted expert (it reads the simulator state, not the observation given)."""
    return lambda _obs: scene.active.expert_action()


def collect_demo_chains(pair: str, n: int, max_steps: int, seed: int = 0) -> list[AttemptRecord]:
    """``n`` expert chains in the shared scene (demo split): forward until the simulator's success,
    flip, backward until its success. Returns the attempts (2 per chain when both succeed)."""
    scene = TaskPairScene(pair, cameras=(), split="demo")
    loop = ResetFreeLoop(scene, SimSuccess(), max_steps=max_steps, reset_every=2, seed=seed)
    out = []
    try:
        for _ in range(2 * int(n)):
            out.append(loop.attempt(expert_policy(scene)))
    finally:
        scene.close()
    return out


def attempt_rewards(rec: AttemptRecord, success_reward: float) -> np.ndarray:
    """The sparse reward (T,): ``success_reward`` on the step the success signal said done."""
    return np.where(rec.terminated, float(success_reward), 0.0).astype(np.float32)


def add_attempt(buffer, rec: AttemptRecord, success_reward: float, gamma: float) -> None:
    """An attempt's transitions into a `ReplayBuffer`, with Monte-Carlo returns (Cal-QL's bound)."""
    from policies.replay import discounted_returns

    r = attempt_rewards(rec, success_reward)
    buffer.add_batch(rec.obs[:-1], rec.actions, r, rec.obs[1:], rec.terminated, discounted_returns(r, gamma))


# --------------------------------------------------------------------------- classifier adaptation


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
    from omegaconf import OmegaConf

    from policies.train import CONFIG_DIR
    from reward_models.vlm_success import train_from_config

    out = run_path / "classifier"
    if (out / "adapted.done").exists():
        return str(out)
    base = reward_models.load(cfg.classifier)
    data = collect_classifier_data(cfg.pair, int(cfg.adapt.chains), run_path / "classifier_data", base.cameras,
                                   int(base.image_size[0]))
    rm = OmegaConf.load(CONFIG_DIR / "train_rm.yaml")
    for key in ("defaults", "hydra"):
        rm.pop(key, None)
    rm.reward = OmegaConf.merge(OmegaConf.load(CONFIG_DIR / "reward" / "vlm_success.yaml"),
                                {"adapt_steps": int(cfg.adapt.steps), "adapt_lr": float(cfg.adapt.lr)})
    rm = OmegaConf.merge(rm, {"init": str(cfg.classifier), "data": str(data), "out": str(out), "seed": int(cfg.seed),
                              "num_threads": int(cfg.offline_threads or torch.get_num_threads())})
    log.info("adapting %s to reset-free %s scenes: stepwise-train-rm reward=vlm_success init=%s data=%s out=%s "
             "reward.adapt_steps=%d", cfg.classifier, cfg.pair, cfg.classifier, data, out, int(cfg.adapt.steps))
    train_from_config(rm)
    (out / "adapted.done").write_text(json.dumps({"from": str(cfg.classifier), "data": str(data),
                                                  "steps": int(cfg.adapt.steps), "chains": int(cfg.adapt.chains)}))
    return str(out)


# --------------------------------------------------------------------------- evaluation


def evaluate_directions(agent, pair: str, seeds: Sequence[int], max_steps: int, scene: TaskPairScene | None = None) -> dict:
    """Each direction in episodes WITH a reset (eval split, deterministic policy, the simulator's success).

    ``forward``: from the forward task's reset. ``backward``: from the scene the forward task leaves (the
    reset, then the forward expert until done, then the flip): where the backward task starts reset-free.
    ``backward_own_reset``: from the backward task's own reset (Meta-World's drawer-close start, say).
    Returns those success rates and ``episodes`` (per direction)."""
    own = scene is None
    scene = scene or TaskPairScene(pair, cameras=(), split="eval")

    def attempt() -> bool:
        for _ in range(max_steps):
            if scene.step(agent.act(scene.observation(), deterministic=True)).success:
                return True
        return False

    wins: dict[str, list[bool]] = {"forward": [], "backward": [], "backward_own_reset": []}
    try:
        for s in seeds:
            scene.reset(int(s), direction=0)
            wins["forward"].append(attempt())
            scene.reset(int(s), direction=0)
            for _ in range(max_steps):
                if scene.step(scene.active.expert_action()).success:
                    break
            scene.flip()
            wins["backward"].append(attempt())
            scene.reset(int(s), direction=1)
            wins["backward_own_reset"].append(attempt())
    finally:
        if own:
            scene.close()
    return {**{k: float(np.mean(v)) for k, v in wins.items()}, "episodes": len(seeds)}


# --------------------------------------------------------------------------- the run


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


def check_config(cfg) -> None:
    """Refuse settings that cannot work, before anything is built."""
    get_pair(cfg.pair)
    if cfg.success not in SUCCESS_SIGNALS:
        raise ResetFreeConfigError(f"success={cfg.success!r} unknown: use one of {SUCCESS_SIGNALS}")
    for key in ("reset_every", "max_steps", "confirm_steps"):
        if int(cfg[key]) < 1:
            raise ResetFreeConfigError(f"{key}={cfg[key]}: must be >= 1")
    if int(cfg.episodes) < 0 or int(cfg.demos) < 0:
        raise ResetFreeConfigError("episodes and demos must be >= 0")
    if int(cfg.eval.every) < 1 or int(cfg.eval.episodes) < 1 or int(cfg.eval.final_episodes) < 1:
        raise ResetFreeConfigError("eval.every, eval.episodes and eval.final_episodes must be >= 1")


def save_checkpoint(path: Path, agent, online, state: RunState, rng: np.random.Generator, cfg_dict: dict) -> None:
    """Agent (optimisers included), online replay, counters, history and random states; atomic."""
    payload = {"version": CHECKPOINT_VERSION, "kind": "stepwise-train-reset-free", "pair": cfg_dict["pair"],
               "success": cfg_dict["success"], "config": cfg_dict, "agent": agent.state_dict(), "state": state.__dict__,
               "replay": online.rows(),
               "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, cfg) -> dict:
    """Read a reset-free checkpoint and check it is a run of this pair and success signal."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or not a torch file
        raise ResetFreeConfigError(f"checkpoint {path} cannot be read ({err}); delete it to start over") from err
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "stepwise-train-reset-free":
        raise ResetFreeConfigError(f"{path} is not a stepwise-train-reset-free checkpoint; use another hydra.run.dir")
    if (ckpt["pair"], ckpt["success"]) != (cfg.pair, cfg.success):
        raise ResetFreeConfigError(f"{path} is a run of pair={ckpt['pair']} success={ckpt['success']}: pass those "
                                   "to resume it, or use another hydra.run.dir")
    return ckpt


def load_classifier(name: str | Path, threshold: float | None = None, confirm_steps: int = 2) -> ClassifierSuccess:
    """The success classifier ``name`` (checkpoint directory or shipped name), wrapped with its threshold."""
    import reward_models

    model = reward_models.load(name)
    if not hasattr(model, "success_prob") or getattr(model, "kind", None) != "vlm_success":
        raise ResetFreeConfigError(f"classifier={name} is not a success classifier: use a vlm_success checkpoint "
                                   "(e.g. vlm-general)")
    return ClassifierSuccess(model, threshold, int(confirm_steps))


def run(cfg, run_dir: str | Path) -> dict:
    """The whole job (see the module docstring). Returns the report dict."""
    from omegaconf import OmegaConf
    from tqdm import tqdm

    from policies.replay import MixedReplay, ReplayBuffer
    from policies.train import make_agent

    check_config(cfg)
    run_path = Path(run_dir)
    run_path.mkdir(parents=True, exist_ok=True)
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    ckpt_path = run_path / "checkpoint.pt"
    ckpt = None
    if ckpt_path.exists():
        if not cfg.resume:
            raise ResetFreeConfigError(f"{run_path} already holds a run ({ckpt_path.name}): pass resume=true to "
                                       "continue it, or give another hydra.run.dir")
        ckpt = load_checkpoint(ckpt_path, cfg)
    state = RunState(**ckpt["state"]) if ckpt else RunState()
    wall_before, session_start = state.wall_time_s, time.perf_counter()
    gamma, success_reward = float(cfg.agent.gamma), float(cfg.success_reward)
    threads = int(cfg.offline_threads or torch.get_num_threads())

    classifier = None
    if cfg.success == "classifier" or cfg.monitor:
        t0 = time.perf_counter()
        name = adapt_classifier(cfg, run_path)
        classifier = load_classifier(name, cfg.threshold, int(cfg.confirm_steps))
        state.stage_seconds.setdefault("classifier", time.perf_counter() - t0)
        state.classifier = name
    success = classifier if cfg.success == "classifier" else SimSuccess()
    cams = classifier.cameras if classifier is not None else ()
    size = int(classifier.model.image_size[0]) if classifier is not None else 96
    scene = TaskPairScene(cfg.pair, cameras=cams, image_size=size, split="train")
    eval_scene = TaskPairScene(cfg.pair, cameras=(), split="eval")
    loop = ResetFreeLoop(scene, success, int(cfg.max_steps), int(cfg.reset_every), int(cfg.seed),
                         bool(cfg.flip_on_timeout), classifier if cfg.success == "sim" else None)

    # -- stage 1: demonstrations ---------------------------------------------------------------
    t0 = time.perf_counter()
    demos = collect_demo_chains(cfg.pair, int(cfg.demos), int(cfg.max_steps), seed=0) if int(cfg.demos) else []
    offline = ReplayBuffer(OBS_DIM, 4, max(1, sum(len(d.actions) for d in demos)))
    for d in demos:
        add_attempt(offline, d, success_reward, gamma)
    state.stage_seconds.setdefault("demos", time.perf_counter() - t0)
    online = ReplayBuffer(OBS_DIM, 4, int(cfg.online.capacity))
    agent = make_agent(cfg, OBS_DIM, 4)
    rng = np.random.default_rng(int(cfg.seed))
    torch.manual_seed(int(cfg.seed))
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
                         float(cfg.online.offline_fraction) if use_demos else 0.0)
    if not use_demos:
        agent.cfg.bc_weight = 0.0
    batch_rows = int(cfg.agent.batch_size) * int(cfg.agent.utd_ratio)
    eval_seeds = list(range(int(cfg.eval.episodes)))

    def checkpoint() -> None:
        state.loop, state.detector = dict(loop.counters.__dict__), dict(loop.detector.__dict__)
        state.wall_time_s = wall_before + time.perf_counter() - session_start
        save_checkpoint(ckpt_path, agent, online, state, rng, cfg_dict)

    def run_eval() -> None:
        res = evaluate_directions(agent, cfg.pair, eval_seeds, int(cfg.max_steps), eval_scene)
        res.update(episode=loop.counters.episodes, resets=loop.counters.resets, env_steps=loop.counters.env_steps)
        state.evals.append(res)
        log.info("eval after %d attempts (%d resets): forward %.2f, backward %.2f (from its own reset %.2f)",
                 res["episode"], res["resets"], res["forward"], res["backward"], res["backward_own_reset"])

    # -- stage 2: pre-training on the demonstrations -------------------------------------------
    if state.phase == "pretrain":
        t0 = time.perf_counter()
        torch.set_num_threads(threads)
        if use_demos:
            for _ in tqdm(range(int(cfg.pretrain.bc_steps)), desc="BC warm start", unit="step"):
                b = offline.sample(int(cfg.agent.batch_size), rng, agent.device)
                agent.bc_update(b["obs"], b["action"])
            for _ in tqdm(range(int(cfg.pretrain.steps)), desc="Cal-QL pre-training", unit="step"):
                b = offline.sample(batch_rows, rng, agent.device)
                b["demo"] = torch.ones(batch_rows, device=agent.device)
                agent.update(b)
        state.stage_seconds["pretrain"] = time.perf_counter() - t0
        torch.set_num_threads(int(cfg.threads))  # scoring one frame at a time: more threads only contend
        if classifier is not None and demos:  # the classifier on expert chains it never saw, before any learning
            t0 = time.perf_counter()
            state.demo_detector = score_expert_chains(cfg.pair, int(cfg.demos), int(cfg.max_steps), classifier)
            state.stage_seconds["classifier_on_expert_chains"] = time.perf_counter() - t0
        state.phase = "online"
        run_eval()
        checkpoint()
    agent.cql_alpha = float(cfg.online.cql_alpha)
    torch.set_num_threads(int(cfg.threads))

    # -- stage 3: reset-free online fine-tuning ------------------------------------------------
    n_attempts = int(cfg.episodes)
    if state.phase == "done" and loop.counters.episodes < n_attempts:
        state.phase = "online"
    ready = lambda: len(online) > 0 or use_demos  # noqa: E731
    sums: dict[str, float] = {}

    def learn() -> None:
        if not ready():
            return
        for _ in range(int(cfg.online.updates_per_step)):
            for k, v in agent.update(replay.sample(batch_rows, rng, agent.device)).items():
                sums[k] = sums.get(k, 0.0) + v

    def policy(obs: np.ndarray) -> np.ndarray:
        if loop.counters.env_steps < int(cfg.online.random_steps):
            return rng.uniform(-1, 1, 4).astype(np.float32)
        return agent.act(obs)

    bar = tqdm(total=n_attempts, initial=loop.counters.episodes, desc="reset-free", unit="ep")
    t0 = time.perf_counter()
    while state.phase == "online" and loop.counters.episodes < n_attempts:
        frac = min(1.0, loop.counters.episodes / max(1, int(cfg.online.bc_anneal_episodes)))
        agent.bc_coef = 1.0 + frac * (float(cfg.online.bc_final) - 1.0)
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
        if c.episodes % int(cfg.eval.every) == 0 or c.episodes == n_attempts:
            run_eval()
            checkpoint()
        elif c.episodes % int(cfg.checkpoint_every) == 0:
            checkpoint()
    bar.close()
    if state.phase == "online":
        state.stage_seconds["online"] = state.stage_seconds.get("online", 0.0) + time.perf_counter() - t0
        state.phase = "done"
        checkpoint()

    # -- stage 4: final evaluation and report --------------------------------------------------
    final = evaluate_directions(agent, cfg.pair, list(range(int(cfg.eval.final_episodes))), int(cfg.max_steps), eval_scene)
    state.loop, state.detector = dict(loop.counters.__dict__), dict(loop.detector.__dict__)
    state.wall_time_s = wall_before + time.perf_counter() - session_start
    report = write_report(run_path, cfg, state, final, classifier)
    torch.save({"kind": "stepwise-policy", "pair": cfg.pair, "tasks": list(get_pair(cfg.pair)), "policy": "state",
                "obs_key": "state+direction_onehot", "agent": agent.state_dict()}, run_path / "policy.pt")
    scene.close()
    eval_scene.close()
    return report


def score_expert_chains(pair: str, n: int, max_steps: int, classifier: ClassifierSuccess) -> dict:
    """The classifier on ``n`` rendered expert chains (demo split, variants from seed 1's stream: neither the
    demonstrations' nor the adaptation data's): frame- and attempt-level counts against the simulator's
    test, a check of the classifier on this pair before learning starts."""
    scene = TaskPairScene(pair, cameras=classifier.cameras, image_size=int(classifier.model.image_size[0]), split="demo")
    loop = ResetFreeLoop(scene, SimSuccess(), max_steps=max_steps, reset_every=2, seed=1, monitor=classifier)
    try:
        for _ in range(2 * n):
            loop.attempt(expert_policy(scene))
    finally:
        scene.close()
    return loop.detector.summary()


def write_report(run_path: Path, cfg, state: RunState, final: dict, classifier: ClassifierSuccess | None) -> dict:
    """report.json, report.md and success_curve.png in the run directory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = state.history
    fwd, bwd = get_pair(cfg.pair)
    per_dir = {}
    for name in DIRECTIONS:
        rows = [h for h in hist if h["direction"] == name]
        per_dir[name] = {"attempts": len(rows), "claimed": sum(h["claimed"] for h in rows),
                         "sim_success": sum(h["sim_success"] for h in rows)}
    detector = DetectorCounts(**state.detector).summary()
    report = {
        "pair": cfg.pair, "forward_task": fwd, "backward_task": bwd, "success_signal": cfg.success,
        "classifier": state.classifier if classifier is not None else None,
        "classifier_adaptation": ({"from": str(cfg.classifier), "steps": int(cfg.adapt.steps),
                                   "chains": int(cfg.adapt.chains), "data": "reset-free expert chains + near misses "
                                   "(demo split), labelled by the simulator's per-step success",
                                   "command": f"stepwise-train-rm reward=vlm_success init={cfg.classifier} "
                                              f"data=<run>/classifier_data out=<run>/classifier "
                                              f"reward.adapt_steps={cfg.adapt.steps} reward.adapt_lr={cfg.adapt.lr}"}
                                  if classifier is not None and int(cfg.adapt.steps) > 0 else None),
        "threshold": classifier.threshold if classifier is not None else None,
        "confirm_steps": int(cfg.confirm_steps), "reset_every": int(cfg.reset_every), "max_steps": int(cfg.max_steps),
        "flip_on_timeout": bool(cfg.flip_on_timeout), "demos": int(cfg.demos), "seed": int(cfg.seed),
        "final": final, "attempts": state.loop.get("episodes", 0), "resets": state.loop.get("resets", 0),
        "flips": state.loop.get("flips", 0), "env_steps": state.loop.get("env_steps", 0),
        "wall_time_s": round(state.wall_time_s, 1),
        "stage_seconds": {k: round(v, 1) for k, v in state.stage_seconds.items()},
        "training_attempts": per_dir, "evals": state.evals,
        "detector": detector if classifier is not None else None,
        "detector_role": ("success signal" if cfg.success == "classifier" else "monitor only")
        if classifier is not None else None,
        "detector_on_expert_chains": state.demo_detector,
    }
    (run_path / "report.json").write_text(json.dumps(report, indent=1))

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    xs = [e["episode"] for e in state.evals]
    ax.plot(xs, [e["forward"] for e in state.evals], "o-", label=f"forward ({fwd.split('/')[-1]})")
    ax.plot(xs, [e["backward"] for e in state.evals], "s-", label=f"backward ({bwd.split('/')[-1]})")
    ax.plot(xs, [e["backward_own_reset"] for e in state.evals], "^:", alpha=0.6, label="backward, own reset")
    ax.set(xlabel="training attempts (reset-free)", ylabel="eval success (with resets)", ylim=(-0.05, 1.05),
           title=f"{cfg.pair}: success from {cfg.success}")
    ax.legend(loc="lower right")
    if hist:
        ax2.plot([h["episode"] for h in hist], [h["resets"] for h in hist], label="resets used")
        ax2.plot([h["episode"] for h in hist], np.cumsum([h["claimed"] for h in hist]), label="instruction flips")
        ax2.set(xlabel="training attempts", ylabel="count", title=f"reset every {cfg.reset_every} attempts")
        ax2.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(run_path / "success_curve.png", dpi=100)
    plt.close(fig)

    lines = [f"# stepwise-train-reset-free: {cfg.pair} ({fwd} / {bwd})", "",
             f"Success signal: **{cfg.success}**" + (f" ({state.classifier}, P(done) > {classifier.threshold:.3f}"
                                                     f" for {cfg.confirm_steps} frame(s))" if cfg.success == "classifier" else "")
             + f"; forced reset every {cfg.reset_every} attempts, {cfg.max_steps} steps per attempt, "
               f"{cfg.demos} demonstration chains, seed {cfg.seed}.", "",
             f"**Final success (with resets, {final['episodes']} episodes per direction): forward "
             f"{final['forward']:.2f}, backward {final['backward']:.2f}** (from its own task's reset "
             f"{final['backward_own_reset']:.2f}) after {report['attempts']} attempts, "
             f"{report['resets']} resets, {report['env_steps']} env steps, {state.wall_time_s / 60:.1f} min.", "",
             "Eval: forward from its task's reset; backward from the scene the forward expert leaves (where it "
             "starts reset-free), and from the backward task's own reset.", "",
             "| attempts | resets | forward | backward | backward (own reset) |", "|---|---|---|---|---|"]
    lines += [f"| {e['episode']} | {e['resets']} | {e['forward']:.2f} | {e['backward']:.2f} | {e['backward_own_reset']:.2f} |"
              for e in state.evals]
    lines += ["", "Training attempts: " + "; ".join(
        f"{k}: {v['attempts']} attempts, {v['claimed']} ended as done by the signal, {v['sim_success']} reached the "
        "simulator's success" for k, v in per_dir.items()) + "."]
    if classifier is not None:
        d = detector
        lines += ["", f"Classifier against the simulator ({report['detector_role']}): {d['false_positives']} false "
                  f"positive and {d['false_negatives']} false negative attempts (of {report['attempts']}); frames: "
                  f"FPR {d['frame_fpr'] if d['frame_fpr'] is None else round(d['frame_fpr'], 4)}, "
                  f"FNR {d['frame_fnr'] if d['frame_fnr'] is None else round(d['frame_fnr'], 4)}."]
    lines += ["", "![success curve](success_curve.png)"]
    (run_path / "report.md").write_text("\n".join(lines) + "\n")
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
