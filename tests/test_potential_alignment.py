"""benchmarks/potential_alignment.py: a run's learned potential against the simulator's dense reward, read from
the episodes the run kept (a real episode store on disk)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from episodes import Episode, EpisodeWriter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import potential_alignment as pa  # noqa: E402


def _episode(i: int, phi: np.ndarray, dense: np.ndarray, success: bool, cameras=("corner",),
             size: int = 8) -> Episode:
    T = len(phi)
    rng = np.random.default_rng(i)
    terminated = np.zeros(T, np.float32)
    if success:
        terminated[-1] = 1.0
        phi = phi.copy()
        phi[-1] = 0.0  # phi_next at a true terminal, as stepwise-train stores it
    return Episode(images={c: rng.integers(0, 255, (T + 1, size, size, 3), dtype=np.uint8) for c in cameras}, proprio=np.zeros((T + 1, 4), np.float32),
                   state=np.zeros((T + 1, 39), np.float32), actions=np.zeros((T, 4), np.float32),
                   rewards=np.zeros(T, np.float32), dones=np.r_[np.zeros(T - 1), 1].astype(bool), task="metaworld/push",
                   instruction="push the puck", fps=80, success=success, seed=i, kind="policy",
                   infos={"progress": phi.astype(np.float32), "dense_reward": dense.astype(np.float32),
                          "terminated": terminated, "success": terminated.copy()},
                   keyframes=np.array([T // 2, T]), extra_attrs={"online_episode": i})


def _run(root: Path, episodes: list[Episode], cameras=("corner",)) -> Path:
    (root / ".hydra").mkdir(parents=True)
    (root / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
        {"task": "metaworld/push", "demos": 2, "seed": 3, "refresh": {"every": 10}}))
    with EpisodeWriter(root / "online_episodes.hdf5", env_args={"task": "metaworld/push", "cameras": list(cameras)}) as w:
        for ep in episodes:
            w.add(ep)
    return root


def test_alignment_reads_the_kept_episodes_and_measures_order_and_end_values(tmp_path):
    t = np.linspace(0, 1, 30)
    # episodes 0-1: the learned potential orders states as the oracle does (a monotone transform);
    # episodes 2-3: it runs against it, and rates the failure's last state 0.95 while the oracle says 0.1
    good = [_episode(0, t ** 2, 10 * t, True), _episode(1, 0.5 * t, 5 * t, False)]
    bad = [_episode(2, 1 - t, 10 * t, True), _episode(3, np.r_[0.5 * t[:-1], 0.95], np.r_[5 * t[:-1], 1.0], False)]
    run = _run(tmp_path / "run", good + bad)
    eps = pa.episode_terms(run / "online_episodes.hdf5")
    assert [e["episode"] for e in eps] == [0, 1, 2, 3]
    assert len(eps[0]["phi"]) == 29  # the success's terminal step (potential 0 by definition) is left out
    first, second = pa.block_stats(eps[:2]), pa.block_stats(eps[2:])
    assert first["rho"] == 1.0 and second["rho"] < 0
    assert second["end_phi_fail"] == np.float32(0.95) and abs(second["end_oracle_fail"] - 0.1) < 1e-6
    assert first["success"] == 0.5
    assert pa.describe(run) == "push, 2 demos, seed 3, refreshed every 10"

    # the script: one row per block, and a run without kept episodes is named and skipped
    out = tmp_path / "table.md"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "potential_alignment.py"), str(run),
                           str(tmp_path / "nothing"), "--block", "2", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "| push, 2 demos, seed 3, refreshed every 10 | 0-1 | 0.50 | 1.00 |" in text
    assert "| push, 2 demos, seed 3, refreshed every 10 | 2-3 |" in text
    assert "nothing: no online_episodes.hdf5" in text


def test_rescoring_with_another_model_compares_its_potential_of_the_state_after_each_step(tmp_path):
    """--model: the episodes' frames scored anew, Phi of frame t+1 against step t's dense reward, the success's
    terminal step left out; a run without an adapted model is named and skipped."""
    import reward_models
    from reward_models.shaping import episode_potentials

    model = reward_models.load("general")
    cams = list(model.cameras)
    t = np.linspace(0, 1, 12)
    eps = [_episode(0, t, 10 * t, True, cams, 96), _episode(1, t, 10 * t, False, cams, 96)]
    run = _run(tmp_path / "run", eps, cams)
    terms = pa.episode_terms(run / "online_episodes.hdf5", model)
    for ep, term in zip(eps, terms):
        phi = episode_potentials(model, ep.images, ep.instruction)[1:]
        keep = ep.infos["terminated"] < 0.5
        np.testing.assert_allclose(term["phi"], phi[keep], atol=1e-6)
        np.testing.assert_allclose(term["oracle"], np.clip(ep.infos["dense_reward"][keep] / 10, 0, 1), atol=1e-6)
    assert len(terms[0]["phi"]) == 11 and len(terms[1]["phi"]) == 12
    out = tmp_path / "table.md"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "potential_alignment.py"), str(run),
                           "--model", "general", "adapted", "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "| push, 2 demos, seed 3, refreshed every 10; general, forward | 0-1 |" in text
    assert "--model adapted:" in text and "has no reward_model/" in text
