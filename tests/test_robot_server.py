"""The robot server and the remote driver, on loopback with the real simulator behind the server."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from real import make_env
from real.remote import RemoteRobot, RobotLinkError, RobotStopped, remote_robot
from real.server import RobotServer
from real.sim_driver import SimRobot

TASK = "metaworld/drawer-open"
ROOT = Path(__file__).resolve().parent.parent


def sim_server(cameras=("corner",), image_size=48, **kwargs) -> RobotServer:
    robot = SimRobot(TASK, cameras=list(cameras), image_size=image_size, split="train")
    return RobotServer(robot, SimRobot.DEFAULT_SAFETY, port=0, task=TASK, **kwargs).start()


@pytest.fixture
def server():
    srv = sim_server()
    yield srv
    srv.shutdown()


def test_remote_env_matches_the_local_sim(server):
    """Same seed, same actions: the same observations, rewards, success and termination."""
    kwargs = dict(cameras=["corner"], image_size=48, terminate_on_success=True, max_episode_steps=150)
    local = make_env(TASK, **kwargs)
    remote = make_env(TASK, robot="remote", port=server.port, **kwargs)
    rng = np.random.default_rng(0)
    try:
        for seed in (3, 4):
            lo, _ = local.reset(seed=seed)
            ro, _ = remote.reset(seed=seed)
            np.testing.assert_array_equal(lo["images"]["corner"], ro["images"]["corner"])
            np.testing.assert_allclose(lo["state"], ro["state"], rtol=0, atol=1e-6)
            done, steps, successes = False, 0, 0
            while not done:
                # the expert (read from the local sim) with noise, so the episode succeeds and varies
                a = np.clip(local.robot.expert_action() + rng.normal(0, 0.15, 4), -1.5, 1.5).astype(np.float32)
                lo, lr, lt, ltr, li = local.step(a)
                ro, rr, rt, rtr, ri = remote.step(a)
                np.testing.assert_array_equal(lo["images"]["corner"], ro["images"]["corner"])
                np.testing.assert_allclose(lo["proprio"], ro["proprio"], atol=1e-6)
                np.testing.assert_allclose(lo["state"], ro["state"], atol=1e-6)
                np.testing.assert_allclose(li["applied_action"], ri["applied_action"], atol=1e-7)
                assert (lr, lt, ltr, li["success"]) == (rr, rt, rtr, ri["success"])
                assert li["sim/dense_reward"] == pytest.approx(ri["sim/dense_reward"], abs=1e-5)
                assert "t_robot" in ro
                done, steps, successes = lt or ltr, steps + 1, successes + li["success"]
            assert steps > 5
        assert successes >= 1  # the second episode ended at success on both
    finally:
        local.close()
        remote.close()


def test_watchdog_stops_a_silent_client_and_needs_a_rearm(server):
    robot = remote_robot(port=server.port)
    robot.reset(seed=0)
    robot.send_action(np.zeros(4, np.float32))
    time.sleep(0.45)
    stops = [e for e in server.events if e["reason"].startswith("watchdog")]
    assert len(stops) == 1
    delay = stops[0]["t"] - stops[0]["last_request"]  # both on the server's clock
    assert server.watchdog_s == 0.1  # the default: 3 periods of the simulator's 80 Hz, at least 100 ms
    assert 0.10 <= delay < 0.30  # watchdog 100 ms + at most one poll (+ scheduling on a loaded machine)
    with pytest.raises(RobotStopped, match="re-arm"):
        robot.send_action(np.zeros(4, np.float32))
    robot.arm()
    robot.send_action(np.zeros(4, np.float32))
    assert server.counts["refused_disarmed"] == 1
    robot.close()


def test_stop_request_disarms(server):
    robot = remote_robot(port=server.port)
    robot.reset(seed=0)
    robot.stop()
    with pytest.raises(RobotStopped):
        robot.send_action(np.zeros(4, np.float32))
    assert server.events[-1]["reason"].startswith("stop requested")


def test_token_is_required_when_set():
    srv = sim_server(token="s3cret")
    try:
        with pytest.raises(RobotLinkError, match="token"):
            remote_robot(port=srv.port, token="wrong")
        with pytest.raises(RobotLinkError, match="token"):
            remote_robot(port=srv.port)
        robot = remote_robot(port=srv.port, token="s3cret")
        assert robot.task_name == TASK
        assert srv.counts["unauthorized"] == 2
    finally:
        srv.shutdown()


def test_lost_server_raises_instead_of_hanging():
    robot = RemoteRobot(port=1, timeout_ms=300)  # nothing listens on port 1
    t0 = time.monotonic()
    with pytest.raises(RobotLinkError, match="did not answer 'hello' within 300 ms"):
        robot.connect()
    assert time.monotonic() - t0 < 2.0


def test_server_killed_mid_episode_gives_a_clear_error():
    srv = sim_server()
    robot = remote_robot(port=srv.port, timeout_ms=400)
    robot.reset(seed=0)
    srv.shutdown()
    with pytest.raises(RobotLinkError, match="did not answer 'act'"):
        robot.send_action(np.zeros(4, np.float32))


class SlowReset(SimRobot):
    """A robot whose homing takes 0.3 s (as a real one's does): commands queue meanwhile."""

    homing = threading.Event()

    def reset(self, seed=None):
        SlowReset.homing.set()
        time.sleep(0.3)
        return super().reset(seed)


@pytest.fixture
def slow_server():
    srv = RobotServer(SlowReset(TASK, cameras=["corner"], image_size=48), SimRobot.DEFAULT_SAFETY, port=0, task=TASK).start()
    yield srv
    srv.shutdown()


def test_only_the_newest_queued_command_runs(slow_server):
    """Commands that queued while the robot was busy are answered `superseded`, not replayed."""
    import zmq

    from real import protocol

    server = slow_server
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(f"tcp://127.0.0.1:{server.port}")
    send = lambda seq, op, **kw: sock.send_multipart(protocol.encode({"v": 1, "seq": seq, "op": op, **kw}))  # noqa: E731
    SlowReset.homing.clear()
    send(1, "reset", seed=0, arm=True)  # the slow homing keeps the server busy while the acts queue
    assert SlowReset.homing.wait(5)
    send(2, "act", action=[1, 0, 0, 0])
    send(3, "act", action=[0, 1, 0, 0])
    replies = {}
    for _ in range(3):
        assert sock.poll(5000)
        header, _ = protocol.decode(sock.recv_multipart())
        replies[header["seq"]] = header["code"]
    sock.close()
    assert replies == {1: "ok", 2: "superseded", 3: "ok"}
    assert server.counts["acts"] == 1


def test_server_filters_nan_and_out_of_box_commands(server):
    robot = remote_robot(port=server.port)
    robot.reset(seed=0)
    applied = robot.send_action(np.array([np.nan, 0, 0, 0.5], np.float32))
    assert np.all(applied[:3] == 0) and "rejected_nonfinite" in robot.last_events
    z0 = robot.observe()["proprio"][2]
    for _ in range(60):  # drive down: the box floor (z = -0.15) is below the table, so the table stops it
        robot.send_action(np.array([0, 0, -1, 0], np.float32))
    assert robot.stats()["safety"]["rejected_nonfinite"] == 1
    assert robot.observe()["proprio"][2] < z0


def test_binding_beyond_loopback_needs_an_explicit_option_and_curve_keys(capsys, tmp_path):
    from real.keys import init_keys

    with pytest.raises(ValueError, match="allow_remote"):
        RobotServer(SimRobot(TASK, cameras=[]), SimRobot.DEFAULT_SAFETY, host="0.0.0.0")
    with pytest.raises(ValueError, match="keys init"):  # the token alone would travel in clear text
        RobotServer(SimRobot(TASK, cameras=[]), SimRobot.DEFAULT_SAFETY, host="0.0.0.0", allow_remote=True, token="s3cret")
    init_keys(tmp_path / "keys")
    RobotServer(SimRobot(TASK, cameras=[]), SimRobot.DEFAULT_SAFETY, host="0.0.0.0", allow_remote=True, keys=tmp_path / "keys")
    assert "WARNING" in capsys.readouterr().err


def test_a_robot_error_stops_the_robot_and_the_server_keeps_serving():
    class Flaky(SimRobot):
        fail = False

        def send_action(self, action):
            if Flaky.fail:
                raise OSError("arm controller fault")
            return super().send_action(action)

    srv = RobotServer(Flaky(TASK, cameras=[]), SimRobot.DEFAULT_SAFETY, port=0, task=TASK).start()
    try:
        robot = remote_robot(port=srv.port)
        robot.reset(seed=0)
        Flaky.fail = True
        with pytest.raises(RuntimeError, match="arm controller fault"):
            robot.send_action(np.zeros(4, np.float32))
        assert srv.events[-1]["reason"].startswith("robot error")
        Flaky.fail = False
        with pytest.raises(RobotStopped):
            robot.send_action(np.zeros(4, np.float32))
        robot.reset(seed=1)  # a new episode re-arms
        robot.send_action(np.zeros(4, np.float32))
    finally:
        srv.shutdown()


def test_wrong_task_cameras_or_size_are_refused(server):
    with pytest.raises(ValueError, match="runs task"):
        make_env("metaworld/door-open", robot="remote", port=server.port, cameras=["corner"], image_size=48)
    with pytest.raises(ValueError, match="serves cameras"):
        make_env(TASK, robot="remote", port=server.port, cameras=["gripperPOV"], image_size=48)
    with pytest.raises(ValueError, match="images are"):
        make_env(TASK, robot="remote", port=server.port, cameras=["corner"], image_size=96)
    # a single-task robot serves one task and refuses to switch, naming the server that can
    client = remote_robot(port=server.port)
    try:
        assert client.tasks == (TASK,) and client.task_index == 0
        with pytest.raises(ValueError, match="robot=sim_pair"):
            client.select_task(1)
    finally:
        client.close()


def test_a_served_task_pair_switches_task_without_a_reset_and_says_so_in_hello():
    from real.sim_driver import SimPairRobot

    srv = RobotServer(SimPairRobot("drawer", cameras=["corner"], image_size=32), SimPairRobot.DEFAULT_SAFETY, port=0).start()
    client = remote_robot(port=srv.port)
    try:
        assert client.tasks == ("metaworld/drawer-open", "metaworld/drawer-close") and client.task_name == "metaworld/drawer-open"
        first = client.reset(seed=2)
        for _ in range(5):
            client.send_action(np.array([0.0, 0.5, 0.0, 0.0], np.float32))
        before = client.observe()
        client.select_task(1)
        after = client.observe()
        assert client.task_index == 1 and client.instruction == "close the drawer" and client.task_name.endswith("drawer-close")
        assert np.allclose(after["proprio"], before["proprio"]) and not np.allclose(after["proprio"], first["proprio"])
        assert after["images"]["corner"].shape == (32, 32, 3)
        with pytest.raises(ValueError, match="integer"):
            client._call("select_task", index="1")
    finally:
        client.close()
        srv.shutdown()


KILLED_CLIENT = """
import sys, time, numpy as np
from real.remote import remote_robot
robot = remote_robot(port=int(sys.argv[1]))
robot.reset(seed=0)
print("acting", flush=True)
while True:
    robot.send_action(np.zeros(4, np.float32))
    time.sleep(0.05)
"""


def test_killed_client_process_stops_the_robot_within_the_watchdog(server):
    proc = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, str(server.port)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "acting"
    time.sleep(0.3)
    assert server.armed and not server.events
    t_kill = time.monotonic()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    assert len(server.events) == 1
    stop = server.events[0]
    assert stop["t"] > t_kill and stop["t"] - stop["last_request"] < 0.30  # 100 ms after the last request (+ a poll, scheduling)


def test_server_cli_serves_and_stops_on_sigterm(tmp_path):
    port = 5789
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "stepwise-robot-server"), "robot=sim", f"task={TASK}", f"port={port}",
         "robot.cameras=[corner]", "robot.image_size=32", f"hydra.run.dir={tmp_path}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env={**os.environ, "MUJOCO_GL": "egl"},
    )
    try:
        lines = [proc.stdout.readline() for _ in range(1)]
        while "tcp://" not in lines[-1] and lines[-1] and len(lines) < 20:  # skip library chatter
            lines.append(proc.stdout.readline())
        assert "tcp://127.0.0.1:5789" in lines[-1], lines
        env = make_env(TASK, robot="remote", port=port, cameras=["corner"], image_size=32, max_episode_steps=5, timeout_ms=10000)  # a loaded CI machine
        obs, _ = env.reset(seed=0)
        assert obs["images"]["corner"].shape == (32, 32, 3)
        for _ in range(5):
            *_, truncated, info = env.step(np.zeros(4, np.float32))
        assert truncated and not info["success"]
        env.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "stopped" in out


