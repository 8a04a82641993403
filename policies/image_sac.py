"""Image-based SAC (DrQ-v2 / SERL style): multi-view pixels + proprio, random-shift augmentation,
one shared pixel encoder trained by the critic only.

Read top to bottom: `ImageSACConfig` (the encoder's hyperparameters on top of `SACConfig`),
`random_shift`, `PixelEncoder`, then `ImageSAC.update` = `critic_step` x utd_ratio + `actor_step`.

The algorithm is `policies.sac.SAC` unchanged (same actor, critic ensemble, temperature, BC term
and its ``bc_coef``, the Cal-QL/CQL penalty when ``cql_alpha > 0``, terminated-only bootstrapping
and utd slices); only the observation path differs:
- obs are dicts: images uint8 (B, V, H, W, 3), channels-last in camera order, exactly as the env
  and the replay store them, plus proprio float32 (B, P). The env's privileged ``state`` is never
  read, so the same agent runs on a real robot.
- uint8 frames travel to the device; conversion to float (x / 255 - 0.5) and augmentation happen
  there, so a GPU is used when present (``device='auto'``) and a CPU trains at small image sizes.
- obs and next_obs are randomly shifted (pad 4 with replicated edges, random crop; DrQ) in every
  critic step, each view independently.
- The encoder is trained by the critic loss alone; the actor reads detached features (DrQ).
- Targets follow DrQ-v2: next_obs goes through the ONLINE encoder without gradient and into the
  Polyak-averaged target critic heads; there is no target encoder. This costs two encoder passes
  per critic step (obs with gradient, next_obs without) where SERL's target encoder costs three.

Batch contract (what `update` reads; `policies.image_replay` produces it): as `policies.sac`
(optional demo and mc_return included) but obs/next_obs are
{"images": uint8 (N, V, H, W, 3), "proprio": float (N, P)}.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from policies.image_replay import check_views, image_hw
from policies.sac import BATCH_KEYS, OPTIONAL_KEYS, SAC, EnsembleLayerNorm, EnsembleLinear, SACConfig, make_adam

__all__ = ["ImageSACConfig", "ImageSAC", "PixelEncoder", "random_shift"]

# config fields that shape the networks: a checkpoint only loads into an agent that agrees on them
_NETWORK_FIELDS = ("hidden_sizes", "num_critics", "layer_norm", "encoder_channels", "encoder_strides", "feature_dim",
                   "proprio_features")


@dataclass
class ImageSACConfig(SACConfig):
    """`SACConfig` plus the pixel encoder. Encoder defaults follow DrQ(-v2): 4 convs of 32 channels,
    3x3, the first with stride 2, then a 50-d LayerNorm + tanh feature per camera."""

    encoder_channels: int = 32
    """channels of every conv layer"""
    encoder_strides: tuple[int, ...] = (2, 1, 1, 1)
    """one 3x3 conv per entry with that stride; (2, 2, 1, 1) is ~3x cheaper at 64 px (for CPUs)"""
    feature_dim: int = 50
    """features per camera after the conv trunk (Linear -> LayerNorm -> tanh, one head per camera)"""
    proprio_features: int = 64
    """proprio -> Linear -> LayerNorm -> tanh of this width (SERL); 0 = concatenate the raw proprio"""
    shift_pad: int = 4
    """random-shift augmentation: pad by this many replicated pixels, crop back at random; 0 = off"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.compile:
            raise ValueError("compile=True compiles the flat-state SAC update (policies.sac_fused); the image "
                             "policy's update (encoder and augmentation) runs eagerly: set agent.compile=false")
        self.encoder_strides = tuple(int(s) for s in self.encoder_strides)
        if not self.encoder_strides or min(self.encoder_strides) < 1:
            raise ValueError(f"encoder_strides must be non-empty positive strides, got {self.encoder_strides}")
        if self.encoder_channels < 1 or self.feature_dim < 1 or self.proprio_features < 0 or self.shift_pad < 0:
            raise ValueError(
                f"need encoder_channels, feature_dim >= 1 and proprio_features, shift_pad >= 0, got "
                f"{self.encoder_channels}, {self.feature_dim}, {self.proprio_features}, {self.shift_pad}"
            )


