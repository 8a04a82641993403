"""The `RewardModel` interface every progress / success model of Stepwise implements.

``progress(frames, instruction, reference=None) -> (T,)`` in [0, 1] and ``success_prob(...)``
with the same arguments, where ``frames`` maps camera name to uint8 (T, H, W, 3). Batched and
without gradients. A checkpoint is a directory in the Hugging Face hub's layout: ``config.json``
(model kind, format version and the config that built it) and ``model.safetensors`` (no pickles:
see :mod:`reward_models.hub`); :func:`load` reads any registered kind from a directory, a shipped
name or ``hf://<org>/<name>`` through huggingface_hub's cache.
"""

from __future__ import annotations

import abc
import json
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
"""Checkpoints shipped in the repository, loadable by name (``load("general")``)."""

MODEL_TYPES: dict[str, type["RewardModel"]] = {}


class FramesError(ValueError):
    """Frames that do not match what a reward model was built for."""


class CheckpointError(ValueError):
    """A checkpoint directory that is missing, damaged, or of another model kind or version."""


def register(kind: str):
    """Class decorator: make a RewardModel subclass loadable by its ``kind``."""

    def wrap(cls: type[RewardModel]) -> type[RewardModel]:
        cls.kind = kind
        MODEL_TYPES[kind] = cls
        return cls

    return wrap


def check_frames(
    frames: Mapping[str, np.ndarray],
    cameras: tuple[str, ...] | list[str],
    image_size: tuple[int, int],
    known: tuple[str, ...] | list[str] | None = None,
) -> int:
    """Validate ``frames`` for a model of ``cameras`` at ``image_size``; return T.

    Every camera the model needs must be present (a model may be asked to use a subset, see
    the model's ``cameras`` argument) and none it does not know (``known``, default ``cameras``)
    may be; images must be uint8 (T, H, W, 3), all with the same T >= 1.
    Raises :class:`FramesError` naming the camera and the fix.
    """
    if not isinstance(frames, Mapping) or not frames:
        raise FramesError(
            "frames must be a non-empty dict {camera: uint8 array (T, H, W, 3)}, "
            f"got {type(frames).__name__}"
        )
    missing = [c for c in cameras if c not in frames]
    if missing:
        raise FramesError(
            f"frames lack camera(s) {missing}: this model uses {list(cameras)}, got {list(frames)}. "
            "Render those cameras, or score with cameras=[...] set to a subset the model knows."
        )
    extra = [c for c in frames if c not in (known or cameras)]
    if extra:
        raise FramesError(
            f"frames have camera(s) {extra} this model does not know ({list(known or cameras)}): "
            "drop them, or render the cameras the model was trained with"
        )
    length = None
    for cam in cameras:
        arr = frames[cam]
        if not isinstance(arr, np.ndarray):
            raise FramesError(f"frames[{cam!r}] must be a numpy array, got {type(arr).__name__}")
        if arr.dtype != np.uint8:
            raise FramesError(
                f"frames[{cam!r}] has dtype {arr.dtype}: expected uint8 in [0, 255] "
                "(convert float images with (x * 255).round().astype(np.uint8))"
            )
        if arr.ndim == 3:
            raise FramesError(f"frames[{cam!r}] has shape {arr.shape}: add the time axis, (T, H, W, 3)")
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise FramesError(f"frames[{cam!r}] has shape {arr.shape}: expected (T, H, W, 3) RGB")
        if tuple(arr.shape[1:3]) != tuple(image_size):
            raise FramesError(
                f"frames[{cam!r}] are {arr.shape[1]}x{arr.shape[2]} but the model was trained at "
                f"{image_size[0]}x{image_size[1]}: render at image_size={image_size[0]}"
            )
        if arr.shape[0] == 0:
            raise FramesError(f"frames[{cam!r}] is an empty sequence: give at least one frame")
        if length is not None and arr.shape[0] != length:
            raise FramesError(f"cameras disagree on T: frames[{cam!r}] has {arr.shape[0]}, others {length}")
        length = arr.shape[0]
    return int(length)


