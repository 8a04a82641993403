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

Requests are checked before anything acts on them (:func:`decode_request`, :func:`check_request`):
one frame only, at most ``max_bytes`` of JSON, and a strict schema per op (the keys each op takes,
their types and ranges, the action's length), so a malformed request is answered ``bad_request``
and never reaches the driver. Action values are not range-checked here: the safety layer clips them
and holds the robot on NaN or inf (counted), which is gentler than failing the client's step.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

VERSION = 1
OPS = ("hello", "reset", "act", "observe", "arm", "stop", "stats", "select_task")
# reply codes other than "ok"
CODES = ("bad_request", "version", "unauthorized", "disarmed", "superseded", "robot_error")
MAX_SEQ = 2**63 - 1
MAX_SEED = 2**32 - 1
MAX_TEXT = 256  # characters of a token or a stop reason
COMMON = ("v", "op", "seq", "token")
# each op's own keys: name -> (required, checker)
ARGS: dict[str, dict[str, tuple[bool, str]]] = {
    "hello": {}, "observe": {}, "arm": {}, "stats": {},
    "reset": {"seed": (False, "seed"), "arm": (False, "bool")},
    "act": {"action": (True, "action")},
    "stop": {"reason": (False, "text")},
    "select_task": {"index": (True, "index")},
}


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
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ValueError(f"header is not JSON: {str(err)[:200]}") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    enc = header.pop("obs", None)
    if enc is None:
        return header, None
    try:
        return header, _decode_obs(enc, frames[1:])
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"malformed observation in the reply ({type(err).__name__}: {err})") from None


def _decode_obs(enc: dict[str, Any], frames: list[bytes]) -> dict[str, Any]:
    images = {}
    if len(frames) != len(enc["images"]):
        raise ValueError(f"observation names {len(enc['images'])} images but {len(frames)} frames came")
    for (name, h, w), raw in zip(enc["images"], frames):
        if len(raw) != h * w * 3:
            raise ValueError(f"image {name!r}: {len(raw)} bytes for {h}x{w}x3")
        images[name] = np.frombuffer(raw, np.uint8).reshape(h, w, 3).copy()
    obs: dict[str, Any] = {"images": images, "proprio": np.asarray(enc["proprio"], np.float32)}
    if "state" in enc:
        obs["state"] = np.asarray(enc["state"], np.float32)
    if "t_robot" in enc:
        obs["t_robot"] = float(enc["t_robot"])
    return obs


def decode_request(frames: list[bytes], max_bytes: int) -> dict[str, Any]:
    """A request's frames -> its header (a JSON object). Raises ValueError naming what is wrong:
    not exactly one frame, more than ``max_bytes``, not JSON, nested too deep, numbers too long."""
    if len(frames) != 1:
        raise ValueError(f"a request is one JSON frame, got {len(frames)} frames")
    raw = frames[0]
    if len(raw) > max_bytes:
        raise ValueError(f"request header is {len(raw)} bytes, the server takes at most {max_bytes}")
    try:
        header = json.loads(raw)
    except RecursionError:
        raise ValueError("request header is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as err:  # JSONDecodeError, and ints past Python's digit limit
        raise ValueError(f"request header is not JSON: {str(err)[:200]}") from None
    if not isinstance(header, dict):
        raise ValueError("request header is not a JSON object")
    return header


def _int(x: Any, low: int, high: int, what: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or not low <= x <= high:
        raise ValueError(f"{what} must be an integer in {low}..{high}, got {_short(x)}")
    return x


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def check_seq(header: dict[str, Any]) -> int | None:
    """The request's ``seq`` (an integer or None), or ValueError."""
    seq = header.get("seq")
    return None if seq is None else _int(seq, 0, MAX_SEQ, "seq")


def check_request(header: dict[str, Any], action_dim: int) -> dict[str, Any]:
    """Check a decoded request against its op's schema; returns it with the action as float32 (A,).

    Raises ValueError naming the key and what it takes. ``v`` and ``token`` are checked by the
    server (their own reply codes) before this runs.
    """
    op = header.get("op")
    if not isinstance(op, str) or op not in ARGS:
        raise ValueError(f"unknown op {_short(op)}: one of {OPS}")
    check_seq(header)
    token = header.get("token")
    if token is not None and (not isinstance(token, str) or len(token) > MAX_TEXT):
        raise ValueError(f"token must be a string of at most {MAX_TEXT} characters")
    spec = ARGS[op]
    extra = sorted(set(header) - set(COMMON) - set(spec))
    if extra:
        raise ValueError(f"{op} takes {sorted(spec) or 'no arguments'}, not {[_short(k) for k in extra[:5]]}")
    out = dict(header)
    for key, (required, kind) in spec.items():
        value = header.get(key)
        if value is None:
            if required:
                raise ValueError(f"{op} needs {key}")
            continue
        if kind == "seed":
            _int(value, 0, MAX_SEED, f"{op}: seed")
        elif kind == "index":
            _int(value, 0, 1023, f"{op}: index")
        elif kind == "bool" and not isinstance(value, bool):
            raise ValueError(f"{op}: {key} must be true or false, got {_short(value)}")
        elif kind == "text" and (not isinstance(value, str) or len(value) > MAX_TEXT):
            raise ValueError(f"{op}: {key} must be a string of at most {MAX_TEXT} characters")
        elif kind == "action":
            out[key] = check_action(value, action_dim)
    return out


def check_action(value: Any, dim: int) -> np.ndarray:
    """A JSON action -> float32 (dim,): a list of ``dim`` numbers (NaN and inf pass: the safety
    layer holds the robot on them; integers too large for a float are refused)."""
    if not isinstance(value, list) or len(value) != dim:
        got = f"a list of {len(value)}" if isinstance(value, list) else type(value).__name__
        raise ValueError(f"act: action must be a list of {dim} numbers (the robot's action_spec.dim), got {got}")
    out = np.empty(dim, np.float32)
    for i, x in enumerate(value):
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise ValueError(f"act: action[{i}] must be a number, got {_short(x)}")
        try:
            f = float(x)
        except OverflowError:
            raise ValueError(f"act: action[{i}] is an integer too large for a float") from None
        with np.errstate(over="ignore"):
            out[i] = f  # beyond float32's range: inf, which the safety layer rejects
    return out
