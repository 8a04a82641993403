"""The robot server's wire format: one JSON header frame, then one raw frame per camera image.

Requests: ``{"v": 1, "op": <op>, "seq": int, "token": str | None, ...op arguments}``.
Replies: ``{"v": 1, "seq": int, "ok": bool, "code": str, "error": str, ...results}``; an
observation travels as ``{"proprio": [...], "state": [...]?, "t_robot": float, "images": [[camera,
h, w], ...]}`` with the images' uint8 bytes as the following frames, in the same order.

Ops: ``hello`` (specs, task, whether the robot knows ground truth), ``reset`` (seed; homing),
``act`` (action -> applied action, safety events, observation, task signals), ``observe``,
``arm`` (allow motion again after a stop), ``stop`` (controlled stop, disarms), ``stats``,
``select_task`` (index: a robot serving several tasks in one scene asks for another without a reset;
observation and task signals of the new task; refused by single-task robots).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

VERSION = 1
OPS = ("hello", "reset", "act", "observe", "arm", "stop", "stats", "select_task")
# reply codes other than "ok"
CODES = ("bad_request", "version", "unauthorized", "disarmed", "superseded", "robot_error")


def encode(header: dict[str, Any], obs: dict[str, Any] | None = None) -> list[bytes]:
    """Header (+ observation) -> zmq frames."""
    frames: list[bytes] = []
    if obs is not None:
        images = obs.get("images") or {}
        enc: dict[str, Any] = {"proprio": np.asarray(obs["proprio"], np.float32).tolist(), "images": []}
        if obs.get("state") is not None:
            enc["state"] = np.asarray(obs["state"], np.float32).tolist()
        if "t_robot" in obs:
            enc["t_robot"] = float(obs["t_robot"])
        for name, img in images.items():
            img = np.ascontiguousarray(img, dtype=np.uint8)
            enc["images"].append([name, int(img.shape[0]), int(img.shape[1])])
            frames.append(img.tobytes())
        header = {**header, "obs": enc}
    return [json.dumps(header).encode(), *frames]


def decode(frames: list[bytes]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """zmq frames -> (header, observation or None). Raises ValueError on a malformed message."""
    if not frames:
        raise ValueError("empty message")
    try:
        header = json.loads(frames[0])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"header is not JSON: {err}") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    enc = header.pop("obs", None)
    if enc is None:
        return header, None
    images = {}
    if len(frames) - 1 != len(enc["images"]):
        raise ValueError(f"observation names {len(enc['images'])} images but {len(frames) - 1} frames came")
    for (name, h, w), raw in zip(enc["images"], frames[1:]):
        if len(raw) != h * w * 3:
            raise ValueError(f"image {name!r}: {len(raw)} bytes for {h}x{w}x3")
        images[name] = np.frombuffer(raw, np.uint8).reshape(h, w, 3).copy()
    obs: dict[str, Any] = {"images": images, "proprio": np.asarray(enc["proprio"], np.float32)}
    if "state" in enc:
        obs["state"] = np.asarray(enc["state"], np.float32)
    if "t_robot" in enc:
        obs["t_robot"] = float(enc["t_robot"])
    return header, obs
