"""The perceptual-feature reward (after Sermanet, Xu and Levine 2016, "Unsupervised Perceptual Rewards").

Fitted, not trained: from 1 to 10 demonstrations of ONE task and a frame encoder
(:mod:`reward_models.encoders`), in seconds on two CPU cores.

1. **Features.** Every camera goes through the same encoder, uint8 (T, H, W, 3) -> float32 (T, D);
   the views are fused by ``concat`` (T, V*D) or ``mean`` (T, D).
2. **Steps.** Each demonstration's features, z-normalised over all demo frames, are split into n
   contiguous steps minimising the mean over steps of the within-step feature standard deviation
   (mean over features of the per-feature std), each step at least max(``min_len``, ``min_frac``
   T) frames long. Solved exactly by dynamic programming over split points (:func:`segment`,
   O(n T^2) after an O(T^2 D) cost table from prefix sums of x and x^2); :func:`segment_bruteforce`
   is the reference. The paper's unweighted mean over steps (``segment_weighting="mean"``) rewards
   cutting off short quiet stretches (the robot at rest before or after the task); the default
   ``length`` weights each step's std by its share of the frames instead (the frame-averaged
   within-step std). Measured with the pixels encoder on 30 of the 40 training tasks (fit on one
   demo, VOC on five others): 0.85 with ``length`` against 0.83 with ``mean`` (0.91 vs 0.90 from
   five demos), and closer to the simulator's keyframes (``benchmarks/results/perceptual.md``).
   ``min_frac`` (0.2) keeps every step a substantial share of the demo.
   ``n_steps=None`` picks n automatically (:func:`choose_num_steps`): the smallest n >= ``n_min``
   whose next step improves the cost by less than ``auto_threshold`` (relative), capped at ``n_max``
   (on Meta-World demos it mostly lands on ``n_max`` = 4: extra steps keep paying).
3. **Feature selection per step.** Features are z-normalised over all training frames (std floored
   at ``std_floor``). For step i the positives are the FINAL part of step i in every demo (its last
   ``end_frac`` share of frames, at least one): the reward of step i is meant to say "step i is
   being completed", so it rises towards the step's end rather than being flat over the step.
   Negatives are all other demo frames. Each feature gets ``alpha |mu+ - mu-| - (sigma+ + sigma-)``
   (:func:`selection_scores`) and the top ``top_k`` (capped by D) are kept.
4. **Step reward.** The average per-feature Gaussian log-likelihood of the selected features under
   the positives' mean and std (diagonal, std floored at ``sigma_floor`` z-units), mapped to [0, 1]
   by a logistic ``sigmoid(a l + b)`` with ``a >= 0`` (monotone), fitted positives vs negatives on
   cross-fitted log-likelihoods: with several demos each demo is scored by statistics fitted
   without it; with one demo, odd frames by statistics of even frames and vice versa.
5. **Progress** (a function of the current frame alone, so it can serve as a shaping potential).
   Besides the n step detectors a start detector r_0 is fitted the same way (positives: the frames
   of step 1 before its positives). Rule ``anchored`` (default): the reward-weighted mean level
   ``progress = sum_{i=0..n} (i / n) r_i / (sum_i r_i + eps)``: each detector votes for its own
   level i / n (later steps weigh more) with its confidence r_i. Along a demonstration the
   detectors fire in order (start, end of step 1, ..., end of step n), so the vote moves from 0 to
   1 as the evidence passes from one anchor to the next, and it interpolates between two anchors
   as the frame moves from one to the other; frames that match no detector get a low value. On
   10 of the 40 training tasks (fit on one demo, scored on five others, pixels encoder) it gave VOC
   0.91 against 0.80 for ``furthest`` (max_i r_i (i - 1 + r_i) / n) and 0.80 for ``weighted``
   (sum_i i r_i / sum_i i, the paper's kind of weighted sum); see :data:`PROGRESS_RULES`.
6. **Success.** ``success_prob = sigmoid(a l_n + b)`` of the last step's log-likelihood, a 1-d
   logistic fitted on cross-fitted values: positives are demo frames from the demo's last keyframe
   on (the success onset; without keyframes, the last step's positives), negatives all earlier demo
   frames and every frame of the failure episodes given to :func:`fit`.

Multi-view: a "head" (normalisation, selected features, statistics, calibration) is fitted for
every non-empty subset of the rig's cameras on the shared segmentation, so ``progress(...,
cameras=[...])`` works with any subset, each camera alone included. ``instruction`` and
``reference`` are accepted for the interface and not used: the model is fitted for one task.

The package, one job per file: :mod:`~reward_models.perceptual.segmentation` (steps from features, and
how well they match the simulator's keyframes), :mod:`~reward_models.perceptual.stats` (feature
selection, per-step Gaussians, logistic calibration), :mod:`~reward_models.perceptual.config` (the
model's config and the ``configs/reward/perceptual.yaml`` mapping), :mod:`~reward_models.perceptual.model`
(the fitted :class:`PerceptualReward` and its scoring), :mod:`~reward_models.perceptual.fitting`
(:func:`fit` from demonstrations and the ``stepwise-train-rm`` trainer).
"""

from reward_models.perceptual.config import CONFIG_FIELDS, FUSIONS, PROGRESS_RULES, PerceptualConfig, fit_kwargs
from reward_models.perceptual.fitting import fit, fit_from_config, load_task_episodes
from reward_models.perceptual.model import (
    ANCHOR_EPS, ENCODER_SEED, Head, PerceptualReward, build_frame_encoder, combine_progress, encode_frames, fuse,
    head_key,
)
from reward_models.perceptual.segmentation import (
    WEIGHTINGS, check_segmentable, choose_num_steps, effective_min_len, keyframe_bounds, random_bounds,
    random_split_jaccard, segment, segment_bruteforce, segment_cost_table, segmentation_costs, segmentation_jaccard,
    weighted_cost_table,
)
from reward_models.perceptual.stats import StepStats, fit_step_stats, logistic_fit, selection_scores, sigmoid

__all__ = [
    "ANCHOR_EPS", "CONFIG_FIELDS", "ENCODER_SEED", "FUSIONS", "PROGRESS_RULES", "WEIGHTINGS", "Head", "PerceptualConfig",
    "PerceptualReward", "StepStats", "build_frame_encoder", "check_segmentable", "choose_num_steps", "combine_progress",
    "effective_min_len", "encode_frames", "fit", "fit_from_config", "fit_kwargs", "fit_step_stats", "fuse", "head_key",
    "keyframe_bounds", "load_task_episodes", "logistic_fit", "random_bounds", "random_split_jaccard",
    "segment", "segment_bruteforce", "segment_cost_table", "segmentation_costs", "segmentation_jaccard",
    "selection_scores", "sigmoid", "weighted_cost_table",
]
