"""Perceptual-feature reward on the 10 held-out tasks: fitted per task from 1 and 5 demonstrations
with each registered frame encoder, scored like the step-PRM (VOC, AUROC, success accuracy,
states/s at 96 px), plus segmentation quality (per-step Jaccard against the simulator's keyframes,
next to an ordered-random split).

Run: ``.venv/bin/python benchmarks/perceptual_report.py --data-root /work/data --encoders pixels``
(``--render results.json out.md`` re-renders a report from its JSON)
(about 8 minutes per encoder with pixels on 2 busy CPU cores; learned encoders cost their forward
passes). Writes ``benchmarks/results/perceptual.md`` (+ ``.json``). Encoders that need a weights
file run with random weights unless ``--encoder-kwargs name='{"weights": "path"}'`` gives one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METRICS = [("voc_d1", "VOC"), ("voc_d16", "VOC /16"), ("voc_reversed", "VOC reversed"), ("auroc", "AUROC"),
           ("success_acc", "success acc"), ("success_f1", "F1"), ("success_ece", "ECE")]


def cell(v: float | None) -> str:
    """Two decimals, or '-' for a missing value."""
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.2f}"


def segmentation_quality(encoder_name: str, encoder_kwargs: dict, demo_dir: Path, eval_dir: Path, tasks: list[str],
                         episodes: int, settings: dict) -> dict:
    """Per-step Jaccard of discovered vs keyframe splits (n = 2, 3) for both segmentation
    objectives, and the ordered-random baseline, over each task's first successful demos."""
    from episodes import EpisodeStore
    from reward_models import perceptual as P
    from reward_models.encoders import build_encoder

    encoder = build_encoder(encoder_name, **encoder_kwargs)
    cameras = list(settings["cameras"])
    out: dict = {"per_task": {}, "settings": {"episodes_per_task": episodes, "min_len": settings["min_len"],
                                              "min_frac": settings["min_frac"], "fusion": settings["fusion"]}}
    pooled: dict[str, list[np.ndarray]] = {}
    for task in tasks:
        eps = []
        for path in (demo_dir / f"{task}.hdf5", eval_dir / f"{task}.hdf5"):
            if not path.exists():
                continue
            with EpisodeStore(path, cameras=cameras) as store:
                for i in range(len(store)):
                    a = store.episode_attrs(i)
                    if a["success"] and a["kind"] == "expert" and len(eps) < episodes:
                        eps.append(store[i])
        per: dict[str, list[np.ndarray]] = {}
        for ep in eps:
            feats = {c: P.encode_frames(encoder, ep.images[c]) for c in cameras}
            x = P.fuse(feats, cameras, settings["fusion"])
            z = (x - x.mean(0)) / np.maximum(x.std(0), settings["std_floor"])
            t = len(z)
            min_len = P.effective_min_len(t, settings["min_len"], settings["min_frac"])
            for n in (2, 3):
                truth = P.keyframe_bounds(ep.keyframes, t, n)
                if truth is None or t < n * min_len:
                    continue
                for weighting in P.WEIGHTINGS:
                    bounds = P.segment(z, n, min_len, weighting)[0]
                    per.setdefault(f"{weighting}_n{n}", []).append(P.segmentation_jaccard(bounds, truth))
                per.setdefault(f"random_n{n}", []).append(P.random_split_jaccard(truth, min_len, draws=200))
        out["per_task"][task] = {k: np.mean(v, axis=0).tolist() for k, v in per.items()}
        for k, v in per.items():
            pooled.setdefault(k, []).extend(v)
    out["mean"] = {k: {"per_step": np.mean(v, axis=0).tolist(), "mean": float(np.mean(v)), "episodes": len(v)}
                   for k, v in sorted(pooled.items())}
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This report's options (shared with ``benchmarks/reward_model_report.py``, which can run it)."""
    parser.add_argument("--data-root", default=str(ROOT / "data"), help="holds heldout_demo/ and heldout_eval/")
    parser.add_argument("--encoders", nargs="*", default=None, help="encoder names (default: every registered one)")
    parser.add_argument("--encoder-kwargs", nargs="*", default=[], help='name=JSON, e.g. clip=\'{"weights": "w.bin"}\'')
    parser.add_argument("--fit-demos", nargs="*", type=int, default=[1, 5])
    parser.add_argument("--episodes-per-task", type=int, default=10, help="scored episodes per task (half failures)")
    parser.add_argument("--jaccard-episodes", type=int, default=6, help="successful demos per task segmented")
    parser.add_argument("--threads", type=int, default=1)


