"""`stepwise-robot-server`: serve any `Robot` driver over a zmq socket, behind the safety layer and a
watchdog.

    stepwise-robot-server robot=sim task=metaworld/drawer-open        # 127.0.0.1:5555
    stepwise-robot-server robot=ur robot.host=192.168.1.10 token=s3cret

One thread owns the robot (a simulator's GL context and most vendor SDKs are bound to the thread
that opened them) and answers requests in order (see ``real.protocol``). Commands that queued up
while the robot was busy are not replayed: only the newest ``act`` runs, older ones are answered
``superseded``. Every command passes :class:`real.safety.SafeRobot` here, on the robot side, so no
client can send an unfiltered command.

Watchdog: while armed, a gap of more than ``watchdog_ms`` between commands makes the server call
the driver's ``stop()`` (hold position) and disarm; ``act`` is refused with code ``disarmed`` until a
client re-arms explicitly (``arm``, or a ``reset`` with ``arm``). A lost client therefore stops the
robot within ``watchdog_ms`` plus one poll.
"""

from __future__ import annotations

import hmac
import logging
import sys
import threading
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from real import protocol
from real.robot import GroundTruth, MultiTask, Robot
from real.safety import SafeRobot, SafetyLimits

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class RobotServer:
    """Serves one driver to any number of clients (one robot: their commands interleave).

    Args:
        robot: the driver (not yet connected is fine: it connects in the serving thread).
        safety: the robot's limits (every command passes them).
        host: interface to bind; anything but loopback needs ``allow_remote``.
        port: TCP port (0: a free one, see :attr:`port` after :meth:`bind`).
        token: shared secret clients must present (``None``: none asked).
        watchdog_ms: the longest gap between commands while armed.
        allow_remote: permit binding to a non-loopback interface (prints a warning).
        task / instruction: what the robot is set up for, told to clients in ``hello``.
    """

    def __init__(
        self,
        robot: Robot,
        safety: SafetyLimits | dict,
        host: str = "127.0.0.1",
        port: int = 5555,
        token: str | None = None,
        watchdog_ms: float = 200.0,
        allow_remote: bool = False,
        task: str | None = None,
        instruction: str = "",
    ) -> None:
        if host not in LOOPBACK and not allow_remote:
            raise ValueError(
                f"host={host!r} would expose the robot beyond this machine: bind 127.0.0.1, or pass "
                "allow_remote=true (and set a token) to accept clients from the network"
            )
        if watchdog_ms is None or not np.isfinite(watchdog_ms) or watchdog_ms <= 0:
            raise ValueError(f"watchdog_ms must be a positive number of milliseconds, got {watchdog_ms}")
        if not 0 <= int(port) < 65536:
            raise ValueError(f"port must be in 0..65535, got {port}")
        if host not in LOOPBACK:
            print(
                f"stepwise-robot-server: WARNING: binding {host}: any machine that reaches it can move "
                f"this robot{'' if token else ' (and no token is set)'}",
                file=sys.stderr,
            )
        self.robot = SafeRobot(robot, safety)
        self.host, self.port = host, int(port)
        self.token = token
        self.watchdog_s = float(watchdog_ms) / 1000.0
        self.task, self.instruction = task, instruction
        self.armed = False
        self.disarm_reason = "not armed yet: reset with arm, or send arm"
        self.last_command: float | None = None
        self.events: list[dict[str, Any]] = []  # watchdog stops and robot errors, with monotonic times
        self.counts = {"requests": 0, "acts": 0, "superseded": 0, "unauthorized": 0, "refused_disarmed": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._socket = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def bind(self) -> int:
        """Create and bind the socket; returns the port."""
        import zmq

        sock = zmq.Context.instance().socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        addr = f"tcp://{'[::1]' if self.host == '::1' else self.host}"
        if self.host == "::1":
            sock.setsockopt(zmq.IPV6, 1)
        try:
            if self.port == 0:
                self.port = sock.bind_to_random_port(addr)
            else:
                sock.bind(f"{addr}:{self.port}")
        except zmq.ZMQError as err:
            sock.close()
            raise OSError(f"cannot bind {addr}:{self.port} ({err}): is another server on that port? pick port=...") from None
        self._socket = sock
        return self.port

    def start(self) -> "RobotServer":
        """Serve in a background thread (tests, benchmarks); returns once the robot is connected."""
        if self._socket is None:
            self.bind()
        self._thread = threading.Thread(target=self.serve_forever, name="robot-server", daemon=True)
        self._thread.start()
        self._ready.wait(120)
        if self._error is not None:
            raise RuntimeError(f"robot server failed to start: {self._error}") from self._error
        return self

    def stop(self) -> None:
        """Ask the serving loop to end (safe from a signal handler); it then runs the driver's stop sequence."""
        self._stop.set()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop serving; the serving thread runs the driver's stop sequence and closes it."""
        self.stop()
        if self._thread is not None:
            self._thread.join(timeout)

    def serve_forever(self) -> None:
        """Connect the robot and answer requests until :meth:`shutdown` or Ctrl-C; always closes
        the robot (its stop sequence) on the way out."""
        import zmq

        if self._socket is None:
            self.bind()
        try:
            self.robot.connect()
        except BaseException as err:  # noqa: BLE001 - reported to start() and re-raised
            self._error = err
            self._ready.set()
            self._socket.close()
            raise
        self._ready.set()
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                timeout_ms = 50.0
                if self.armed and self.last_command is not None:
                    left = self.last_command + self.watchdog_s - time.monotonic()
                    timeout_ms = max(0.0, min(timeout_ms, left * 1000.0))
                if poller.poll(timeout_ms):
                    self._handle_pending()
                self._check_watchdog()
        finally:
            try:
                self.robot.close()
            finally:
                self._socket.close()
                self._socket = None

    # -- requests ----------------------------------------------------------------------------
    def _check_watchdog(self) -> None:
        if not self.armed or self.last_command is None:
            return
        gap = time.monotonic() - self.last_command
        if gap > self.watchdog_s:
            self._halt(f"watchdog: no command for {gap * 1000:.0f} ms (limit {self.watchdog_s * 1000:.0f} ms)")

    def _halt(self, reason: str) -> None:
        """Stop the robot and disarm; recorded in :attr:`events`."""
        t = time.monotonic()
        try:
            self.robot.stop()
        except Exception as err:  # noqa: BLE001 - a failing stop is escalated to close()
            log.error("stop failed (%s): running the full stop sequence", err)
            self.robot.close()
        self.armed = False
        self.disarm_reason = reason
        self.events.append({"event": "stop", "reason": reason, "t": t, "last_command": self.last_command})
        log.warning("robot stopped: %s; a client must re-arm", reason)

    def _handle_pending(self) -> None:
        """Answer every queued request in arrival order; an act runs only if no newer act waits.

        The queue is read again before each act, so acts that arrived while an earlier request (a
        slow homing, say) kept the robot busy supersede it even when they came in a later read.
        """
        import zmq

        queue: list[tuple[bytes, dict]] = []

        def drain() -> None:
            while True:
                try:
                    frames = self._socket.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    return
                ident, body = frames[0], frames[1:]
                try:
                    header, _ = protocol.decode(body)
                except ValueError as err:
                    self._reply(ident, {"seq": None}, code="bad_request", error=str(err))
                    continue
                queue.append((ident, header))

        drain()
        while queue:
            ident, header = queue.pop(0)
            if header.get("op") == "act":
                drain()
                if any(h.get("op") == "act" for _, h in queue):
                    self.counts["superseded"] += 1
                    self._reply(ident, header, code="superseded", error="a newer command arrived; only the newest runs")
                    continue
            self._handle(ident, header)

    def _reply(self, ident: bytes, req: dict, code: str = "ok", error: str = "", obs=None, **results) -> None:
        header = {"v": protocol.VERSION, "seq": req.get("seq"), "ok": code == "ok", "code": code, **results}
        if error:
            header["error"] = error
        self._socket.send_multipart([ident, *protocol.encode(header, obs)])

    def _handle(self, ident: bytes, req: dict) -> None:
        self.counts["requests"] += 1
        if req.get("v") != protocol.VERSION:
            return self._reply(ident, req, "version", f"protocol version {req.get('v')} asked, server speaks {protocol.VERSION}: update the client")
        if self.token is not None and not hmac.compare_digest(str(req.get("token") or ""), self.token):
            self.counts["unauthorized"] += 1
            log.warning("refused a request with a missing or wrong token")
            return self._reply(ident, req, "unauthorized", "missing or wrong token: pass the server's token to the client (token=...)")
        op = req.get("op")
        if op not in protocol.OPS:
            return self._reply(ident, req, "bad_request", f"unknown op {op!r}: one of {protocol.OPS}")
        try:
            getattr(self, f"_op_{op}")(ident, req)
        except ValueError as err:
            self._reply(ident, req, "bad_request", str(err))
        except Exception as err:  # noqa: BLE001 - the robot failed: stop it, tell the client, keep serving
            log.exception("robot error during %s", op)
            self._halt(f"robot error during {op}: {err}")
            self._reply(ident, req, "robot_error", f"{type(err).__name__}: {err}")

    def _observe(self) -> dict:
        obs = self.robot.observe()
        obs.setdefault("t_robot", time.monotonic())
        return obs

    def _signals(self) -> dict | None:
        return {k: float(v) for k, v in self.robot.task_signals().items()} if isinstance(self.robot, GroundTruth) else None

    def _tasks(self) -> dict:
        """What the robot is asked now: its task and instruction (all of them for a `MultiTask` robot)."""
        if isinstance(self.robot, MultiTask):
            i = int(self.robot.task_index)
            return {"task": self.robot.tasks[i], "instruction": self.robot.instructions[i], "task_index": i,
                    "tasks": list(self.robot.tasks), "instructions": list(self.robot.instructions)}
        return {"task": self.task, "instruction": self.instruction}

    def _op_hello(self, ident, req) -> None:
        o, a = self.robot.observation_spec, self.robot.action_spec
        self._reply(
            ident, req, **self._tasks(), ground_truth=isinstance(self.robot, GroundTruth),
            watchdog_ms=self.watchdog_s * 1000.0, armed=self.armed,
            safety={k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.robot.limits).items()},
            observation_spec={"cameras": list(o.cameras), "image_size": list(o.image_size), "proprio_dim": o.proprio_dim,
                              "state_dim": o.state_dim, "proprio_names": list(o.proprio_names)},
            action_spec={"dim": a.dim, "names": list(a.names), "low": a.low, "high": a.high,
                         "ee_step_m": a.ee_step_m, "control_hz": a.control_hz},
        )

    def _op_reset(self, ident, req) -> None:
        seed = req.get("seed")
        obs = self.robot.reset(seed=None if seed is None else int(seed))
        obs.setdefault("t_robot", time.monotonic())
        if req.get("arm"):
            self._arm()
        self._reply(ident, req, obs=obs, signals=self._signals(), armed=self.armed)

    def _arm(self) -> None:
        self.armed, self.disarm_reason = True, ""
        self.last_command = time.monotonic()

    def _op_arm(self, ident, req) -> None:
        self._arm()
        self._reply(ident, req, armed=True)

    def _op_stop(self, ident, req) -> None:
        self._halt(f"stop requested by a client: {req.get('reason', '')}".rstrip(": "))
        self._reply(ident, req, armed=False)

    def _op_observe(self, ident, req) -> None:
        self._reply(ident, req, obs=self._observe(), signals=self._signals())

    def _op_stats(self, ident, req) -> None:
        self._reply(ident, req, safety=self.robot.summary(), counts=self.counts, events=self.events[-20:], armed=self.armed)

    def _op_select_task(self, ident, req) -> None:
        if not isinstance(self.robot, MultiTask):
            raise ValueError(f"this robot serves one task ({self.task}); select_task needs one set up for several "
                             "(e.g. stepwise-robot-server robot=sim_pair)")
        index = req.get("index")
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"select_task: index must be an integer, got {index!r}")
        self.robot.select_task(index)  # raises ValueError naming the served tasks for an index out of range
        self._reply(ident, req, obs=self._observe(), signals=self._signals(), **self._tasks())

    def _op_act(self, ident, req) -> None:
        if not self.armed:
            self.counts["refused_disarmed"] += 1
            return self._reply(ident, req, "disarmed", f"robot is stopped ({self.disarm_reason}); re-arm it (robot.arm(), or reset with arm)")
        action = np.asarray(req.get("action"), dtype=np.float32)
        dim = self.robot.action_spec.dim
        if action.shape != (dim,):
            raise ValueError(f"action has shape {action.shape}, the robot takes ({dim},)")
        self.last_command = time.monotonic()
        self.counts["acts"] += 1
        applied = self.robot.send_action(action)
        obs = self._observe()
        target = self.robot.last_target
        self._reply(ident, req, obs=obs, applied=np.asarray(applied, np.float32).tolist(),
                    events=list(self.robot.last_events), signals=self._signals(),
                    target=None if target is None else target.tolist())