class RewardModel(abc.ABC):
    """A model of task progress and success from multi-view frames and an instruction."""

    kind: ClassVar[str] = "abstract"
    version: ClassVar[int] = 1

    cameras: tuple[str, ...]
    image_size: tuple[int, int]

    @abc.abstractmethod
    def progress(
        self, frames: Mapping[str, np.ndarray], instruction: str, reference: Any = None
    ) -> np.ndarray:
        """Progress of each frame, float32 (T,) in [0, 1].

        Args:
            frames: camera -> uint8 (T, H, W, 3), the cameras of ``self.cameras``.
            instruction: the task's instruction, e.g. ``"open the drawer"``.
            reference: optional demonstration of the task (an ``episodes.Episode``); anchors come
                from it, never from the episode being scored.
        """

    @abc.abstractmethod
    def success_prob(
        self, frames: Mapping[str, np.ndarray], instruction: str, reference: Any = None
    ) -> np.ndarray:
        """Probability that the task is done at each frame, float32 (T,) in [0, 1]."""

    def score(
        self, frames: Mapping[str, np.ndarray], instruction: str, reference: Any = None, **kwargs: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(progress, success_prob)`` together; models override it to encode frames once."""
        return (
            self.progress(frames, instruction, reference=reference, **kwargs),
            self.success_prob(frames, instruction, reference=reference, **kwargs),
        )

    @abc.abstractmethod
    def config(self) -> dict:
        """The JSON-serialisable config that rebuilds this model (without weights)."""

    @abc.abstractmethod
    def _save_weights(self, directory: Path) -> None:
        """Write the weights into ``directory``."""

    @classmethod
    @abc.abstractmethod
    def _from_checkpoint(cls, directory: Path, config: dict, device: str | None) -> "RewardModel":
        """Rebuild the model from ``config`` and the weights in ``directory``."""

    def save(self, directory: str | Path) -> Path:
        """Write a checkpoint directory (``model.safetensors`` + ``config.json``); returns its path."""
        from reward_models.hub import LEGACY_WEIGHTS

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_weights(directory)
        (directory / LEGACY_WEIGHTS).unlink(missing_ok=True)  # an old pickle must not outlive its replacement
        meta = {"kind": self.kind, "version": self.version, "config": self.config()}
        tmp = directory / "config.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(directory / "config.json")  # the config lands last: a checkpoint is whole or absent
        return directory

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """``save`` under the name Hugging Face's libraries use: the directory uploads to the hub as it is."""
        return self.save(save_directory)

    def push_to_hub(self, repo_id: str, commit_message: str = "Upload Stepwise reward model", private: bool = False) -> str:
        """Save to a temporary directory and upload it to ``repo_id`` (needs a hub token); load it back
        anywhere with ``reward_models.load("hf://<repo_id>")``."""
        import tempfile

        from reward_models.hub import push_to_hub

        with tempfile.TemporaryDirectory() as tmp:
            return push_to_hub(self.save(tmp), repo_id, commit_message=commit_message, private=private)


class DataclassConfigModel(RewardModel):
    """A reward model built from a dataclass ``self.cfg`` holding ``cameras`` and ``image_size``:
    the rig and the saved config come from it."""

    cfg: Any

    @property
    def cameras(self) -> tuple[str, ...]:
        """The cameras the model was built for."""
        return self.cfg.cameras

    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)`` of the frames it takes."""
        return self.cfg.image_size

    def config(self) -> dict:
        """``self.cfg`` as a JSON-ready dict (tuples as lists)."""
        from dataclasses import asdict

        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.cfg).items()}

    def save_net_weights(self, directory: Path) -> None:
        """Write ``self.net``'s state dict as ``directory/model.safetensors``."""
        from reward_models.hub import WEIGHTS_NAME, save_state_dict

        save_state_dict(self.net.state_dict(), directory / WEIGHTS_NAME)

    def load_net_weights(self, directory: Path) -> None:
        """Load ``directory/model.safetensors`` (or a deprecated ``weights.pt``, with a warning) into
        ``self.net`` (on ``self.device``), with a CheckpointError naming the file and the fix when it is
        missing, damaged, or for another configuration."""
        from reward_models.hub import load_state_dict

        try:
            self.net.load_state_dict(load_state_dict(directory, device=self.device))
        except FileNotFoundError as err:
            raise CheckpointError(str(err)) from err
        except Exception as err:  # torch raises many kinds on a damaged or foreign file
            raise CheckpointError(f"{directory}: the weights do not fit this config or are damaged: {err}") from err


def load(path_or_name: str | Path, device: str | None = None) -> RewardModel:
    """Load a reward model from a checkpoint directory, a shipped name (``"general"``) or
    ``hf://<org>/<name>[/<subfolder>][@<revision>]`` (huggingface_hub's cache; ``HF_HUB_OFFLINE=1``
    reads only the cache). Weights load from safetensors: no code in a checkpoint ever runs.

    Raises:
        CheckpointError: naming the path and what is wrong (missing, damaged, unknown kind, or a
            version this code cannot read).
    """
    from reward_models.hub import HubError, is_hub_ref, resolve

    if is_hub_ref(path_or_name):
        try:
            path_or_name = resolve(path_or_name)
        except HubError as err:
            raise CheckpointError(str(err)) from err
    path = Path(path_or_name)
    if not path.exists() and (CHECKPOINT_DIR / str(path_or_name)).exists():
        path = CHECKPOINT_DIR / str(path_or_name)
    if not path.is_dir():
        shipped = sorted(p.name for p in CHECKPOINT_DIR.glob("*") if p.is_dir()) if CHECKPOINT_DIR.exists() else []
        raise CheckpointError(
            f"no reward-model checkpoint at {str(path_or_name)!r}: give a checkpoint directory "
            f"or one of the shipped names {shipped}"
        )
    try:
        meta = json.loads((path / "config.json").read_text())
        kind, version, config = meta["kind"], int(meta["version"]), meta["config"]
    except FileNotFoundError as err:
        raise CheckpointError(f"{path} has no config.json: not a reward-model checkpoint (or an unfinished save)") from err
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}/config.json is damaged ({err}); re-save or re-train the model") from err
    _import_model_modules()
    if kind not in MODEL_TYPES:
        raise CheckpointError(f"{path} holds a {kind!r} model; this code knows {sorted(MODEL_TYPES)}")
    cls = MODEL_TYPES[kind]
    if version != cls.version:
        raise CheckpointError(
            f"{path} is a {kind} checkpoint of format version {version}; this code reads version "
            f"{cls.version}. Re-train it with this version, or use the matching Stepwise release."
        )
    return cls._from_checkpoint(path, config, device)


def _import_model_modules() -> None:
    """Import the modules that register model kinds (kept lazy: torch loads only when needed)."""
    import importlib

    for module in ("reward_models.step_prm", "reward_models.perceptual", "reward_models.vlm_success"):
        importlib.import_module(module)
