"""`stepwise-deploy`: run a trained policy on a robot, rate-controlled, recorded, and stoppable.

    stepwise-robot-server robot=sim task=metaworld/drawer-open                # terminal 1
    stepwise-deploy robot=remote task=metaworld/drawer-open policy=runs/x episodes=5
    stepwise-deploy robot=remote ... dry_run=true                              # moves nothing

Per episode: homing (the driver's reset: a slow move to its home pose), then up to ``max_steps``
steps at ``hz`` on a monotonic clock: observe -> ``policy.act`` -> the safety layer -> the driver.
A step that overruns its period is counted and warned, and the clock restarts from now (no burst
of catch-up commands). Success comes from the simulator when the robot knows it, else from a
reward model's ``success_prob``, else from the operator (``y`` + Enter). Every episode is written
to ``episodes.hdf5`` in the run directory (the demonstrations' format) with the APPLIED actions.

Stop paths, each ending in the driver's stop sequence (``finally: robot.stop(); robot.close()``):
Ctrl-C, SIGTERM, the stop key (``s`` + Enter on the terminal), a lost link (the server's watchdog
stops the robot; this side raises), and an exception anywhere in the loop.

``real`` never imports ``policies``: the policy comes from ``policy_loader`` ("module:function"),
which returns an object with ``act(observation) -> action``.
"""

from __future__ import annotations

import importlib
import logging
import select
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from real.robot import GroundTruth, Robot
from real.safety import SafeRobot, SafetyLimits, filter_action

log = logging.getLogger(__name__)


class Policy(Protocol):
    """What the deploy loop needs of a policy."""

    def act(self, observation: Mapping[str, Any]) -> np.ndarray:
        """Env observation -> float32 (A,) in [-1, 1]."""


class StopRequested(Exception):
    """A stop path fired (SIGTERM, the stop key): the loop ends through the stop sequence."""


@dataclass
class LoopTimer:
    """A fixed-rate loop on ``time.monotonic``; records the period error of every step."""

    hz: float
    overrun_warn_every: int = 20
    errors_ms: list[float] = field(default_factory=list)
    overruns: int = 0
    _next: float | None = None

    def start(self) -> None:
        """Begin a run of steps (an episode): the first tick is one period from now."""
        self._next = time.monotonic() + 1.0 / self.hz

    def tick(self) -> None:
        """Wait for the next period boundary; count an overrun when the step took too long."""
        now = time.monotonic()
        if now > self._next:
            self.overruns += 1
            self.errors_ms.append((now - self._next) * 1000.0)
            if self.overruns == 1 or self.overruns % self.overrun_warn_every == 0:
                log.warning("control loop overran its %.1f ms period by %.1f ms (%d overruns so far)",
                            1000.0 / self.hz, (now - self._next) * 1000.0, self.overruns)
            self._next = now + 1.0 / self.hz  # no catch-up burst
            return
        time.sleep(max(0.0, self._next - now - 0.0005))
        while (now := time.monotonic()) < self._next:  # spin the last half millisecond
            pass
        self.errors_ms.append((now - self._next) * 1000.0)
        self._next += 1.0 / self.hz

    def stats(self) -> dict[str, float]:
        """p50 / p99 / max absolute period error (ms), overruns and steps."""
        e = np.abs(np.asarray(self.errors_ms or [0.0]))
        return {"hz": self.hz, "steps": len(self.errors_ms), "overruns": self.overruns,
                "period_error_p50_ms": float(np.percentile(e, 50)), "period_error_p99_ms": float(np.percentile(e, 99)),
                "period_error_max_ms": float(e.max())}