def measure(args: argparse.Namespace) -> dict:
    """Fit and score every encoder of ``args.encoders`` (see :func:`add_arguments`); the results dict
    that :func:`render` turns into markdown (also the ``perceptual`` part of ``reward_models.json``)."""
    import torch
    from omegaconf import OmegaConf

    from reward_models.encoders import ENCODERS
    from reward_models.evaluation import evaluate, fit_per_task
    from sim import task_split

    torch.set_num_threads(args.threads)
    demo_dir, eval_dir = Path(args.data_root) / "heldout_demo", Path(args.data_root) / "heldout_eval"
    for d in (demo_dir, eval_dir):
        if not d.is_dir():
            sys.exit(f"{d} is missing: collect it as benchmarks/reward_model_report.py does, or pass --data-root")
    tasks = [t.split("/", 1)[1] for t in task_split()["heldout"]]
    eval_paths = [eval_dir / f"{t}.hdf5" for t in tasks]
    encoders = args.encoders or sorted(ENCODERS)
    kwargs_by_encoder = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.encoder_kwargs)}
    settings = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "reward" / "perceptual.yaml"))

    results: dict = {"settings": {"date": str(datetime.date.today()), "cpu_cores": os.cpu_count(), "threads": args.threads,
                                  "load_average_start": list(os.getloadavg()),
                                  "episodes_per_task": args.episodes_per_task, "fit_demos": args.fit_demos,
                                  "reward_config": settings, "tasks": tasks}, "encoders": {}}
    baselines = None
    for name in encoders:
        if name not in ENCODERS:
            print(f"skipping unknown encoder {name!r} (registered: {sorted(ENCODERS)})")
            continue
        enc_kwargs = kwargs_by_encoder.get(name, {})
        entry: dict = {"encoder_kwargs": enc_kwargs, "fits": {}}
        for fd in args.fit_demos:
            tic = time.perf_counter()
            models = fit_per_task(f"perceptual:{name}", eval_paths, demo_data=demo_dir, fit_demos=fd,
                                  settings={"encoder_kwargs": enc_kwargs})
            fit_s = time.perf_counter() - tic
            res = evaluate(models, eval_paths, cameras_ablation=True,
                           baselines=("random", "sim_dense_gt") if baselines is None else (),
                           max_episodes_per_task=args.episodes_per_task)
            if baselines is None:
                baselines = {r: res["rows"][r] for r in ("random", "sim_dense_gt") if r in res["rows"]}
            entry["fits"][str(fd)] = {
                "fit_seconds_total": fit_s, "fit": res["settings"]["fit"],
                "episodes_scored": res["settings"]["episodes_scored"],
                "rows": {r: {"mean": v["mean"], "states_per_s": v["states_per_s"],
                             "per_task": {t: {k: m.get(k) for k, _ in METRICS} for t, m in v["per_task"].items()}}
                         for r, v in res["rows"].items() if r == "model" or r.startswith("camera:")},
            }
            m = res["rows"]["model"]["mean"]
            print(f"{name} fit_demos={fd}: VOC {cell(m['voc_d1'])} AUROC {cell(m['auroc'])} acc {cell(m['success_acc'])} "
                  f"{res['rows']['model']['states_per_s']:.0f} states/s (fit {fit_s:.1f} s)", flush=True)
        entry["segmentation"] = segmentation_quality(name, enc_kwargs, demo_dir, eval_dir, tasks,
                                                     args.jaccard_episodes, settings)
        results["encoders"][name] = entry
    results["baselines"] = {r: {"mean": v["mean"]} for r, v in (baselines or {}).items()}
    results["settings"]["load_average_end"] = list(os.getloadavg())  # states/s is wall time: say how busy the machine was
    results["settings"]["command"] = " ".join([f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])  # the script that ran (also called by reward_model_report.py)
    return results


