"""`stepwise-eval-rm` / reward_models.evaluate: metrics, the evaluation API, the CLI and its errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from episodes import EpisodeStore
from reward_models.base import RewardModel
from reward_models.evaluation import evaluate, render_report
from reward_models.metrics import auroc, binary_scores, choose_threshold, expected_calibration_error, spearman, voc
from reward_models.progress import step_progress
from reward_models.step_prm import StepPRM, StepPRMConfig

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
CAMERAS = ("corner", "gripperPOV")
INSTRUCTION = "reach the goal position"


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    """A tiny real store: 3 reach demos and 1 stall failure, 2 cameras at 32x32."""
    out = tmp_path_factory.mktemp("eval_store")
    run = subprocess.run(
        [str(BIN / "stepwise-collect"), "task=metaworld/reach", "episodes=3", "failures=1",
         "failure_kinds=[stall]", "image_size=32", f"cameras=[{','.join(CAMERAS)}]", f"out={out}"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return out / "reach.hdf5"


def small_prm() -> StepPRM:
    """A StepPRM with random weights, small enough for CPU tests; text prefilled (no encoder load)."""
    model = StepPRM(StepPRMConfig(cameras=CAMERAS, image_size=(32, 32), encoder_size=32, width=8, dim=32,
                                  device="cpu"))
    model.cfg.text_cache[INSTRUCTION] = [0.0] * 384
    return model


def _key(frames: dict[str, np.ndarray], t: int) -> bytes:
    return hashlib.blake2b(b"".join(frames[c][t].tobytes() for c in CAMERAS), digest_size=16).digest()


class OracleModel(RewardModel):
    """Knows each stored frame's ground truth: step progress and per-frame success, by image hash.

    It sees only frames (like any model); the table is built from the store beforehand.
    """

    kind = "oracle_test"

    def __init__(self, store_path: Path) -> None:
        self.cameras, self.image_size = CAMERAS, (32, 32)
        self.table: dict[bytes, tuple[float, float]] = {}
        with EpisodeStore(store_path) as st:
            for ep in st:
                n = ep.num_steps + 1
                prog = step_progress(ep.keyframes, n)
                succ = np.concatenate([[0.0], ep.infos["success"]])
                for t in range(n):
                    self.table.setdefault(_key(ep.images, t), (float(prog[t]), float(succ[t])))

    def _lookup(self, frames, which: int) -> np.ndarray:
        n = len(frames[CAMERAS[0]])
        return np.array([self.table[_key(frames, t)][which] for t in range(n)], dtype=np.float32)

    def progress(self, frames, instruction, reference=None):
        return self._lookup(frames, 0)

    def success_prob(self, frames, instruction, reference=None):
        return self._lookup(frames, 1)

    def config(self) -> dict:
        return {}

    def _save_weights(self, directory: Path) -> None:
        pass

    @classmethod
    def _from_checkpoint(cls, directory: Path, config: dict, device: Any) -> "OracleModel":
        raise NotImplementedError


# --------------------------------------------------------------------------- metrics


def test_spearman_and_voc_hand_cases():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert voc(np.linspace(0, 1, 9)) == pytest.approx(1.0)
    assert voc(np.linspace(1, 0, 9)) == pytest.approx(-1.0)
    # ties take average ranks: y ranks (1.5, 1.5, 3) against (1, 2, 3) -> 0.866
    assert spearman([1, 2, 3], [0, 0, 1]) == pytest.approx(np.sqrt(3) / 2)
    assert voc(np.zeros(5)) == 0.0  # flat prediction: no ordering information
    assert voc(np.array([0.3])) is None


def test_auroc_hand_cases():
    assert auroc([0.9, 0.8], [0.1, 0.2, 0.3]) == pytest.approx(1.0)
    assert auroc([0.1], [0.9]) == pytest.approx(0.0)
    assert auroc([0.5, 0.5], [0.5, 0.5]) == pytest.approx(0.5)
    assert auroc([0.4, 0.6], [0.5]) == pytest.approx(0.5)
    assert auroc([0.4], []) is None


def test_ece_threshold_and_binary_scores():
    rng = np.random.default_rng(0)
    prob = rng.random(20000)
    label = rng.random(20000) < prob  # calibrated by construction
    assert expected_calibration_error(prob, label) < 0.02
    assert expected_calibration_error(np.full(100, 0.9), np.zeros(100)) == pytest.approx(0.9)
    assert expected_calibration_error([], []) is None
    prob, label = np.array([0.1, 0.2, 0.7, 0.8]), np.array([0, 0, 1, 1])
    t = choose_threshold(prob, label)
    assert 0.2 < t <= 0.7
    assert binary_scores(prob >= t, label) == (1.0, 1.0)
    assert binary_scores(np.zeros(3, bool), np.zeros(3)) == (1.0, None)  # F1 undefined without positives


# --------------------------------------------------------------------------- evaluate()


def test_oracle_scores_near_perfect(store):
    results = evaluate(OracleModel(store), store, baselines=())
    task = "metaworld/reach"
    assert results["tasks"][task]["reference"] == "reach.hdf5:demo_0"  # first success, not scored
    assert results["tasks"][task]["scored"] == 3
    mean = results["rows"]["model"]["mean"]
    for key in ("voc_d1", "voc_d4", "voc_d16"):
        assert mean[key] > 0.9, (key, mean)  # < 1 only from the flat post-success tail (ties)
    assert mean["voc_reversed"] < -0.9
    assert mean["success_acc"] == 1.0 and mean["success_f1"] == 1.0 and mean["success_ece"] == pytest.approx(0.0)
    assert any("ablation skipped" in n for n in results["notes"])  # its progress() takes no cameras=
    assert set(results["rows"]) == {"model"}


def test_random_step_prm_gives_a_valid_report(store, tmp_path):
    results = evaluate(small_prm(), store)
    assert set(results["rows"]) == {"model", "camera:corner", "camera:gripperPOV", "random", "sim_dense_gt"}
    for name, row in results["rows"].items():
        for key, value in row["mean"].items():
            assert value is None or -1.0 <= value <= 1.0, (name, key, value)
    dense = results["rows"]["sim_dense_gt"]
    assert dense["privileged"] and dense["mean"]["voc_d1"] > 0.9 and dense["mean"]["voc_reversed"] < -0.9
    assert results["throughput"]["states_per_s"] > 0
    json.dumps(results)  # plain JSON throughout
    written = render_report(results, tmp_path / "report")
    assert {p.name for p in written} >= {"report.json", "report.md", "metrics_per_task.png",
                                         "progress_metaworld_reach.png"}
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## camera:corner" in md and "PRIVILEGED" in md and "reference rule: first_success" in md


def test_reference_none_scores_every_episode(store):
    results = evaluate(OracleModel(store), store, reference="none", baselines=("random",), densities=(1,))
    assert results["tasks"]["metaworld/reach"]["scored"] == 4
    assert results["tasks"]["metaworld/reach"]["reference"] is None
    with pytest.raises(ValueError, match="reference="):
        evaluate(OracleModel(store), store, reference="last")


# --------------------------------------------------------------------------- CLI


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reward_models.evaluate", *args],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_cli_writes_report_and_plots(store, tmp_path):
    ckpt = small_prm().save(tmp_path / "ckpt")
    out = tmp_path / "out"
    run = _cli(tmp_path, f"model={ckpt}", f"data={store}", f"out={out}", "cameras_ablation=false",
               "densities=[1]")
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["model"] == str(ckpt)
    assert report["settings"]["episodes_scored"] == 3
    assert (out / "report.md").read_text().startswith("# Reward-model evaluation")
    assert sorted(p.name for p in out.glob("*.png")) == ["metrics_per_task.png", "progress_metaworld_reach.png"]


def test_cli_bad_inputs_exit_2_with_one_line(store, tmp_path):
    missing = tmp_path / "nope.hdf5"
    run = _cli(tmp_path, "model=whatever", f"data={missing}", f"out={tmp_path / 'o'}")
    assert run.returncode == 2
    line = run.stderr.strip().splitlines()[-1]
    assert line.startswith("stepwise-eval-rm: error:") and str(missing) in line
    bad = tmp_path / "bad.hdf5"
    bad.write_text("not a store")
    run = _cli(tmp_path, f"model={tmp_path}", f"data={store}", f"out={tmp_path / 'o'}")
    assert run.returncode == 2 and "no config.json" in run.stderr, run.stderr[-2000:]
    ckpt = small_prm().save(tmp_path / "ckpt")
    run = _cli(tmp_path, f"model={ckpt}", f"data={bad}", f"out={tmp_path / 'o'}")
    assert run.returncode == 2 and "not an HDF5 file" in run.stderr, run.stderr[-2000:]


# --------------------------------------------------------------------------- classifier metrics (FPR / FNR, the model's threshold)


def test_error_rates_hand_cases():
    from reward_models.metrics import error_rates

    pred, label = np.array([1, 1, 0, 0, 1], bool), np.array([1, 0, 0, 0, 1])
    assert error_rates(pred, label) == (pytest.approx(1 / 3), pytest.approx(0.0))
    assert error_rates(np.zeros(2, bool), np.ones(2)) == (None, 1.0)  # no negatives: FPR undefined
    assert error_rates(np.ones(2, bool), np.zeros(2)) == (1.0, None)


class ThresholdOracle(OracleModel):
    """The oracle with a decision threshold of its own, as a success classifier carries."""

    threshold = 0.5


def test_frame_metrics_and_the_models_own_threshold(store):
    from reward_models.evaluation import model_threshold

    chosen = evaluate(OracleModel(store), store, baselines=("random",), densities=(1,))
    m = chosen["rows"]["model"]["mean"]
    assert m["success_auroc"] == 1.0 and m["success_fpr"] == 0.0 and m["success_fnr"] == 0.0
    assert 0.2 < chosen["rows"]["random"]["mean"]["success_auroc"] < 0.8  # chance (fixed seed, few frames)
    own = evaluate(ThresholdOracle(store), store, baselines=("random",), densities=(1,), threshold_metric="model")
    per_task = own["rows"]["model"]["per_task"]["metaworld/reach"]
    assert per_task["threshold"] == 0.5 and per_task["success_acc"] == 1.0 and per_task["success_fpr"] == 0.0
    assert own["rows"]["random"]["per_task"]["metaworld/reach"]["threshold"] != 0.5  # baselines still choose theirs
    assert model_threshold(ThresholdOracle(store)) == 0.5
    with pytest.raises(ValueError, match="no decision threshold"):
        evaluate(OracleModel(store), store, baselines=(), densities=(1,), threshold_metric="model")
    with pytest.raises(ValueError, match="threshold_metric="):
        evaluate(OracleModel(store), store, threshold_metric="median")


class ReversedOracle(OracleModel):
    """Reads every task backwards, as a general model reads door-open as door-close."""

    def progress(self, frames, instruction, reference=None):
        return 1.0 - self._lookup(frames, 0)


def test_reference_self_check_flags_a_model_that_reads_the_task_backwards(store):
    good = evaluate(OracleModel(store), store, baselines=(), densities=(1,))
    assert good["tasks"]["metaworld/reach"]["reference_voc"] > 0.9
    assert not any("reference demonstration poorly" in n for n in good["notes"])
    bad = evaluate(ReversedOracle(store), store, baselines=(), densities=(1,))
    assert bad["tasks"]["metaworld/reach"]["reference_voc"] < -0.9
    assert bad["rows"]["model"]["mean"]["voc_d1"] < -0.9  # what the check predicted, before any scoring
    note = next(n for n in bad["notes"] if "reference demonstration poorly" in n)
    assert note.startswith("metaworld/reach") and "max_episodes_per_task=1" in note
