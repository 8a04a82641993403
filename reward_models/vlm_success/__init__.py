"""The VLM success classifier (after RoboFuME): "is the task done?" from multi-view frames and the
instruction, on an open_clip image-text model, calibrated.

Model. The image tower of an open_clip architecture (chosen by name; any of ``open_clip.list_models()``
or the small ones registered here, :data:`SMALL_ARCHS`) encodes every camera's frame; the unit-norm
per-camera features are fused by attention pooling (a learned query against keys that carry a learned
camera embedding), so any subset of the trained cameras, a single camera included, gives a fused
feature. The instruction is embedded once and cached, either by the packaged all-MiniLM-L6-v2 sentence
encoder (``text_encoder: minilm``, 384-d, offline) or by the CLIP text tower of the same architecture
(``text_encoder: clip``; kept frozen so that cached embeddings stay valid). A small head reads
``[image, text, image * text]`` (both projected to ``head_dim``) and outputs one logit;
``P(done) = sigmoid(logit / T + b)`` with a temperature ``T`` fitted on a validation split (temperature
scaling) and, by default, a bias ``b`` fitted with it (Platt scaling: batches are balanced 50/50, so the
raw logit assumes a prior of one half, and a temperature alone cannot move the prior to the data's);
a decision threshold is chosen there too (:meth:`VLMSuccessClassifier.is_done`).

Zero-shot mode (``zero_shot: true``, or :meth:`VLMSuccessClassifier.zero_shot_prob`) needs
``text_encoder: clip``: the fused image feature is compared with the CLIP text embeddings of two prompts
built from the instruction (``"{instruction}: done"`` / ``"{instruction}: not yet"``) and the two
similarities, times CLIP's logit scale, are softmaxed. It is meaningful only with pretrained weights.

Weights. ``pretrained`` is a local checkpoint file or an open_clip hub tag (``open_clip.list_pretrained()``);
the machines this project is built on cannot reach the hub, so the small architectures train from
scratch here, and the standard ones stay available for users with weights (and a GPU).

Training (:func:`train`, :func:`train_from_config`, ``stepwise-train-rm reward=vlm_success``): frames of
episode stores labelled per frame (the simulator's per-step ``success`` when recorded, else the frames
from the last keyframe on of successful episodes); negatives are failures (every frame), near-misses,
stalls and the early frames of successful episodes; every batch is exactly half positives. Random-shift
and colour augmentation, camera dropout, validation split by episode, resumable, tqdm and TensorBoard.
``init=<checkpoint>`` adapts a trained model to a new task from a few demos and failures (RoboFuME's
fine-tuning step).

The package, one job per file: :mod:`~reward_models.vlm_success.backbone` (open_clip towers),
:mod:`~reward_models.vlm_success.model` (config, network, the classifier), :mod:`~reward_models.vlm_success.calibration`
(temperature / Platt scaling, threshold), :mod:`~reward_models.vlm_success.data` (labelled frames, balanced
batches), :mod:`~reward_models.vlm_success.training` (:func:`train`, :func:`train_from_config`).
"""

from reward_models.vlm_success.backbone import SMALL_ARCHS, build_open_clip, register_archs, resolve_pretrained
from reward_models.vlm_success.calibration import binary_nll, calibrate, fit_platt, fit_temperature, sigmoid
from reward_models.vlm_success.data import BalancedSampler, FrameSet, frame_labels, load_frame_set, split_episodes
from reward_models.vlm_success.model import (
    DEFAULT_PROMPTS, MINILM_DIM, TEXT_ENCODERS, VLMSuccessClassifier, VLMSuccessConfig, VLMSuccessNet,
)
from reward_models.vlm_success.training import TRAIN_DEFAULTS, color_jitter, frame_set_logits, train, train_from_config

__all__ = [
    "DEFAULT_PROMPTS", "MINILM_DIM", "SMALL_ARCHS", "TEXT_ENCODERS", "TRAIN_DEFAULTS", "BalancedSampler", "FrameSet",
    "VLMSuccessClassifier", "VLMSuccessConfig", "VLMSuccessNet", "binary_nll", "build_open_clip", "calibrate",
    "color_jitter", "fit_platt", "fit_temperature", "frame_labels", "frame_set_logits", "load_frame_set",
    "register_archs", "resolve_pretrained", "sigmoid", "split_episodes", "train", "train_from_config",
]
