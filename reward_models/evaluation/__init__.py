"""Score any :class:`~reward_models.base.RewardModel` on episode stores: :func:`evaluate` (returns the
JSON-able results dict) and :func:`render_report` (writes ``report.json``, ``report.md`` and PNG
plots); the ``stepwise-eval-rm`` command (:mod:`reward_models.evaluate`) runs both.

One job per file: :mod:`~reward_models.evaluation.scorers` (how each row scores an episode),
:mod:`~reward_models.evaluation.per_task` (models fitted per task), :mod:`~reward_models.evaluation.loop`
(the evaluation and its metrics), :mod:`~reward_models.evaluation.report` (markdown and plots).
The evaluation imports the models; no model imports it.

Rows of the report: ``model`` (the fused camera rig), ``camera:<name>`` (each camera alone, when
the model's ``progress`` accepts ``cameras=``), ``random`` (uniform random scores, fixed seed)
and ``sim_dense_gt`` (the simulator's dense reward normalised per task: PRIVILEGED, an upper
reference, not a competitor).

Metrics per task (overall = mean over tasks):

* ``voc_d<k>``: value-order correlation, the Spearman correlation between time index and predicted
  progress over successful episodes scored at every k-th frame (frames are subsampled BEFORE the
  model sees them), averaged over episodes.
* ``voc_reversed``: the same on successful episodes played backwards (good models: close to -1).
* ``auroc``: AUROC of final-frame progress, successful vs failed episodes (None without both).
* ``success_acc`` / ``success_f1`` / ``success_ece``: per-frame ``success_prob`` against the
  per-frame success label; the threshold is chosen on a validation half of the episodes (even
  positions, in store order) and the metrics are reported on the other half.
* ``success_auroc`` / ``success_fpr`` / ``success_fnr``: on the same frames, the frame-level AUROC of
  ``success_prob`` (threshold-free), and the false-positive rate (not-done frames called done) and
  false-negative rate (done frames missed) at that threshold.
* ``threshold_metric="model"``: the model rows use the MODEL's own decision threshold
  (``cfg.threshold``, e.g. the VLM classifier's, chosen on its own validation frames) instead of one
  chosen on the evaluated episodes, and report on every scored episode (nothing is tuned on them);
  rows without a model (``random``, ``sim_dense_gt``) keep the validation-half choice (accuracy).

Reference demonstration (``reference="first_success"``): per task, the first successful expert
episode is passed as ``reference=`` to the model and is excluded from the scored episodes, so
anchors never come from the episode being scored.

Models fitted per task (``model=perceptual:<encoder> fit_demos=1``): the perceptual-feature reward
(:mod:`reward_models.perceptual`) is fitted for each task in the eval stores from that task's first
``fit_demos`` successful expert episodes, taken from ``demo_data`` first and then from the eval
stores themselves (:func:`fit_per_task`); episodes used for fitting are never scored. Scoring is
then the same as for any model (the reference rule still applies, so with ``fit_demos=1`` and a
separate demo store the scored set equals that of a checkpoint's evaluation).
"""

from reward_models.evaluation.loop import (
    BASELINES,
    DENSITIES,
    METRIC_NAMES_EXTRA,
    REFERENCE_RULES,
    THRESHOLD_RULES,
    evaluate,
)
from reward_models.evaluation.per_task import RECIPES, fit_demos_per_task, fit_per_task
from reward_models.evaluation.report import fmt, render_report
from reward_models.evaluation.scorers import (
    PerTaskModels,
    Scorer,
    dense_reward_scorer,
    model_accepts_cameras,
    model_scorer,
    model_threshold,
    random_scorer,
)

__all__ = [
    "BASELINES", "DENSITIES", "METRIC_NAMES_EXTRA", "RECIPES", "REFERENCE_RULES", "THRESHOLD_RULES", "PerTaskModels",
    "Scorer", "dense_reward_scorer", "evaluate", "fit_demos_per_task", "fit_per_task", "fmt", "model_accepts_cameras",
    "model_scorer", "model_threshold", "random_scorer", "render_report",
]
