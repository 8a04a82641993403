"""`stepwise-eval-rm`: score any :class:`~reward_models.base.RewardModel` on episode stores.

Usage::

    stepwise-eval-rm model=general data=data/demos out=results/eval_rm
    stepwise-eval-rm model=runs/prm/ckpt data=[a.hdf5,b.hdf5] out=out reference=none
    stepwise-eval-rm model=perceptual:pixels fit_demos=1 demo_data=data/heldout_demo data=data/heldout_eval out=out

writes ``out/report.json`` (every number), ``out/report.md`` (tables) and PNG plots. The same
evaluation is available in Python as :func:`reward_models.evaluation.evaluate` (returns the
JSON-able results dict) and :func:`reward_models.evaluation.render_report` (writes the files);
:mod:`reward_models.evaluation` says what each row and metric of the report is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reward_models.data import resolve_stores
from reward_models.evaluation import RECIPES, PerTaskModels, evaluate, fit_per_task, fmt, render_report


def run(cfg: Any) -> dict:
    """Load the model named by ``cfg.model``, evaluate it on ``cfg.data`` and write ``cfg.out``."""
    from omegaconf import OmegaConf

    from reward_models.base import load

    data = OmegaConf.to_container(cfg.data) if OmegaConf.is_config(cfg.data) else cfg.data
    stores = resolve_stores(data)  # a wrong data= path fails before the (slower) model load
    if str(cfg.model).split(":", 1)[0] in RECIPES:  # fitted per task on its first demonstrations
        demo = cfg.get("demo_data")
        demo = OmegaConf.to_container(demo) if OmegaConf.is_config(demo) else demo
        overrides = cfg.get("perceptual") or {}
        overrides = OmegaConf.to_container(overrides) if OmegaConf.is_config(overrides) else dict(overrides)
        if cfg.device is not None:
            overrides["device"] = cfg.device
        model = fit_per_task(str(cfg.model), stores, demo_data=demo, fit_demos=int(cfg.get("fit_demos", 1)),
                             settings=overrides)
    else:
        model = load(cfg.model, device=cfg.device)
    results = evaluate(
        model, stores, cameras_ablation=bool(cfg.cameras_ablation), reference=str(cfg.reference),
        densities=list(cfg.densities), baselines=list(cfg.baselines), threshold_metric=str(cfg.threshold_metric),
        seed=int(cfg.seed), max_episodes_per_task=cfg.max_episodes_per_task, plot_episodes=int(cfg.plot_episodes),
    )
    results["settings"]["model"] = str(cfg.model)
    if isinstance(model, PerTaskModels):
        results["settings"]["fit_demos"] = int(cfg.get("fit_demos", 1))
    render_report(results, cfg.out)
    return results


def main() -> None:
    """Console entry point (Hydra): ``stepwise-eval-rm model=<ckpt> data=<stores> out=<dir>``."""
    from configs.entry import hydra_job
    from episodes import StoreError
    from reward_models.base import CheckpointError

    hydra_job("stepwise-eval-rm", "eval_rm", _job, errors=(StoreError, CheckpointError, ValueError))


def _job(cfg, run_dir: Path) -> str:
    """Evaluate and write the report; returns the one-line summary."""
    mean = run(cfg)["rows"]["model"]["mean"]
    return (f"VOC {fmt(mean['voc_d1'])}  reversed {fmt(mean['voc_reversed'])}  AUROC {fmt(mean['auroc'])}  "
            f"success acc {fmt(mean['success_acc'])}  ->  {Path(cfg.out) / 'report.md'}")


if __name__ == "__main__":
    main()
