"""Policy learning: state-based SAC with a batched critic ensemble, replay and offline/online mixing."""

from policies.replay import MixedReplay, ReplayBuffer, load_offline
from policies.sac import SAC, CriticEnsemble, SACConfig, TanhGaussianActor

__all__ = ["SAC", "SACConfig", "CriticEnsemble", "TanhGaussianActor", "ReplayBuffer", "MixedReplay", "load_offline"]
