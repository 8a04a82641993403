"""stepwise-train-reset-free: the shared scene of a task pair, the loop that flips the instruction on the
success signal and resets every K attempts (a fake classifier on real MuJoCo renders), the counting of
the classifier's false positives / negatives against the simulator, and a tiny run that resumes."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from policies.config import CONFIG_DIR
from policies.jobs.reset_free import run
from policies.reset_free.config import check_config
from policies.reset_free.loop import ResetFreeLoop, expert_policy
from policies.success import ClassifierSuccess, DetectorCounts, SimSuccess
from sim.task_pair import ResetFreeConfigError
from sim.task_pair import TaskPairScene, get_pair


class FakeClassifier:
    """P(done) from a fixed cycle of values, one per call; records the instruction and frames it saw."""

    kind = "vlm_success"

    def __init__(self, cycle, threshold: float = 0.5) -> None:
        self.cycle, self.calls, self.instructions = list(cycle), 0, []
        self.cameras, self.image_size = ("corner",), (32, 32)
        self.cfg = SimpleNamespace(threshold=threshold)

    def success_prob(self, frames, instruction):
        assert frames["corner"].shape == (1, 32, 32, 3) and frames["corner"].dtype == np.uint8
        self.instructions.append(instruction)
        p = self.cycle[self.calls % len(self.cycle)]
        self.calls += 1
        return np.array([p], np.float32)


@pytest.fixture(scope="module")
def scene():
    s = TaskPairScene("drawer", cameras=["corner"], image_size=32, split="train")
    yield s
    s.close()


def still(_obs):
    return np.zeros(4, np.float32)


def test_the_loop_flips_on_classifier_success_and_resets_every_k_attempts(scene):
    fake = FakeClassifier([0.1, 0.2, 0.9])  # "done" on the third step of every attempt
    loop = ResetFreeLoop(scene, ClassifierSuccess(fake), max_steps=20, reset_every=3, seed=0)
    recs = [loop.attempt(still) for _ in range(7)]
    assert [len(r.actions) for r in recs] == [3] * 7 and all(r.claimed and r.flipped for r in recs)
    assert all(r.terminated.tolist() == [False, False, True] for r in recs)
    # resets before attempts 0, 3 and 6 only; each starts forward, and every claim flips the direction
    assert [r.reset_before for r in recs] == [True, False, False, True, False, False, True]
    assert [r.direction for r in recs] == [0, 1, 0, 0, 1, 0, 0]
    assert loop.counters.resets == 3 and loop.counters.flips == 7 and loop.counters.episodes == 7
    # the classifier was asked with the instruction of the direction in play
    open_, close = scene.instructions
    assert fake.instructions[:9] == [open_] * 3 + [close] * 3 + [open_] * 3
    # without a reset the next attempt continues the same simulation: it starts where the last ended
    assert np.allclose(recs[1].obs[0][:3], recs[0].obs[-1][:3])
    assert recs[1].obs[0][-2:].tolist() == [0.0, 1.0] and recs[0].obs[-1][-2:].tolist() == [1.0, 0.0]


def test_no_success_means_a_truncation_and_the_same_instruction_again(scene):
    loop = ResetFreeLoop(scene, ClassifierSuccess(FakeClassifier([0.0])), max_steps=5, reset_every=10)
    a, b = loop.attempt(still), loop.attempt(still)
    assert len(a.actions) == 5 and not a.claimed and not a.terminated.any() and not a.flipped
    assert b.direction == a.direction == 0 and not b.reset_before
    flip = ResetFreeLoop(scene, ClassifierSuccess(FakeClassifier([0.0])), max_steps=5, reset_every=10,
                         flip_on_timeout=True)
    assert [flip.attempt(still).direction for _ in range(3)] == [0, 1, 0]


def test_confirm_steps_needs_consecutive_done_frames(scene):
    fake = FakeClassifier([0.9, 0.1, 0.9, 0.9])
    loop = ResetFreeLoop(scene, ClassifierSuccess(fake, confirm_steps=2), max_steps=10, reset_every=5)
    assert len(loop.attempt(still).actions) == 4


def test_a_flip_hands_the_drawer_over_and_the_backward_task_judges_it(scene):
    """The experts open the drawer, the flip hands the open drawer to drawer-close (not done there),
    and closing it is drawer-close's success: both directions judge one continuing scene."""
    loop = ResetFreeLoop(scene, SimSuccess(), max_steps=150, reset_every=10, seed=1)
    fwd = loop.attempt(expert_policy(scene))
    assert fwd.claimed and fwd.truth[-1]
    assert scene.direction == 1 and not scene.active.signals.success  # open drawer: not closed yet
    bwd = loop.attempt(expert_policy(scene))
    assert bwd.direction == 1 and bwd.claimed and bwd.truth[-1]
    assert abs(bwd.obs[0][5] - fwd.obs[-1][5]) < 1e-4  # the drawer's y where the forward attempt left it
    assert loop.counters.resets == 1


