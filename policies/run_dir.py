"""A learning run's directory: the resume guard, atomic checksummed checkpoints that name their
kind, and stepwise-train's checkpoint (agent, online replay with the image policy's sidecar file,
counters, random states) and its restore into a fresh learner.

A checkpoint is a ``torch.save`` file followed by a one-line trailer with the sha256 of what precedes
it (``torch.load`` still reads it: a zip archive ignores bytes after its end), written to a temporary
file, fsynced, renamed over the old one and the directory fsynced: a kill at any instant leaves the old
checkpoint or the new one, never a mix. A file damaged later fails on load with the fix instead of
loading garbage: a changed byte fails the checksum, a truncated copy loses the archive's end (and the
trailer) and cannot be read. The checksum travels with the file, so a copied or restored checkpoint
stays verifiable. The image policy's replay file is checksummed in the checkpoint that names it.
Checkpoints from before the trailer load unverified.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from episodes.durable import ChecksumError, file_sha256, read_checksummed, write_checksummed, write_durably
from policies.config import TrainConfigError

CHECKPOINT_VERSION = 1
REPLAY_PREFIX = "online_replay_ep"  # the image policy's online replay: <prefix><episode>.npz beside checkpoint.pt


def existing_checkpoint(run: Path, resume: bool, error: type[Exception]) -> Path | None:
    """``<run>/checkpoint.pt`` when it exists and ``resume`` is set (None when there is none); a run
    directory that holds a run without ``resume=true`` raises ``error``: nothing is overwritten."""
    path = Path(run) / "checkpoint.pt"
    if not path.exists():
        return None
    if not resume:
        raise error(f"{run} already holds a run ({path.name}): pass resume=true to continue it, "
                    "or give another hydra.run.dir")
    return path


def save_atomic(payload: dict, path: Path) -> None:
    """``torch.save`` plus its sha256 trailer, written durably (:mod:`episodes.durable`): a kill never
    leaves half a checkpoint, and damage later fails on load."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    write_checksummed(path, buf.getvalue())


def load_verified(path: Path, error: type[Exception]):
    """``torch.load`` of a checkpoint whose trailer's sha256 matches (a file without a trailer: unverified),
    through torch's restricted unpickler (``weights_only=True`` plus numeric numpy arrays): a run folder
    someone hands over never runs code when resumed."""
    try:
        body, _ = read_checksummed(path)
    except ChecksumError as err:
        raise error(f"checkpoint {err}") from None
    with torch.serialization.safe_globals(numpy_array_globals()):  # arrays of numbers, never code
        return torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)