def write(results: dict, out: str | Path) -> str:
    """Write ``out`` (markdown) and its ``.json`` twin; returns the markdown."""
    text = render(results)
    Path(out).write_text(text)
    Path(out).with_suffix(".json").write_text(json.dumps(results, indent=1, default=float))
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "perceptual.md"))
    args = parser.parse_args()
    text = write(measure(args), args.out)
    print(text)


def segmentation_per_task(results: dict, encoder: str, objective: str | None = None) -> list[str]:
    """Markdown lines: per held-out task, the mean per-step Jaccard of ``encoder``'s segmentation
    (``objective``: ``length`` or ``mean``; default the configured ``segment_weighting``) against the
    ordered-random split, for 2 and 3 steps, and a sentence naming the tasks where it beats the baseline."""
    seg = results["encoders"][encoder]["segmentation"]
    objective = objective or results["settings"]["reward_config"]["segment_weighting"]
    tasks = [t for t in results["settings"]["tasks"] if t in seg["per_task"]]
    lines = [f"| task | {objective} 2 steps | random 2 steps | {objective} 3 steps | random 3 steps |",
             "|---|---|---|---|---|"]
    beats: dict[int, list[str]] = {2: [], 3: []}
    for task in tasks:
        m = seg["per_task"][task]
        cells = []
        for n in (2, 3):
            ours, rnd = m.get(f"{objective}_n{n}"), m.get(f"random_n{n}")
            if ours is None or rnd is None:
                cells += ["-", "-"]
                continue
            a, b = float(np.mean(ours)), float(np.mean(rnd))
            if a > b:
                beats[n].append(task)
            cells += [f"**{a:.2f}**" if a > b else f"{a:.2f}", f"{b:.2f}"]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    for n in (2, 3):
        losers = [t for t in tasks if t not in beats[n]]
        lines.append("")
        lines.append(f"{n} steps: above the ordered-random baseline on {len(beats[n])} of {len(tasks)} tasks"
                     + (f"; not above it on {', '.join(losers)}." if losers else " (every task)."))
    return lines


