"""The perceptual reward's config: :class:`PerceptualConfig` (what builds a model besides its fitted
statistics) and :func:`fit_kwargs` (the ``configs/reward/perceptual.yaml`` mapping as :func:`fit` arguments)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from reward_models.encoders import ENCODERS
from reward_models.perceptual.segmentation import WEIGHTINGS

FUSIONS = ("concat", "mean")
PROGRESS_RULES = ("anchored", "furthest", "weighted")
"""How step rewards make progress (:func:`combine_progress`; the package docstring compares them):
``anchored`` (default) sum_i (i/n) r_i / sum_i r_i over i = 0 (start) .. n; ``furthest``
max_i r_i (i - 1 + r_i) / n; ``weighted`` sum_i i r_i / sum_i i (later steps weigh more; cannot reach 1
while earlier steps' rewards fall)."""


@dataclass
class PerceptualConfig:
    """Everything that builds a :class:`PerceptualReward` besides its fitted statistics.

    Attributes:
        cameras: camera names, in the order of the rig.
        image_size: (height, width) of input frames.
        encoder: ``{"name": ..., **kwargs}`` rebuilding the encoder with ``build_encoder``.
        fusion: ``concat`` (views side by side) or ``mean`` (average of the views' features).
        n_steps: steps per demonstration (None: chosen by :func:`choose_num_steps`).
        n_min, n_max, auto_threshold: the automatic rule's bounds and relative threshold.
        min_len: shortest step, frames.
        min_frac: shortest step as a share of each demo's length (the larger of the two applies).
        segment_weighting: ``mean`` (the paper) or ``length``; see :func:`weighted_cost_table`.
        alpha, top_k: feature selection (score weight, kept features per step).
        end_frac: share of each step's final frames used as its positives.
        std_floor: floor of the per-feature std in z-normalisation (feature units).
        sigma_floor: floor of the positives' std (z units).
        q_max: per-feature deviation cap of the log-likelihood, in stds (None: uncapped).
        progress_rule: see :data:`PROGRESS_RULES`.
        device: ``auto`` / ``cpu`` / ``cuda``, passed to encoders that take a device.
        task, instruction: of the demonstrations it was fitted on (informative).
        fit_info: demos, frames, per-demo bounds, seconds (informative).
    """

    cameras: tuple[str, ...] = ("corner", "corner2", "gripperPOV")
    image_size: tuple[int, int] = (96, 96)
    encoder: dict = field(default_factory=lambda: {"name": "pixels"})
    fusion: str = "concat"
    n_steps: int | None = None
    n_min: int = 2
    n_max: int = 4
    auto_threshold: float = 0.1
    min_len: int = 5
    min_frac: float = 0.2
    segment_weighting: str = "length"
    alpha: float = 5.0
    top_k: int = 32
    end_frac: float = 0.5
    std_floor: float = 1e-3
    sigma_floor: float = 0.3
    q_max: float | None = None
    progress_rule: str = "anchored"
    device: str = "auto"
    task: str = ""
    instruction: str = ""
    fit_info: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ValueError naming a bad field and its allowed values."""
        self.cameras, self.image_size = tuple(self.cameras), tuple(int(s) for s in self.image_size)
        if not self.cameras or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"cameras must be distinct camera names, got {list(self.cameras)}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion={self.fusion!r} unknown: use one of {FUSIONS}")
        if self.segment_weighting not in WEIGHTINGS:
            raise ValueError(f"segment_weighting={self.segment_weighting!r} unknown: use one of {WEIGHTINGS}")
        if self.progress_rule not in PROGRESS_RULES:
            raise ValueError(f"progress_rule={self.progress_rule!r} unknown: use one of {PROGRESS_RULES}")
        if not 0.0 < float(self.end_frac) <= 1.0:
            raise ValueError(f"end_frac={self.end_frac} must be in (0, 1]")
        if int(self.top_k) < 1 or int(self.min_len) < 1 or int(self.n_max) < 1:
            raise ValueError(f"top_k, min_len and n_max must be >= 1, got {self.top_k}, {self.min_len}, {self.n_max}")
        if not isinstance(self.encoder, Mapping) or "name" not in self.encoder:
            raise ValueError(f"encoder must be a dict with a 'name' (one of {sorted(ENCODERS)}), got {self.encoder!r}")



CONFIG_FIELDS = ("fusion", "n_min", "n_max", "auto_threshold", "min_len", "min_frac", "segment_weighting", "alpha",
                 "top_k", "end_frac", "std_floor", "sigma_floor", "q_max", "progress_rule", "device")
"""Keys of ``configs/reward/perceptual.yaml`` passed to :func:`fit` as :class:`PerceptualConfig` fields."""


def fit_kwargs(reward_cfg: Mapping[str, Any], strict: bool = True) -> dict:
    """:func:`fit` keyword arguments from a ``configs/reward/perceptual.yaml`` mapping.

    ``cameras``, ``image_size`` (an int side or [H, W]), ``n_steps``, ``encoder_kwargs`` and the
    :data:`CONFIG_FIELDS` present. Unknown keys raise ValueError naming them when ``strict``;
    ``strict=False`` ignores them (``stepwise-train`` merges this file into its own ``reward``
    block, whose shaping keys are not the model's).
    """
    known = {"kind", "encoder", "cameras", "image_size", "n_steps", "encoder_kwargs", *CONFIG_FIELDS}
    unknown = sorted(set(reward_cfg) - known)
    if unknown and strict:
        raise ValueError(f"reward config keys {unknown} are unknown to the perceptual reward: use {sorted(known)}")
    size = reward_cfg.get("image_size", 96)
    size = (int(size), int(size)) if isinstance(size, (int, float, str)) else tuple(int(s) for s in size)
    out = {k: reward_cfg[k] for k in CONFIG_FIELDS if k in reward_cfg}
    out.update(cameras=list(reward_cfg.get("cameras") or []) or None, image_size=size,
               n_steps=None if reward_cfg.get("n_steps") in (None, "null", "auto") else int(reward_cfg["n_steps"]),
               encoder_kwargs=dict(reward_cfg.get("encoder_kwargs") or {}))
    return out