def test_false_positives_and_negatives_are_counted_against_the_simulator(scene):
    # the classifier says done at once, with the drawer still closed: a false positive per attempt
    loop = ResetFreeLoop(scene, ClassifierSuccess(FakeClassifier([0.9])), max_steps=10, reset_every=1)
    recs = [loop.attempt(still) for _ in range(2)]
    assert all(r.detector_fp and not r.detector_fn for r in recs)
    assert loop.detector.false_positives == 2 and loop.detector.false_negatives == 0
    assert loop.detector.frame_fp == 2 and loop.detector.frame_tn == 0
    # the simulator drives, the classifier only monitors and never says done: the expert's success is missed
    mon = ResetFreeLoop(scene, SimSuccess(), max_steps=150, reset_every=1, monitor=ClassifierSuccess(FakeClassifier([0.0])))
    rec = mon.attempt(expert_policy(scene))
    assert rec.claimed and rec.detector_fn and not rec.detector_fp
    s = mon.detector.summary()
    assert s["false_negatives"] == 1 and s["frame_fn"] == 1 and s["frame_fnr"] == 1.0
    assert s["frame_tn"] == len(rec.actions) - 1 and s["frame_fpr"] == 0.0
    counts = DetectorCounts()
    assert counts.add_episode(True, True, True) == (False, False)
    assert counts.add_episode(False, False, False) == (False, False)
    assert (counts.true_positives, counts.true_negatives) == (1, 1)


def test_unknown_pair_is_a_clear_error():
    with pytest.raises(ResetFreeConfigError, match="drawer") as err:
        get_pair("drawers")
    assert "door" in str(err.value) and "faucet" in str(err.value)
    with pytest.raises(ResetFreeConfigError, match="pair='nope'"):
        TaskPairScene("nope")
    with pytest.raises(ResetFreeConfigError, match="success"):
        check_config(cfg_of("success=oracle"))


def cfg_of(*overrides: str):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("reset_free", overrides=list(overrides))


def test_tiny_run_reports_and_resumes(tmp_path):
    """success=sim without the monitor (no rendering): demos, pre-training, reset-free attempts, the
    per-direction evaluation with resets, the report, and a resume that extends the run."""
    old = torch.get_num_threads()
    small = ["success=sim", "monitor=false", "demos=1", "pretrain.bc_steps=5", "pretrain.steps=5", "max_steps=15",
             "episodes=3", "reset_every=2", "eval.every=2", "eval.episodes=1", "eval.final_episodes=1",
             "agent.batch_size=16", "agent.hidden_sizes=[16,16]", "offline_threads=1"]
    try:
        report = run(cfg_of(*small), tmp_path)
        assert report["attempts"] == 3 and report["resets"] == 2  # before attempts 0 and 2
        assert set(report["final"]) == {"forward", "backward", "backward_own_reset", "episodes"}
        assert [e["episode"] for e in report["evals"]] == [0, 2, 3]
        assert (tmp_path / "success_curve.png").stat().st_size > 1000 and (tmp_path / "policy" / "model.safetensors").exists()
        saved = json.loads((tmp_path / "report.json").read_text())
        assert saved["training_attempts"]["forward"]["attempts"] >= 1 and saved["detector"] is None
        with pytest.raises(ResetFreeConfigError, match="resume=true"):
            run(cfg_of(*small), tmp_path)
        with pytest.raises(ResetFreeConfigError, match="success=sim"):
            run(cfg_of(*small, "success=classifier", "resume=true"), tmp_path)
        report = run(cfg_of(*small, "resume=true", "episodes=4"), tmp_path)
        assert report["attempts"] == 4 and report["resets"] == 3  # a resumed run starts from a reset
    finally:
        torch.set_num_threads(old)