class Operator:
    """Keys read from stdin without blocking the loop: ``s`` (stop), ``y`` (success), ``n`` (failure)."""

    def __init__(self, enabled: bool, stream: Any = None) -> None:
        # a terminal by default; a given stream (a pipe, a socket file) is read as the operator's
        self.stream = stream if stream is not None else sys.stdin
        self.enabled = enabled and self.stream is not None and (stream is not None or self.stream.isatty())
        self.stop = threading.Event()
        self.stop_reason = "stop key"
        self.verdict: bool | None = None

    def poll(self) -> None:
        """Read whatever the operator typed (each command is a letter and Enter)."""
        if not self.enabled:
            return
        while select.select([self.stream], [], [], 0)[0]:
            line = self.stream.readline()
            if not line:  # end of input: nothing more will come
                self.enabled = False
                return
            line = line.strip().lower()
            if line.startswith("s"):
                self.stop.set()
            elif line.startswith("y"):
                self.verdict = True
            elif line.startswith("n"):
                self.verdict = False


def observe_fresh(robot: Robot, retries: int, period_s: float, summary: dict) -> dict:
    """``robot.observe()``, handling stale camera frames: hold the robot, wait a period, retry up
    to ``retries`` times, then give up with the camera's error (the run's stop sequence follows)."""
    from real.cameras import CameraError, StaleFrameError

    for attempt in range(retries + 1):
        try:
            return robot.observe()
        except (StaleFrameError, CameraError) as err:
            summary["stale_frames"] = summary.get("stale_frames", 0) + 1
            if attempt == retries or not isinstance(err, StaleFrameError):
                raise
            log.warning("%s: holding the robot and retrying (%d/%d)", err, attempt + 1, retries)
            robot.stop()
            time.sleep(period_s)
    raise AssertionError("unreachable")


def load_by_name(ref: str) -> Callable:
    """``"module:function"`` -> the function."""
    module, _, name = str(ref).partition(":")
    if not name:
        raise ValueError(f"{ref!r} is not 'module:function'")
    return getattr(importlib.import_module(module), name)


def build_deploy_robot(cfg) -> tuple[Robot, SafetyLimits | None]:
    """The driver of ``cfg.robot`` (local drivers behind their safety layer) and, for dry runs, the
    limits to check commands against (a remote robot's come from its server)."""
    from omegaconf import OmegaConf

    from real.env import make_robot
    from real.server import build_robot

    robot_cfg = OmegaConf.to_container(cfg.robot, resolve=True)
    if robot_cfg.get("driver") == "remote":
        kwargs = {k: v for k, v in robot_cfg.items() if k != "driver"}
        robot = make_robot("remote", task=cfg.task, **kwargs)
        limits = robot.server_info.get("safety")
        return robot, (SafetyLimits.from_config(limits) if limits else None)
    if robot_cfg.get("driver") == "sim":
        robot_cfg.setdefault("split", "eval")
    driver, safety = build_robot(robot_cfg, cfg.task)
    safe = SafeRobot(driver, safety)
    return safe, safe.limits


def _success_source(cfg, robot: Robot, instruction: str, operator: Operator) -> tuple[str, Callable[[dict], bool]]:
    """(name, observation -> success) by ``cfg.success``: sim | reward_model | operator | auto."""
    mode = cfg.success
    if mode == "auto":
        mode = "sim" if isinstance(robot, GroundTruth) else ("reward_model" if cfg.success_model else "operator")
    if mode == "sim":
        if not isinstance(robot, GroundTruth):
            raise ValueError("success=sim needs a robot that knows the task outcome (the simulator): use success=reward_model or operator")
        return mode, lambda obs: bool(robot.task_signals()["success"])
    if mode == "reward_model":
        if not cfg.success_model:
            raise ValueError("success=reward_model needs success_model=<checkpoint or shipped name>")
        import reward_models

        model, thr = reward_models.load(cfg.success_model), float(cfg.success_threshold)
        cams = list(model.cameras)

        def judged(obs: dict) -> bool:
            frames = {c: obs["images"][c][None] for c in cams}
            return float(model.success_prob(frames, instruction)[0]) > thr

        return mode, judged
    if mode == "operator":
        if not operator.enabled:
            raise ValueError("success=operator needs a terminal (stdin is not a tty): use success=sim or reward_model")
        return mode, lambda obs: bool(operator.verdict)
    raise ValueError(f"unknown success={cfg.success!r}: auto | sim | reward_model | operator")