def test_server_cli_refuses_bad_settings(tmp_path):
    exe = str(Path(sys.executable).parent / "stepwise-robot-server")
    r = subprocess.run([exe, "robot=sim", "task=metaworld/no-such-task", f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "no-such-task" in r.stderr
    r = subprocess.run([exe, "robot=sim", f"task={TASK}", "host=0.0.0.0", f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "allow_remote" in r.stderr
    r = subprocess.run([exe, "robot=sim", f"task={TASK}", "host=0.0.0.0", "allow_remote=true", f"hydra.run.dir={tmp_path}"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "keys init" in r.stderr


def raw_client(port: int):
    """A bare DEALER on the server (no RemoteRobot): for floods and frames a real client never sends."""
    import zmq

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    return sock


def test_a_flood_feeds_the_watchdog_and_its_newest_command_runs(server):
    """10,000 commands sent as fast as the socket takes them: draining them takes longer than the
    watchdog, but each one is a valid request that feeds it, so the robot stays armed and the newest
    command runs (only it: the older ones are answered `superseded`)."""
    import zmq

    from real import protocol

    sock = raw_client(server.port)
    sock.send_multipart(protocol.encode({"v": 1, "seq": 0, "op": "reset", "seed": 0, "arm": True}))
    assert sock.poll(10000)
    assert protocol.decode(sock.recv_multipart())[0]["code"] == "ok"
    n, codes, t0 = 10_000, {}, time.monotonic()

    def read(block_ms=0):
        while sock.poll(block_ms):
            header, _ = protocol.decode(sock.recv_multipart())
            codes[header["seq"]] = header["code"]
            block_ms = 0

    for seq in range(1, n + 1):
        while True:  # never block on a full queue: read the replies meanwhile (a real client would)
            try:
                sock.send_multipart(protocol.encode({"v": 1, "seq": seq, "op": "act", "action": [0.1, 0, 0, 0]}), zmq.NOBLOCK)
                break
            except zmq.Again:
                read(1)
        if seq % 200 == 0:
            read()
    deadline = time.monotonic() + 20
    while n not in codes and time.monotonic() < deadline:
        read(100)
    elapsed = time.monotonic() - t0
    sock.close()
    assert elapsed > 2 * server.watchdog_s  # the flood outlasted the watchdog...
    assert codes[n] == "ok"  # ...and its newest command ran
    assert not [e for e in server.events if e["reason"].startswith("watchdog")] and server.armed
    assert server.counts["acts"] + server.counts["superseded"] == n and server.counts["refused_disarmed"] == 0
    assert server.counts["superseded"] > n / 2
    assert set(codes.values()) <= {"ok", "superseded"}


def test_refused_requests_do_not_feed_the_watchdog_but_valid_ones_do():
    """Garbage and wrong-token requests keep arriving, yet the watchdog stops the robot; a client that
    only asks for stats (valid, authenticated) keeps the link alive."""
    from real import protocol

    srv = sim_server(cameras=(), token="s3cret", watchdog_ms=300)  # room for a loaded machine's stalls
    try:
        robot = remote_robot(port=srv.port, token="s3cret")
        robot.reset(seed=0)
        sock = raw_client(srv.port)
        t_end = time.monotonic() + 4 * srv.watchdog_s
        while time.monotonic() < t_end:  # the robot is armed; only refused requests arrive
            sock.send(b"\x00garbage")
            sock.send_multipart(protocol.encode({"v": 1, "seq": 1, "op": "stats", "token": "wrong"}))
            time.sleep(0.005)
        stops = [e for e in srv.events if e["reason"].startswith("watchdog")]
        assert len(stops) == 1 and not srv.armed
        assert srv.counts["bad_request"] > 10 and srv.counts["unauthorized"] > 10
        robot.arm()
        t_end = time.monotonic() + 4 * srv.watchdog_s
        while time.monotonic() < t_end:  # valid requests every 20 ms: never a gap of 300 ms
            robot.stats()
            time.sleep(0.02)
        assert len([e for e in srv.events if e["reason"].startswith("watchdog")]) == 1 and srv.armed
        robot.send_action(np.zeros(4, np.float32))
        sock.close()
        robot.close()
    finally:
        srv.shutdown()


def test_the_watchdog_defaults_to_three_control_periods():
    class TwentyHz(SimRobot):
        @property
        def action_spec(self):
            from dataclasses import replace

            return replace(super().action_spec, control_hz=20.0)

    assert RobotServer(TwentyHz(TASK, cameras=[]), SimRobot.DEFAULT_SAFETY, port=0).watchdog_s == pytest.approx(0.15)
    assert RobotServer(SimRobot(TASK, cameras=[]), SimRobot.DEFAULT_SAFETY, port=0).watchdog_s == pytest.approx(0.10)  # 80 Hz: the floor
    assert RobotServer(SimRobot(TASK, cameras=[]), SimRobot.DEFAULT_SAFETY, port=0, watchdog_ms=250).watchdog_s == 0.25
    with pytest.raises(ValueError, match="watchdog_ms"):
        RobotServer(SimRobot(TASK, cameras=[]), SimRobot.DEFAULT_SAFETY, port=0, watchdog_ms=float("nan"))


def test_only_the_arming_client_feeds_the_watchdog(server):
    """A second client polling stats (a dashboard, say) does not keep a dead controller's robot moving."""
    controller = remote_robot(port=server.port)
    dashboard = remote_robot(port=server.port)
    controller.reset(seed=0)  # arms: this connection is the controller
    controller.send_action(np.zeros(4, np.float32))
    t_end = time.monotonic() + 5 * server.watchdog_s
    while time.monotonic() < t_end:  # the controller falls silent; the dashboard keeps asking
        dashboard.stats()
        time.sleep(0.01)
    assert [e for e in server.events if e["reason"].startswith("watchdog")] and not server.armed
    with pytest.raises(RobotStopped):
        controller.send_action(np.zeros(4, np.float32))
    dashboard.arm()  # arming hands the watchdog to the dashboard's connection
    dashboard.send_action(np.zeros(4, np.float32))
    controller.close()  # its close sends stop: any client may stop the robot
    assert not server.armed
    dashboard.close()
