"""stepwise-train, the main job: settings refused early, a small real run end to end, resume after
the run stops, the report, shaping from the progress model, and the console entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from policies.config import CONFIG_DIR, TrainConfigError, check_config
from policies.jobs.train import run
from reward_models.base import CheckpointError
from reward_models.hub import load_tree
from sim.tasks import UnknownTaskError

# a tiny job: one demo, no camera-based reward, short episodes
SMALL = ["demos=1", "reward.shaping=none", "pretrain.bc_steps=20", "pretrain.steps=10", "online.max_steps=30",
         "online.episodes=2", "eval.every=1", "eval.episodes=1", "eval.final_episodes=2", "agent.batch_size=32",
         "agent.hidden_sizes=[32,32]", "adapt.steps=0"]


def cfg_of(*overrides: str):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("override,error,match", [
    ("task=metaworld/no-such-task", UnknownTaskError, "no-such-task"),
    ("agent.utd_ratio=0", TrainConfigError, "utd_ratio"),
    ("demos=0", TrainConfigError, "demos"),
    ("demos=11", TrainConfigError, "demos"),
    ("algo=ppo", TrainConfigError, "algo"),
    ("reward.perspective=incremental", TrainConfigError, "state-only"),
    ("policy=pixels", TrainConfigError, "policy"),
])
def test_bad_settings_are_refused_before_any_work(override, error, match):
    with pytest.raises(error, match=match):
        check_config(cfg_of(override))


def test_missing_reward_model_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no reward-model checkpoint"):
        run(cfg_of("reward.model=/nonexistent/model"), tmp_path / "run")
    assert not (tmp_path / "run" / "demos").exists()  # failed before collecting anything


def test_small_job_reports_and_resumes(tmp_path):
    out = tmp_path / "run"
    report = run(cfg_of(*SMALL), out)
    for key in ("final_success_rate", "online_episodes", "wall_time_s", "final_eval_episodes", "hacking_monitor"):
        assert key in report
    assert report["online_episodes"] == 2 and report["final_eval_episodes"] == 2
    saved = json.loads((out / "report.json").read_text())
    assert saved["online_episodes"] == 2
    assert (out / "success_curve.png").stat().st_size > 1000 and (out / "report.md").exists()
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert [e["episode"] for e in saved["evals"]] == [0, 1, 2]  # before training, then every episode
    # the same directory without resume=true is refused, not overwritten
    with pytest.raises(TrainConfigError, match="resume=true"):
        run(cfg_of(*SMALL), out)
    # a checkpoint of another task is refused
    with pytest.raises(TrainConfigError, match="drawer-open"):
        run(cfg_of(*SMALL, "task=metaworld/push", "resume=true"), out)
    # resume and extend: the run continues from its checkpoint (history, replay, counters)
    before = torch.load(out / "checkpoint.pt", weights_only=False)
    report = run(cfg_of(*SMALL, "resume=true", "online.episodes=3"), out)
    after = torch.load(out / "checkpoint.pt", weights_only=False)
    assert report["online_episodes"] == 3
    key = lambda rows: [(r["episode"], r["length"], r["return"], r["agent/critic_loss"]) for r in rows]  # noqa: E731
    assert len(after["state"]["history"]) == 3 and key(after["state"]["history"][:2]) == key(before["state"]["history"])
    n_before = len(before["replay"]["obs"])
    np.testing.assert_array_equal(after["replay"]["obs"][:n_before], before["replay"]["obs"])
    assert after["agent"]["num_updates"] > before["agent"]["num_updates"]
    assert report["wall_time_s"] >= saved["wall_time_s"]
    assert after["imitated"] is None and report["imitated_episodes"] == 0  # self-imitation is off by default


# the image policy: 16 px frames of the 3-camera rig, rendered at that size (no camera-based reward)
IMAGE = ["policy=image", "policy_image_size=16", "demos=1", "reward.shaping=none", "agent.hidden_sizes=[32,32]",
         "agent.batch_size=16", "pretrain.bc_steps=5", "pretrain.steps=3", "online.episodes=2", "online.max_steps=20",
         "eval.every=1", "eval.episodes=1", "eval.final_episodes=1", "adapt.steps=0", "offline_threads=1"]


def test_image_policy_job_never_sees_the_state_and_resumes(tmp_path, monkeypatch):
    import real
    from policies.image_replay import ImageReplayBuffer
    from policies.image_sac import ImageSAC

    made = []
    make_env = real.make_env
    monkeypatch.setattr(real, "make_env", lambda *a, **kw: made.append(kw) or make_env(*a, **kw))
    out = tmp_path / "run"
    report = run(cfg_of(*IMAGE), out)
    # train and eval envs carry no state (reading it would fail) and render the policy's cameras at its size
    assert len(made) == 2 and all(not kw["include_state"] and kw["image_size"] == 16 for kw in made)
    assert made[1]["split"] == "eval" and made[1]["cameras"] == ["corner", "corner2", "gripperPOV"]
    saved = json.loads((out / "report.json").read_text())
    assert saved["online_episodes"] == 2 and saved["policy"] == {
        "kind": "image", "cameras": ["corner", "corner2", "gripperPOV"], "image_size": [16, 16], "render_size": 16}
    before = torch.load(out / "checkpoint.pt", weights_only=False)
    assert before["policy"] == "image" and before["replay"] is None
    replay_before = ImageReplayBuffer.load(out / before["replay_file"])
    assert len(replay_before) == before["replay_size"] == report["env_steps"] == 40  # 2 episodes of 20 steps
    assert replay_before.images.shape[1:] == (3, 16, 16, 3)
    assert np.all(replay_before.mc_return[replay_before.valid] > -np.inf)  # Cal-QL's bound on every online row
    # the final policy loads as an ImageSAC over the recorded cameras and size
    tree, meta = load_tree(out / "policy")  # config.json + model.safetensors, no pickle
    policy = {**meta, **tree}
    assert policy["policy"] == "image" and policy["obs_key"] == "images+proprio" and policy["image_size"] == [16, 16]
    agent = ImageSAC.from_state_dict(policy["agent"], device="cpu")
    assert agent.cameras == policy["cameras"] == ["corner", "corner2", "gripperPOV"]
    # a resume as the state policy is refused
    with pytest.raises(TrainConfigError, match="policy=image"):
        run(cfg_of(*SMALL, "resume=true"), out)
    # resume and extend: history kept, the replay file replaced by a larger one holding the old rows
    report = run(cfg_of(*IMAGE, "resume=true", "online.episodes=3"), out)
    after = torch.load(out / "checkpoint.pt", weights_only=False)
    assert report["online_episodes"] == 3 and len(after["state"]["history"]) == 3
    key = lambda rows: [(r["episode"], r["length"], r["return"], r["agent/critic_loss"]) for r in rows]  # noqa: E731
    assert key(after["state"]["history"][:2]) == key(before["state"]["history"])
    assert after["replay_size"] == 60 and sorted(p.name for p in out.glob("online_replay*")) == [after["replay_file"]]
    replay_after = ImageReplayBuffer.load(out / after["replay_file"])
    n = replay_before.filled
    np.testing.assert_array_equal(replay_after.images[:n], replay_before.images[:n])
    assert after["agent"]["num_updates"] > before["agent"]["num_updates"]


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(TrainConfigError, match="cannot be read"):
        run(cfg_of(*SMALL, "resume=true"), out)


def test_progress_shaping_scores_each_episode_and_logs_terms(tmp_path):
    """Shaping from the shipped progress model (zero-shot here, to keep the test short)."""
    out = tmp_path / "run"
    over = [o for o in SMALL if not o.startswith("reward.shaping")] + ["reward.shaping=progress", "online.episodes=1"]
    report = run(cfg_of(*over), out)
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    row = ck["state"]["history"][0]
    assert 0.0 <= row["final_progress"] <= 1.0 and 0.0 <= row["phi_mean"] <= 1.0
    assert row["shaping"] != 0.0  # the shaping term reached the reward
    assert row["return"] == pytest.approx(row["env_reward"] + row["shaping"], abs=1e-3)
    assert len(report["demo_final_progress"]) == 1
    # the demonstration ended in success: its last frame scores high progress
    assert report["demo_final_progress"][0] > 0.5


def test_cli_unknown_task_exits_with_the_known_names(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "policies.jobs.train", "task=metaworld/nope", f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "nope" in proc.stderr and "list_tasks" in proc.stderr


def test_training_runs_through_the_robot_server(tmp_path):
    """robot=remote: online and evaluation episodes go through a stepwise-robot-server (here the
    simulator behind it, in this process); the learner never touches the driver."""
    from real.server import RobotServer
    from real.sim_driver import SimRobot

    srv = RobotServer(SimRobot("metaworld/drawer-open", cameras=[], split="train"), SimRobot.DEFAULT_SAFETY,
                      port=0, task="metaworld/drawer-open").start()
    try:
        report = run(cfg_of(*SMALL, "robot=remote", f"port={srv.port}"), tmp_path / "run")
    finally:
        srv.shutdown()
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert report["online_episodes"] == 2
    # every online step and every evaluation step was a command to the served robot
    eval_steps = sum(round(e["mean_length"] * e["episodes"]) for e in ck["state"]["evals"])
    assert ck["state"]["env_steps"] > 0 and eval_steps > 0
    # ... plus the final evaluation's steps, also on the served robot
    assert srv.counts["acts"] > ck["state"]["env_steps"] + eval_steps
    with pytest.raises(TrainConfigError, match="never imports a driver"):
        check_config(cfg_of("robot=ur"))


def test_perceptual_reward_is_fitted_on_one_demo_and_shapes(tmp_path):
    """reward=perceptual: the perceptual-feature reward fitted from ONE demo (pixels encoder here,
    to keep it short) gives the potentials; resuming reuses the fitted model."""
    out = tmp_path / "run"
    over = [o for o in SMALL if not o.startswith(("reward.shaping", "demos"))]
    over += ["reward=perceptual", "reward.encoder=pixels", "reward.shaping=progress", "demos=2", "online.episodes=1",
             "reward.cameras=[corner]", "reward.n_steps=2"]
    run(cfg_of(*over), out)
    import reward_models

    model = reward_models.load(out / "reward_model")
    assert model.kind == "perceptual" and model.cameras == ("corner",)
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    row = ck["state"]["history"][0]
    assert row["shaping"] != 0.0 and 0.0 <= row["phi_mean"] <= 1.0
    report = json.loads((out / "report.json").read_text())
    assert report["demo_final_progress"][0] > 0.7  # the demo it was fitted on ends near full progress
    with pytest.raises(TrainConfigError, match="reward.encoder"):
        run(cfg_of(*[o for o in over if not o.startswith("reward.encoder")], "reward.encoder=null"), tmp_path / "run2")


def test_success_from_the_vlm_classifier_is_learned_and_checked_against_ground_truth(tmp_path):
    """reward.source=success_prob with the shipped VLM classifier: its verdicts end episodes and give
    the reward; the simulator's success is only logged, and the disagreements are counted. Threshold 0
    makes every first step a claimed success: each episode is one false positive."""
    out = tmp_path / "run"
    over = SMALL + ["reward.source=success_prob", "reward.success_model=vlm-general", "reward.success_threshold=0.0"]
    run(cfg_of(*over), out)
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    rows = ck["state"]["history"]
    assert [r["length"] for r in rows] == [1, 1]  # the classifier's "done" ended each episode at once
    assert all(r["detector_false_positive"] and not r["success"] for r in rows)
    assert "2 false positives" in (out / "report.md").read_text()


def test_reward_vlm_success_preset_learns_from_the_classifier_alone(tmp_path):
    """stepwise-train reward=vlm_success: the classifier (its own calibrated threshold) gives success and
    termination; the classifier's own training keys do not touch the progress model's adaptation (adapt.*); with shaping=none no
    progress model is loaded or adapted; the disagreements with the simulator are counted."""
    cfg = cfg_of("reward=vlm_success")
    assert (cfg.reward.kind, cfg.reward.source, cfg.reward.success_model) == ("vlm_success", "success_prob", "vlm-general")
    assert cfg.adapt.steps == 150 and cfg.reward.shaping == "progress"  # the progress model's, beside the classifier's 300
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):  # stepwise-train-rm keeps the classifier's
        rm = compose("train_rm", overrides=["reward=vlm_success", "data=x", "out=y"])
    assert rm.reward.adapt_steps == 300 and "source" not in rm.reward
    with pytest.raises(TrainConfigError, match="reward.source=success_prob"):
        check_config(cfg_of("reward=vlm_success", "reward.source=sparse"))
    out = tmp_path / "run"
    over = [o for o in SMALL if not o.startswith("reward.")] + ["reward=vlm_success", "reward.shaping=none"]
    report = run(cfg_of(*over), out)
    assert report["reward"]["kind"] == "vlm_success" and report["reward"]["success_model"] == "vlm-general"
    assert not (out / "reward_model").exists()  # no progress model adapted
    rows = torch.load(out / "checkpoint.pt", weights_only=False)["state"]["history"]
    claimed = [r["env_reward"] > 0 for r in rows]  # the success reward: the classifier said done
    assert [r["detector_false_positive"] for r in rows] == [c and not r["success"] for c, r in zip(claimed, rows)]
    assert [r["detector_false_negative"] for r in rows] == [(not c) and r["success"] for c, r in zip(claimed, rows)]
    assert report["detector"]["false_positives"] == sum(r["detector_false_positive"] for r in rows)


def test_reward_vlm_success_combines_with_progress_shaping(tmp_path):
    """reward=vlm_success with its default shaping: success from the classifier, the potential from the
    step-PRM `general` (zero-shot here, to keep the test short); both terms reach the reward."""
    over = [o for o in SMALL if not o.startswith("reward.")] + ["reward=vlm_success", "online.episodes=1"]
    report = run(cfg_of(*over), tmp_path / "run")
    row = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["state"]["history"][0]
    assert row["shaping"] != 0.0 and 0.0 <= row["final_progress"] <= 1.0
    assert "detector_false_positive" in row and report["reward"]["shaping"] == "progress"


def test_self_imitation_adds_successful_episodes_to_the_demonstrations_and_resumes(tmp_path):
    """online.imitate_successes=true: an online episode that ends at the learner's success signal joins
    the demonstrations (offline half of each batch, BC term); the checkpoint carries those rows and a
    resume restores and extends them. Threshold 0 makes the classifier call every first step done, so
    every episode here is a one-step success."""
    over = SMALL + ["reward.source=success_prob", "reward.success_model=vlm-general", "reward.success_threshold=0.0",
                    "online.imitate_successes=true"]
    out = tmp_path / "run"
    report = run(cfg_of(*over), out)
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    rows = ck["state"]["history"]
    assert [r["imitated"] for r in rows] == [True, True] and report["imitated_episodes"] == 2
    # exactly the online episodes' transitions, appended after the demonstration
    for k in ("obs", "action", "reward", "next_obs", "terminated", "mc_return"):
        np.testing.assert_array_equal(ck["imitated"][k], ck["replay"][k])
    assert ck["imitated"]["terminated"].tolist() == [1.0, 1.0]
    assert "Self-imitation: 2 successful online episodes" in (out / "report.md").read_text()
    run(cfg_of(*over, "resume=true", "online.episodes=3"), out)
    after = torch.load(out / "checkpoint.pt", weights_only=False)
    assert len(after["imitated"]["obs"]) == 3
    with pytest.raises(TrainConfigError, match="online.imitate_successes=true"):  # its rows must not be dropped
        run(cfg_of(*over[:-1], "resume=true", "online.episodes=4"), out)
    np.testing.assert_array_equal(after["imitated"]["obs"][:2], ck["imitated"]["obs"])
    with pytest.raises(TrainConfigError, match="algo=calql"):
        check_config(cfg_of("online.imitate_successes=true", "algo=sac"))
    with pytest.raises(TrainConfigError, match="policy=state"):
        check_config(cfg_of("online.imitate_successes=true", "policy=image"))


def test_warmup_episodes_collect_with_the_pretrained_policy_before_any_update(tmp_path):
    """online.warmup_episodes=N (WSRL's warm-up): the first N online episodes take no update (their history
    rows carry no agent statistics, so the pre-trained policy acted throughout them); the updates start
    with episode N. A warm-up as long as the run is refused."""
    out = tmp_path / "run"
    run(cfg_of(*SMALL, "online.warmup_episodes=1", "agent.compile=false"), out)
    rows = torch.load(out / "checkpoint.pt", weights_only=False)["state"]["history"]
    assert [r["episode"] for r in rows] == [0, 1]
    assert not any(k.startswith("agent/") for k in rows[0]) and "agent/critic_loss" in rows[1]
    assert rows[1]["length"] > 0
    for bad in ("online.warmup_episodes=-1", "online.warmup_episodes=2"):  # 2 of 2 episodes would never update
        with pytest.raises(TrainConfigError, match="warmup_episodes"):
            check_config(cfg_of(*SMALL, bad))


def test_residual_policy_runs_checkpoints_and_resumes(tmp_path):
    """agent.residual_scale: after the BC warm start the cloned actor is frozen as a residual policy's base;
    the checkpoint holds base and correction, and a resume continues the same residual agent. Settings the
    residual cannot work with are refused."""
    from policies.sac import SAC, ResidualActor

    out = tmp_path / "run"
    run(cfg_of(*SMALL, "agent.residual_scale=0.3", "agent.compile=false"), out)
    state = torch.load(out / "checkpoint.pt", weights_only=False)["agent"]
    assert state["residual"] and any(k.startswith("base.") for k in state["actor"])
    base = {k: v for k, v in state["actor"].items() if k.startswith("base.")}
    report = run(cfg_of(*SMALL, "agent.residual_scale=0.3", "agent.compile=false", "resume=true",
                        "online.episodes=3"), out)
    assert report["online_episodes"] == 3
    after = torch.load(out / "checkpoint.pt", weights_only=False)["agent"]
    assert isinstance(SAC.from_state_dict(after).actor, ResidualActor)
    for k, v in base.items():  # the base stayed frozen through pre-training's end and every online update
        torch.testing.assert_close(after["actor"][k], v, rtol=0, atol=0)
    for bad in ("algo=sac", "policy=image", "pretrain.bc_steps=0"):
        with pytest.raises(TrainConfigError, match="residual_scale"):
            check_config(cfg_of(*SMALL, "agent.residual_scale=0.3", bad))


def test_progress_model_refreshed_on_the_runs_own_episodes_and_resumed(tmp_path):
    """refresh.every: the step-PRM fine-tuned on the run's episodes between online episodes; the report
    counts hacking per segment; a resume scores with the last refresh, never the model it started from."""
    import reward_models

    out = tmp_path / "run"
    over = [o for o in SMALL if not o.startswith("reward.shaping")] + [
        "reward.shaping=progress", "online.episodes=3", "refresh.every=1", "refresh.steps=3", "refresh.max_failures=1"]
    report = run(cfg_of(*over), out)
    dirs = sorted((out / "reward_model_refresh").iterdir())
    assert [d.name for d in dirs] == ["ep00001", "ep00002"]  # after episodes 1 and 2, none after the last
    assert [r["from"] for r in report["refreshes"]] == [0, 1, 2]
    assert sum(r["episodes"] for r in report["refreshes"]) == 3
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert [r["episode"] for r in ck["state"]["refreshes"]] == [1, 2]
    first, second = (reward_models.load(d) for d in dirs)
    shipped = reward_models.load("general")
    changed = lambda a, b: any(not torch.equal(x, y) for x, y in zip(a.net.state_dict().values(),  # noqa: E731
                                                                     b.net.state_dict().values()))
    assert changed(first, shipped) and changed(second, first)  # each refresh trained from the one before
    assert "hacking per segment" in (out / "report.md").read_text()
    assert report["after_pretraining_success_rate"] == report["evals"][0]["success_rate"]  # printed for item 4
    assert "After pre-training alone" in (out / "report.md").read_text()
    # the run's own episodes were the refresh's data: one failure at least, as a censored negative
    from episodes import EpisodeStore

    with EpisodeStore(out / "online_episodes.hdf5") as store:
        assert len(store) == 3 and not all(store.episode_attrs(i)["success"] for i in range(3))
    # a refresh the checkpoint does not count (a killed run made it) is dropped on resume
    (out / "reward_model_refresh" / "ep00009").mkdir()
    over = [o for o in over if not o.startswith("online.episodes")]
    report = run(cfg_of(*over, "resume=true", "online.episodes=4"), out)
    assert not (out / "reward_model_refresh" / "ep00009").exists()
    assert [(r["from"], r["to"]) for r in report["refreshes"]] == [(0, 1), (1, 2), (2, 4)]
    from reward_models.shaping import episode_potentials

    with EpisodeStore(out / "online_episodes.hdf5") as store:  # episode 4 was scored by the last refresh
        ep = store[3]
        phi = episode_potentials(second, ep.images, ep.instruction, None, "forward")
        assert float(phi[-1]) == pytest.approx(store.episode_attrs(3)["extra_attrs"]["final_progress"], abs=1e-4)


def test_refresh_under_the_classifier_labels_episodes_by_its_verdict_not_the_simulator(tmp_path, caplog):
    """reward=vlm_success with refresh: the step-PRM is re-fitted on the run's episodes labelled by the signal
    the run learns from. Threshold 0 makes the classifier end every episode at its first step, a claimed
    success the simulator denies: the refresh reads it as a positive, never as a failure."""
    import logging

    from reward_models.train_episodes import load_episodes, load_failures

    over = [o for o in SMALL if not o.startswith("reward.")] + [
        "reward=vlm_success", "reward.success_threshold=0.0", "online.episodes=2", "refresh.every=1", "refresh.steps=2"]
    with caplog.at_level(logging.INFO, logger="reward_models.train"):
        report = run(cfg_of(*over), tmp_path / "run")
    assert [r["from"] for r in report["refreshes"]] == [0, 1]
    trained = [m for m in caplog.messages if m.startswith("training on")]
    assert trained == ["training on 2 episodes of 1 tasks (0 validation)"], trained  # the demo + the claimed success
    store = tmp_path / "run" / "online_episodes.hdf5"
    cams = ("corner",)
    assert len(load_episodes(store, cams, kinds=("policy",), policy_success="claimed")) == 2
    assert len(load_failures(store, cams, policy_success="claimed")) == 0
    assert len(load_failures(store, cams)) == 2  # by the simulator's test both failed
    with pytest.raises(ValueError, match="no successful"):
        load_episodes(store, cams, kinds=("policy",))


def test_refresh_settings_that_cannot_work_are_refused():
    with pytest.raises(TrainConfigError, match="refresh.every"):
        check_config(cfg_of(*SMALL, "refresh.every=5"))  # shaping=none: nothing to refresh
    with pytest.raises(TrainConfigError, match="refresh.every"):  # a perceptual potential is not a step-PRM
        check_config(cfg_of(*SMALL[:1], "reward=perceptual", "reward.shaping=progress", "refresh.every=5"))
    with pytest.raises(TrainConfigError, match="keep_episodes"):
        check_config(cfg_of(*SMALL[:1], "reward.shaping=progress", "refresh.every=5", "keep_episodes=false"))
    with pytest.raises(TrainConfigError, match="refresh.first"):
        check_config(cfg_of(*SMALL[:1], "reward.shaping=progress", "refresh.every=5", "refresh.first=0"))
    with pytest.raises(TrainConfigError, match="refresh.max_failures"):
        check_config(cfg_of(*SMALL[:1], "reward.shaping=progress", "refresh.every=5", "refresh.max_failures=0"))


def test_an_early_first_refresh_joins_the_schedule():
    from policies.refresh import refresh_due

    cfg = cfg_of(*SMALL[:1], "reward.shaping=progress", "refresh.every=10", "refresh.first=3")
    assert [e for e in range(1, 60) if refresh_due(cfg, e, 40)] == [3, 10, 20, 30]
    plain = cfg_of(*SMALL[:1], "reward.shaping=progress", "refresh.every=10")
    assert [e for e in range(1, 60) if refresh_due(plain, e, 40)] == [10, 20, 30]
    assert not any(refresh_due(cfg_of(*SMALL[:1], "refresh.first=3"), e, 40) for e in range(1, 60))  # every=0: never


def test_compile_auto_compiles_the_update_only_for_runs_long_enough_to_repay_it(monkeypatch):
    from policies.config import COMPILE_PAYS_BACK, expected_updates, image_agent_config, sac_config

    default = cfg_of()
    assert expected_updates(default) == 60 * 200 >= COMPILE_PAYS_BACK and sac_config(default).compile is True
    assert expected_updates(cfg_of(*SMALL)) == 60 and sac_config(cfg_of(*SMALL)).compile is False
    assert sac_config(cfg_of("agent.compile=false")).compile is False
    assert sac_config(cfg_of(*SMALL, "agent.compile=true")).compile is True
    assert sac_config(cfg_of("algo=bc")).compile is False  # no online phase
    assert image_agent_config(cfg_of("policy=image")).compile is False  # the image agent's update runs eagerly
    monkeypatch.setenv("PATH", "")  # no C++ compiler: auto stays eager
    monkeypatch.delenv("CXX", raising=False)
    assert sac_config(default).compile is False


def test_one_seed_gives_one_run_from_the_networks_initialisation_on(tmp_path):
    """The seed fixes the networks' initialisation as well as the data: two runs of one seed end with
    bit-identical policies and reports; another seed gives another policy."""
    from policies.deploy import load_policy

    tiny = [*SMALL, "algo=bc"]
    reports = [run(cfg_of(*tiny, f"seed={s}"), tmp_path / name) for name, s in (("a", 3), ("b", 3), ("c", 4))]
    actors = [load_policy(tmp_path / name).agent.actor.state_dict() for name in "abc"]
    assert all(torch.equal(actors[0][k], actors[1][k]) for k in actors[0])
    assert not all(torch.equal(actors[0][k], actors[2][k]) for k in actors[0])
    assert reports[0]["evals"] == reports[1]["evals"]
