"""Data-parallel reward-model training (torchrun, DDP over gloo on the CPU): the split of a batch,
two processes against one at the same global batch for every trainable family, and a killed
two-process run that resumes to the same weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from reward_models import distributed
from reward_models.distributed import Ranks, load_state

CAMS = ("corner", "gripperPOV")
TASK = "metaworld/drawer-close"  # a training task of the default split (the tcn trainer refuses held-out ones)
ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

# Tiny settings per family: a few steps each, global batches that split evenly over 2 processes.
FAMILIES = {
    "step_prm": ["reward=step_prm", "steps=4", "batch_episodes=4", "frames_per_episode=6", "pairs_per_episode=16",
                 "val_every_nth=0", "reward.image_size=32", "reward.encoder_size=32", f"reward.cameras=[{','.join(CAMS)}]",
                 "reward.dim=32", "reward.width=16", "reward.device=cpu", "failure_share=0"],
    "tcn": ["reward=tcn", "reward.steps=4", "reward.batch_episodes=4", "reward.times_per_episode=4",
            "reward.negative_margin=2", "reward.image_size=32", "reward.channels=[8,16,16,16]", "reward.embed_dim=16",
            "reward.proj_dim=16", f"reward.cameras=[{','.join(CAMS)}]", "reward.warmup_steps=2", "reward.device=cpu"],
    "vlm_success": ["reward=vlm_success", "reward.steps=4", "reward.batch_size=8", "reward.image_size=32",
                    f"reward.cameras=[{','.join(CAMS)}]", "reward.warmup=2", "reward.eval_every=100",
                    "reward.val_fraction=0", "reward.device=cpu"],
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Four scripted drawer-close episodes, two cameras at 32 px, recorded with the project's collector."""
    import sim
    from episodes import EpisodeWriter
    from sim.collect import Plan, record_episode

    path = tmp_path_factory.mktemp("ddp") / "drawer-close.hdf5"
    task = sim.SimTask(TASK, cameras=list(CAMS), image_size=32, split="demo")
    try:
        with EpisodeWriter(path, fsync=False) as writer:
            for seed in range(4):
                writer.add(record_episode(task, Plan("expert", seed), max_steps=150, post_success_steps=6))
    finally:
        task.close()
    return path


def train_rm(args: list[str], nproc: int, timeout: float = 300, wait: bool = True):
    """``stepwise-train-rm`` in one process, or under torchrun with ``nproc`` processes (1 thread each)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "reward_models.train", *args, "num_threads=1"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "reward_models.train", *args, "num_threads=1"]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    return run


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant (torchrun starts its ranks in sessions of their own)."""
    family, todo = [], [pid]
    while todo:
        p = todo.pop()
        family.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    for p in family:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def scalars(out: Path, tag: str) -> list[float]:
    """The values of one TensorBoard scalar written under ``out/tb`` (rank 0's), in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    return [e.value for e in sorted(acc.Scalars(tag), key=lambda e: e.step)]


def moments(out: Path) -> dict[str, torch.Tensor]:
    """AdamW's running moments of every parameter, flattened: ``{"exp_avg": ..., "exp_avg_sq": ...}``."""
    state = load_state(out / "trainer_state.pt")["opt"]["state"]
    return {m: torch.cat([state[i][m].flatten().double() for i in sorted(state)]) for m in ("exp_avg", "exp_avg_sq")}


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm().clamp(min=1e-30))


def weights(out: Path) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in load_state(out / "trainer_state.pt")["net"].items()}


# --------------------------------------------------------------------------- the split of a batch


def test_shards_and_blocks_cover_a_batch_once():
    shards = [distributed.shard(10, Ranks(r, 3)) for r in range(3)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(10))
    assert [len(s) for s in shards] == [4, 3, 3]
    blocks = [distributed.block(8, Ranks(r, 2)) for r in range(2)]
    assert [list(range(8))[b] for b in blocks] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError, match="multiple of 2"):
        distributed.block(7, Ranks(0, 2))
    with pytest.raises(ValueError, match="at least 3"):
        distributed.shard(2, Ranks(0, 3))


