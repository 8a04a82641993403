"""stepwise-deploy: the rate-controlled loop through the robot server, dry runs, recording, and every
stop path ending in the driver's stop sequence."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from episodes import EpisodeStore
from real.deploy import LoopTimer, deploy
from real.server import RobotServer
from real.sim_driver import SimRobot

TASK = "metaworld/drawer-open"
ROOT = Path(__file__).resolve().parent.parent


def deploy_cfg(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("deploy", overrides=[f"task={TASK}", "stop_key=false", *overrides])


class Expert:
    """The scripted expert of the simulator behind the server (same process): a policy that succeeds."""

    def __init__(self, server, fail_after: int | None = None, exc: type = RuntimeError) -> None:
        self.server, self.calls, self.fail_after, self.exc = server, 0, fail_after, exc

    def act(self, obs):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise self.exc("policy crashed")
        return self.server.robot.expert_action()


@pytest.fixture
def server():
    srv = RobotServer(SimRobot(TASK, cameras=["corner"], image_size=32, split="eval"), SimRobot.DEFAULT_SAFETY,
                      port=0, task=TASK).start()
    yield srv
    srv.shutdown()


def test_deploy_through_the_server_succeeds_and_records_applied_actions(server, tmp_path):
    cfg = deploy_cfg("robot=remote", f"port={server.port}", "episodes=2", "max_steps=150", "hz=50")
    s = deploy(cfg, tmp_path, policy=Expert(server))
    assert s["episodes"] == 2 and s["successes"] == 2 and s["success_source"] == "sim"
    assert s["timing"]["steps"] == s["steps"] and s["timing"]["hz"] == 50
    assert s["stopped_by"] is None
    with EpisodeStore(tmp_path / "episodes.hdf5") as store:
        assert len(store) == 2
        ep = store[0]
        assert ep.success and ep.kind == "policy" and ep.cameras == ["corner"]
        assert ep.images["corner"].shape[1:] == (32, 32, 3) and ep.state is not None
        # what was recorded is what the robot applied (the expert asks for > 1 at times; the safety layer clips)
        requested = np.stack([ep.infos[f"requested_{n}"] for n in ("dx", "dy", "dz", "gripper")], 1)
        assert np.all(np.abs(ep.actions) <= 1.0) and np.allclose(ep.actions, np.clip(requested, -1, 1), atol=1e-6)
    assert server.events[-1]["reason"].startswith("stop requested by a client")  # the stop sequence ran


def test_dry_run_moves_nothing(server, tmp_path):
    probe = server.robot  # the served SafeRobot(SimRobot), same process
    cfg = deploy_cfg("robot=remote", f"port={server.port}", "episodes=1", "max_steps=15", "hz=100", "dry_run=true")
    before = server.counts["acts"]
    s = deploy(cfg, tmp_path, policy=Expert(server))
    assert s["dry_run"] and s["steps"] == 15 and s["successes"] == 0
    assert server.counts["acts"] == before  # no command reached the robot
    assert probe.stats["commands"] == 0
    assert not (tmp_path / "episodes.hdf5").exists()


def test_dry_run_reports_what_the_safety_layer_would_change(server, tmp_path):
    class Wild:
        def act(self, obs):
            return np.array([5.0, 0, 0, 0], np.float32)

    cfg = deploy_cfg("robot=remote", f"port={server.port}", "episodes=1", "max_steps=5", "hz=100", "dry_run=true")
    s = deploy(cfg, tmp_path, policy=Wild())
    assert s["would_change"] == 5


def test_exception_in_the_loop_runs_the_stop_sequence(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(SimRobot, "stop", lambda self: calls.append("stop"))
    close = SimRobot.close
    monkeypatch.setattr(SimRobot, "close", lambda self: (calls.append("close"), close(self)))
    cfg = deploy_cfg("robot=sim", "robot.cameras=[corner]", "robot.image_size=32", "episodes=2", "max_steps=50", "hz=200")

    class Crashing:
        n = 0

        def act(self, obs):
            Crashing.n += 1
            if Crashing.n > 7:
                raise RuntimeError("policy crashed")
            return np.zeros(4, np.float32)

    with pytest.raises(RuntimeError, match="policy crashed"):
        deploy(cfg, tmp_path, policy=Crashing())
    assert calls == ["stop", "close"]
    import json

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped_by"].startswith("error: RuntimeError")


def test_ctrl_c_and_the_stop_key_end_in_the_stop_sequence(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(SimRobot, "stop", lambda self: calls.append("stop"))
    cfg = deploy_cfg("robot=sim", "robot.cameras=[]", "episodes=3", "max_steps=40", "hz=200", "stop_key=true")

    class Interrupted:
        n = 0

        def act(self, obs):
            Interrupted.n += 1
            if Interrupted.n == 12:
                raise KeyboardInterrupt
            return np.zeros(4, np.float32)

    s = deploy(cfg, tmp_path / "a", policy=Interrupted(), operator_stream=open(os.devnull))
    assert s["stopped_by"] == "KeyboardInterrupt" and calls == ["stop"]

    read, write = os.pipe()
    os.write(write, b"s\n")  # the operator presses the stop key
    s = deploy(cfg, tmp_path / "b", policy=Interrupted(), operator_stream=os.fdopen(read))
    assert s["stopped_by"] == "stop key" and s["steps"] == 0 and calls == ["stop", "stop"]
    os.close(write)


def test_losing_the_server_mid_episode_is_a_clear_error(server, tmp_path):
    class KillsServer:
        n = 0

        def act(self, obs):
            KillsServer.n += 1
            if KillsServer.n == 5:
                server.shutdown()
            return np.zeros(4, np.float32)

    cfg = deploy_cfg("robot=remote", f"port={server.port}", "robot.timeout_ms=300", "episodes=1", "max_steps=50")
    with pytest.raises(ConnectionError, match="did not answer 'act'"):
        deploy(cfg, tmp_path, policy=KillsServer())


def test_loop_timer_holds_the_rate():
    timer = LoopTimer(hz=100)
    timer.start()
    t0 = time.monotonic()
    for i in range(30):
        if i == 10:
            time.sleep(0.03)  # one slow step: an overrun, then the clock restarts (no catch-up burst)
        timer.tick()
    elapsed = time.monotonic() - t0
    stats = timer.stats()
    assert stats["overruns"] == 1 and stats["steps"] == 30
    assert 0.30 < elapsed < 0.40
    assert stats["period_error_p50_ms"] < 1.0


def save_policy(path: Path, task: str = TASK) -> Path:
    from policies.sac import SAC, SACConfig

    agent = SAC(39, 4, SACConfig(hidden_sizes=(32, 32)))
    torch.save({"kind": "stepwise-policy", "task": task, "policy": "state", "obs_key": "state",
                "agent": agent.state_dict()}, path)
    return path


def test_load_policy_checks_the_file(tmp_path):
    from policies.deploy import PolicyLoadError, load_policy

    pol = load_policy(save_policy(tmp_path / "policy.pt"), task=TASK)
    a = pol.act({"state": np.zeros(39, np.float32), "proprio": np.zeros(4, np.float32), "images": {}})
    assert a.shape == (4,) and np.all(np.abs(a) <= 1)
    assert pol.needs_state
    with pytest.raises(ValueError, match="sends no state"):
        pol.act({"proprio": np.zeros(4, np.float32), "images": {}})
    assert load_policy(tmp_path).task == TASK  # a run dir works too
    with pytest.raises(PolicyLoadError, match="trained on metaworld/drawer-open, not metaworld/door-open"):
        load_policy(tmp_path / "policy.pt", task="metaworld/door-open")
    with pytest.raises(PolicyLoadError, match="no policy"):
        load_policy(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes((tmp_path / "policy.pt").read_bytes()[:200])
    with pytest.raises(PolicyLoadError, match="cannot be read"):
        load_policy(tmp_path / "bad.pt")
    torch.save({"kind": "stepwise-train"}, tmp_path / "ckpt.pt")
    with pytest.raises(PolicyLoadError, match="not a stepwise-train policy"):
        load_policy(tmp_path / "ckpt.pt")


def test_deploy_cli_against_the_server_cli_and_sigterm(tmp_path):
    """Done means: server in one process, deploy in another; SIGTERM stops the deploy through its
    stop sequence and the server records the client's stop."""
    port = 5791
    policy = save_policy(tmp_path / "policy.pt")
    env = {**os.environ, "MUJOCO_GL": "egl"}
    bindir = Path(sys.executable).parent
    srv = subprocess.Popen([str(bindir / "stepwise-robot-server"), "robot=sim", f"task={TASK}", f"port={port}", "robot.cameras=[corner]",
                            "robot.image_size=32", f"hydra.run.dir={tmp_path / 'srv'}"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
    try:
        while "tcp://" not in (line := srv.stdout.readline()):
            assert line, "server exited"
        dep = subprocess.Popen([str(bindir / "stepwise-deploy"), "robot=remote", f"task={TASK}", f"port={port}", f"policy={policy}",
                                "episodes=50", "max_steps=100", "hz=50", f"hydra.run.dir={tmp_path / 'dep'}"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
        seen = []
        while "episode 1: homed" not in (line := dep.stdout.readline()):  # episode 0 is recorded by then
            assert line, "".join(seen)
            seen.append(line)
        dep.send_signal(signal.SIGTERM)
        out, _ = dep.communicate(timeout=30)
        assert dep.returncode == 0, out
        assert "stopped by SIGTERM" in out
        with EpisodeStore(tmp_path / "dep" / "episodes.hdf5") as store:
            assert len(store) >= 1 and store[0].num_steps == 100
    finally:
        srv.send_signal(signal.SIGTERM)
        out, _ = srv.communicate(timeout=30)
    assert "stop events" in out and srv.returncode == 0
    r = subprocess.run([str(bindir / "stepwise-deploy"), "robot=remote", f"task={TASK}", "port=5792", "robot.timeout_ms=300",
                        f"policy={policy}", f"hydra.run.dir={tmp_path / 'dep2'}"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert r.returncode == 2 and "did not answer 'hello'" in r.stderr


def test_stale_frames_hold_the_robot_then_stop_it(tmp_path, monkeypatch):
    from real.cameras import StaleFrameError

    calls = []
    monkeypatch.setattr(SimRobot, "stop", lambda self: calls.append("stop"))
    observe = SimRobot.observe
    stale = {"left": 2}

    def flaky_observe(self):
        if stale["left"] > 0 and calls.count("act") >= 3:
            stale["left"] -= 1
            raise StaleFrameError("corner", 250.0, 100.0)
        return observe(self)

    monkeypatch.setattr(SimRobot, "observe", flaky_observe)

    class Counting:
        def act(self, obs):
            calls.append("act")
            return np.zeros(4, np.float32)

    cfg = deploy_cfg("robot=sim", "robot.cameras=[]", "episodes=1", "max_steps=10", "hz=200", "stale_retries=3")
    s = deploy(cfg, tmp_path / "a", policy=Counting())
    assert s["steps"] == 10 and s["stale_frames"] == 2 and s["stopped_by"] is None
    assert calls.count("stop") == 3  # held twice, then the end-of-run stop
    stale["left"], calls[:] = 100, []
    with pytest.raises(StaleFrameError, match="corner"):
        deploy(cfg, tmp_path / "b", policy=Counting())
    assert calls[-1] == "stop"


def test_success_from_a_reward_model(tmp_path):
    """success=reward_model: the shipped progress model's success_prob, thresholded, ends episodes."""
    import reward_models

    model = reward_models.load("general")
    over = ["robot=sim", f"robot.cameras=[{','.join(model.cameras)}]", f"robot.image_size={model.image_size[0]}",
            "success=reward_model", "success_model=general", "episodes=1", "max_steps=4", "hz=100"]

    class Still:
        def act(self, obs):
            return np.zeros(4, np.float32)

    s = deploy(deploy_cfg(*over, "success_threshold=0.0"), tmp_path / "a", policy=Still())
    assert s["success_source"] == "reward_model" and s["successes"] == 1 and s["steps"] == 1  # P(done) > 0 at once
    s = deploy(deploy_cfg(*over, "success_threshold=1.0"), tmp_path / "b", policy=Still())
    assert s["successes"] == 0 and s["steps"] == 4  # P(done) > 1 never
    with EpisodeStore(tmp_path / "a" / "episodes.hdf5") as store:
        assert store[0].success and store[0].extra_attrs.get("success_source") == "reward_model"


def test_remote_summary_carries_the_servers_safety_counts(server, tmp_path):
    class Wild:
        def act(self, obs):
            return np.array([np.nan, 0, 0, 0], np.float32)

    cfg = deploy_cfg("robot=remote", f"port={server.port}", "episodes=1", "max_steps=3", "hz=100")
    s = deploy(cfg, tmp_path, policy=Wild())
    assert s["safety"]["rejected_nonfinite"] == 3
