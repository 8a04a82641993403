"""Robustness of the general reward models on the 10 held-out tasks: the same episodes (same seeds,
same scripted motions) rendered clean and under one visual perturbation at a time, scored zero-shot.

Perturbations (``sim.randomize`` keys, each a fixed value or a range drawn per episode):

* ``clean``: the fixed look every earlier benchmark used;
* ``light_0.6`` / ``light_1.4``: every model light and the headlight scaled to 0.6x / 1.4x;
* ``camera_jitter``: each camera moved by up to +-2 cm per axis and turned by up to +-3 deg per axis;
* ``colours``: floor, table, wall and object hue +-15 deg and brightness 0.8-1.2;
* ``corpus``: everything ``configs/randomize/corpus.yaml`` draws at once (the training corpus's look).

Per (model, perturbation), :func:`reward_models.evaluation.evaluate` scores every episode with the
reference rule ``first_success`` (and the camera ablation under ``clean``); the table reports the mean over tasks of
VOC, episode AUROC (successes vs the four scripted failure kinds), frame AUROC and ECE of
``success_prob``, and each perturbation's change against ``clean``. A second table checks fusion:
per task, the fused rig's VOC and AUROC against its best single camera (clean).

Run: ``.venv/bin/python benchmarks/robustness.py --models general-v1 general`` (collects what is missing
under ``--data-root``, about 5 minutes on 2 cores; each model then takes 1-5 minutes per perturbation).
Results are cached per (model, perturbation) in ``benchmarks/results/robustness.json``: a killed run
resumes, ``--recompute`` measures again; ``--render-only`` rewrites ``robustness.md`` from the cache.
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
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

PERTURBATIONS: dict[str, list[str]] = {
    "clean": ["randomize=off"],
    "light_0.6": ["randomize=off", "randomize.light_scale=[0.6,0.6]"],
    "light_1.4": ["randomize=off", "randomize.light_scale=[1.4,1.4]"],
    "camera_jitter": ["randomize=off", "randomize.camera_pos_m=[-0.02,0.02]", "randomize.camera_rot_deg=[-3.0,3.0]"],
    "colours": ["randomize=off", "randomize.colour_hue_deg=[-15.0,15.0]", "randomize.colour_brightness=[0.8,1.2]"],
    "corpus": ["randomize=corpus"],
}
EVAL_SEEDS = ["split=eval", "seed=1000", "randomize_seed=777"]  # seeds no test and no training store uses
METRICS = [("voc_d1", "VOC"), ("auroc", "AUROC ep"), ("success_auroc", "AUROC fr"), ("success_ece", "ECE")]


def collect(data_root: Path, perturbation: str, episodes: int, failures: int, workers: int) -> Path:
    """The held-out stores of one perturbation (resumes a partial collection; a complete one is kept)."""
    out = data_root / perturbation
    if out.is_dir() and len(list(out.glob("*.hdf5"))) >= 10 and (out / ".complete").exists():
        return out
    args = [str(BIN / "stepwise-collect"), "task=heldout", *EVAL_SEEDS, f"episodes={episodes}", f"failures={failures}",
            f"workers={workers}", f"out={out}", *PERTURBATIONS[perturbation]]
    subprocess.run(args, check=True)
    (out / ".complete").write_text(" ".join(args[1:]) + "\n")
    return out


def demo_stores(data_root: Path, workers: int) -> Path:
    """One clean demo-split demonstration per held-out task (what the per-task perceptual reward is fitted on)."""
    out = data_root / "demo"
    if not (out / ".complete").exists():
        args = [str(BIN / "stepwise-collect"), "task=heldout", "split=demo", "seed=1000", "episodes=1",
                f"workers={workers}", f"out={out}"]
        subprocess.run(args, check=True)
        (out / ".complete").write_text(" ".join(args[1:]) + "\n")
    return out


def split_label(entry: str) -> tuple[str, str]:
    """``label=path`` -> (label, path); a plain name or path is its own label."""
    label, sep, path = entry.partition("=")
    return (label, path) if sep else (entry, entry)


def load_model(name: str, stores: Path, demos: Path):
    """A shipped name or checkpoint directory; ``perceptual:<encoder>`` is fitted per task on ``demos``."""
    import reward_models
    from reward_models.evaluation import fit_per_task

    if name.startswith("perceptual:"):  # perceptual:<encoder>[@<encoder checkpoint>]
        recipe, _, weights = name.partition("@")
        settings = {"encoder_kwargs": {"checkpoint": weights}} if weights else None
        return fit_per_task(recipe, stores, demo_data=demos, fit_demos=1, settings=settings)
    return reward_models.load(name)


def measure(name: str, perturbation: str, stores: Path, demos: Path, episodes_per_task: int | None,
            cameras_ablation: bool) -> dict:
    """Per-task metrics of the model row (and each camera row with ``cameras_ablation``), with the settings and seconds."""
    from reward_models.evaluation import evaluate

    start = time.perf_counter()
    name, source = split_label(name)
    model = load_model(source, stores, demos)
    res = evaluate(model, stores, cameras_ablation=cameras_ablation, reference="first_success", baselines=(),
                   max_episodes_per_task=episodes_per_task, plot_episodes=0)
    keys = [k for k, _ in METRICS]
    rows = {row: {task: {k: m.get(k) for k in keys} for task, m in r["per_task"].items()} for row, r in res["rows"].items()}
    return {"model": name, "source": source, "perturbation": perturbation, "rows": rows, "seconds": time.perf_counter() - start,
            "date": str(datetime.date.today()), "cpu_cores": os.cpu_count(),
            "notes": res.get("notes", []), "tasks": res.get("tasks")}


def mean(per_task: dict, key: str) -> float | None:
    vals = [m[key] for m in per_task.values() if m.get(key) is not None and not np.isnan(m[key])]
    return float(np.mean(vals)) if vals else None


def cell(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def render(cache: dict, models: list[str], perturbations: list[str]) -> str:
    lines = ["# Robustness of the general reward models (held-out tasks, zero-shot)", "",
             "Written by `benchmarks/robustness.py` (see its docstring for the perturbations and the rules). "
             "The 10 held-out tasks, `split=eval seed=1000 randomize_seed=777`: per task the scripted expert "
             "episodes plus one of each scripted failure kind (noise, stall, near_miss, reversal), the same motions "
             "under every perturbation; the first success per task is the reference and is not scored. "
             "Mean over tasks; in brackets the change against `clean`.", ""]
    for name in models:
        done = [p for p in perturbations if f"{name}|{p}" in cache]
        if not done:
            continue
        first = cache[f"{name}|{done[0]}"]
        source = f" Model: {first['source']}." if first.get("source") not in (None, name) else ""
        lines += [f"## `{name}`", "", f"Measured {first['date']} on {first['cpu_cores']} CPU cores.{source}", "",
                  "| perturbation | " + " | ".join(h for _, h in METRICS) + " | seconds |",
                  "|---" * (len(METRICS) + 2) + "|"]
        clean = cache.get(f"{name}|clean")
        for p in done:
            entry = cache[f"{name}|{p}"]
            cells = []
            for k, _ in METRICS:
                v = mean(entry["rows"]["model"], k)
                ref = mean(clean["rows"]["model"], k) if clean and p != "clean" else None
                cells.append(cell(v) + (f" ({cell(v - ref, True)})" if v is not None and ref is not None else ""))
            lines.append(f"| {p} | " + " | ".join(cells) + f" | {entry['seconds']:.0f} |")
        lines.append("")
        if clean:
            cams = sorted(r for r in clean["rows"] if r.startswith("camera:"))
            if cams:
                lines += [f"Fusion against the best single camera, `clean`, per task (VOC / episode AUROC):", "",
                          "| task | fused | " + " | ".join(c.split(':', 1)[1] for c in cams) + " | fused - best |",
                          "|---" * (len(cams) + 3) + "|"]
                worse, clearly = 0, 0
                for task in sorted(clean["rows"]["model"]):
                    def pair(row):
                        m = clean["rows"][row][task]
                        return m.get("voc_d1"), m.get("auroc")
                    fv, fa = pair("model")
                    singles = [pair(c) for c in cams]
                    best_v = max((v for v, _ in singles if v is not None), default=None)
                    best_a = max((a for _, a in singles if a is not None), default=None)
                    dv = None if fv is None or best_v is None else fv - best_v
                    da = None if fa is None or best_a is None else fa - best_a
                    worse += int((dv is not None and dv < -0.005) or (da is not None and da < -0.005))
                    clearly += int((dv is not None and dv < -0.05) or (da is not None and da < -0.05))
                    fmt = lambda v, a: f"{cell(v)} / {cell(a)}"  # noqa: E731
                    lines.append(f"| {task.split('/', 1)[-1]} | {fmt(fv, fa)} | " + " | ".join(fmt(v, a) for v, a in singles)
                                 + f" | {cell(dv, True)} / {cell(da, True)} |")
                n = len(clean["rows"]["model"])
                lines += ["", f"Tasks where the fused rig is below its best camera on VOC or AUROC: {worse} of {n} by more "
                              f"than 0.005, {clearly} of {n} by more than 0.05 (episode AUROC here rests on 3 successes "
                              f"x 4 failures per task: steps of 1/12).", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["general-v1", "general"],
                        help="shipped names, checkpoint directories, or perceptual:<encoder>[@<encoder checkpoint>] "
                             "(fitted per task on one demo); "
                             "label=<name or directory> files the results under label")
    parser.add_argument("--perturbations", nargs="+", default=list(PERTURBATIONS), choices=list(PERTURBATIONS))
    parser.add_argument("--data-root", default=str(ROOT / "data" / "robustness"))
    parser.add_argument("--episodes", type=int, default=4, help="expert episodes per task and perturbation")
    parser.add_argument("--failures", type=int, default=1, help="episodes of each scripted failure kind per task")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads while scoring")
    parser.add_argument("--episodes-per-task", type=int, default=None, help="cap on scored episodes per task")
    parser.add_argument("--ablation-all", action="store_true",
                        help="score each camera alone under every perturbation (default: under clean only)")
    parser.add_argument("--recompute", action="store_true", help="measure cached (model, perturbation) pairs again")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "robustness.md"))
    args = parser.parse_args()

    cache_path = Path(args.out).with_suffix(".json")
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    if not args.render_only:
        import torch

        torch.set_num_threads(args.threads)
        root = Path(args.data_root)
        demos = (demo_stores(root, args.workers) if any(split_label(m)[1].startswith("perceptual:") for m in args.models)
                 else root / "demo")
        for p in args.perturbations:
            stores = collect(root, p, args.episodes, args.failures, args.workers)
            for entry in args.models:
                key = f"{split_label(entry)[0]}|{p}"
                if key in cache and not args.recompute:
                    continue
                cache[key] = measure(entry, p, stores, demos, args.episodes_per_task,
                                     cameras_ablation=args.ablation_all or p == "clean")
                v = mean(cache[key]["rows"]["model"], "voc_d1")
                print(f"{key}: VOC {cell(v)} ({cache[key]['seconds']:.0f} s)", flush=True)
                cache_path.write_text(json.dumps(cache, indent=1, sort_keys=True))  # after each pair: resumable
    Path(args.out).write_text(render(cache, [split_label(m)[0] for m in args.models], args.perturbations))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
