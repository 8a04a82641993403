"""LeRobotDataset <-> Stepwise episodes, through the real ``lerobot`` package (``pip install -e '.[lerobot]'``).

Reading (:func:`read_lerobot`) goes through lerobot's own loader (``LeRobotDataset(repo_id, root=...)``,
local directories or lerobot's hub cache); writing (:func:`write_lerobot`) through its own writer
(``LeRobotDataset.create`` / ``add_frame`` / ``save_episode`` / ``finalize``), so what this writes,
lerobot reads. Imports nothing of ours but ``episodes``.

Mapping (LeRobot's v3 layout: one row per frame, ``episode_index``, ``task``):

- cameras: ``observation.images.<key>`` -> a camera of the rig, by ``cameras={lerobot key: camera}``
  (default: every image key under its last dotted part, ``observation.images.top`` -> ``top``);
  a key that is missing raises :class:`LeRobotImportError` listing the dataset's camera keys.
- ``observation.state`` -> ``proprio``; ``observation.environment_state`` -> the privileged ``state``.
- frames: LeRobot stores (observation, action) per frame; an episode of N frames becomes N
  observations and the first N-1 actions (the last action has no observation after it). Export
  writes T+1 frames for T actions (the last with a zero action), so a round trip is exact.
- instruction: the episode's task string; ``next.reward`` -> rewards, ``next.done`` -> dones.
- task: ``task=``, else the Stepwise name of a Meta-World task when the task string is one of
  LeRobot's Meta-World descriptions (``lerobot/metaworld_mt50``: "Open a drawer") or ids
  (``drawer-open-v3``) -> ``metaworld/drawer-open`` (:func:`metaworld_task`), else the task string.
- success (``success=``): ``next.success`` (any frame true), ``next.reward`` (any reward > 0),
  ``episode_end`` (every episode is a success: demonstrations), or ``auto`` (the first of these
  columns the dataset has, else ``episode_end``).
- keyframes: the ``stepwise.keyframe`` column written by export when present, else one step (the
  episode's end).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from .episode import Episode

SUCCESS_SOURCES = ("auto", "next.success", "next.reward", "episode_end")
IMAGE_PREFIX = "observation.images."
KEYFRAME_KEY = "stepwise.keyframe"


class LeRobotImportError(ValueError):
    """A LeRobot dataset that cannot be mapped onto Stepwise episodes (the message names the fix)."""


def require_lerobot():
    """The ``LeRobotDataset`` class, or an ImportError naming the install command."""
    try:
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
    except ImportError as err:
        raise ImportError(
            f"LeRobot datasets need the lerobot package ({err}): pip install -e '.[lerobot]' and then "
            "pip install --no-deps lerobot==0.4.4 (its own pins would replace this project's torch)"
        ) from err
    return LeRobotDataset


def is_lerobot_dataset(path: str | Path) -> bool:
    """Whether ``path`` is a local LeRobot dataset directory (``meta/info.json``)."""
    return (Path(path) / "meta" / "info.json").is_file()


def open_lerobot(source: str | Path, repo_id: str | None = None):
    """lerobot's own ``LeRobotDataset`` for a local directory, or a repo id in lerobot's cache."""
    cls = require_lerobot()
    path = Path(source)
    if path.exists():
        if not is_lerobot_dataset(path):
            raise LeRobotImportError(f"{path} is not a LeRobot dataset (no meta/info.json): give the dataset's root directory")
        return cls(repo_id or f"local/{path.name}", root=path)
    return cls(str(source))  # a repo id: lerobot resolves it (its cache, or the hub when online)


def metaworld_task(text: str) -> str | None:
    """``metaworld/<name>`` for one of LeRobot's Meta-World task descriptions or ids (its
    ``lerobot/envs/metaworld_config.json``, as the ``lerobot/metaworld_mt50`` dataset uses them), else None."""
    import importlib.util
    import json

    key = str(text).strip()
    spec = importlib.util.find_spec("lerobot")  # the file only: importing lerobot.envs pulls in robot drivers
    try:
        config = Path(spec.submodule_search_locations[0]) / "envs" / "metaworld_config.json"
        table = json.loads(config.read_text())["TASK_DESCRIPTIONS"]
    except (AttributeError, TypeError, IndexError, OSError, KeyError, ValueError):
        table = {}
    by_text = {v.strip().lower(): k for k, v in table.items()}
    env_id = key.removeprefix("metaworld-") if key.removeprefix("metaworld-") in table else by_text.get(key.lower())
    if env_id is None and key.endswith("-v3") and not table:
        env_id = key.removeprefix("metaworld-")
    return f"metaworld/{env_id.removesuffix('-v3')}" if env_id else None


def camera_map(features: Mapping[str, Any], cameras: Mapping[str, str] | Iterable[str] | None) -> dict[str, str]:
    """``{lerobot key: camera}`` for the dataset's ``features``; see the module docstring."""
    keys = [k for k, ft in features.items() if ft.get("dtype") in ("image", "video")]
    if not keys:
        raise LeRobotImportError("the dataset has no image or video features: Stepwise episodes need at least one camera")
    if cameras is None:
        return {k: k.split(".")[-1] for k in keys}
    if not isinstance(cameras, Mapping):  # a list of rig names, matched to keys by their last part
        cameras = {next((k for k in keys if k.split(".")[-1] == c), c): c for c in cameras}
    full = {(k if k in keys or k.startswith("observation.") else IMAGE_PREFIX + k): cam for k, cam in cameras.items()}
    missing = [k for k in full if k not in keys]
    if missing:
        raise LeRobotImportError(
            f"camera key(s) {missing} are not in the dataset; its camera keys are {keys}. "
            "Map them with cameras={<dataset key>: <rig camera>}, e.g. cameras={'" + keys[0] + "': 'corner'}"
        )
    return full