def test_the_pair_as_a_robot_matches_the_scene_and_flips_through_a_server():
    """`SimPairRobot` behind its safety layer (in process) and behind a robot server give the loop the
    same observations and ground truth as the scene itself; select_task flips without a reset."""
    from real import make_safe_robot
    from real.remote import remote_robot
    from real.server import RobotServer
    from real.sim_driver import SimPairRobot
    from policies.reset_free.scene import RobotPairScene

    direct = TaskPairScene("drawer", cameras=(), split="train")
    local = RobotPairScene(make_safe_robot("sim_pair", pair="drawer", cameras=[]), "drawer")
    srv = RobotServer(SimPairRobot("drawer", cameras=[]), SimPairRobot.DEFAULT_SAFETY, port=0).start()
    served = RobotPairScene(remote_robot(port=srv.port), "drawer")
    scenes = (direct, local, served)
    try:
        for s in scenes:
            s.reset(3, direction=0)
        for t in range(150):  # the expert opens the drawer (its action read from the direct scene)
            a = direct.active.expert_action()
            sig = [s.step(a) for s in scenes]
            assert len({x.success for x in sig}) == 1
            obs = [s.observation() for s in scenes]
            assert np.allclose(obs[0], obs[1], atol=1e-6) and np.allclose(obs[0], obs[2], atol=1e-5), t
            if sig[0].success:
                break
        assert sig[0].success  # opened within 150 steps
        flips = [s.flip() for s in scenes]  # drawer-close judges the open drawer: not done
        assert not any(f.success for f in flips) and all(s.direction == 1 for s in scenes)
        assert served.instruction == local.instruction == direct.instruction == "close the drawer"
        obs = [s.observation() for s in scenes]
        assert np.allclose(obs[0], obs[2], atol=1e-5) and obs[2][-2:].tolist() == [0.0, 1.0]
        served.resume()  # a continuing attempt re-arms the server explicitly
        assert srv.counts["acts"] == t + 1 and srv.armed
        with pytest.raises(ValueError, match="index 0 or 1"):
            served.robot.select_task(2)
        with pytest.raises(ResetFreeConfigError, match="pair=door"):
            RobotPairScene(served.robot, "door")
    finally:
        for s in scenes:
            s.close()
        srv.shutdown()


def test_a_tiny_run_sends_its_attempts_through_the_robot_server(tmp_path):
    """robot=remote: every step of the reset-free attempts is a command to the served pair (evaluation
    and demonstrations stay in process); a wrong type or an unknown driver is refused by name."""
    from real.server import RobotServer
    from real.sim_driver import SimPairRobot

    old = torch.get_num_threads()
    small = ["success=sim", "monitor=false", "demos=1", "pretrain.bc_steps=5", "pretrain.steps=5", "max_steps=15",
             "episodes=3", "reset_every=2", "eval.every=5", "eval.episodes=1", "eval.final_episodes=1",
             "agent.batch_size=16", "agent.hidden_sizes=[16,16]", "offline_threads=1"]
    srv = RobotServer(SimPairRobot("drawer", cameras=[]), SimPairRobot.DEFAULT_SAFETY, port=0, watchdog_ms=2000).start()
    try:
        report = run(cfg_of(*small, "robot=remote", f"port={srv.port}"), tmp_path)
    finally:
        srv.shutdown()
        torch.set_num_threads(old)
    assert report["attempts"] == 3 and report["resets"] == 2
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert srv.counts["acts"] == ck["state"]["loop"]["env_steps"] == sum(r["length"] for r in ck["state"]["history"])
    with pytest.raises(ResetFreeConfigError, match="episodes: Value 'many'"):
        check_config(cfg_of("episodes=many"))
    with pytest.raises(ResetFreeConfigError, match="never imports a driver"):
        check_config(cfg_of("robot=ur"))
