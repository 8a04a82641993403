"""Reward-model benchmark on the 10 held-out tasks: the general step-PRM zero-shot and after
one-shot adaptation on each task, with reference rows, in one table.

Run: ``.venv/bin/python benchmarks/reward_model_report.py`` (collects what is missing first; about
30-40 minutes on 2 CPU cores). Writes ``benchmarks/results/reward_models.md`` (+ ``.json``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def ensure_store(out: Path, *args: str) -> None:
    """Collect held-out stores with stepwise-collect unless all 10 are already there."""
    if out.is_dir() and len(list(out.glob("*.hdf5"))) >= 10:
        return
    subprocess.run([str(BIN / "stepwise-collect"), "task=heldout", f"out={out}", *args], check=True)


def adapt(general: str, demo_store: Path, out: Path, steps: int) -> float:
    """One-shot adaptation of ``general`` on the first demo of ``demo_store``; returns seconds."""
    from hydra import compose, initialize_config_dir

    from reward_models.train import train

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train_rm", overrides=[
            f"init={general}", f"data={demo_store}", f"out={out}", "max_episodes_per_task=1",
            f"steps={steps}", "lr=1e-4", "val_every_nth=0", "checkpoint_every=1000"])
    start = time.perf_counter()
    train(cfg)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--general", default="general", help="general checkpoint (dir or shipped name)")
    parser.add_argument("--eval-data", default=str(ROOT / "data" / "heldout_eval"))
    parser.add_argument("--demo-data", default=str(ROOT / "data" / "heldout_demo"))
    parser.add_argument("--episodes-per-task", type=int, default=10, help="scored episodes per task")
    parser.add_argument("--adapt-steps", type=int, default=150)
    parser.add_argument("--runs", default=str(ROOT / "runs" / "bench_adapt"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reward_models.md"))
    args = parser.parse_args()

    import torch

    import reward_models
    from reward_models.evaluate import evaluate, render_report
    from sim import task_split

    torch.set_num_threads(2)
    eval_dir, demo_dir = Path(args.eval_data), Path(args.demo_data)
    ensure_store(eval_dir, "episodes=12", "failures=2", "split=eval")
    ensure_store(demo_dir, "episodes=1", "split=demo")
    heldout = [t.split("/", 1)[1] for t in task_split()["heldout"]]

    general = reward_models.load(args.general)
    zero = evaluate(general, [eval_dir / f"{t}.hdf5" for t in heldout], cameras_ablation=True,
                    max_episodes_per_task=args.episodes_per_task)
    render_report(zero, Path(args.out).parent / "reward_models_zero_shot")

    adapted_rows, adapt_seconds = {}, []
    for task in heldout:
        out = Path(args.runs) / task
        if not (out / "config.json").exists():
            adapt_seconds.append(adapt(args.general, demo_dir / f"{task}.hdf5", out, args.adapt_steps))
        model = reward_models.load(out)
        res = evaluate(model, eval_dir / f"{task}.hdf5", cameras_ablation=False, baselines=(),
                       max_episodes_per_task=args.episodes_per_task)
        adapted_rows[task] = res["rows"]["model"]["per_task"][f"metaworld/{task}"]

    def cell(metrics: dict, key: str) -> str:
        v = metrics.get(key)
        return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.2f}"

    keys = [("voc_d1", "VOC"), ("voc_d16", "VOC /16"), ("voc_reversed", "VOC reversed"), ("auroc", "AUROC"),
            ("success_acc", "success acc"), ("success_f1", "F1"), ("success_ece", "ECE")]
    rows = zero["rows"]
    lines = [
        "# Reward models on the 10 held-out tasks",
        "",
        f"Measured {datetime.date.today()} by `benchmarks/reward_model_report.py --episodes-per-task {args.episodes_per_task} "
        f"--adapt-steps {args.adapt_steps}` on {os.cpu_count()} CPU cores. General model: `{args.general}` "
        "(trained on the 40 training tasks only). Scored: up to "
        f"{args.episodes_per_task} eval-split episodes per task (expert successes and labelled failures: noise, "
        "stall, near-miss, reversal); the first successful one per task is the reference (goal anchor) and is not "
        "scored. One-shot adaptation: fine-tuned on ONE demo-split demonstration of the task. Means over tasks.",
        "",
        "| row | " + " | ".join(k[1] for k in keys) + " | states/s |",
        "|---|" + "---|" * (len(keys) + 1),
    ]
    adapted_mean = {k: float(np.nanmean([m[k] for m in adapted_rows.values() if m.get(k) is not None] or [np.nan]))
                    for k, _ in keys}
    order = ["model"] + [r for r in rows if r.startswith("camera:")] + ["random", "sim_dense_gt"]
    names = {"model": "step-PRM general, zero-shot, 3 cameras fused", "random": "random scores",
             "sim_dense_gt": "simulator dense reward (privileged upper reference)"}
    for r in order:
        if r not in rows:
            continue
        sps = rows[r].get("states_per_s") if r not in ("random", "sim_dense_gt") else None  # no model to time
        lines.append(f"| {names.get(r, 'zero-shot, ' + r)} | " + " | ".join(cell(rows[r]["mean"], k) for k, _ in keys)
                     + (f" | {sps:.0f} |" if sps else " | - |"))
    lines.insert(len(lines) - len(order) + 1, "| step-PRM one-shot adapted, 3 cameras fused | "
                 + " | ".join(cell(adapted_mean, k) for k, _ in keys) + " | - |")
    lines += ["", "Per task (fused rig): VOC zero-shot / adapted, AUROC zero-shot / adapted", "",
              "| task | VOC zero-shot | VOC adapted | AUROC zero-shot | AUROC adapted |", "|---|---|---|---|---|"]
    for task in heldout:
        z = rows["model"]["per_task"].get(f"metaworld/{task}", {})
        a = adapted_rows.get(task, {})
        lines.append(f"| {task} | {cell(z, 'voc_d1')} | {cell(a, 'voc_d1')} | {cell(z, 'auroc')} | {cell(a, 'auroc')} |")
    if adapt_seconds:
        lines += ["", f"Adaptation: {args.adapt_steps} steps, {np.mean(adapt_seconds):.0f} s per task on average."]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_text(json.dumps({"zero_shot": zero["rows"], "adapted": adapted_rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
