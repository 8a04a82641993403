"""Save and load a trained policy for `stepwise-deploy` behind the small `Policy` protocol of ``real.deploy``.

``real`` never imports ``policies``: the deploy config names this loader (``policy_loader``) and
the deploy loop only calls ``act(observation) -> action``.

A policy is a directory in the hub's layout (``reward_models.hub``): ``config.json`` (kind, task,
policy kind, cameras, and the JSON skeleton of the agent's state) and ``model.safetensors`` (its
tensors). Loading one never unpickles anything; an older ``policy.pt`` still loads through torch's
restricted unpickler (``weights_only=True``: no code runs) with a deprecation warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np


class PolicyLoadError(ValueError):
    """The file is not a policy this code can run, or not for this task."""


class TrainedPolicy:
    """A `stepwise-train` policy: deterministic actions from an env observation.

    Attributes:
        task: the task it was trained on.
        kind: ``state`` (reads the privileged simulator state: simulation only) or ``image``.
        cameras / image_size: what the image policy looks at (its frames are resized to it).
    """

    def __init__(self, payload: Mapping[str, Any], device: str = "cpu") -> None:
        self.task = payload["task"]
        self.kind = payload.get("policy", "state")
        if self.kind == "image":
            from policies.image_sac import ImageSAC
            from policies.episode import PolicyView

            self.agent = ImageSAC.from_state_dict(payload["agent"], device=device)
            self.cameras = list(payload["cameras"])
            self.image_size = tuple(payload["image_size"])
            self._view = PolicyView(self.cameras, self.image_size[0])
        else:
            from policies.sac import SAC

            self.agent = SAC.from_state_dict(payload["agent"], device=device)
            self.cameras, self.image_size, self._view = [], None, None

    @property
    def needs_state(self) -> bool:
        """Whether it reads the privileged state (true for state policies: they cannot run on hardware)."""
        return self.kind != "image"

    def act(self, observation: Mapping[str, Any]) -> np.ndarray:
        """Env observation -> float32 (A,) in [-1, 1] (the mean action: no exploration noise)."""
        if self._view is not None:
            missing = [c for c in self.cameras if c not in observation.get("images", {})]
            if missing:
                raise ValueError(f"the policy looks at cameras {self.cameras}; the robot sends no {missing}")
            return self.agent.act(self._view(observation), deterministic=True)
        if observation.get("state") is None:
            raise ValueError(
                "this is a state policy (trained on the simulator's privileged state), and the robot sends no "
                "state: deploy it on robot=sim or a sim server, or train policy=image for hardware"
            )
        return self.agent.act(observation["state"], deterministic=True)


POLICY_DIR = "policy"
KIND = "stepwise-policy"


def save_policy(directory: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` (``kind``, ``task``, ``policy``, ..., and ``agent``: the agent's ``state_dict()``)
    as ``directory/config.json`` + ``directory/model.safetensors``; returns the directory."""
    from reward_models.hub import save_tree

    meta = {k: v for k, v in payload.items() if k != "agent"}
    return save_tree(directory, {"agent": payload["agent"]}, meta={**meta, "format": 1})


def _read_policy(p: Path) -> dict:
    """The payload of a policy directory or an old ``policy.pt`` (restricted unpickler, deprecated)."""
    from reward_models.hub import HubError, load_tree

    if p.is_dir():
        import json

        try:
            kind = json.loads((p / "config.json").read_text()).get("kind")
        except (OSError, ValueError, AttributeError) as err:
            raise PolicyLoadError(f"{p}/config.json cannot be read ({err}): is it a complete policy directory?") from None
        if kind != KIND:
            raise PolicyLoadError(f"{p} is not a stepwise-train policy (kind {kind!r}): pass the policy directory of a finished run")
        try:
            tree, meta = load_tree(p)
        except (HubError, FileNotFoundError, ValueError) as err:
            raise PolicyLoadError(f"{p} cannot be read ({err}): is it a complete policy directory?") from None
        return {**meta, **tree}
    import warnings

    import torch

    warnings.warn(f"{p} is a pickled policy (deprecated): load it once and save it with "
                  "policies.deploy.save_policy, or re-run stepwise-train, to get a safetensors policy directory",
                  DeprecationWarning, stacklevel=3)
    try:
        return torch.load(p, map_location="cpu", weights_only=True)  # tensors and plain values only: no code runs
    except Exception as err:  # truncated, not a torch file, or a pickle that wants to run code
        raise PolicyLoadError(f"{p} cannot be read as plain tensors and values ({err}): is it a complete policy.pt?") from None


def load_policy(path: str | Path, task: str | None = None, device: str = "cpu") -> TrainedPolicy:
    """A `stepwise-train` policy from its directory (``config.json`` + ``model.safetensors``), the
    run directory holding it (``<run>/policy/``), an old ``policy.pt``, or ``hf://<org>/<name>``.

    Raises :class:`PolicyLoadError` for a missing/corrupt file, another kind of file, or a policy
    of another task than ``task``.
    """
    from reward_models.hub import HubError, is_hub_ref, resolve

    if is_hub_ref(path):
        try:
            path = resolve(path)
        except HubError as err:
            raise PolicyLoadError(str(err)) from None
    p = Path(path)
    if p.is_dir() and not (p / "config.json").exists():
        p = p / POLICY_DIR if (p / POLICY_DIR).is_dir() else p / "policy.pt"
    if not p.exists():
        hint = " (a run writes policy/ when it finishes; an unfinished run has only checkpoint.pt)" if (p.parent / "checkpoint.pt").exists() else ""
        raise PolicyLoadError(f"no policy at {p}{hint}: pass policy=<run dir or policy dir of a finished stepwise-train run>")
    payload = _read_policy(p)
    if not isinstance(payload, dict) or payload.get("kind") != KIND:
        kind = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
        raise PolicyLoadError(f"{p} is not a stepwise-train policy (kind {kind!r}): pass the policy directory of a finished run")
    if task is not None and payload["task"] != task:
        raise PolicyLoadError(f"{p} was trained on {payload['task']}, not {task}: pass task={payload['task']} or another policy")
    return TrainedPolicy(payload, device=device)
