"""CurveZMQ on the robot link, over loopback: keys made with safe permissions, only allow-listed
client keys get through, and what crosses the wire is encrypted (seen through a recording TCP relay)."""

import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from real.keys import KeyFileError, init_keys, load_secret, make_pair
from real.remote import RobotLinkError, remote_robot
from real.server import RobotServer
from real.sim_driver import SimRobot

TASK = "metaworld/drawer-open"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("curve") / "keys"
    init_keys(folder, ["laptop"])
    make_pair(folder.parent / "stranger", "stranger")  # a valid pair whose public key is NOT in allowed/
    return folder


@pytest.fixture(scope="module")
def curve_server(keys):
    srv = RobotServer(SimRobot(TASK, cameras=[]), SimRobot.DEFAULT_SAFETY, port=0, task=TASK, keys=keys).start()
    yield srv
    srv.shutdown()


def test_keys_are_made_with_safe_permissions_and_never_overwritten(keys, tmp_path):
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(keys) == 0o700
    assert mode(keys / "server.key_secret") == 0o600 and mode(keys / "clients" / "laptop.key_secret") == 0o600
    assert mode(keys / "server.key") == 0o644
    assert (keys / "allowed" / "laptop.key").read_bytes() == (keys / "clients" / "laptop.key").read_bytes()
    public, secret = load_secret(keys / "clients" / "laptop.key_secret")
    assert len(public) == len(secret) == 40  # z85 of 32-byte keys
    with pytest.raises(KeyFileError, match="already holds a server key"):
        init_keys(keys)
    # a secret others can read is refused, with the fix
    loose = tmp_path / "loose.key_secret"
    loose.write_bytes((keys / "clients" / "laptop.key_secret").read_bytes())
    os.chmod(loose, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_secret(loose)
    with pytest.raises(KeyFileError, match="lists no client keys"):
        RobotServer(SimRobot(TASK, cameras=[]), SimRobot.DEFAULT_SAFETY, port=0, keys=_empty_allow_list(tmp_path, keys)).bind()


def _empty_allow_list(tmp_path, keys):
    folder = tmp_path / "empty"
    (folder / "allowed").mkdir(parents=True)
    (folder / "server.key_secret").write_bytes((keys / "server.key_secret").read_bytes())
    os.chmod(folder / "server.key_secret", 0o600)
    return folder


def test_keys_cli_makes_a_usable_directory(tmp_path):
    exe = str(Path(sys.executable).parent / "stepwise-robot-server")
    r = subprocess.run([exe, "keys", "init", "--dir", str(tmp_path / "k"), "--client", "a"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert f"robot.client_key={tmp_path / 'k' / 'clients' / 'a.key_secret'}" in r.stdout
    r = subprocess.run([exe, "keys", "add-client", "--dir", str(tmp_path / "k"), "--client", "b"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and sorted(p.name for p in (tmp_path / "k" / "allowed").iterdir()) == ["a.key", "b.key"]
    r = subprocess.run([exe, "keys", "init", "--dir", str(tmp_path / "k")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "add-client" in r.stdout


def test_the_listed_key_drives_the_robot(curve_server, keys):
    robot = remote_robot(port=curve_server.port, server_key=str(keys / "server.key"),
                         client_key=str(keys / "clients" / "laptop.key_secret"))
    try:
        assert robot.server_info["curve"] is True and robot.task_name == TASK
        robot.reset(seed=0)
        applied = robot.send_action(np.array([0.5, 0, 0, 0], np.float32))
        assert applied[0] == pytest.approx(0.5)
    finally:
        robot.close()


def test_an_unlisted_key_is_refused_at_the_handshake(curve_server, keys):
    denied = curve_server.handshakes["denied_keys"]
    acts = curve_server.counts["acts"]
    t0 = time.monotonic()
    with pytest.raises(RobotLinkError, match="refused this client's key"):
        remote_robot(port=curve_server.port, server_key=str(keys / "server.key"),
                     client_key=str(keys.parent / "stranger" / "stranger.key_secret"), timeout_ms=5000)
    assert time.monotonic() - t0 < 4.0  # reported from the handshake, not from the timeout
    assert curve_server.handshakes["denied_keys"] > denied
    assert curve_server.counts["acts"] == acts


def test_a_client_without_keys_is_refused_with_the_fix(curve_server):
    requests = curve_server.counts["requests"]
    with pytest.raises(RobotLinkError, match="asks for CurveZMQ keys"):
        remote_robot(port=curve_server.port, timeout_ms=5000)
    assert curve_server.counts["requests"] == requests  # nothing reached the request loop
    with pytest.raises(ValueError, match="both robot.server_key"):
        remote_robot(port=curve_server.port, client_key="x")


def test_a_wrong_server_key_fails(curve_server, keys):
    with pytest.raises(RobotLinkError, match="handshake|did not answer"):
        remote_robot(port=curve_server.port, server_key=str(keys.parent / "stranger" / "stranger.key"),
                     client_key=str(keys / "clients" / "laptop.key_secret"), timeout_ms=1500)


class Relay:
    """A TCP relay on loopback that records every byte it forwards (what a sniffer on the lab network sees)."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.seen = bytearray()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.listener.settimeout(10)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        upstream = socket.create_connection(("127.0.0.1", self.target))
        for a, b in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src, dst):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.seen += data
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self):
        self.listener.close()


@pytest.mark.parametrize("curve", [False, True])
def test_what_crosses_the_wire_is_encrypted_only_with_curve(curve, curve_server, keys):
    srv = curve_server if curve else RobotServer(SimRobot(TASK, cameras=[]), SimRobot.DEFAULT_SAFETY, port=0, task=TASK).start()
    relay = Relay(srv.port)
    kwargs = dict(server_key=str(keys / "server.key"), client_key=str(keys / "clients" / "laptop.key_secret")) if curve else {}
    robot = remote_robot(port=relay.port, token="TOKEN-IN-CLEAR", **kwargs)
    try:
        robot.reset(seed=0)
        robot.stop()
        assert robot.task_name == TASK
    finally:
        robot.close()
        relay.close()
        if not curve:
            srv.shutdown()
    assert len(relay.seen) > 1000
    assert (b"TOKEN-IN-CLEAR" in relay.seen) is not curve
    assert (b'"op": "reset"' in relay.seen) is not curve


def test_server_cli_serves_with_keys(keys, tmp_path):
    """`stepwise-robot-server keys=DIR` (the CLI path, on loopback): CURVE on, the listed client acts
    through make_env with robot.server_key / robot.client_key, a client without keys is refused."""
    import signal

    from real import make_env

    port = 5793
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "stepwise-robot-server"), "robot=sim", f"task={TASK}", f"port={port}",
         "robot.cameras=[corner]", "robot.image_size=32", f"keys={keys}", f"hydra.run.dir={tmp_path}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env={**os.environ, "MUJOCO_GL": "egl"})
    try:
        lines = [proc.stdout.readline()]
        while "tcp://" not in lines[-1] and lines[-1] and len(lines) < 30:
            lines.append(proc.stdout.readline())
        assert "CurveZMQ" in lines[-1], lines
        env = make_env(TASK, robot="remote", port=port, cameras=["corner"], image_size=32, max_episode_steps=3, timeout_ms=10000,
                       server_key=str(keys / "server.key"), client_key=str(keys / "clients" / "laptop.key_secret"))
        obs, _ = env.reset(seed=0)
        assert obs["images"]["corner"].shape == (32, 32, 3)
        env.step(np.zeros(4, np.float32))
        env.close()
        with pytest.raises(RobotLinkError, match="asks for CurveZMQ keys"):
            remote_robot(port=port, timeout_ms=5000)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
