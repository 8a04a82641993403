"""Load a trained policy for `stepwise-deploy` behind the small `Policy` protocol of ``real.deploy``.

``real`` never imports ``policies``: the deploy config names this loader (``policy_loader``) and
the deploy loop only calls ``act(observation) -> action``.
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


def load_policy(path: str | Path, task: str | None = None, device: str = "cpu") -> TrainedPolicy:
    """A `stepwise-train` policy from ``policy.pt`` or the run directory holding it.

    Raises :class:`PolicyLoadError` for a missing/corrupt file, another kind of file, or a policy
    of another task than ``task``.
    """
    import torch

    p = Path(path)
    if p.is_dir():
        p = p / "policy.pt"
    if not p.exists():
        hint = " (a run writes policy.pt when it finishes; an unfinished run has only checkpoint.pt)" if (p.parent / "checkpoint.pt").exists() else ""
        raise PolicyLoadError(f"no policy at {p}{hint}: pass policy=<run dir or policy.pt of a finished stepwise-train run>")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or not a torch file
        raise PolicyLoadError(f"{p} cannot be read ({err}): is it a complete policy.pt?") from None
    if not isinstance(payload, dict) or payload.get("kind") != "stepwise-policy":
        kind = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
        raise PolicyLoadError(f"{p} is not a stepwise-train policy (kind {kind!r}): pass the policy.pt of a finished run")
    if task is not None and payload["task"] != task:
        raise PolicyLoadError(f"{p} was trained on {payload['task']}, not {task}: pass task={payload['task']} or another policy")
    return TrainedPolicy(payload, device=device)