def random_shift(images: torch.Tensor, pad: int) -> torch.Tensor:
    """DrQ's augmentation on uint8 (B, V, H, W, C): each view shifted by an integer in [-pad, pad]
    along y and x, edges replicated. Equal to replicate-padding by ``pad`` and a random H x W crop,
    done as two row gathers with clamped indices: no padded copy, stays uint8, runs on the tensor's
    device (3x faster on a CPU than one 3-D fancy index)."""
    if pad == 0:
        return images
    B, V, H, W, C = images.shape
    n, dev = B * V, images.device
    shift = torch.randint(-pad, pad + 1, (n, 2), device=dev)
    base = torch.arange(n, device=dev)[:, None]
    rows = (torch.arange(H, device=dev) + shift[:, :1]).clamp_(0, H - 1) + base * H  # (n, H) rows of (n*H, W*C)
    cols = (torch.arange(W, device=dev) + shift[:, 1:]).clamp_(0, W - 1) + base * W  # (n, W) rows of (n*W, H*C)
    x = images.reshape(n * H, W * C).index_select(0, rows.reshape(-1)).reshape(n, H, W, C)
    x = x.transpose(1, 2).reshape(n * W, H * C).index_select(0, cols.reshape(-1)).reshape(n, W, H, C)
    return x.transpose(1, 2).reshape(B, V, H, W, C)


