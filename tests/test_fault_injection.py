"""Fault injection for the long jobs: each CLI runs on small settings, is SIGKILLed at seeded random
points, resumed, and must end with nothing corrupt, its counts continuing from the last checkpoint,
and at most one checkpoint interval of work lost.

- ``stepwise-collect``: episodes are committed one by one (the store's page journal); a kill loses at
  most the episode being recorded, and the resumed store holds each planned episode once.
- ``stepwise-train``: checkpoints every ``checkpoint_every`` episodes and after every evaluation
  (``eval.every``); a kill loses at most ``checkpoint_every`` episodes (``eval.every`` without it); the
  resumed history starts with the checkpoint's rows, unchanged.
- ``stepwise-train-reset-free``: the same with ``checkpoint_every`` attempts.
- ``stepwise-train-rm``: ``trainer_state.pt`` every ``checkpoint_every`` steps (checksummed); a kill loses
  at most that many steps, and the resumed run says where it resumed.

The kill points are drawn from a seeded generator: a progress count (read from the run's progress
bar, past the last checkpoint) and a short random delay after it, so kills land in acting, learning,
evaluating and saving alike, on a fast machine as on a slow one.
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
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=ENV)


def progress(log: Path, bar: str) -> int:
    """The furthest count a tqdm bar named ``bar`` showed in the log (what the run had done)."""
    found = re.findall(rf"{bar}:[^|\r\n]*\|[^|\r\n]*\|\s*(\d+)/\d+", log.read_text(errors="replace"))
    return max(map(int, found), default=0)


def kill_at(proc: subprocess.Popen, log: Path, bar: str, count: int, delay_s: float, timeout_s: float = 240) -> bool:
    """SIGKILL ``delay_s`` after the run's bar reached ``count``; False if the run ended first."""
    deadline = time.monotonic() + timeout_s
    while progress(log, bar) < count:
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, f"the run never reached {count} on its {bar!r} bar"
        time.sleep(0.02)
    end = time.monotonic() + delay_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def finish(proc: subprocess.Popen, log: Path, timeout_s: float = 240) -> None:
    assert proc.wait(timeout_s) == 0, log.read_text()[-3000:]


def inject(first: list[str], resume: list[str], tmp_path: Path, bar: str, total: int, checkpointed, rng, max_delay: float):
    """Run, kill at two seeded progress counts (each past the last checkpoint), resume, finish.

    ``checkpointed()`` reads what the last checkpoint (or store) holds, verified. Returns the kills as
    (count the kill was aimed at, count shown done, count checkpointed) and the final log."""
    kills, base = [], 0
    for i in range(2):
        if base + 1 > total - 1:
            base = total - 2  # aim at the last count but one
        aim, delay = int(rng.integers(base + 1, total)), float(rng.uniform(0.0, max_delay))
        log = tmp_path / f"run{i}.log"
        proc = start(resume if i else first, log)
        if not kill_at(proc, log, bar, aim, delay):
            finish(proc, log)  # it ended before the kill point: that run was the last
            break
        done, base = progress(log, bar), checkpointed()
        kills.append((aim, done, base))
    else:
        log = tmp_path / "final.log"
        finish(start(resume, log), log)
    assert kills, "no kill landed"
    return kills


def test_stepwise_train_survives_kills(tmp_path):
    from policies.config import TrainConfigError
    from policies.run_dir import read_checkpoint

    every, evals, episodes = 2, 3, 6  # checkpoint_every=2 and at every evaluation (eval.every=3): after 2, 3, 4, 6
    args = [str(BIN / "stepwise-train"), "task=metaworld/reach", "demos=1", "reward.shaping=none", "pretrain.bc_steps=20",
            "pretrain.steps=10", "online.max_steps=20", f"online.episodes={episodes}", f"eval.every={evals}",
            f"checkpoint_every={every}", "eval.episodes=1",
            "eval.final_episodes=1", "agent.batch_size=32", "agent.hidden_sizes=[32,32]", "adapt.steps=0", "threads=1",
            "offline_threads=1", f"hydra.run.dir={tmp_path / 'run'}"]
    ckpt = tmp_path / "run" / "checkpoint.pt"
    seen = []

    def checkpointed() -> int:
        state = read_checkpoint(ckpt, "stepwise-train", TrainConfigError)["state"]  # verified: checksum and kind
        seen.append(state)
        return state["episode"]

    kills = inject(args, args + ["resume=true"], tmp_path, "online", episodes, checkpointed, np.random.default_rng(SEED), 0.5)
    for (_, done, at), state in zip(kills, seen):
        assert at % every == 0 or at % evals == 0 or at == episodes  # checkpoints fall on the interval
        assert done - at <= every  # at most one interval lost
    final = read_checkpoint(ckpt, "stepwise-train", TrainConfigError)["state"]
    assert final["phase"] == "done" and final["episode"] == episodes
    assert [r["episode"] for r in final["history"]] == list(range(episodes))  # each episode once, in order
    key = lambda rows: [(r["episode"], r["length"], r["return"]) for r in rows]  # noqa: E731
    for state in seen:  # the resumed run continued from the checkpoint, not from scratch
        assert key(final["history"][: len(state["history"])]) == key(state["history"])
    assert (tmp_path / "run" / "report.json").exists()
    print(f"stepwise-train: kills (aimed at episode, episodes done, checkpoint episode): {kills}")