def build_robot(robot_cfg: dict, task: str | None = None) -> tuple[Robot, dict]:
    """A driver and its safety block from a ``configs/robot/<name>.yaml`` mapping.

    The ``sim`` driver gets ``task``; ``sim_pair`` names its two tasks by its ``pair``; other drivers
    ignore it. Returns ``(driver, safety)``.
    """
    from real.env import make_robot

    cfg = dict(robot_cfg)
    driver = cfg.pop("driver", None)
    if driver is None:
        raise ValueError("robot config has no `driver` key (see configs/robot/)")
    safety = cfg.pop("safety", None)
    if safety is None:
        raise ValueError(f"robot config for {driver!r} has no safety block: every robot needs one (see configs/robot/{driver}.yaml)")
    if driver == "sim":
        if not task:
            raise ValueError("robot=sim needs task=<name> (e.g. task=metaworld/drawer-open)")
        cfg["task"] = task
    return make_robot(driver, **cfg), safety


def main() -> None:
    """Console entry point (Hydra): ``stepwise-robot-server robot=sim task=metaworld/drawer-open``."""
    from configs.entry import hydra_job
    from sim.tasks import UnknownTaskError

    hydra_job("stepwise-robot-server", "robot_server", _job, errors=(ValueError, OSError, UnknownTaskError, ImportError))


