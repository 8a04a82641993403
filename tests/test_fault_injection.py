"""Fault injection for the long jobs: each CLI runs on small settings, is SIGKILLed at seeded random
points, resumed, and must end with nothing corrupt, its counts continuing from the last checkpoint,
and at most one checkpoint interval of work lost.

- ``stepwise-collect``: episodes are committed one by one (the store's page journal); a kill loses at
  most the episode being recorded, and the resumed store holds each planned episode once.
- ``stepwise-train``: checkpoints after every evaluation (``eval.every`` episodes); a kill loses at
  most that many episodes; the resumed history starts with the checkpoint's rows, unchanged.
- ``stepwise-train-reset-free``: the same with ``checkpoint_every`` attempts.

The kill points are drawn from a seeded generator: a random delay after the run's first checkpoint
(or first stored episode), so kills land in acting, learning, evaluating and saving alike.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ENV = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SEED = 20


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    out = open(log, "ab")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=ENV)


def kill_after(proc: subprocess.Popen, ready, delay_s: float, timeout_s: float = 240) -> bool:
    """Wait until ``ready()`` (polling), then ``delay_s`` more, then SIGKILL; False if it ended first."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the run never reached its first checkpoint"
        time.sleep(0.05)
    end = time.monotonic() + delay_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def finish(proc: subprocess.Popen, log: Path, timeout_s: float = 240) -> None:
    assert proc.wait(timeout_s) == 0, log.read_text()[-3000:]


def progress(log: Path, bar: str) -> int:
    """The furthest count a tqdm bar named ``bar`` showed in the log (what the run had done when killed)."""
    found = re.findall(rf"{bar}:[^|\r\n]*\|[^|\r\n]*\|\s*(\d+)/\d+", log.read_text(errors="replace"))
    return max(map(int, found), default=0)


def test_stepwise_train_survives_kills(tmp_path):
    from policies.config import TrainConfigError
    from policies.run_dir import read_checkpoint

    rng = np.random.default_rng(SEED)
    run, log = tmp_path / "run", tmp_path / "train.log"
    every, episodes = 3, 9
    args = [str(BIN / "stepwise-train"), "task=metaworld/reach", "demos=1", "reward.shaping=none", "pretrain.bc_steps=20",
            "pretrain.steps=10", "online.max_steps=25", f"online.episodes={episodes}", f"eval.every={every}", "eval.episodes=1",
            "eval.final_episodes=1", "agent.batch_size=32", "agent.hidden_sizes=[32,32]", "adapt.steps=0", "threads=1",
            "offline_threads=1", f"hydra.run.dir={run}"]
    ckpt = run / "checkpoint.pt"
    kills, seen = [], []
    for i in range(2):
        proc = start(args + (["resume=true"] if i else []), log)
        before = read_checkpoint(ckpt, "stepwise-train", TrainConfigError)["state"]["episode"] if ckpt.exists() else -1
        mtime = ckpt.stat().st_mtime_ns if ckpt.exists() else 0
        delay = float(rng.uniform(0.0, 4.0))
        if not kill_after(proc, lambda: ckpt.exists() and ckpt.stat().st_mtime_ns != mtime, delay):
            break  # finished before the kill point: nothing more to inject
        state = read_checkpoint(ckpt, "stepwise-train", TrainConfigError)["state"]  # verified: checksum and kind
        done = progress(log, "online")
        kills.append((round(delay, 2), done, state["episode"], state["phase"]))
        assert state["episode"] >= before
        assert state["episode"] % every == 0 or state["episode"] == episodes  # checkpoints fall on the interval
        assert done - state["episode"] <= every  # at most one interval lost
        seen.append(state["history"])
    proc = start(args + ["resume=true"], log)
    finish(proc, log)
    final = read_checkpoint(ckpt, "stepwise-train", TrainConfigError)["state"]
    assert final["phase"] == "done" and final["episode"] == episodes
    assert [r["episode"] for r in final["history"]] == list(range(episodes))  # each episode once, in order
    key = lambda rows: [(r["episode"], r["length"], r["return"]) for r in rows]  # noqa: E731
    for rows in seen:  # the resumed run continued from the checkpoint, not from scratch
        assert key(final["history"][: len(rows)]) == key(rows)
    assert (run / "report.json").exists()
    assert len(kills) >= 1, "no kill landed"
    print(f"stepwise-train: kills (delay s, episodes done, checkpoint episode, phase): {kills}")


