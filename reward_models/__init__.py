"""Progress and success models (step-discretized PRM, perceptual-feature reward, VLM classifier),
their shared `RewardModel` interface, and their train / eval CLIs. Never imports `policies` or
`real`."""

from reward_models.base import (
    CheckpointError,
    FramesError,
    RewardModel,
    check_frames,
    load,
)

from reward_models.shaping import ShapedRewards, episode_potentials, shape_rewards

__all__ = [
    "CheckpointError",
    "FramesError",
    "RewardModel",
    "ShapedRewards",
    "check_frames",
    "episode_potentials",
    "load",
    "shape_rewards",
]
