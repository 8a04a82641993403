"""The step-PRM's configuration and network: a shared per-camera encoder, camera embeddings, the
two fusions (``attention`` pooling of views, ``mixture`` of per-camera hop distributions weighted by
learned confidences) and the pair head. :mod:`reward_models.step_prm` wraps it as a RewardModel."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from reward_models.frames import resize_for_encoder

TEXT_DIM = 384
PERSPECTIVE_CHOICES = ("fused", "incremental", "forward", "backward")
FUSION_CHOICES = ("attention", "mixture")


@dataclass
class StepPRMConfig:
    """Everything that builds a :class:`StepPRM` (weights aside).

    Attributes:
        cameras: camera names, in the order of the rig.
        image_size: (height, width) of input frames.
        encoder_size: side frames are resized to before the encoder.
        width: channels of the encoder's first layer (later layers 2x and 4x).
        dim: state / text embedding size.
        num_bins: K, hop bins over [-1, 1].
        perspective: default progress perspective (fused, incremental, forward, backward).
        fusion: ``attention`` (pool views into one state) or ``mixture`` (per-camera hop
            distributions mixed by learned confidences); see the module docstring.
        view_prior_temperature: mixture fusion with a reference demonstration: temperature of the
            camera prior from each camera's VOC on the reference (:meth:`StepPRM.view_prior`); None: off.
        device: ``auto`` (GPU when present), ``cpu`` or ``cuda``.
        success_calibration: Platt scaling ``[a, b]`` of ``success_prob`` (None: the raw top-bin mass);
            fitted by :func:`reward_models.calibration.calibrate`.
        text_cache: instruction -> embedding, filled as instructions are seen.
    """

    cameras: tuple[str, ...] = ("corner", "corner2", "gripperPOV")
    image_size: tuple[int, int] = (96, 96)
    encoder_size: int = 64
    width: int = 32
    dim: int = 256
    num_bins: int = 25
    perspective: str = "fused"
    fusion: str = "attention"
    view_prior_temperature: float | None = 0.1
    device: str = "auto"
    success_calibration: list[float] | None = None
    text_cache: dict[str, list[float]] = field(default_factory=dict)


class ViewEncoder(nn.Module):
    """Shared per-camera image encoder: uint8 (B, 3, S, S) in, float (B, dim) out."""

    def __init__(self, size: int, width: int, dim: int) -> None:
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(3, w, 4, stride=2, padding=1), nn.GroupNorm(8, w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 4 * w), nn.ReLU(),
            nn.Conv2d(4 * w, 4 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 4 * w), nn.ReLU(),
        )
        side = size // 16
        self.proj = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * side * side, dim), nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.net(x))


class StepPRMNet(nn.Module):
    """The network: multi-view state encoder plus the hop head."""

    def __init__(self, cfg: StepPRMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.view = ViewEncoder(cfg.encoder_size, cfg.width, d)
        self.camera_embedding = nn.Parameter(torch.zeros(len(cfg.cameras), d))
        self.query = nn.Parameter(torch.randn(d) / d**0.5)
        self.key = nn.Linear(d, d)
        self.no_goal = nn.Parameter(torch.zeros(d))
        self.text = nn.Sequential(nn.Linear(TEXT_DIM, d), nn.LayerNorm(d))
        self.mixture = cfg.fusion == "mixture"
        self.head = nn.Sequential(
            nn.Linear(6 * d, 512), nn.LayerNorm(512), nn.GELU(),
            nn.Linear(512, 512), nn.GELU(),
            nn.Linear(512, cfg.num_bins + int(self.mixture)),  # mixture: + a confidence logit
        )
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)

    def encode_states(self, images: torch.Tensor, camera_ids: list[int], view_mask: torch.Tensor | None = None) -> torch.Tensor:
        """images uint8 (B, V, H, W, 3) of cameras ``camera_ids`` -> states: fused (B, dim) with
        attention fusion, per camera (B, V, dim) with mixture fusion (views are then combined per
        pair by :meth:`hop_logp`, which takes the mask).

        ``view_mask`` bool (B, V) hides views (camera dropout in training; attention fusion only).
        """
        b, v = images.shape[:2]
        x = images.reshape(b * v, *images.shape[2:]).permute(0, 3, 1, 2).float()
        x = resize_for_encoder(x, self.cfg.encoder_size)
        x = (x - self.mean) / self.std
        feats = self.view(x).view(b, v, -1) + self.camera_embedding[camera_ids]
        if self.mixture:
            return feats
        scores = (self.key(feats) * self.query).sum(-1) / feats.shape[-1] ** 0.5  # (B, V)
        if view_mask is not None:
            scores = scores.masked_fill(~view_mask, float("-inf"))
        return (scores.softmax(-1).unsqueeze(-1) * feats).sum(1)

    def no_goal_like(self, states: torch.Tensor, n: int) -> torch.Tensor:
        """The learned "no goal" anchor as n rows shaped like ``states`` rows."""
        return self.no_goal.expand(n, *states.shape[1:])

    def hop_logp(self, start, goal, before, after, text, view_mask: torch.Tensor | None = None,
                 per_view: bool = False, view_prior: torch.Tensor | None = None):
        """Log-probabilities (B, K) over hop bins for BEFORE -> AFTER.

        States are (B, dim) (attention fusion) or (B, V, dim) (mixture fusion); ``text`` (B, dim).
        With mixture fusion ``view_mask`` bool (B, V) hides views from the mixture, and
        ``per_view=True`` also returns each camera's own log-probabilities (B, V, K); ``view_prior``
        (V,) log-weights are added to every pair's confidences (ignored by attention fusion).
        """
        out = self._head(start, goal, before, after, text)
        if not self.mixture:
            logp = out.log_softmax(-1)
            return (logp, None) if per_view else logp
        views = out[..., :-1].log_softmax(-1)  # out: (B, V, K+1)
        conf = out[..., -1]
        if view_prior is not None:
            conf = conf + view_prior
        if view_mask is not None:
            conf = conf.masked_fill(~view_mask, float("-inf"))
        logp = torch.logsumexp(conf.log_softmax(-1).unsqueeze(-1) + views, dim=1)
        return (logp, views) if per_view else logp

    def view_weights(self, start, goal, before, after, text) -> torch.Tensor:
        """Mixture fusion: each camera's weight (B, V) in the fused hop distribution."""
        if not self.mixture:
            raise ValueError("view weights exist only for fusion=mixture models")
        return self._head(start, goal, before, after, text)[..., -1].softmax(-1)

    def _head(self, start, goal, before, after, text) -> torch.Tensor:
        """The pair head's raw output; per camera (text broadcast over views) with mixture fusion."""
        if self.mixture:
            text = text.unsqueeze(1).expand_as(after)
        return self.head(torch.cat([start, goal, before, after, after - before, text], dim=-1))