def test_stepwise_train_rm_survives_kills(tmp_path):
    import sim
    from episodes import EpisodeWriter
    from reward_models import load
    from reward_models.distributed import load_state
    from sim.collect import Plan, record_episode

    store = tmp_path / "drawer-close.hdf5"
    task = sim.SimTask("metaworld/drawer-close", cameras=["corner", "gripperPOV"], image_size=32, split="demo")
    try:
        with EpisodeWriter(store, fsync=False) as writer:
            for seed in range(3):
                writer.add(record_episode(task, Plan("expert", seed), max_steps=150, post_success_steps=4))
    finally:
        task.close()
    every, steps, out = 5, 40, tmp_path / "model"
    state = out / "trainer_state.pt"
    args = [str(BIN / "stepwise-train-rm"), "reward=step_prm", f"data={store}", f"out={out}", f"steps={steps}",
            f"checkpoint_every={every}", "batch_episodes=2", "frames_per_episode=6", "pairs_per_episode=16",
            "val_every_nth=0", "reward.image_size=32", "reward.encoder_size=32", "reward.cameras=[corner,gripperPOV]",
            "reward.dim=32", "reward.width=16", "reward.device=cpu", "num_threads=1"]
    kills = inject(args, args, tmp_path, "train step_prm", steps,
                   lambda: load_state(state)["step"] if state.exists() else 0,  # verified: the checksum
                   np.random.default_rng(SEED + 3), 0.3)
    for _, done, at in kills:
        assert at % every == 0 and done - at <= every  # checkpoints on the interval, at most one interval lost
    logs = "".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("*.log")))
    assert all(f"resuming from step {at} of {steps}" in logs for _, _, at in kills if at)
    assert load_state(state)["step"] == steps and load(out).kind == "step_prm"
    print(f"stepwise-train-rm: kills (aimed at step, steps done, checkpoint step): {kills}")


def test_stepwise_collect_survives_kills(tmp_path):
    from episodes import EpisodeStore

    episodes = 6
    args = [str(BIN / "stepwise-collect"), "task=metaworld/drawer-open", f"episodes={episodes}", "cameras=[corner]",
            "image_size=32", "post_success_steps=0", f"out={tmp_path / 'demos'}"]
    store = tmp_path / "demos" / "drawer-open.hdf5"

    def checkpointed() -> int:  # opened only once the writer is dead (never under it)
        with EpisodeStore(store) as s:
            [s[i] for i in range(len(s))]  # every committed episode reads back
            return len(s)

    kills = inject(args, args, tmp_path, "collect drawer-open", episodes, checkpointed, np.random.default_rng(SEED + 1), 0.5)
    for _, done, stored in kills:
        assert stored >= done  # what the run reported done was committed: at most the episode being recorded is lost
    with EpisodeStore(store) as s:
        eps = [s[i] for i in range(len(s))]
    assert len(eps) == episodes
    assert len({e.seed for e in eps}) == episodes  # each planned episode once
    assert all(e.success and len(e.actions) > 0 and e.images["corner"].shape[1:] == (32, 32, 3) for e in eps)
    print(f"stepwise-collect: kills (aimed at episode, episodes done, episodes in the store): {kills}")


def test_stepwise_train_reset_free_survives_kills(tmp_path):
    from policies.reset_free.checkpoint import KIND
    from policies.reset_free.config import ResetFreeConfigError
    from policies.run_dir import read_checkpoint

    every, attempts = 2, 8
    args = [str(BIN / "stepwise-train-reset-free"), "success=sim", "monitor=false", "demos=1", "pretrain.bc_steps=5",
            "pretrain.steps=5", "max_steps=15", f"episodes={attempts}", "reset_every=2", "eval.every=100", "eval.episodes=1",
            "eval.final_episodes=1", "agent.batch_size=16", "agent.hidden_sizes=[16,16]", "offline_threads=1",
            f"checkpoint_every={every}", f"hydra.run.dir={tmp_path / 'run'}"]
    ckpt = tmp_path / "run" / "checkpoint.pt"
    seen = []

    def checkpointed() -> int:
        state = read_checkpoint(ckpt, KIND, ResetFreeConfigError)["state"]  # verified: checksum and kind
        seen.append(state["history"])
        return len(state["history"])

    kills = inject(args, args + ["resume=true"], tmp_path, "reset-free", attempts, checkpointed, np.random.default_rng(SEED + 2), 0.3)
    for _, done, at in kills:
        assert at % every == 0 or at == attempts  # checkpoints fall on the interval
        assert done - at <= every  # at most one interval lost
    final = read_checkpoint(ckpt, KIND, ResetFreeConfigError)["state"]
    assert len(final["history"]) == attempts
    for rows in seen:
        assert final["history"][: len(rows)] == rows
    print(f"stepwise-train-reset-free: kills (aimed at attempt, attempts done, attempts checkpointed): {kills}")


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


class _Exploit:
    """Unpickling this would create a file (a stand-in for running any command)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_checkpoint_that_would_run_code_is_refused_even_with_a_valid_checksum(tmp_path):
    """Resuming someone else's run folder never executes what its checkpoint pickled: the restricted
    unpickler takes tensors, numbers, strings, containers and numeric numpy arrays only."""
    from policies.config import TrainConfigError
    from policies.run_dir import read_checkpoint, save_atomic

    path, target = tmp_path / "checkpoint.pt", tmp_path / "pwned"
    save_atomic({"version": 1, "kind": "stepwise-train", "rows": np.arange(6.0).reshape(2, 3), "x": _Exploit(str(target))}, path)
    with pytest.raises(TrainConfigError, match="cannot be read"):
        read_checkpoint(path, "stepwise-train", TrainConfigError)
    assert not target.exists()
    save_atomic({"version": 1, "kind": "stepwise-train", "rows": np.arange(6.0).reshape(2, 3), "n": np.float32(2)}, path)
    ok = read_checkpoint(path, "stepwise-train", TrainConfigError)  # numeric arrays and scalars still load
    assert ok["rows"].tolist() == [[0, 1, 2], [3, 4, 5]] and ok["n"] == 2