def test_two_shares_of_a_pair_batch_weigh_to_the_whole_batch_loss(store):
    """Each rank's share holds its episode slots' states and pairs only, and the share-weighted mean
    of the ranks' losses (what DDP's gradient average optimises) is the whole batch's loss."""
    from omegaconf import OmegaConf

    from reward_models.pairs import PairSampler
    from reward_models.train_episodes import load_episodes
    from reward_models.step_prm import StepPRM, StepPRMConfig
    from reward_models.train import augmented_share, pair_loss

    torch.manual_seed(0)
    model = StepPRM(StepPRMConfig(cameras=CAMS, image_size=(32, 32), encoder_size=32, width=16, dim=32, device="cpu"))
    episodes = load_episodes(store, model.cameras, None, resize_to=32)
    batch = PairSampler(episodes, model.cfg.num_bins, 6, 16, seed=0).sample(4)
    model.cache_instructions(sorted({e.instruction for e in episodes}))
    table = torch.stack([model.text_embedding(e.instruction) for e in episodes[:1]])
    cfg = OmegaConf.create({"shift_pad": 2, "single_view_prob": 0.3})
    whole = augmented_share(batch, cfg, torch.Generator().manual_seed(1), Ranks())
    shares = [augmented_share(batch, cfg, torch.Generator().manual_seed(1), Ranks(r, 2)) for r in range(2)]
    assert [len(s["images"]) for s in shares] == [len(whole["images"]) // 2] * 2  # slots 0, 2 and 1, 3
    assert sum(len(s["hop"]) for s in shares) == len(whole["hop"]) == batch.hop.size
    for s in shares:  # every pair's states lie inside its own share
        for key in ("start", "before", "after"):
            assert s[key].max() < len(s["images"])
    net = model.net.eval()
    with torch.no_grad():
        full = pair_loss(net, whole, table, model.centers, 0.5)[0]
        parts = [pair_loss(net, s, table, model.centers, 0.5)[0] * len(s["hop"]) / len(whole["hop"]) for s in shares]
    assert float(sum(parts)) == pytest.approx(float(full), rel=1e-5)


def test_a_damaged_trainer_state_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "trainer_state.pt"
    distributed.save_main({"step": 3, "net": {"w": torch.ones(4)}}, path)
    assert load_state(path)["step"] == 3 and [p.name for p in tmp_path.iterdir()] == ["trainer_state.pt"]
    assert torch.load(path, weights_only=True)["step"] == 3  # the sha256 trailer leaves it a torch file
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="damaged.*delete it"):
        load_state(path)
    path.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(ValueError, match="delete it"):
        load_state(path)


# --------------------------------------------------------------------------- two processes against one


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_two_processes_take_the_steps_of_one_at_the_same_global_batch(family, store, tmp_path):
    """Same seed, same global batch: the first step's loss agrees to float precision (the same batch
    seen in two halves), the next ones within 2%, the gradients' running mean within 10% and the
    weights within 0.2% of their norm after 4 AdamW steps (float32 sums in another order)."""
    args = [*FAMILIES[family], f"data={store}"]
    one, two = tmp_path / "one", tmp_path / "two"
    train_rm([*args, f"out={one}"], nproc=1)
    run = train_rm([*args, f"out={two}"], nproc=2)
    assert "2 processes" in run.stdout + run.stderr
    loss_one, loss_two = scalars(one, "train/loss"), scalars(two, "train/loss")
    assert len(loss_one) == len(loss_two) == 4
    assert loss_two[0] == pytest.approx(loss_one[0], rel=1e-4)
    np.testing.assert_allclose(loss_two, loss_one, rtol=2e-2)
    # AdamW's first moment is a running mean of the gradients: with the all-reduce it is the gradient of
    # the whole batch (measured gaps: 8e-7 step_prm, 0.03 vlm_success, whose BatchNorm ResNet amplifies
    # float32 order: 1 against 2 threads in ONE process already gives 0.009); without it, 0.55.
    gap = max(relative_gap(moments(one)[k], moments(two)[k]) for k in ("exp_avg",))
    assert gap < 0.1, f"{family}: the gradients of 2 processes differ from 1 process's by {gap:.3f} (relative)"
    a, b = weights(one), weights(two)
    assert relative_gap(torch.cat([v.flatten() for v in a.values()]), torch.cat([b[k].flatten() for k in a])) < 2e-3
    kinds = [json.loads((out / "config.json").read_text())["kind"] for out in (one, two)]
    assert kinds == [family, family]  # both finish as checkpoints of one process


def test_a_killed_two_process_run_resumes_to_the_weights_of_an_uninterrupted_one(store, tmp_path):
    args = [*FAMILIES["step_prm"], "steps=30", "checkpoint_every=3", f"data={store}"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train_rm([*args, f"out={straight}"], nproc=2)
    proc = train_rm([*args, f"out={killed}"], nproc=2, wait=False)
    state = killed / "trainer_state.pt"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and 3 <= load_state(state)["step"] < 30:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stdout.read()[-2000:]
    kill_tree(proc.pid)  # torchrun and both ranks at once, as a lost node would
    proc.wait(timeout=30)
    at_kill = load_state(state)["step"]
    assert 3 <= at_kill < 30 and not (killed / "config.json").exists()
    run = train_rm([*args, f"out={killed}"], nproc=2)
    assert f"resuming from step {at_kill} of 30" in run.stdout + run.stderr
    a, b = weights(straight), weights(killed)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert load_state(killed / "trainer_state.pt")["step"] == 30