class PixelEncoder(nn.Module):
    """Multi-view pixels + proprio -> one feature vector (B, out_dim).

    images uint8 (B, V, H, W, 3) -> x / 255 - 0.5 -> one conv trunk shared by all views ->
    per-camera Linear -> LayerNorm -> tanh (V heads, one batched matmul) -> concatenated in camera
    order, then the proprio features (B, P) -> Linear -> LayerNorm -> tanh (or raw proprio).
    """

    def __init__(self, num_views: int, image_size: tuple[int, int], proprio_dim: int, channels: int = 32,
                 strides: tuple[int, ...] = (2, 1, 1, 1), feature_dim: int = 50, proprio_features: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for s in strides:
            layers += [nn.Conv2d(in_ch, channels, 3, stride=s), nn.ReLU()]
            in_ch = channels
        self.convs = nn.Sequential(*layers)
        h, w = image_size
        with torch.no_grad():
            try:
                flat = self.convs(torch.zeros(1, 3, h, w)).numel()
            except RuntimeError:
                raise ValueError(f"image_size {h}x{w} is too small for {len(strides)} 3x3 convs with strides {strides}: "
                                 "use larger images or fewer / stride-1 layers (encoder_strides)") from None
        self.num_views, self.feature_dim = num_views, feature_dim
        self.project = EnsembleLinear(num_views, flat, feature_dim)  # one head per camera: views see different things
        self.norm = EnsembleLayerNorm(num_views, feature_dim)
        if proprio_features > 0:
            self.proprio = nn.Sequential(nn.Linear(proprio_dim, proprio_features), nn.LayerNorm(proprio_features),
                                         nn.Tanh())
        else:
            self.proprio = nn.Identity()
        self.out_dim = num_views * feature_dim + (proprio_features or proprio_dim)

    def forward(self, images: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        """images uint8 (B, V, H, W, 3), proprio float (B, P) -> features float (B, out_dim)."""
        B, V, H, W, C = images.shape
        x = images.reshape(B * V, H, W, C).permute(0, 3, 1, 2).float() / 255.0 - 0.5
        x = self.convs(x).reshape(B, V, -1).transpose(0, 1)  # (V, B, flat)
        z = torch.tanh(self.norm(self.project(x)))  # (V, B, feature_dim)
        return torch.cat([z.transpose(0, 1).reshape(B, V * self.feature_dim), self.proprio(proprio)], dim=-1)


class ImageSAC(SAC):
    """Soft actor-critic from camera images + proprio; actions in [-1, 1]^act_dim.

    Args:
        cameras: camera names, the order of the V axis (as the env's ``cameras=``).
        image_size: H = W, or (H, W), of every camera.
        proprio_dim: P. act_dim: A.
        config: `ImageSACConfig`.

    A `SAC` over encoder features (``self.obs_dim`` = encoder.out_dim) with ``self.encoder`` in
    front; ``critic_opt`` optimises critic and encoder together. `update(batch)`, `act(obs)`,
    `state_dict()` / `load_state_dict()` / `from_state_dict()` as in `SAC`.
    """

    def __init__(self, cameras: Sequence[str], image_size: int | Sequence[int], proprio_dim: int, act_dim: int,
                 config: ImageSACConfig | None = None) -> None:
        cfg = config if config is not None else ImageSACConfig()
        if not isinstance(cfg, ImageSACConfig):
            raise TypeError(f"config must be an ImageSACConfig (SACConfig plus the encoder), got {type(cfg).__name__}")
        if isinstance(cameras, str) or not cameras or len(set(cameras)) != len(cameras):
            raise ValueError(f"cameras must be a non-empty list of distinct camera names, got {cameras!r}")
        if proprio_dim < 1:
            raise ValueError(f"proprio_dim must be >= 1, got {proprio_dim}")
        self.cameras, self.image_size = [str(c) for c in cameras], image_hw(image_size)
        self.proprio_dim = int(proprio_dim)
        encoder = PixelEncoder(len(self.cameras), self.image_size, self.proprio_dim, cfg.encoder_channels,
                               cfg.encoder_strides, cfg.feature_dim, cfg.proprio_features)
        super().__init__(encoder.out_dim, act_dim, cfg)
        self.encoder = encoder.to(self.device)
        self.critic_opt = make_adam([*self.critic.parameters(), *self.encoder.parameters()], cfg.lr, cfg.fused_adam)

    @classmethod
    def for_env(cls, env, config: ImageSACConfig | None = None) -> "ImageSAC":
        """An agent shaped for a `real.RobotEnv` (its cameras, image size, proprio and action dims)."""
        space = env.observation_space
        if "images" not in space.spaces:
            raise ValueError("the env has no cameras: make it with cameras=[...] for ImageSAC, "
                             "or use the state-based SAC")
        views = space["images"]
        first = next(iter(views.values()))
        return cls(list(views.keys()), first.shape[:2], space["proprio"].shape[0], env.action_space.shape[0], config)

    # -- the learning step ----------------------------------------------------------------

    def encode(self, obs: Mapping[str, torch.Tensor], augment: bool) -> torch.Tensor:
        """{"images" uint8 (B, V, H, W, 3), "proprio" (B, P)} on the device -> features (B, obs_dim)."""
        images = random_shift(obs["images"], self.cfg.shift_pad) if augment else obs["images"]
        return self.encoder(images, obs["proprio"])

    def _check_batch(self, batch: Mapping) -> dict:
        """Move the batch to the device (images stay uint8, the rest float32); check keys, shapes, dtypes, NaNs."""
        if "done" in batch and "terminated" not in batch:
            raise KeyError("batch has 'done' but no 'terminated': pass terminated (1 only at true terminals); "
                           "time-limit truncations must bootstrap")
        missing = [k for k in BATCH_KEYS if k not in batch]
        if missing:
            raise KeyError(f"batch lacks {missing}; it needs {list(BATCH_KEYS)} (+ optional 'demo')")
        n = len(batch["action"])
        if n % self.cfg.utd_ratio:
            raise ValueError(f"batch of {n} rows does not split into utd_ratio={self.cfg.utd_ratio} equal slices")
        b: dict = {k: self._obs_tensors(batch[k], k, n) for k in ("obs", "next_obs")}
        for k in ("action", "reward", "terminated", *OPTIONAL_KEYS):
            if k in batch:
                b[k] = torch.as_tensor(batch[k], dtype=torch.float32, device=self.device)
                want = (n, self.act_dim) if k == "action" else (n,)
                if b[k].shape != want:
                    raise ValueError(f"{k} must be {want}, got {tuple(b[k].shape)}")
        if not torch.isfinite(b["action"]).all():
            raise ValueError("batch action contains NaN or inf; check what was stored in the replay buffer")
        if self.cfg.bc_weight > 0 and "demo" not in b:
            raise KeyError("bc_weight > 0 needs a 'demo' mask in the batch: sample through MixedImageReplay, "
                           "or set bc_weight=0")
        return b

    def _obs_tensors(self, obs: Mapping, name: str, n: int) -> dict[str, torch.Tensor]:
        if not isinstance(obs, Mapping) or "images" not in obs or "proprio" not in obs:
            raise TypeError(f"batch {name} must be a dict {{'images': uint8 (N, V, H, W, 3), 'proprio': (N, P)}}")
        images = torch.as_tensor(obs["images"], device=self.device)
        want = (n, len(self.cameras), *self.image_size, 3)
        if images.dtype != torch.uint8:
            raise TypeError(f"batch {name}['images'] is {images.dtype}; store uint8 frames (0..255), the agent converts")
        if tuple(images.shape) != want:
            raise ValueError(f"batch {name}['images'] has shape {tuple(images.shape)}, expected {want} "
                             f"(views in camera order {self.cameras})")
        proprio = torch.as_tensor(obs["proprio"], dtype=torch.float32, device=self.device)
        if tuple(proprio.shape) != (n, self.proprio_dim):
            raise ValueError(f"batch {name}['proprio'] has shape {tuple(proprio.shape)}, "
                             f"expected ({n}, {self.proprio_dim})")
        return {"images": images, "proprio": proprio}

    def bc_update(self, obs: Mapping, action: torch.Tensor) -> float:
        """One behaviour-cloning step of the actor alone (the warm start) on detached, augmented
        features: obs {"images" uint8 (N, V, H, W, 3), "proprio" (N, P)}, action (N, A). Returns the loss."""
        n = len(action)
        x = self._obs_tensors(obs, "obs", n)
        action = torch.as_tensor(action, dtype=torch.float32, device=self.device)
        with torch.no_grad():  # the encoder learns from the critic only
            features = self.encode(x, augment=True)
        sampled, _, _ = self.actor.sample(features)
        loss = ((sampled - action) ** 2).sum(-1).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_opt.step()
        return loss.item()

    # -- acting -----------------------------------------------------------------------------

    @torch.no_grad()
    def act(self, obs: Mapping, deterministic: bool = False) -> np.ndarray:
        """Action(s) in [-1, 1] for one env observation or a batch of them.

        obs: {"images": {camera: uint8 (H, W, 3)}, "proprio": (P,)} -> float32 (A,); or with
        camera arrays (N, H, W, 3) and proprio (N, P) -> (N, A). ``images`` may also be one uint8
        array (V, H, W, 3) / (N, V, H, W, 3) in camera order. Other keys (``state``) are ignored.
        deterministic = tanh(mean), for evaluation.
        """
        if not isinstance(obs, Mapping) or "images" not in obs or "proprio" not in obs:
            raise TypeError("act() takes the env's observation dict with 'images' and 'proprio' "
                            "(make the env with cameras=[...]); the state-based SAC takes obs['state']")
        proprio = np.asarray(obs["proprio"], np.float32)
        if proprio.shape[-1:] != (self.proprio_dim,) or proprio.ndim not in (1, 2):
            raise ValueError(f"obs['proprio'] has shape {proprio.shape}, "
                             f"expected ({self.proprio_dim},) or (N, {self.proprio_dim})")
        batched = proprio.ndim == 2
        images = check_views(obs["images"], self.cameras, self.image_size, "obs['images']", batched=batched)
        x = {"images": torch.as_tensor(images if batched else images[None], device=self.device),
             "proprio": torch.as_tensor(proprio.reshape(-1, self.proprio_dim), device=self.device)}
        action, _, mean_action = self.actor.sample(self.encode(x, augment=False))
        out = (mean_action if deterministic else action).cpu().numpy().astype(np.float32)
        if not np.all(np.isfinite(out)):
            raise FloatingPointError("the actor produced NaN actions: training diverged; resume from an earlier "
                                     "checkpoint or lower lr")
        return out if batched else out[0]

    # -- save / resume ----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """`SAC.state_dict()` plus the encoder, cameras, image size and proprio dim."""
        state = super().state_dict()
        state.update(encoder=self.encoder.state_dict(), cameras=list(self.cameras), image_size=list(self.image_size),
                     proprio_dim=self.proprio_dim)
        return state

    def load_state_dict(self, state: Mapping) -> None:
        """Restore from `state_dict()`; cameras, image size, dims and network shapes must match this agent's."""
        _check_image_checkpoint(state)
        mine = {"cameras": list(self.cameras), "image_size": list(self.image_size), "proprio_dim": self.proprio_dim,
                "act_dim": self.act_dim, **{k: _plain(getattr(self.cfg, k)) for k in _NETWORK_FIELDS}}
        theirs = {"cameras": list(state["cameras"]), "image_size": list(state["image_size"]),
                  "proprio_dim": state["proprio_dim"], "act_dim": state["act_dim"],
                  **{k: _plain(state["config"].get(k)) for k in _NETWORK_FIELDS}}
        diff = [f"{k}: checkpoint {theirs[k]} vs agent {mine[k]}" for k in mine if mine[k] != theirs[k]]
        if diff:
            raise ValueError(f"checkpoint does not fit this agent ({'; '.join(diff)}): build the matching agent with "
                             "ImageSAC.from_state_dict(state), or make the env with the checkpoint's cameras/image_size")
        super().load_state_dict(state)
        self.encoder.load_state_dict(state["encoder"])

    @classmethod
    def from_state_dict(cls, state: Mapping, device: str | None = None) -> "ImageSAC":
        """Build an agent with the checkpoint's cameras, image size and config (optionally on another
        device) and load it."""
        _check_image_checkpoint(state)
        cfg = dict(state["config"])
        if device is not None:
            cfg["device"] = device
        agent = cls(state["cameras"], state["image_size"], state["proprio_dim"], state["act_dim"],
                    ImageSACConfig(**cfg))
        agent.load_state_dict(state)
        return agent


def _check_image_checkpoint(state: Mapping) -> None:
    """Refuse anything but an `ImageSAC.state_dict()`, pointing state-based checkpoints to `SAC`."""
    keys = {"config", "act_dim", "encoder", "cameras", "image_size", "proprio_dim"}
    if isinstance(state, Mapping) and keys <= set(state):
        return
    if isinstance(state, Mapping) and "actor" in state:
        raise ValueError("this is a state-based SAC checkpoint (no encoder/cameras): load it with SAC.from_state_dict")
    raise ValueError(f"not an ImageSAC checkpoint (needs {sorted(keys)}): pass what ImageSAC.state_dict() saved")


def _plain(v):
    """Tuples -> lists so that configs compare equal after a save/load round trip."""
    return list(v) if isinstance(v, (tuple, list)) else v