def numpy_array_globals() -> list:
    """What torch's restricted unpickler needs to rebuild the numpy arrays and scalars of a checkpoint
    (replay rows, histories): array and scalar constructors of numeric data, nothing that runs code."""
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    return [np.ndarray, np.dtype, _reconstruct, scalar, *{type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"}]


def read_checkpoint(path: Path, kind: str, error: type[Exception]) -> dict:
    """A checkpoint written with ``kind``; unreadable or damaged files and other kinds raise ``error`` with the fix."""
    try:
        ckpt = load_verified(path, error)
    except error:
        raise
    except Exception as err:  # truncated or not a torch file
        raise error(f"checkpoint {path} cannot be read ({err}); delete it to start over") from err
    if not isinstance(ckpt, dict) or ckpt.get("kind") != kind:
        raise error(f"{path} is not a {kind} checkpoint; use another hydra.run.dir")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise error(f"{path} has checkpoint version {ckpt.get('version')}, this code reads {CHECKPOINT_VERSION}")
    return ckpt


@dataclass
class RunState:
    """stepwise-train's counters and history that a resume restores (the agent and replay travel beside it)."""

    phase: str = "pretrain"              # pretrain -> online -> done
    episode: int = 0                     # online episodes finished
    env_steps: int = 0
    wall_time_s: float = 0.0             # summed over sessions (resumes)
    history: list[dict] = field(default_factory=list)   # one row per online episode
    evals: list[dict] = field(default_factory=list)     # one row per evaluation
    stage_seconds: dict = field(default_factory=dict)
    refreshes: list[dict] = field(default_factory=list)  # one row per in-the-loop refresh of the progress model


def save_checkpoint(path: Path, agent, online, state: RunState, rng: np.random.Generator, cfg_dict: dict,
                    imitated: dict | None = None) -> None:
    """Everything a resume needs, written atomically (tmp + rename). ``imitated``: the rows of
    successful online episodes added to the demonstrations (online.imitate_successes), by field.

    The state policy's online replay is embedded in the checkpoint. The image policy's
    (`ImageReplayBuffer`, GBs at full size) goes to its own file, named by the episode count and
    written before the checkpoint that names it; older ones are deleted after. A kill at any point
    leaves a checkpoint whose replay file is complete."""
    from policies.image_replay import ImageReplayBuffer

    payload = {
        "version": CHECKPOINT_VERSION, "kind": "stepwise-train", "task": cfg_dict["task"],
        "policy": cfg_dict.get("policy", "state"),
        "obs_dim": agent.obs_dim, "act_dim": agent.act_dim, "config": cfg_dict,
        "agent": agent.state_dict(), "state": state.__dict__,
        "replay_capacity": online.capacity, "imitated": imitated,
        "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
    }
    replay_file = None
    if isinstance(online, ImageReplayBuffer):
        replay_file = f"{REPLAY_PREFIX}{state.episode}.npz"
        tmp_replay = path.parent / f"{REPLAY_PREFIX}{state.episode}.tmp.npz"  # numpy appends .npz to other names
        online.save(tmp_replay)
        write_durably(path.parent / replay_file, lambda tmp: os.replace(tmp_replay, tmp))
        payload.update(replay=None, replay_file=replay_file, replay_size=len(online),
                       replay_bytes=(path.parent / replay_file).stat().st_size,
                       replay_sha256=file_sha256(path.parent / replay_file))
    else:
        payload["replay"] = online.rows()
    save_atomic(payload, path)
    if replay_file is not None:
        for old in path.parent.glob(f"{REPLAY_PREFIX}*.npz"):
            if old.name != replay_file:
                old.unlink(missing_ok=True)


def load_online_images(run: Path, ckpt: dict):
    """The image policy's online replay that ``ckpt`` names, checked against the size it recorded."""
    from policies.image_replay import ImageReplayBuffer

    path = run / ckpt["replay_file"]
    if not path.exists():
        raise TrainConfigError(f"{path}, the online replay of {run / 'checkpoint.pt'}, is missing: restore it, "
                               "or delete checkpoint.pt to start the run over")
    if ckpt.get("replay_sha256") and file_sha256(path) != ckpt["replay_sha256"]:
        raise TrainConfigError(f"{path} fails the checksum {run / 'checkpoint.pt'} recorded for it (damaged after it was "
                               "written): restore it, or delete checkpoint.pt to start the run over")
    try:
        online = ImageReplayBuffer.load(path)
    except Exception as err:  # truncated or not written by ImageReplayBuffer.save
        raise TrainConfigError(f"{path} cannot be read ({err}); delete checkpoint.pt to start the run over") from err
    if len(online) != ckpt["replay_size"]:
        raise TrainConfigError(f"{path} holds {len(online)} transitions but the checkpoint recorded "
                               f"{ckpt['replay_size']}: it belongs to another checkpoint; delete checkpoint.pt "
                               "to start over")
    return online


def load_checkpoint(path: Path, cfg) -> dict:
    """Read a stepwise-train checkpoint and check it belongs to this run's task and policy."""
    ckpt = read_checkpoint(path, "stepwise-train", TrainConfigError)
    if ckpt["task"] != cfg.task:
        raise TrainConfigError(
            f"{path} is a run of {ckpt['task']}, not {cfg.task}: pass task={ckpt['task']} or another hydra.run.dir"
        )
    theirs = ckpt.get("policy", "state")  # checkpoints from before the image policy are state runs
    if theirs != cfg.policy:
        raise TrainConfigError(
            f"{path} is a run of the {theirs} policy, not policy={cfg.policy}: pass policy={theirs} to resume it, "
            "or use another hydra.run.dir"
        )
    return ckpt


def resume_learner(run: Path, ckpt: dict, agent, online, offline, rng, image_policy: bool, imitate: bool):
    """Restore the agent, replay (returned: the image policy's is read from its own file) and random
    states from ``ckpt``; a checkpoint that does not fit these settings says which to use."""
    try:
        agent.load_state_dict(ckpt["agent"])
    except (ValueError, RuntimeError, KeyError) as err:
        raise TrainConfigError(f"{run / 'checkpoint.pt'} does not fit these settings ({err}): resume with the run's "
                               f"own settings ({run / '.hydra' / 'config.yaml'}) or use another hydra.run.dir") from err
    if image_policy:
        online = load_online_images(run, ckpt)
    else:
        online.add_rows(ckpt["replay"])
        if ckpt.get("imitated") is not None:
            if not imitate:
                raise TrainConfigError(
                    f"{run / 'checkpoint.pt'} holds {len(ckpt['imitated']['obs'])} imitated transitions (a run with "
                    "online.imitate_successes=true): resume it with online.imitate_successes=true")
            offline.add_rows(ckpt["imitated"])
    rng.bit_generator.state = ckpt["rng"]
    torch.set_rng_state(ckpt["torch_rng"])
    return online