def deploy(cfg, run_dir: str | Path, policy: Policy | None = None, operator_stream: Any = None) -> dict[str, Any]:
    """Run ``cfg.episodes`` episodes; returns (and writes ``summary.json``) the run summary.

    ``policy`` overrides ``cfg.policy``; ``operator_stream`` is read for operator keys instead of a terminal."""
    import json

    from episodes import Episode, EpisodeWriter

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    hz = float(cfg.hz)
    if not 0 < hz <= 1000:
        raise ValueError(f"hz must be in (0, 1000], got {cfg.hz}")
    if int(cfg.episodes) < 1 or int(cfg.max_steps) < 1:
        raise ValueError("episodes and max_steps must be >= 1")
    if policy is None:
        if not cfg.policy:
            raise ValueError("policy=<run dir, its policy/ dir, or hf://org/name> is required")
        policy = load_by_name(cfg.policy_loader)(cfg.policy, task=cfg.task)
    dry = bool(cfg.dry_run)
    operator = Operator(enabled=bool(cfg.stop_key), stream=operator_stream)
    timer = LoopTimer(hz)
    summary: dict[str, Any] = {"task": cfg.task, "robot": cfg.robot.driver, "dry_run": dry, "episodes": 0, "successes": 0,
                               "steps": 0, "would_change": 0, "stopped_by": None, "episode_results": []}

    def on_sigterm(*_):
        # only a flag: raising here could land inside logging or a socket call and be swallowed
        operator.stop_reason = "SIGTERM"
        operator.stop.set()

    previous = signal.signal(signal.SIGTERM, on_sigterm) if threading.current_thread() is threading.main_thread() else None
    robot, limits = build_deploy_robot(cfg)
    writer = None
    try:
        robot.connect()
        instruction = getattr(robot, "instruction", "") or ""
        source, is_success = _success_source(cfg, robot, instruction, operator)
        summary["success_source"] = source
        spec = robot.action_spec
        if cfg.record and not dry and not robot.observation_spec.cameras:
            log.warning("the robot has no cameras: episodes are not recorded (the episode store holds camera episodes)")
        elif cfg.record and not dry:
            writer = EpisodeWriter(run / "episodes.hdf5", env_args={"task": cfg.task, "source": "stepwise-deploy"})
        for ep in range(int(cfg.episodes)):
            if operator.stop.is_set():
                raise StopRequested(operator.stop_reason)
            # homing: the driver's reset is a slow move to its home pose (a sim picks the variant)
            obs = robot.observe() if dry else robot.reset(seed=int(cfg.seed) + ep)
            frames, proprio, states, actions, requested, rewards = [obs["images"]], [obs["proprio"]], [obs.get("state")], [], [], []
            success, last_gripper = False, 0.0
            log.info("episode %d: homed%s", ep, " (dry run: no homing, nothing moves)" if dry else "")
            timer.start()
            for _ in range(int(cfg.max_steps)):
                operator.poll()
                if operator.stop.is_set():
                    raise StopRequested(operator.stop_reason)
                action = np.asarray(policy.act(obs), np.float32)
                if dry:
                    safe, events = filter_action(action, np.asarray(obs["proprio"][:3], float), limits, spec.ee_step_m,
                                                 spec.control_hz, last_gripper) if limits else (action, [])
                    summary["would_change"] += bool(events)
                    log.info("dry run: would send %s%s", np.round(safe, 3).tolist(), f" (safety: {', '.join(events)})" if events else "")
                    applied = safe
                    timer.tick()
                    obs = observe_fresh(robot, int(cfg.stale_retries), 1.0 / hz, summary)
                else:
                    applied = np.asarray(robot.send_action(action), np.float32)
                    obs = observe_fresh(robot, int(cfg.stale_retries), 1.0 / hz, summary)
                    timer.tick()
                last_gripper = float(applied[-1])
                requested.append(action)
                actions.append(applied)
                frames.append(obs["images"])
                proprio.append(obs["proprio"])
                states.append(obs.get("state"))
                success = not dry and is_success(obs)
                rewards.append(float(success))
                if success and cfg.stop_on_success:
                    break
            summary["episodes"] += 1
            summary["successes"] += int(success)
            summary["steps"] += len(actions)
            summary["episode_results"].append({"episode": ep, "success": bool(success), "steps": len(actions)})
            log.info("episode %d: %s after %d steps", ep, "success" if success else "no success", len(actions))
            if writer is not None and actions:
                cams = list(frames[0])
                record = Episode(
                    images={c: np.stack([f[c] for f in frames]) for c in cams},
                    proprio=np.stack(proprio).astype(np.float32), actions=np.stack(actions),
                    rewards=np.asarray(rewards, np.float32), dones=np.asarray([False] * (len(actions) - 1) + [True]),
                    task=cfg.task, instruction=instruction, fps=hz, success=bool(success),
                    keyframes=np.zeros(0, np.int64),
                    state=np.stack(states).astype(np.float32) if all(s is not None for s in states) else None,
                    infos={"requested_" + n: np.stack(requested)[:, i] for i, n in enumerate(spec.names or range(spec.dim))},
                    seed=int(cfg.seed) + ep, kind="policy", extra_attrs={"success_source": source},
                )
                writer.add(record)
    except (StopRequested, KeyboardInterrupt) as err:
        summary["stopped_by"] = str(err) or type(err).__name__
        log.warning("stopping: %s", summary["stopped_by"])
    except Exception as err:
        summary["stopped_by"] = f"error: {type(err).__name__}: {err}"
        log.error("stopping on an error: %s", err)
        raise
    finally:
        if not isinstance(robot, SafeRobot) and hasattr(robot, "stats"):
            try:  # a remote robot's safety layer runs on its server: fetch its counts for the summary
                summary["safety"] = robot.stats()["safety"]
            except Exception:  # noqa: BLE001 - a lost link: the summary says so below
                summary["safety"] = "unavailable: the robot server did not answer"
        try:
            robot.stop()
        except Exception as err:  # noqa: BLE001 - the stop sequence in close() still runs
            log.error("stop failed: %s", err)
        finally:
            robot.close()
            if writer is not None:
                writer.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            summary["timing"] = timer.stats()
            if isinstance(robot, SafeRobot):
                summary["safety"] = robot.summary()
            (run / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def main() -> None:
    """Console entry point (Hydra): ``stepwise-deploy robot=remote task=... policy=... episodes=N``."""
    from configs.entry import hydra_job
    from episodes import StoreError
    from sim.tasks import UnknownTaskError

    hydra_job("stepwise-deploy", "deploy", _job,
              errors=(ValueError, ConnectionError, UnknownTaskError, StoreError, FileNotFoundError, ImportError))


def _job(cfg, run_dir) -> str:
    """Deploy the policy for the configured episodes; return the closing summary line."""
    s = deploy(cfg, str(run_dir))
    t = s["timing"]
    return (f"stepwise-deploy: {s['episodes']} episodes, {s['successes']} successes"
            f"{' (dry run: nothing moved, ' + str(s['would_change']) + ' commands the safety layer would change)' if s['dry_run'] else ''}; "
            f"{t['hz']:.0f} Hz, period error p50 {t['period_error_p50_ms']:.2f} ms p99 {t['period_error_p99_ms']:.2f} ms, "
            f"{t['overruns']} overruns; safety {s.get('safety')}; stopped by {s['stopped_by'] or 'end of episodes'}; "
            f"summary: {Path(run_dir) / 'summary.json'}")


if __name__ == "__main__":
    main()
