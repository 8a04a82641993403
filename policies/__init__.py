"""Policy learning: SAC (state-based, and image-based with a shared pixel encoder), replay and offline/online mixing."""

from policies.image_replay import ImageReplayBuffer, MixedImageReplay, load_offline_images
from policies.image_sac import ImageSAC, ImageSACConfig, PixelEncoder
from policies.replay import MixedReplay, ReplayBuffer, load_offline
from policies.sac import SAC, CriticEnsemble, SACConfig, TanhGaussianActor

__all__ = [
    "SAC", "SACConfig", "CriticEnsemble", "TanhGaussianActor", "ReplayBuffer", "MixedReplay", "load_offline",
    "ImageSAC", "ImageSACConfig", "PixelEncoder", "ImageReplayBuffer", "MixedImageReplay", "load_offline_images",
]
