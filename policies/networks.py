"""The networks of the state-based agents: the actor (`TanhGaussianActor`), the residual actor built on a
frozen one (`ResidualActor`), and the batched critic ensemble (`CriticEnsemble`, with its `EnsembleLinear`
and `EnsembleLayerNorm` layers), plus the input transform they share (`StateFeatures`). `policies.sac.SAC`
learns them; `policies.image_sac` reuses the ensemble layers behind its pixel encoder."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["StateFeatures", "TanhGaussianActor", "ResidualActor", "CriticEnsemble", "EnsembleLinear",
           "EnsembleLayerNorm", "mlp", "squash_log_std", "tanh_gaussian_sample", "STATE_FEATURES"]

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0  # CleanRL's bounds: wide enough to explore, never degenerate
STATE_FEATURES = ("raw", "relative")


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int) -> nn.Sequential:
    """Plain ReLU MLP (the actor's trunk and head)."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.ReLU()]
        in_dim = h
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class StateFeatures(nn.Module):
    """The input transform of actor and critics (no parameters): 'raw' passes the state through;
    'relative' appends, to Meta-World's 39-d state, the vectors object 1 - hand, object 2 - hand,
    goal - hand, goal - object 1 and goal - object 2, scaled by 10 (centimetres become tenths)."""

    # Meta-World's state: hand 0:3, gripper 3, object 1 position 4:7 (quaternion 7:11), object 2
    # position 11:14 (quaternion 14:18), the previous frame's 18 values 18:36, goal 36:39.
    HAND, OBJ1, OBJ2, GOAL = slice(0, 3), slice(4, 7), slice(11, 14), slice(36, 39)
    PAIRS = ((OBJ1, HAND), (OBJ2, HAND), (GOAL, HAND), (GOAL, OBJ1), (GOAL, OBJ2))
    SCALE = 10.0

    def __init__(self, obs_dim: int, mode: str = "raw") -> None:
        super().__init__()
        if mode not in STATE_FEATURES:
            raise ValueError(f"state_features must be one of {STATE_FEATURES}, got {mode!r}")
        if mode == "relative" and obs_dim != 39:
            raise ValueError(
                f"state_features='relative' reads Meta-World's 39-d state, this observation has {obs_dim} dims: "
                "use state_features='raw'"
            )
        self.mode, self.in_dim = mode, int(obs_dim)
        self.out_dim = self.in_dim + (3 * len(self.PAIRS) if mode == "relative" else 0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if self.mode == "raw":
            return obs
        rel = [obs[..., a] - obs[..., b] for a, b in self.PAIRS]
        return torch.cat([obs, *(r * self.SCALE for r in rel)], dim=-1)


class TanhGaussianActor(nn.Module):
    """pi(a|s) = tanh(N(mu(s), sigma(s))); actions in (-1, 1)^A."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], state_features: str = "raw") -> None:
        super().__init__()
        self.features = StateFeatures(obs_dim, state_features)
        self.net = mlp(self.features.out_dim, hidden, 2 * act_dim)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (mean, log_std), each (B, A), log_std squashed into [LOG_STD_MIN, LOG_STD_MAX]."""
        mean, log_std = self.net(self.features(obs)).chunk(2, dim=-1)
        return mean, squash_log_std(log_std)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reparameterised sample: (action (B, A), log_prob (B,), deterministic action tanh(mean) (B, A))."""
        return tanh_gaussian_sample(*self(obs))


def squash_log_std(log_std: torch.Tensor) -> torch.Tensor:
    """A network's raw log-std output squashed into [LOG_STD_MIN, LOG_STD_MAX]."""
    return LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(log_std) + 1.0)


def tanh_gaussian_sample(mean: torch.Tensor, log_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tanh(u), log density of tanh(u), tanh(mean)) for u ~ N(mean, exp(log_std)), reparameterised."""
    u = mean + log_std.exp() * torch.randn_like(mean)
    # log N(u) - sum log(1 - tanh(u)^2), the latter in the overflow-free form 2(log2 - u - softplus(-2u))
    log_prob = (-0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_prob = log_prob - (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
    return torch.tanh(u), log_prob, torch.tanh(mean)


class ResidualActor(nn.Module):
    """a = clip(b(s) + scale * r, -1, 1): a bounded correction r = tanh(u), u ~ N(mu(s, b), sigma(s, b)),
    on top of the frozen behaviour-cloned actor's deterministic action b(s) (residual RL on a BC base:
    Policy Decorator, Yuan et al. 2024; ResFiT, Ankile et al. 2025). The correction's mean head starts at
    zero, so before its first update the policy acts as the cloned one does, and ``scale`` bounds how far
    RL can ever move it from there. Its log-probability is the composite action's density,
    log p(r) - |A| log(scale) (the clip ignored), so the temperature's target entropy and the conservative
    term's importance weights read densities on the action space the critics score."""

    def __init__(self, base: TanhGaussianActor, act_dim: int, hidden: tuple[int, ...], scale: float) -> None:
        super().__init__()
        self.base = base.requires_grad_(False).eval()
        self.scale = float(scale)
        self.features = StateFeatures(base.features.in_dim, base.features.mode)
        self.net = mlp(self.features.out_dim + act_dim, hidden, 2 * act_dim)
        with torch.no_grad():  # the correction's mean starts at 0 for every state
            self.net[-1].weight[:act_dim].zero_()
            self.net[-1].bias[:act_dim].zero_()

    def base_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The frozen BC actor's deterministic action tanh(mean) (B, A), outside any gradient."""
        return torch.tanh(self.base(obs)[0]).detach()

    def _correction(self, obs: torch.Tensor, base_action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(torch.cat([self.features(obs), base_action], dim=-1)).chunk(2, dim=-1)
        return mean, squash_log_std(log_std)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std) of the correction's pre-tanh Gaussian, each (B, A)."""
        return self._correction(obs, self.base_action(obs))

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(composite action (B, A), its log-density (B,), deterministic composite b + scale * tanh(mean))."""
        b = self.base_action(obs)
        r, log_prob, r_mean = tanh_gaussian_sample(*self._correction(obs, b))
        log_prob = log_prob - r.shape[-1] * math.log(self.scale)
        return (b + self.scale * r).clamp(-1.0, 1.0), log_prob, (b + self.scale * r_mean).clamp(-1.0, 1.0)


class EnsembleLinear(nn.Module):
    """E independent linear layers in one batched matmul: (E, B, in) -> (E, B, out)."""

    def __init__(self, ensemble: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble, in_dim, out_dim))  # note: (in, out), not nn.Linear's (out, in)
        self.bias = nn.Parameter(torch.empty(ensemble, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default init, per member
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # inductor fuses the bias into the next element-wise kernel, and its
            return torch.bmm(x, self.weight) + self.bias  # bmm ran 81 -> 90 GFLOP/s against baddbmm's broadcast bias
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over features with a separate affine (gain, bias) per ensemble member."""

    def __init__(self, ensemble: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ensemble, 1, dim))
        self.bias = nn.Parameter(torch.zeros(ensemble, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias, F.layer_norm(x, x.shape[-1:]), self.weight)  # one kernel for the affine


class CriticEnsemble(nn.Module):
    """E Q-functions Q_e(s, a), each Linear -> [LayerNorm] -> ReLU per hidden layer, computed as one batch.

    Member e equals an nn.Sequential of nn.Linear(weight = self.layers[k].weight[e].T), nn.LayerNorm, ReLU.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], ensemble: int, layer_norm: bool,
                 state_features: str = "raw") -> None:
        super().__init__()
        self.ensemble = ensemble
        self.features = StateFeatures(obs_dim, state_features)
        dims = (self.features.out_dim + act_dim, *hidden)
        self.layers = nn.ModuleList(EnsembleLinear(ensemble, i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(
            EnsembleLayerNorm(ensemble, h) if layer_norm else nn.Identity() for h in hidden
        )
        self.head = EnsembleLinear(ensemble, dims[-1], 1)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """obs (B, S), action (B, A) -> Q (E, B)."""
        x = torch.cat([self.features(obs), action], dim=-1).unsqueeze(0).expand(self.ensemble, -1, -1)
        for layer, norm in zip(self.layers, self.norms):
            x = F.relu(norm(layer(x)), inplace=True)  # in place: the affine's backward never reads its output
        # the 1-wide head as a product and a sum over features, not a matrix product: a (B, H) x (H, 1) bmm
        # and its two backward products ran at a few GFLOP/s (238 / 214 / 202 us at batch 256, against 48 /
        # 20 / 46 us element-wise; one AMD EPYC thread), and inductor fuses these into the kernels around them
        return (x * self.head.weight.transpose(1, 2)).sum(-1) + self.head.bias.squeeze(-1)