def test_stepwise_collect_survives_kills(tmp_path):
    from episodes import EpisodeStore

    rng = np.random.default_rng(SEED + 1)
    out, log = tmp_path / "demos", tmp_path / "collect.log"
    episodes = 8
    args = [str(BIN / "stepwise-collect"), "task=metaworld/drawer-open", f"episodes={episodes}", "cameras=[corner]",
            "image_size=32", "post_success_steps=0", f"out={out}"]
    store = out / "drawer-open.hdf5"
    bar = "collect drawer-open"
    kills = []
    for _ in range(2):
        proc = start(args, log)
        have = progress(log, bar)
        delay = float(rng.uniform(0.0, 1.5))
        if not kill_after(proc, lambda: progress(log, bar) > have, delay):  # the log, not the store: never open it under the writer
            break
        done = progress(log, bar)
        with EpisodeStore(store) as s:
            n = len(s)
            [s[i] for i in range(n)]  # every committed episode reads back
        kills.append((round(delay, 2), done, n))
        assert n >= done  # what the run reported done was committed: at most the episode being recorded is lost
    proc = start(args, log)
    finish(proc, log)
    with EpisodeStore(store) as s:
        eps = [s[i] for i in range(len(s))]
    assert len(eps) == episodes
    assert len({e.seed for e in eps}) == episodes  # each planned episode once
    assert all(e.success and len(e.actions) > 0 and e.images["corner"].shape[1:] == (32, 32, 3) for e in eps)
    assert len(kills) >= 1, "no kill landed"
    print(f"stepwise-collect: kills (delay s, episodes reported done, episodes in the store): {kills}")


def test_stepwise_train_reset_free_survives_kills(tmp_path):
    from policies.reset_free.checkpoint import KIND
    from policies.reset_free.config import ResetFreeConfigError
    from policies.run_dir import read_checkpoint

    rng = np.random.default_rng(SEED + 2)
    run, log = tmp_path / "run", tmp_path / "reset_free.log"
    every, attempts = 2, 10
    args = [str(BIN / "stepwise-train-reset-free"), "success=sim", "monitor=false", "demos=1", "pretrain.bc_steps=5",
            "pretrain.steps=5", "max_steps=15", f"episodes={attempts}", "reset_every=2", "eval.every=100", "eval.episodes=1",
            "eval.final_episodes=1", "agent.batch_size=16", "agent.hidden_sizes=[16,16]", "offline_threads=1",
            f"checkpoint_every={every}", f"hydra.run.dir={run}"]
    ckpt = run / "checkpoint.pt"
    kills, seen = [], []
    for i in range(2):
        proc = start(args + (["resume=true"] if i else []), log)
        mtime = ckpt.stat().st_mtime_ns if ckpt.exists() else 0
        delay = float(rng.uniform(0.0, 0.8))
        if not kill_after(proc, lambda: ckpt.exists() and ckpt.stat().st_mtime_ns != mtime, delay):
            break
        state = read_checkpoint(ckpt, KIND, ResetFreeConfigError)["state"]  # verified: checksum and kind
        done = progress(log, "reset-free")
        kills.append((round(delay, 2), done, len(state["history"])))
        assert len(state["history"]) % every == 0 or len(state["history"]) == attempts  # checkpoints fall on the interval
        assert done - len(state["history"]) <= every  # at most one interval lost
        seen.append(state["history"])
    proc = start(args + ["resume=true"], log)
    finish(proc, log)
    final = read_checkpoint(ckpt, KIND, ResetFreeConfigError)["state"]
    assert len(final["history"]) == attempts
    for rows in seen:
        assert final["history"][: len(rows)] == rows
    assert len(kills) >= 1, "no kill landed"
    print(f"stepwise-train-reset-free: kills (delay s, attempts shown done, attempts checkpointed): {kills}")


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_checkpoint_fails_its_checksum(tmp_path, damage):
    from policies.config import TrainConfigError
    from policies.run_dir import read_checkpoint, save_atomic

    path = tmp_path / "checkpoint.pt"
    save_atomic({"version": 1, "kind": "stepwise-train", "x": list(range(1000))}, path)
    save_atomic({"version": 1, "kind": "stepwise-train", "x": list(range(2000))}, path)
    assert read_checkpoint(path, "stepwise-train", TrainConfigError)["x"][-1] == 1999
    copy = tmp_path / "copy.pt"
    copy.write_bytes(path.read_bytes())  # the checksum travels with the file
    assert read_checkpoint(copy, "stepwise-train", TrainConfigError)["x"][-1] == 1999
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw[len(raw) // 2] ^= 0x01  # one bit, in the middle of the pickled data
    path.write_bytes(bytes(raw))
    with pytest.raises(TrainConfigError, match="fails its checksum" if damage == "flip" else "cannot be read"):
        read_checkpoint(path, "stepwise-train", TrainConfigError)
    assert torch.load(copy, weights_only=False)["x"][-1] == 1999  # a plain torch.load still reads an intact one