def _to_uint8_hwc(x: Any) -> np.ndarray:
    """lerobot's float CHW [0, 1] image (torch or numpy) -> uint8 HWC."""
    a = np.asarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)


def _column(rows: list[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.stack([np.asarray(r[key].numpy() if hasattr(r[key], "numpy") else r[key]) for r in rows])


def read_lerobot(
    source: str | Path,
    cameras: Mapping[str, str] | Iterable[str] | None = None,
    success: str = "auto",
    task: str | None = None,
    repo_id: str | None = None,
    frame_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    episodes: Iterable[int] | None = None,
) -> Iterator[Episode]:
    """Episodes of a LeRobot dataset, one at a time; see the module docstring for the mapping.

    Args:
        source: the dataset's local root directory, or a repo id lerobot can resolve.
        cameras: ``{lerobot key: rig camera}`` (or a list of rig names); None: every camera.
        success: where success comes from (:data:`SUCCESS_SOURCES`).
        task: the Stepwise task name of every episode; default :func:`metaworld_task` of the episode's
            task string, else the string itself.
        repo_id: the id recorded for a local dataset (lerobot needs one).
        frame_fn: applied to every uint8 (H, W, 3) frame (the rig's crop and resize).
        episodes: episode indices to read (default all).
    """
    if success not in SUCCESS_SOURCES:
        raise LeRobotImportError(f"success={success!r} unknown: use one of {SUCCESS_SOURCES}")
    ds = open_lerobot(source, repo_id)
    features = ds.meta.features
    cams = camera_map(features, cameras)
    if success == "auto":
        success = next((s for s in ("next.success", "next.reward") if s in features), "episode_end")
    elif success != "episode_end" and success not in features:
        raise LeRobotImportError(f"success={success!r}: the dataset has no {success!r} column; its columns are {sorted(features)}")
    meta_eps = ds.meta.episodes
    wanted = range(ds.meta.total_episodes) if episodes is None else episodes
    for e in wanted:
        row = meta_eps[int(e)]
        lo, hi = int(row["dataset_from_index"]), int(row["dataset_to_index"])
        if hi - lo < 2:
            continue  # one frame is no transition
        frames = [ds[i] for i in range(lo, hi)]
        images = {}
        for key, cam in cams.items():
            imgs = [_to_uint8_hwc(f[key]) for f in frames]
            images[cam] = np.stack([frame_fn(i) for i in imgs] if frame_fn else imgs)
        n = len(frames)
        proprio = (_column(frames, "observation.state").astype(np.float32).reshape(n, -1)
                   if "observation.state" in features else np.zeros((n, 1), np.float32))
        state = (_column(frames, "observation.environment_state").astype(np.float32).reshape(n, -1)
                 if "observation.environment_state" in features else None)
        actions = _column(frames, "action").astype(np.float32).reshape(n, -1)[:-1]
        rewards = (_column(frames, "next.reward").astype(np.float32).reshape(n)[:-1]
                   if "next.reward" in features else np.zeros(n - 1, np.float32))
        dones = (_column(frames, "next.done").astype(bool).reshape(n)[:-1]
                 if "next.done" in features else np.zeros(n - 1, bool))
        if success == "episode_end":
            ok = True
        elif success == "next.success":
            ok = bool(_column(frames, "next.success").astype(bool).any())
        else:
            ok = bool((_column(frames, "next.reward").astype(np.float64) > 0).any())
        if KEYFRAME_KEY in features:
            keyframes = np.flatnonzero(_column(frames, KEYFRAME_KEY).astype(bool).reshape(n)).astype(np.int64)
            keyframes = keyframes[(keyframes >= 1) & (keyframes <= n - 1)]
        else:
            keyframes = np.array([n - 1], np.int64)
        tasks = list(row.get("tasks") or [frames[0].get("task", "")])
        instruction = str(tasks[0]) if tasks else ""
        if not instruction.strip():
            raise LeRobotImportError(f"episode {e} has no task string: Stepwise needs an instruction per episode")
        yield Episode(
            images=images, proprio=proprio, actions=actions, rewards=rewards, dones=dones,
            task=task or metaworld_task(instruction) or instruction, instruction=instruction, fps=float(ds.meta.fps), success=ok,
            keyframes=keyframes if len(keyframes) else np.array([n - 1], np.int64), state=state,
            kind="expert" if ok else "policy", extra_attrs={"lerobot_episode": int(e)},
        )


def write_lerobot(
    episodes: Iterable[Episode],
    root: str | Path,
    repo_id: str = "local/stepwise",
    robot_type: str | None = "stepwise",
    fps: float | None = None,
    progress: Mapping[int, tuple[np.ndarray, np.ndarray]] | None = None,
) -> Path:
    """Write episodes as a LeRobot dataset at ``root`` with lerobot's own writer; returns ``root``.

    Every camera becomes ``observation.images.<camera>`` (PNG images, no video codec needed),
    ``proprio`` ``observation.state``, the privileged state ``observation.environment_state``; and
    per frame ``next.reward``, ``next.done``, ``next.success``, ``stepwise.keyframe``. ``progress``
    maps an episode's position to per-frame ``(progress, success_prob)`` (T+1,) arrays written as the
    ``stepwise.progress`` and ``stepwise.success_prob`` columns (``stepwise-score``).
    """
    cls = require_lerobot()
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty: give a new directory for the LeRobot dataset")
    if root.exists():
        root.rmdir()  # lerobot creates it
    ds = None
    for n, ep in enumerate(episodes):
        T = ep.num_steps
        if ds is None:
            h, w = ep.image_size
            features = {f"{IMAGE_PREFIX}{c}": {"dtype": "image", "shape": (h, w, 3), "names": ["height", "width", "channels"]}
                        for c in ep.cameras}
            features["observation.state"] = {"dtype": "float32", "shape": (ep.proprio.shape[1],), "names": None}
            if ep.state is not None:
                features["observation.environment_state"] = {"dtype": "float32", "shape": (ep.state.shape[1],), "names": None}
            features["action"] = {"dtype": "float32", "shape": (ep.actions.shape[1],), "names": None}
            scalars = ["next.reward", "next.done", "next.success", KEYFRAME_KEY]
            if progress is not None:
                scalars += ["stepwise.progress", "stepwise.success_prob"]
            for key in scalars:
                kind = "float32" if key in ("next.reward", "stepwise.progress", "stepwise.success_prob") else "bool"
                features[key] = {"dtype": kind, "shape": (1,), "names": None}
            ds = cls.create(repo_id, fps=int(round(fps or ep.fps)), features=features, root=root,
                            robot_type=robot_type, use_videos=False)
        kf = set(int(k) for k in np.asarray(ep.keyframes))
        actions = np.concatenate([ep.actions, np.zeros((1, ep.actions.shape[1]), np.float32)])
        rewards = np.concatenate([ep.rewards, [0.0]]).astype(np.float32)
        dones = np.concatenate([ep.dones, [True]]).astype(bool)
        for t in range(T + 1):
            frame = {f"{IMAGE_PREFIX}{c}": ep.images[c][t] for c in ep.cameras}
            frame["observation.state"] = np.asarray(ep.proprio[t], np.float32)
            if ep.state is not None:
                frame["observation.environment_state"] = np.asarray(ep.state[t], np.float32)
            frame["action"] = actions[t].astype(np.float32)
            frame["next.reward"] = np.array([rewards[t]], np.float32)
            frame["next.done"] = np.array([dones[t]])
            frame["next.success"] = np.array([bool(ep.success) and t == T])
            frame[KEYFRAME_KEY] = np.array([t in kf])
            if progress is not None:
                p, s = progress[n]
                frame["stepwise.progress"] = np.array([p[t]], np.float32)
                frame["stepwise.success_prob"] = np.array([s[t]], np.float32)
            frame["task"] = ep.instruction
            ds.add_frame(frame)
        scalar_columns(ds)
        ds.save_episode()
    if ds is None:
        raise ValueError("no episodes to export: the store is empty")
    ds.finalize()
    return root


def scalar_columns(ds: Any) -> None:
    """Call before ``ds.save_episode()`` with lerobot 0.4.4 and numpy >= 2.4: the shape-(1,) columns of
    the episode buffer (``next.reward``, ...) become scalars. lerobot hands them to ``datasets`` as
    1-element arrays, which numpy 2.4 no longer converts to Python scalars (TypeError: only 0-dimensional
    arrays can be converted)."""
    for key, ft in ds.features.items():
        if tuple(ft.get("shape", ())) == (1,) and ft["dtype"] not in ("image", "video", "string") and key in ds.episode_buffer:
            values = ds.episode_buffer[key]
            if isinstance(values, list):
                ds.episode_buffer[key] = [np.asarray(v).reshape(()) for v in values]
