"""`robot=remote`: a `Robot` driver that talks to a `stepwise-robot-server` (see ``real.server``).

The learner and the deploy loop use it like any local driver; the server applies the safety layer
and the watchdog on the robot side. Each request waits at most ``timeout_ms`` (``reset``: homing is
slow, ``reset_timeout_ms``): a lost server raises :class:`RobotLinkError` naming the address, never
hangs. Replies are matched to requests by sequence number, so a late reply to a timed-out request
is dropped, not mistaken for the answer to the next one.

A server with CurveZMQ on (``keys=...``, required beyond loopback) needs ``server_key`` (its public
``server.key``) and ``client_key`` (this client's ``.key_secret``, whose public half is in the
server's allow-list); a refused key or a missing one fails the handshake, which this client reports
at once with the fix instead of waiting out the timeout.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from real import protocol
from real.robot import ActionSpec, Observation, ObservationSpec


class RobotLinkError(ConnectionError):
    """The robot server did not answer, or refused the request."""


class RobotStopped(RuntimeError):
    """The server stopped the robot (watchdog, a stop request, a robot error): re-arm to go on."""


class RemoteRobot:
    """A robot behind a ``stepwise-robot-server``.

    Args:
        host / port: the server's address.
        token: the server's shared token, when it asks for one.
        timeout_ms: the longest wait for an answer (a lost server raises after it).
        reset_timeout_ms: the same for ``reset`` (homing on hardware takes seconds).
        task: the task this client expects; a server set up for another task is refused.
        server_key: the server's public key file (``server.key``): CurveZMQ on.
        client_key: this client's secret key file (``<name>.key_secret``, mode 0600), admitted by the
            server's allow-list.
        max_reply_bytes: the largest reply frame accepted (an image is H*W*3 bytes).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 5555,
        token: str | None = None,
        timeout_ms: float = 2000.0,
        reset_timeout_ms: float = 60000.0,
        task: str | None = None,
        server_key: str | None = None,
        client_key: str | None = None,
        max_reply_bytes: int = 256 * 2**20,
    ) -> None:
        if not 0 < int(port) < 65536:
            raise ValueError(f"port must be in 1..65535, got {port}")
        if timeout_ms <= 0 or reset_timeout_ms <= 0:
            raise ValueError("timeout_ms and reset_timeout_ms must be positive")
        if (server_key is None) != (client_key is None):
            raise ValueError("CurveZMQ needs both robot.server_key (the server's server.key) and robot.client_key "
                             "(this client's .key_secret): pass both, or neither for a plain loopback server")
        self.curve = None
        if server_key is not None:
            from real.keys import load_public, load_secret

            self.curve = (load_public(server_key), *load_secret(client_key))
        self.client_key = client_key
        self.max_reply_bytes = int(max_reply_bytes)
        self.host, self.port = host, int(port)
        self.token = None if token is None else str(token)  # token=1234 on the command line arrives as an int
        self.timeout_ms, self.reset_timeout_ms = float(timeout_ms), float(reset_timeout_ms)
        self.expected_task = task
        self.address = f"tcp://{host}:{self.port}"
        self._seq = itertools.count(1)
        self._sock = None
        self._monitor = None
        self._hello: dict[str, Any] | None = None
        self._obs: Observation | None = None  # from the last act/reset, handed out once by observe()
        self._signals: dict[str, float] | None = None
        self.last_events: list[str] = []
        self.last_target: list[float] | None = None

    # -- transport ---------------------------------------------------------------------------
    def _open(self) -> None:
        import zmq

        self._sock = zmq.Context.instance().socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, self.max_reply_bytes)
        if self.curve is not None:
            server_public, public, secret = self.curve
            self._sock.curve_serverkey, self._sock.curve_publickey, self._sock.curve_secretkey = server_public, public, secret
        self._monitor = self._sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        self._sock.connect(self.address)

    def _drop(self) -> None:
        """Close the socket (dropping queued requests and late replies with it) and its monitor."""
        if self._sock is not None:
            try:
                self._sock.disable_monitor()
            except Exception:  # noqa: BLE001 - closing anyway
                pass
            self._monitor.close(0)
            self._sock.close(0)
        self._sock = self._monitor = None

    def _handshake_error(self) -> RobotLinkError | None:
        """The link error a failed handshake reported (None when none did)."""
        import zmq
        from zmq.utils.monitor import recv_monitor_message

        try:
            event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
        except zmq.Again:
            return None
        if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            why = (f"it refused this client's key ({self.client_key}): add the matching .key to the server's allowed/ "
                   "directory (stepwise-robot-server keys add-client) and restart it")
        elif self.curve is None:
            why = ("it asks for CurveZMQ keys: pass robot.server_key=<the server's server.key> and "
                   "robot.client_key=<this client's .key_secret>")
        else:
            why = ("the keys do not match: robot.server_key must be this server's server.key, or the server is plain "
                   "(serve with keys=<dir>, or drop the keys here)")
        return RobotLinkError(f"handshake with the robot server {self.address} failed: {why}")

    def _await(self, event: int, deadline: float, timeout_msg: str) -> None:
        """Until the socket is ready for ``event`` (zmq.POLLOUT / POLLIN): a failed handshake reported
        by the monitor, or the deadline, drops the socket and raises the link error that says why."""
        import zmq

        poller = zmq.Poller()
        poller.register(self._sock, event)
        poller.register(self._monitor, zmq.POLLIN)
        while True:
            left = deadline - _now_ms()
            ready = dict(poller.poll(left)) if left > 0 else {}
            if self._monitor in ready:
                err = self._handshake_error()
                if err is not None:
                    self._drop()
                    raise err
            if self._sock in ready:
                return
            if not ready:
                self._drop()
                raise RobotLinkError(timeout_msg)

    def _call(self, op: str, timeout_ms: float | None = None, **args: Any) -> tuple[dict, Observation | None]:
        import zmq

        if self._sock is None:
            self._open()
        seq = next(self._seq)
        wait = self.timeout_ms if timeout_ms is None else timeout_ms
        deadline = _now_ms() + wait
        frames = protocol.encode({"v": protocol.VERSION, "op": op, "seq": seq, "token": self.token, **args})
        while True:  # queued without blocking: a DEALER holds a send until a handshake completes, and a refused one never does
            try:
                self._sock.send_multipart(frames, zmq.NOBLOCK)
                break
            except zmq.Again:
                self._await(zmq.POLLOUT, deadline, f"robot server {self.address} took no {op!r} request within "
                            f"{wait:.0f} ms: is `stepwise-robot-server` running there and reachable?")
        while True:
            self._await(zmq.POLLIN, deadline, f"robot server {self.address} did not answer {op!r} within {wait:.0f} ms: "
                        "is `stepwise-robot-server` running there and reachable? (the server's watchdog stops the "
                        "robot when this client goes silent)")
            header, obs = protocol.decode(self._sock.recv_multipart())
            if header.get("seq") == seq:
                break  # replies to earlier, timed-out requests are dropped
        code = header.get("code", "ok")
        if code == "ok":
            return header, obs
        msg = f"robot server {self.address} refused {op!r}: {header.get('error', code)}"
        if code == "disarmed":
            raise RobotStopped(msg)
        if code in ("unauthorized", "version"):
            raise RobotLinkError(msg)
        if code == "bad_request":
            raise ValueError(msg)
        raise RuntimeError(msg)

    # -- the Robot contract ------------------------------------------------------------------
    def connect(self) -> None:
        """Say hello: fetch the specs (idempotent); refuse a server set up for another task."""
        if self._hello is not None:
            return
        header, _ = self._call("hello")
        if self.expected_task and header.get("task") and header["task"] != self.expected_task:
            raise ValueError(
                f"the robot server at {self.address} runs task {header['task']!r}, not {self.expected_task!r}: "
                f"start it with task={self.expected_task} or ask for its task"
            )
        self._hello = header

    @property
    def server_info(self) -> dict[str, Any]:
        """The server's hello: task, instruction, ground_truth, watchdog_ms, specs."""
        self.connect()
        return self._hello

    @property
    def task_name(self) -> str | None:
        """The task the server's robot is set up for."""
        return self.server_info.get("task")

    @property
    def instruction(self) -> str:
        """The task's instruction, from the server."""
        return self.server_info.get("instruction", "")

    @property
    def observation_spec(self) -> ObservationSpec:
        """The served robot's observation spec."""
        o = self.server_info["observation_spec"]
        return ObservationSpec(cameras=tuple(o["cameras"]), image_size=tuple(o["image_size"]), proprio_dim=int(o["proprio_dim"]),
                               state_dim=o["state_dim"], proprio_names=tuple(o["proprio_names"]))

    @property
    def action_spec(self) -> ActionSpec:
        """The served robot's action spec."""
        a = self.server_info["action_spec"]
        return ActionSpec(dim=int(a["dim"]), names=tuple(a["names"]), low=a["low"], high=a["high"],
                          ee_step_m=a["ee_step_m"], control_hz=a["control_hz"])

    @property
    def tasks(self) -> tuple[str, ...]:
        """Every task the served robot is set up for (one unless it serves a task pair)."""
        info = self.server_info
        return tuple(info.get("tasks") or [info.get("task")])

    @property
    def instructions(self) -> tuple[str, ...]:
        """Each served task's instruction."""
        info = self.server_info
        return tuple(info.get("instructions") or [info.get("instruction", "")])

    @property
    def task_index(self) -> int:
        """The task the served robot is asked now (0 for a single-task robot)."""
        return int(self.server_info.get("task_index", 0))

    def select_task(self, index: int) -> None:
        """Ask the served robot for task ``index`` without a reset (`real.robot.MultiTask`); a robot that
        serves one task refuses (ValueError naming the fix)."""
        header, obs = self._call("select_task", index=int(index))
        self._obs, self._signals = obs, header.get("signals")
        self._hello = {**self.server_info, **{k: header[k] for k in ("task", "instruction", "task_index") if k in header}}

    def reset(self, seed: int | None = None) -> Observation:
        """Reset (homing on hardware) and re-arm the server: a new episode is an explicit start."""
        self.connect()
        header, obs = self._call("reset", timeout_ms=self.reset_timeout_ms, seed=seed, arm=True)
        self._signals = header.get("signals")
        self._obs = None
        return obs

    def arm(self) -> None:
        """Allow motion again after the server stopped the robot."""
        self._call("arm")

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Send the action; returns what the robot applied after the server's safety layer.

        Raises :class:`RobotStopped` when the server has stopped the robot (re-arm first).
        """
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        header, obs = self._call("act", action=[float(x) for x in a])
        self._obs, self._signals = obs, header.get("signals")
        self.last_events = header.get("events", [])
        self.last_target = header.get("target")  # the end-effector target the server's safety layer let through
        return np.asarray(header["applied"], np.float32)

    def observe(self) -> Observation:
        """The observation taken right after the last action (carries the robot-side ``t_robot``),
        or a fresh one."""
        if self._obs is not None:
            obs, self._obs = self._obs, None
            return obs
        header, obs = self._call("observe")
        self._signals = header.get("signals")
        return obs

    def stop(self) -> None:
        """Ask the server to stop the robot now (it disarms)."""
        self._call("stop", reason="client stop")

    def stats(self) -> dict[str, Any]:
        """The server's safety counts, request counts and recent stop events."""
        header, _ = self._call("stats")
        return {k: header[k] for k in ("safety", "counts", "events", "armed")}

    def close(self) -> None:
        """Ask the server to stop the robot (best effort) and close the socket. Idempotent."""
        if self._sock is not None:
            try:
                self._call("stop", timeout_ms=500, reason="client closed")
            except (RobotLinkError, RuntimeError):
                pass
            self._drop()


class RemoteSimRobot(RemoteRobot):
    """A remote robot whose server knows the task outcome (a simulator): adds ``task_signals``."""

    def task_signals(self) -> dict[str, float]:
        """Success and simulator signals reported with the last action (or reset)."""
        if self._signals is None:
            header, _ = self._call("observe")
            self._signals = header.get("signals")
        return dict(self._signals)


def remote_robot(**kwargs: Any) -> RemoteRobot:
    """Connect to a server and return the right client class: :class:`RemoteSimRobot` when the
    served robot reports ground truth, else :class:`RemoteRobot` (``robot=remote`` in ``DRIVERS``)."""
    probe = RemoteRobot(**kwargs)
    probe.connect()
    robot = RemoteSimRobot(**kwargs) if probe.server_info.get("ground_truth") else probe
    if robot is not probe:
        robot._sock, robot._monitor, robot._hello, robot._seq = probe._sock, probe._monitor, probe._hello, probe._seq
    return robot


def _now_ms() -> float:
    import time

    return time.monotonic() * 1000.0