def render(results: dict) -> str:
    """The markdown report of :func:`main`'s results."""
    s = results["settings"]
    rc = s["reward_config"]
    lines = [
        "# Perceptual-feature reward on the 10 held-out tasks",
        "",
        f"Measured {s['date']} by `{s.get('command', 'benchmarks/perceptual_report.py')}` ({s['episodes_per_task']} episodes per task) on "
        f"{s['cpu_cores']} CPU cores ({s['threads']} torch thread). Per task, the model is FITTED from the task's first "
        "k successful expert demos (the heldout_demo store's demo, then the eval store's first successes; those are "
        "never scored), then scored by `reward_models.evaluate` on up to "
        f"{s['episodes_per_task']} eval-split episodes per task (half successes, half labelled failures; the "
        "first eval success is the reference and is not scored, as for the step-PRM rows). With k = 1 the scored "
        "set is the same as in `reward_models.md`; with k = 5 four more eval successes are used for fitting. "
        f"Settings (`configs/reward/perceptual.yaml`): cameras {', '.join(rc['cameras'])} ({rc['fusion']}), "
        f"{rc['image_size']} px, n_steps {rc['n_steps'] or 'auto (n_min ' + str(rc['n_min']) + ', n_max ' + str(rc['n_max']) + ')'}, "
        f"min_len max({rc['min_len']} frames, {rc['min_frac']} of the demo), {rc['segment_weighting']}-weighted "
        f"segmentation, alpha {rc['alpha']}, top_k {rc['top_k']}, end_frac {rc['end_frac']}, q_max {rc['q_max']}, "
        f"progress rule {rc['progress_rule']}. Means over tasks; states/s = time steps (all cameras of the row) per "
        "second of model calls, features computed once per call.",
    ]
    lines[-1] += (" The step-PRM rows on the same held-out tasks (zero-shot and one-shot adapted) are in "
                  "[reward_models.md](reward_models.md).")
    if "load_average_start" in s:
        lines[-1] += (f" Load average (1 min) {s['load_average_start'][0]:.1f} at the start and "
                      f"{s.get('load_average_end', [float('nan')])[0]:.1f} at the end: on a busy machine states/s is low.")
    for name, entry in results["encoders"].items():
        lines += ["", f"## encoder `{name}`" + (f" {entry['encoder_kwargs']}" if entry["encoder_kwargs"] else ""), "",
                  "| row | " + " | ".join(k[1] for k in METRICS) + " | states/s | fit s/task |",
                  "|---|" + "---|" * (len(METRICS) + 2)]
        for fd, fit in entry["fits"].items():
            per_task_fit = np.mean([f["seconds"] for f in fit["fit"].values()])
            for r, row in fit["rows"].items():
                label = f"{fd} demo{'s' if fd != '1' else ''}, " + ("3 cameras fused" if r == "model" else r)
                sps = row["states_per_s"]
                lines.append(f"| {label} | " + " | ".join(cell(row["mean"].get(k)) for k, _ in METRICS)
                             + f" | {sps:.0f} |" + (f" {per_task_fit:.2f} |" if r == "model" else " |"))
        for r, row in results.get("baselines", {}).items():
            label = "random scores" if r == "random" else "simulator dense reward (privileged)"
            lines.append(f"| {label} | " + " | ".join(cell(row["mean"].get(k)) for k, _ in METRICS) + " | - | - |")
        lines += ["", "Per task (3 cameras fused): VOC / AUROC per number of demos", "",
                  "| task | " + " | ".join(f"VOC {fd}" for fd in entry["fits"]) + " | "
                  + " | ".join(f"AUROC {fd}" for fd in entry["fits"]) + " | steps (1 demo) |",
                  "|---|" + "---|" * (2 * len(entry["fits"]) + 1)]
        fits = list(entry["fits"].values())
        for task in results["settings"]["tasks"]:
            key = f"metaworld/{task}"
            per = [f["rows"]["model"]["per_task"].get(key, {}) for f in fits]
            steps = fits[0]["fit"].get(key, {}).get("n_steps", "-")
            lines.append(f"| {task} | " + " | ".join(cell(p.get("voc_d1")) for p in per) + " | "
                         + " | ".join(cell(p.get("auroc")) for p in per) + f" | {steps} |")
        seg = entry["segmentation"]
        lines += ["", f"Segmentation vs simulator keyframes (per-step Jaccard, mean over up to "
                      f"{seg['settings']['episodes_per_task']} successful demos per task; ground truth: split after "
                      "the first n - 1 keyframes, the rest is the last step; same min length for every row)", "",
                  "| split | step Jaccard: mean objective (paper) | length-weighted objective | ordered random | episodes |",
                  "|---|---|---|---|---|"]
        for n in (2, 3):
            m = seg["mean"]
            if f"random_n{n}" not in m:
                continue
            fmt = lambda k: f"{m[k]['mean']:.2f} ({', '.join(f'{v:.2f}' for v in m[k]['per_step'])})"  # noqa: E731
            lines.append(f"| {n} steps | {fmt(f'mean_n{n}')} | {fmt(f'length_n{n}')} | {fmt(f'random_n{n}')} | "
                         f"{m[f'random_n{n}']['episodes']} |")
        lines += ["", "Per task (mean over steps of the per-step Jaccard; bold: above the ordered-random split)", ""]
        lines += segmentation_per_task(results, name)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--render"]:  # re-render the markdown from a results .json (no re-run)
        Path(sys.argv[3]).write_text(render(json.loads(Path(sys.argv[2]).read_text())))
    else:
        main()