def _job(cfg, run_dir) -> str:
    """Build the driver and its safety layer, serve until Ctrl-C or SIGTERM, return the closing line."""
    import signal

    from omegaconf import OmegaConf

    robot_cfg = OmegaConf.to_container(cfg.robot, resolve=True)
    if robot_cfg.get("driver") == "remote":
        raise ValueError("robot=remote would serve a server; pick a driver (sim, ur, xarm, ...)")
    robot, safety = build_robot(robot_cfg, cfg.task)
    instruction = getattr(robot, "instruction", "") or ""
    server = RobotServer(robot, safety, host=cfg.host, port=int(cfg.port), token=cfg.token,
                         watchdog_ms=float(cfg.watchdog_ms), allow_remote=bool(cfg.allow_remote),
                         task=getattr(robot, "task_name", None) or cfg.task, instruction=instruction)
    server.bind()
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    print(f"stepwise-robot-server: {robot_cfg['driver']} on tcp://{cfg.host}:{server.port}, watchdog "
          f"{cfg.watchdog_ms:.0f} ms{', token required' if cfg.token else ''}; Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return (f"stepwise-robot-server: stopped. safety {server.robot.summary()}, counts {server.counts}, "
            f"{len(server.events)} stop events")


if __name__ == "__main__":
    main()
