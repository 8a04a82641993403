"""`stepwise-robot-server`: serve any `Robot` driver over a zmq socket, behind the safety layer and a
watchdog.

    stepwise-robot-server robot=sim task=metaworld/drawer-open        # 127.0.0.1:5555, plain (loopback)
    stepwise-robot-server keys init --dir keys --client laptop        # CurveZMQ keys (real.keys)
    stepwise-robot-server robot=ur robot.host=192.168.1.10 host=0.0.0.0 allow_remote=true keys=keys

One thread owns the robot (a simulator's GL context and most vendor SDKs are bound to the thread
that opened them) and answers requests in order (see ``real.protocol``). Commands that queued up
while the robot was busy are not replayed: only the newest ``act`` runs, older ones are answered
``superseded``. Every command passes :class:`real.safety.SafeRobot` here, on the robot side, so no
client can send an unfiltered command.

Serving beyond loopback needs ``allow_remote=true`` AND CurveZMQ keys (``keys=<dir>``): the link is
encrypted and only clients whose public key is in ``<dir>/allowed`` get through (``real.link``); the
shared token travels in clear text and is a loopback convenience only. Every request is bounded and
checked against its op's schema before anything acts on it (``real.protocol.check_request``).

Watchdog: it measures the link to the client that armed the robot (the controller). Each of its
valid, authenticated requests feeds it when it is read (and again when the server has answered it:
a client waiting for a slow reply is not silent); other clients' requests never do; while
armed, a gap of more than ``watchdog_ms`` makes the server call the driver's ``stop()`` (hold
position) and disarm; ``act`` is refused with code ``disarmed`` until a client re-arms explicitly
(``arm``, or a ``reset`` with ``arm``). A flood of commands feeds it too, so its newest command
still runs. The default is ``watchdog_periods`` (3) control periods of the driver's
``action_spec.control_hz``, at least ``watchdog_min_ms`` (100): 150 ms for a 20 Hz arm. A lost
client therefore stops the robot within ``watchdog_ms`` plus one poll.
"""

from __future__ import annotations

