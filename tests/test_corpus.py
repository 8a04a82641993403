"""`stepwise-collect` over many tasks (sim.corpus): workers, the disk estimate, failures, kills."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from episodes import EpisodeStore
from episodes.validation import episodes_equal

BIN = Path(sys.executable).parent
TASKS = "task=[metaworld/reach,metaworld/button-press]"
SMALL = ("episodes=2", "failures=1", "failure_kinds=[stall]", "image_size=32", "cameras=[corner,gripperPOV]",
         "split=train", "randomize=corpus")


def _cmd(out: Path, *args: str) -> list[str]:
    return [str(BIN / "stepwise-collect"), f"out={out}", *args]


def _collect(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": "egl"}
    return subprocess.run(_cmd(out, *args), capture_output=True, text=True, env=env, timeout=300)


def _episodes(path: Path) -> list:
    with EpisodeStore(path) as store:
        return [store[i] for i in range(len(store))]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """Two tasks collected in one process (workers=1)."""
    out = tmp_path_factory.mktemp("workers1")
    run = _collect(out, TASKS, *SMALL, "workers=1")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "corpus: 2/2 tasks; episodes expert 4, stall 2;" in run.stdout
    return out


def test_workers_2_killed_and_resumed_equals_workers_1(reference, tmp_path):
    # SIGTERM mid-run (as soon as one episode is stored): the workers die mid-episode.
    proc = subprocess.Popen(_cmd(tmp_path, TASKS, *SMALL, "workers=2"), env={**os.environ, "MUJOCO_GL": "egl"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        stored = [p for p in tmp_path.glob("*.hdf5") if _count(p)]
        if stored:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "rerun the same command" in err, err[-2000:]
    done = sum(_count(p) for p in tmp_path.glob("*.hdf5"))
    assert 1 <= done < 6, done  # killed part-way
    print(f"killed after {done} of 6 episodes")
    # The rerun resumes (no worker left holding a store's lock), estimates only what is missing,
    # and ends with the same stores as one process collecting from scratch.
    run = _collect(tmp_path, TASKS, *SMALL, "workers=2")
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"for {6 - done} episodes" in run.stdout, run.stdout
    for name in ("reach.hdf5", "button-press.hdf5"):
        ours, ref = _episodes(tmp_path / name), _episodes(reference / name)
        assert len(ours) == len(ref) == 3
        assert all(episodes_equal(a, b) for a, b in zip(ours, ref)), name


def _count(path: Path) -> int:
    try:
        with EpisodeStore(path) as store:
            return len(store)
    except Exception:  # being created right now
        return 0


def test_disk_estimate_counts_the_frames_and_refuses_before_rendering(reference, tmp_path):
    run = _collect(tmp_path, TASKS, *SMALL, "disk_free_gb=0.0001")
    assert run.returncode == 2
    frames = sum(len(ep.actions) + 1 for name in ("reach.hdf5", "button-press.hdf5")
                 for ep in _episodes(reference / name))
    assert f"for 6 episodes / {frames} frames" in run.stderr, run.stderr[-2000:]  # exact, from the plans
    assert "GB free on" in run.stderr and "force_disk=true" in run.stderr and "image_size" in run.stderr
    assert not list(tmp_path.glob("*.hdf5"))  # nothing was collected


def test_a_failing_task_is_named_and_the_others_finish(tmp_path):
    (tmp_path / "reach.hdf5").mkdir()  # reach's store cannot be written
    run = _collect(tmp_path, TASKS, "episodes=1", "image_size=32", "cameras=[corner]", "workers=2")
    assert run.returncode == 2
    assert "1 of 2 tasks failed (metaworld/reach:" in run.stderr, run.stderr[-2000:]
    assert "corpus: 1/2 tasks" in run.stdout
    assert _count(tmp_path / "button-press.hdf5") == 1
