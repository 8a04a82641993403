"""Demonstration augmentation for state policies: the whole workspace translated in the table plane.

Meta-World's actions move the hand by Cartesian deltas, so an expert's action depends on where things
are relative to one another, not on where the scene sits on the table. Moving the hand, the objects and
the goal by one offset in x and y leaves the demonstrated action right (up to the workspace's edges),
and gives behaviour cloning states between and beyond the few placements the demonstrations saw. On
pick-place from 5 demonstrations the cloned policy failed where the object lay outside the
demonstrations' range (12 of 15 failures had the object at x < -0.03, where 1 of the 5 demonstrations
lay): it closed the gripper beside the object and carried nothing to the goal.
"""

from __future__ import annotations

import torch

# x, y of every position in the 39-d state (policies.networks.StateFeatures): hand, object 1, object 2,
# the previous frame's three, goal
_BLOCKS = (0, 4, 11, 18, 22, 29, 36)


def translate_xy(obs: torch.Tensor, max_shift: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``obs`` (B, 39), every row's positions moved by one offset drawn uniformly from
    [-max_shift, max_shift]^2 in x and y (z, the gripper and the quaternions unchanged). A position
    block that is all zeros (a task without a second object) stays zero. Returns a new tensor."""
    if obs.shape[-1] != 39:
        raise ValueError(f"translate_xy reads Meta-World's 39-d state, this observation has {obs.shape[-1]} dims: "
                         "use pretrain.translate=0 for other states")
    shift = (torch.rand(obs.shape[0], 2, generator=generator, device=obs.device) * 2 - 1) * float(max_shift)
    out = obs.clone()
    for i in _BLOCKS:
        present = (obs[:, i:i + 3] != 0).any(-1, keepdim=True)
        out[:, i:i + 2] = obs[:, i:i + 2] + shift * present
    return out