import hmac
import logging
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from real import protocol
from real.env import build_robot  # noqa: F401 - stepwise-deploy and tests import it from here
from real.link import Link, bind_link
from real.robot import Robot
from real.safety import SafeRobot, SafetyLimits
from real.server_ops import ServedOps

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class RobotServer(ServedOps):
    """Serves one driver to any number of clients (one robot: their commands interleave).

    Args:
        robot: the driver (not yet connected is fine: it connects in the serving thread).
        safety: the robot's limits (every command passes them).
        host: interface to bind; anything but loopback needs ``allow_remote``.
        port: TCP port (0: a free one, see :attr:`port` after :meth:`bind`).
        token: shared secret clients must present (``None``: none asked); loopback convenience: it
            travels in clear text.
        watchdog_ms: the longest gap between valid requests while armed (``None``: ``watchdog_periods``
            control periods of the driver, at least ``watchdog_min_ms``).
        allow_remote: permit binding to a non-loopback interface (needs ``keys``; prints a warning).
        keys: a key directory made by ``stepwise-robot-server keys init`` (``real.keys``): CurveZMQ on,
            only the public keys in ``<keys>/allowed`` admitted. Required beyond loopback.
        task / instruction: what the robot is set up for, told to clients in ``hello``.
        max_request_bytes: the largest request (one JSON frame); larger frames disconnect the peer.
        hwm: messages queued per peer each way before libzmq pushes back (receive) or drops (send).
    """

    def __init__(
        self,
        robot: Robot,
        safety: SafetyLimits | dict,
        host: str = "127.0.0.1",
        port: int = 5555,
        token: str | None = None,
        watchdog_ms: float | None = None,
        allow_remote: bool = False,
        task: str | None = None,
        instruction: str = "",
        keys: str | Path | None = None,
        watchdog_periods: float = 3.0,
        watchdog_min_ms: float = 100.0,
        max_request_bytes: int = 16384,
        hwm: int = 64,
    ) -> None:
        if host not in LOOPBACK and not allow_remote:
            raise ValueError(
                f"host={host!r} would expose the robot beyond this machine: bind 127.0.0.1, or pass "
                "allow_remote=true with keys=<dir> (CurveZMQ) to accept clients from the network"
            )
        if host not in LOOPBACK and keys is None:
            raise ValueError(
                f"host={host!r} with allow_remote=true needs CurveZMQ keys (a token and every image and command would "
                "travel in clear text): run `stepwise-robot-server keys init --dir keys`, then pass keys=keys"
            )
        if not 0 <= int(port) < 65536:
            raise ValueError(f"port must be in 0..65535, got {port}")
        for name, value in (("max_request_bytes", max_request_bytes), ("hwm", hwm)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.robot = SafeRobot(robot, safety)
        self.watchdog_s = self._watchdog_seconds(watchdog_ms, watchdog_periods, watchdog_min_ms)
        if host not in LOOPBACK:
            print(f"stepwise-robot-server: WARNING: binding {host}: every client whose key is in {Path(keys) / 'allowed'} "
                  "can move this robot", file=sys.stderr)
        self.host, self.port = host, int(port)
        self.token = None if token is None else str(token)  # token=1234 on the command line arrives as an int
        self.keys = None if keys is None else Path(keys)
        self.max_request_bytes, self.hwm = int(max_request_bytes), int(hwm)
        self.task, self.instruction = task, instruction
        self.armed = False
        self.disarm_reason = "not armed yet: reset with arm, or send arm"
        self.last_request: float | None = None  # monotonic time of the controller's last valid, authenticated request
        self.controller: bytes | None = None  # the connection that armed the robot: its requests feed the watchdog
        self.events: list[dict[str, Any]] = []  # watchdog stops and robot errors, with monotonic times
        self.counts = {"requests": 0, "acts": 0, "superseded": 0, "unauthorized": 0, "refused_disarmed": 0,
                       "bad_request": 0, "version": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._link: Link | None = None
        self._socket = None
        self._queued_acts = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _watchdog_seconds(self, watchdog_ms, periods, min_ms) -> float:
        """``watchdog_ms`` checked, or ``periods`` control periods of the driver (at least ``min_ms``)."""
        if watchdog_ms is None:
            for name, value in (("watchdog_periods", periods), ("watchdog_min_ms", min_ms)):
                if not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
                    raise ValueError(f"{name} must be a positive number, got {value!r}")
            hz = self.robot.action_spec.control_hz
            if not hz:
                raise ValueError("the driver reports no action_spec.control_hz to derive the watchdog from: pass watchdog_ms=...")
            watchdog_ms = max(float(min_ms), 1000.0 * float(periods) / float(hz))
        if isinstance(watchdog_ms, bool) or not isinstance(watchdog_ms, (int, float)) or not np.isfinite(watchdog_ms) or watchdog_ms <= 0:
            raise ValueError(f"watchdog_ms must be a positive number of milliseconds, got {watchdog_ms}")
        return float(watchdog_ms) / 1000.0

    @property
    def handshakes(self) -> dict[str, int]:
        """Failed handshakes and refused client keys on this server's socket (CURVE)."""
        link = self._link
        return {"failed": link.handshake_failed, "denied_keys": link.denied} if link else {"failed": 0, "denied_keys": 0}

    # -- lifecycle -------------------------------------------------------------------------
    def bind(self) -> int:
        """Create and bind the socket (CURVE when ``keys`` is set, bounded input); returns the port."""
        self._link, self.port = bind_link(self.host, self.port, self.keys, self.max_request_bytes, self.hwm)
        self._socket = self._link.socket
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
            self._close_link()
            raise
        self._ready.set()
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._link.monitor, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                timeout_ms = 50.0
                if self.armed and self.last_request is not None:
                    left = self.last_request + self.watchdog_s - time.monotonic()
                    timeout_ms = max(0.0, min(timeout_ms, left * 1000.0))
                ready = dict(poller.poll(timeout_ms))
                if self._link.monitor in ready:
                    self._link.read_monitor()
                if self._socket in ready:
                    self._handle_pending()
                self._check_watchdog()
        finally:
            try:
                self.robot.close()
            finally:
                self._close_link()

    def _close_link(self) -> None:
        if self._link is not None:
            self._link.close()
        self._link = self._socket = None

    # -- requests ----------------------------------------------------------------------------
    def _feed(self, ident: bytes) -> None:
        """A valid, authenticated request was read or answered: if it came from the client that armed
        the robot, its link is alive (a dashboard polling ``stats`` keeps no dead controller's robot moving)."""
        if ident == self.controller:
            self.last_request = time.monotonic()

    def _check_watchdog(self) -> None:
        if not self.armed or self.last_request is None:
            return
        gap = time.monotonic() - self.last_request
        if gap > self.watchdog_s:
            self._halt(f"watchdog: no valid request for {gap * 1000:.0f} ms (limit {self.watchdog_s * 1000:.0f} ms)")

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
        self.events.append({"event": "stop", "reason": reason, "t": t, "last_request": self.last_request})
        log.warning("robot stopped: %s; a client must re-arm", reason)

    def _handle_pending(self) -> None:
        """Answer every queued request in arrival order; an act runs only if no newer act waits.

        The queue is read again before each act, so acts that arrived while an earlier request (a
        slow homing, say) kept the robot busy supersede it even when they came in a later read.
        Reading and answering each valid request feed the watchdog (a backlog of them is a live link,
        not a silent one); it is checked between requests, and each read takes a bounded number of
        messages, so a flood of refused requests cannot hold it off.
        """
        queue: deque[tuple[bytes, dict]] = deque()
        self._queued_acts = 0
        self._drain(queue)
        while queue:
            self._check_watchdog()
            ident, header = queue.popleft()
            if header["op"] == "act":
                self._queued_acts -= 1
                self._drain(queue)
                if self._queued_acts > 0:
                    self.counts["superseded"] += 1
                    self._reply(ident, header, code="superseded", error="a newer command arrived; only the newest runs")
                    self._feed(ident)
                    continue
            self._handle(ident, header)
            self._feed(ident)  # answered: the client could not have sent the next request before now

    def _drain(self, queue: deque, most: int = 1000) -> None:
        """Read the requests waiting on the socket (at most ``most``); admitted ones join ``queue``,
        others are answered."""
        import zmq

        for _ in range(most):
            try:
                ident = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            body: list[bytes] = []
            while self._socket.get(zmq.RCVMORE):  # a request is one frame: extra frames are counted, not copied
                frame = self._socket.recv(copy=False)
                body.append(frame.bytes if not body else b"")
            header = self._admit(ident, body)
            if header is not None:
                queue.append((ident, header))
                self._queued_acts += header["op"] == "act"

    def _admit(self, ident: bytes, body: list[bytes]) -> dict | None:
        """A request that is well formed, of this protocol version, authenticated and true to its op's
        schema (returned, and the watchdog fed); anything else is answered with its code (None)."""
        self.counts["requests"] += 1
        try:
            header = protocol.decode_request(body, self.max_request_bytes)
        except ValueError as err:
            self.counts["bad_request"] += 1
            self._reply(ident, {"seq": None}, "bad_request", str(err))
            return None
        try:
            seq = protocol.check_seq(header)
        except ValueError as err:
            self.counts["bad_request"] += 1
            self._reply(ident, {"seq": None}, "bad_request", str(err))
            return None
        req = {"seq": seq}
        if header.get("v") != protocol.VERSION:
            self.counts["version"] += 1
            self._reply(ident, req, "version", f"protocol version {str(header.get('v'))[:20]} asked, server speaks "
                        f"{protocol.VERSION}: update the client")
            return None
        token = header.get("token")
        if self.token is not None and not (isinstance(token, str) and hmac.compare_digest(token.encode(), self.token.encode())):
            self.counts["unauthorized"] += 1
            log.warning("refused a request with a missing or wrong token")
            self._reply(ident, req, "unauthorized", "missing or wrong token: pass the server's token to the client (token=...)")
            return None
        try:
            header = protocol.check_request(header, self.robot.action_spec.dim)
        except Exception as err:  # noqa: BLE001 - ValueError by design; anything else is a schema bug, still refused
            if not isinstance(err, ValueError):
                log.exception("request check failed unexpectedly")
            self.counts["bad_request"] += 1
            self._reply(ident, req, "bad_request", str(err)[:300])
            return None
        self._feed(ident)
        return header

    def _reply(self, ident: bytes, req: dict, code: str = "ok", error: str = "", obs=None, **results) -> None:
        header = {"v": protocol.VERSION, "seq": req.get("seq"), "ok": code == "ok", "code": code, **results}
        if error:
            header["error"] = error
        self._socket.send_multipart([ident, *protocol.encode(header, obs)])

    def _handle(self, ident: bytes, req: dict) -> None:
        """Run an admitted request (see :meth:`_admit`) and answer it."""
        op = req["op"]
        try:
            getattr(self, f"_op_{op}")(ident, req)
        except ValueError as err:
            self._reply(ident, req, "bad_request", str(err))
        except Exception as err:  # noqa: BLE001 - the robot failed: stop it, tell the client, keep serving
            log.exception("robot error during %s", op)
            self._halt(f"robot error during {op}: {err}")
            self._reply(ident, req, "robot_error", f"{type(err).__name__}: {err}")


def main() -> None:
    """Console entry point (Hydra): ``stepwise-robot-server robot=sim task=metaworld/drawer-open``;
    ``stepwise-robot-server keys init|add-client --dir DIR`` makes CurveZMQ keys (``real.keys``)."""
    if len(sys.argv) > 1 and sys.argv[1] == "keys":
        from real.keys import keys_cli

        sys.exit(keys_cli(sys.argv[2:]))
    from configs.entry import hydra_job
    from sim.tasks import UnknownTaskError

    hydra_job("stepwise-robot-server", "robot_server", _job, errors=(ValueError, OSError, UnknownTaskError, ImportError))  # real.keys.KeyFileError is a ValueError


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
                         watchdog_ms=None if cfg.watchdog_ms is None else float(cfg.watchdog_ms),
                         watchdog_periods=float(cfg.watchdog_periods), watchdog_min_ms=float(cfg.watchdog_min_ms),
                         allow_remote=bool(cfg.allow_remote), keys=cfg["keys"], max_request_bytes=int(cfg.max_request_bytes),
                         hwm=int(cfg.hwm), task=getattr(robot, "task_name", None) or cfg.task, instruction=instruction)
    server.bind()
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    print(f"stepwise-robot-server: {robot_cfg['driver']} on tcp://{cfg.host}:{server.port}, watchdog "
          f"{server.watchdog_s * 1000:.0f} ms, {'CurveZMQ (allow-list ' + str(server.keys / 'allowed') + ')' if server.keys else 'plain'}"
          f"{', token required' if cfg.token else ''}; Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return (f"stepwise-robot-server: stopped. safety {server.robot.summary()}, counts {server.counts}, "
            f"{len(server.events)} stop events")


if __name__ == "__main__":
    main()
