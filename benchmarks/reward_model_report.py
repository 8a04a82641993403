"""Reward-model benchmark on the 10 held-out tasks: the three reward-model families in one report.

* step-PRM: the general model zero-shot and after one-shot adaptation on each task; every checkpoint
  measured (``--general label=dir``, default the shipped ``general``) is kept apart in the cache and
  they are compared side by side per task (``general-v1``'s entry is from 2026-11-27, when it was
  shipped as ``general``);
* perceptual-feature reward: fitted per task from 1 and 5 demonstrations for each encoder, and its
  segmentation against the simulator's keyframes (run by ``benchmarks/perceptual_report.py``);
* VLM success classifier: ``vlm-general`` zero-shot and adapted per task from 10 demo-split
  demonstrations plus failures of that task (collected apart from the scored episodes).

Run: ``.venv/bin/python benchmarks/reward_model_report.py --data-root /work/data`` (collects what is
missing first). Each family's numbers are cached in ``benchmarks/results/reward_models.json`` (the
perceptual family in ``perceptual.json``, with its detailed tables in ``perceptual.md``): a family is
measured when the cache lacks it or when ``--recompute`` names it (``--recompute step_prm perceptual
vlm``: about 40 + 20 + 60 minutes on 2 busy CPU cores); ``--render-only`` rewrites the markdown from
the caches. Writes ``benchmarks/results/reward_models.md`` (+ ``.json``). The VLM rows of 2026-11-28:
``--recompute vlm --vlm-reuse-zero-shot --vlm-adapt-steps 60`` (after a first run's zero-shot part), then
``--render-only --vlm-throughput`` (frames/s again on a quieter machine).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))
from robustness import split_label  # noqa: E402  (label=path entries, as robustness.py takes them)

RESULTS = ROOT / "benchmarks" / "results"
FAMILIES = ("step_prm", "perceptual", "vlm")

# the columns of the one table every family fills: (metric key, header)
SUMMARY = [("voc_d1", "VOC"), ("voc_reversed", "VOC reversed"), ("auroc", "AUROC (episodes)"),
           ("success_auroc", "AUROC (frames)"), ("success_acc", "success acc"), ("success_f1", "F1"),
           ("success_fpr", "FPR"), ("success_fnr", "FNR"), ("success_ece", "ECE")]


def cell(v: float | None, digits: int = 2) -> str:
    """``digits`` decimals, or '-' for a missing value."""
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def ensure_store(out: Path, *args: str) -> None:
    """Collect held-out stores with stepwise-collect unless all 10 are already there (resumes a partial one)."""
    if out.is_dir() and len(list(out.glob("*.hdf5"))) >= 10:
        return
    subprocess.run([str(BIN / "stepwise-collect"), "task=heldout", f"out={out}", *args], check=True)


def heldout_tasks() -> list[str]:
    """The 10 held-out task names without the ``metaworld/`` prefix, in split order."""
    from sim import task_split

    return [t.split("/", 1)[1] for t in task_split()["heldout"]]


def mean_over_tasks(per_task: dict, keys: list[str]) -> dict:
    """Per metric, the mean over tasks of the values that exist (None when none does)."""
    out = {}
    for k in keys:
        vals = [m.get(k) for m in per_task.values() if m.get(k) is not None]
        out[k] = float(np.mean(vals)) if vals else None
    return out


# --------------------------------------------------------------------------- step-PRM


def adapt_step_prm(general: str, demo_store: Path, out: Path, steps: int) -> float:
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


def measure_step_prm(args: argparse.Namespace) -> dict:
    """The general step-PRM ``args.general`` zero-shot (with camera ablation and reference rows) and
    one-shot adapted per task."""
    import torch

    import reward_models
    from reward_models.evaluation import evaluate, render_report

    torch.set_num_threads(args.prm_threads)
    eval_dir, demo_dir = Path(args.data_root) / "heldout_eval", Path(args.data_root) / "heldout_demo"
    heldout = heldout_tasks()
    label, path = split_label(args.general)
    general = reward_models.load(path)
    zero = evaluate(general, [eval_dir / f"{t}.hdf5" for t in heldout], cameras_ablation=True,
                    max_episodes_per_task=args.episodes_per_task)
    render_report(zero, RESULTS / "reward_models_zero_shot" / label)
    adapted, adapt_seconds = {}, []
    for task in heldout:
        out = Path(args.runs) / "bench_adapt" / label / task
        if not (out / "config.json").exists():
            adapt_seconds.append(adapt_step_prm(path, demo_dir / f"{task}.hdf5", out, args.adapt_steps))
        res = evaluate(reward_models.load(out), eval_dir / f"{task}.hdf5", cameras_ablation=False, baselines=(),
                       max_episodes_per_task=args.episodes_per_task)
        adapted[task] = res["rows"]["model"]["per_task"][f"metaworld/{task}"]
    return {"settings": {"date": str(datetime.date.today()), "general": label, "cpu_cores": os.cpu_count(),
                         "threads": args.prm_threads,
                         "episodes_per_task": args.episodes_per_task, "adapt_steps": args.adapt_steps,
                         "adapt_seconds_mean": float(np.mean(adapt_seconds)) if adapt_seconds else None},
            "zero_shot": zero["rows"], "adapted": adapted}


def migrate_step_prm(cache: dict, old_md: Path) -> dict | None:
    """The step-PRM part of a cache written before the families were merged ({"zero_shot", "adapted"}
    at the top), with its settings read back from the markdown that run wrote (None if there is none)."""
    if "zero_shot" not in cache:
        return None
    settings: dict = {"date": None, "general": None, "cpu_cores": None, "episodes_per_task": None,
                      "adapt_steps": None, "adapt_seconds_mean": None}
    text = old_md.read_text() if old_md.exists() else ""
    m = re.search(r"Measured (\S+) by `benchmarks/reward_model_report.py --episodes-per-task (\d+) --adapt-steps (\d+)` "
                  r"on (\d+) CPU cores\. General model: `([^`]+)`", text)
    if m:
        settings.update(date=m[1], episodes_per_task=int(m[2]), adapt_steps=int(m[3]), cpu_cores=int(m[4]), general=m[5])
    m = re.search(r"Adaptation: \d+ steps, (\d+) s per task", text)
    if m:
        settings["adapt_seconds_mean"] = float(m[1])
    return {"settings": settings, "zero_shot": cache["zero_shot"], "adapted": cache["adapted"]}


def legacy_step_prm(entry: dict) -> dict:
    """The step-PRM entry of 2026-11-27, measured when the checkpoint now named ``general-v1`` was shipped as
    ``general`` (its settings say ``general``)."""
    entry["settings"]["general"] = "general-v1"
    entry["settings"]["note"] = "Measured when this checkpoint was shipped as `general`."
    return entry


# --------------------------------------------------------------------------- perceptual


def measure_perceptual(args: argparse.Namespace) -> dict:
    """``benchmarks/perceptual_report.py``'s measurement (its markdown and JSON rewritten too)."""
    import perceptual_report

    results = perceptual_report.measure(args)
    perceptual_report.write(results, RESULTS / "perceptual.md")
    return results


# --------------------------------------------------------------------------- VLM success classifier


def adapt_vlm(init: str, stores: list[Path], out: Path, steps: int, threads: int) -> dict:
    """``stepwise-train-rm reward=vlm_success init=<init> data=[stores] out=<out> reward.adapt_steps=<steps>``
    (in process); returns the adapted model's calibration report."""
    from hydra import compose, initialize_config_dir

    from reward_models.vlm_success import train_from_config

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train_rm", overrides=[
            "reward=vlm_success", f"init={init}", f"data=[{','.join(str(s) for s in stores)}]", f"out={out}",
            f"reward.adapt_steps={steps}", "max_episodes_per_task=10", f"num_threads={threads}", "seed=0",
            "reward.device=cpu"])
    return dict(train_from_config(cfg).cfg.calibration)


def vlm_frames_per_s(model, threads: int, frames: int = 256, repeats: int = 3) -> float:
    """Best-of-``repeats`` frames/s of ``model.success_prob`` on ``frames`` random frames of every
    camera at the model's image size, with ``threads`` torch threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    batch = {c: rng.integers(0, 256, (frames, *model.image_size, 3), dtype=np.uint8) for c in model.cameras}
    model.success_prob({c: v[:8] for c, v in batch.items()}, "open the drawer")  # warm-up (text cache, allocator)
    best = 0.0
    for _ in range(repeats):
        tic = time.perf_counter()
        model.success_prob(batch, "open the drawer")
        best = max(best, frames / (time.perf_counter() - tic))
    torch.set_num_threads(before)
    return best


def measure_vlm(args: argparse.Namespace) -> dict:
    """``vlm-general`` zero-shot on the held-out eval stores (camera ablation, the model's own threshold),
    then per task: adapt on 10 demo-split demos + failures, score that task's eval store."""
    import torch

    import reward_models
    from episodes import EpisodeStore
    from reward_models.evaluation import evaluate, render_report

    torch.set_num_threads(args.vlm_threads)
    root = Path(args.data_root)
    eval_dir, adapt_dir = root / "heldout_eval", Path(args.vlm_adapt_data)
    heldout = heldout_tasks()
    # adaptation data: the demo split's variant stream (seeded apart from the eval split), 10 demos and
    # one episode of each failure kind per task; never the scored episodes
    ensure_store(adapt_dir, "episodes=10", "failures=1", "split=demo", f"seed={args.vlm_adapt_seed}")
    model = reward_models.load(args.vlm, device="cpu")
    eval_paths = [eval_dir / f"{t}.hdf5" for t in heldout]
    instructions = set()
    for path in eval_paths:
        with EpisodeStore(path) as store:
            instructions |= {store.episode_attrs(i)["instruction"] for i in range(len(store))}
    model.cache_texts(sorted(instructions))  # embedded once up front: the timed calls score frames only
    out: dict = {"settings": {
        "date": str(datetime.date.today()), "model": args.vlm, "cpu_cores": os.cpu_count(), "threads": args.vlm_threads,
        "episodes_per_task": args.episodes_per_task, "threshold": "the model's own (cfg.threshold)",
        "model_threshold": float(model.cfg.threshold), "arch": model.cfg.arch, "image_size": list(model.image_size),
        "cameras": list(model.cameras), "adapt_steps": args.vlm_adapt_steps, "adapt_data": str(adapt_dir),
        "adapt_data_cmd": f"stepwise-collect task=heldout episodes=10 failures=1 split=demo seed={args.vlm_adapt_seed} "
                          f"out={adapt_dir}",
        "load_average_start": list(os.getloadavg())}}
    out["throughput"] = {f"frames_per_s_{n}_thread{'s' if n > 1 else ''}": vlm_frames_per_s(model, n) for n in (1, 2)}
    torch.set_num_threads(args.vlm_threads)
    zero_report = RESULTS / "vlm_zero_shot" / "report.json"
    if args.vlm_reuse_zero_shot and zero_report.exists():  # a run cut short after its zero-shot part
        zero = json.loads(zero_report.read_text())
        out["settings"]["zero_shot_from"] = str(zero_report.relative_to(ROOT))
    else:
        # densities (1,): a classifier's VOC at sparser frame strides says nothing new, and costs a third more
        zero = evaluate(model, eval_paths, cameras_ablation=True, threshold_metric="model", densities=(1,),
                        max_episodes_per_task=args.episodes_per_task)
        render_report(zero, RESULTS / "vlm_zero_shot")
    out["zero_shot"] = {r: v for r, v in zero["rows"].items()}
    print(f"vlm zero-shot: frame AUROC {cell(zero['rows']['model']['mean']['success_auroc'])} "
          f"acc {cell(zero['rows']['model']['mean']['success_acc'])}", flush=True)
    adapted, calib, per_task_sps = {}, {}, {}
    for task in heldout:
        ckpt = Path(args.runs) / "bench_vlm_adapt" / task
        if not (ckpt / "config.json").exists():
            calib[task] = adapt_vlm(args.vlm, [adapt_dir / f"{task}.hdf5"], ckpt, args.vlm_adapt_steps, args.vlm_threads)
        m = reward_models.load(ckpt, device="cpu")
        calib[task] = dict(m.cfg.calibration)
        torch.set_num_threads(args.vlm_threads)
        res = evaluate(m, eval_dir / f"{task}.hdf5", cameras_ablation=False, baselines=(), threshold_metric="model",
                       densities=(1,), max_episodes_per_task=args.episodes_per_task)
        adapted[task] = res["rows"]["model"]["per_task"][f"metaworld/{task}"]
        per_task_sps[task] = res["rows"]["model"]["states_per_s"]
        print(f"vlm adapted {task}: frame AUROC {cell(adapted[task]['success_auroc'])} "
              f"acc {cell(adapted[task]['success_acc'])} FPR {cell(adapted[task]['success_fpr'])}", flush=True)
    out["adapted"] = adapted
    out["adapted_states_per_s"] = per_task_sps
    out["adapted_calibration"] = {t: {k: c.get(k) for k in ("threshold", "auroc", "accuracy", "fpr", "train_frames",
                                                               "train_episodes", "val_episodes", "wall_s", "calibrated_on")}
                                  for t, c in calib.items()}
    out["settings"]["load_average_end"] = list(os.getloadavg())
    return out


# --------------------------------------------------------------------------- report


def summary_row(label: str, mean: dict, sps: float | None, measured: str) -> str:
    """One line of the all-families table."""
    return (f"| {label} | " + " | ".join(cell(mean.get(k)) for k, _ in SUMMARY)
            + f" | {f'{sps:.0f}' if sps else '-'} | {measured} |")


def render(cache: dict) -> str:
    """The markdown report of every family in ``cache`` (keys of :data:`FAMILIES`)."""
    tasks = heldout_tasks()
    keys = [k for k, _ in SUMMARY]
    versions, pc, vl = cache.get("step_prm", {}), cache.get("perceptual"), cache.get("vlm")
    lines = [
        "# Reward models on the 10 held-out tasks",
        "",
        "All three reward-model families, scored by `reward_models.evaluate` (`stepwise-eval-rm`) on the same "
        "eval-split episodes of the 10 held-out tasks (never seen in training): up to 10 per task, half expert "
        "successes and half labelled failures (noise, stall, near-miss, reversal); per task the first successful "
        "episode is the reference (goal anchor) and is not scored. Written by `benchmarks/reward_model_report.py` "
        "(each family measured on the date in its row; settings below). Means over tasks.",
        "",
        "- VOC: Spearman of progress with time on successful episodes; AUROC (episodes): final-frame progress, "
        "successes vs failures; AUROC (frames): per-frame `success_prob` against the simulator's per-frame success "
        "label; success acc / F1 / FPR / FNR / ECE: per-frame success decisions.",
        "- Threshold of the success decisions: step-PRM and perceptual rows choose it for accuracy on a validation "
        "half of each task's scored episodes and report on the other half; VLM rows use the classifier's OWN "
        "threshold (chosen on its training validation frames) and report on every scored episode, so nothing is "
        "tuned on the held-out episodes.",
        "- states/s: time steps (all 3 cameras) per second of model calls inside the evaluation, on the shared "
        "2-core machine (other jobs running: a floor, not a ceiling).",
        "",
        "| row | " + " | ".join(h for _, h in SUMMARY) + " | states/s | measured |",
        "|---|" + "---|" * (len(SUMMARY) + 2),
    ]
    baselines, base_date = {}, None
    for label, sp in versions.items():
        s, rows = sp["settings"], sp["zero_shot"]
        lines.append(summary_row(f"step-PRM `{label}`, zero-shot", rows["model"]["mean"], rows["model"].get("states_per_s"), s["date"]))
        lines.append(summary_row(f"step-PRM `{label}` one-shot adapted (1 demo)", mean_over_tasks(sp["adapted"], keys), None, s["date"]))
        if not baselines:
            baselines, base_date = {r: rows[r] for r in ("random", "sim_dense_gt") if r in rows}, s["date"]
    if pc:
        s = pc["settings"]
        for name, entry in pc["encoders"].items():
            for fd, fit in entry["fits"].items():
                row = fit["rows"]["model"]
                lines.append(summary_row(f"perceptual `{name}`, fitted from {fd} demo{'s' if fd != '1' else ''}",
                                         row["mean"], row["states_per_s"], s["date"]))
    if vl:
        s, rows = vl["settings"], vl["zero_shot"]
        lines.append(summary_row(f"VLM `{s['model']}`, zero-shot", rows["model"]["mean"], rows["model"].get("states_per_s"), s["date"]))
        sps = [v for v in vl["adapted_states_per_s"].values() if v]
        lines.append(summary_row("VLM adapted (10 demos + failures)", mean_over_tasks(vl["adapted"], keys),
                                 float(np.mean(sps)) if sps else None, s["date"]))
    for r, row in baselines.items():
        label = "random scores" if r == "random" else "simulator dense reward (privileged upper reference)"
        lines.append(summary_row(label, row["mean"], None, base_date))

    if versions:
        lines += render_step_prm(versions, tasks)
    if pc:
        lines += render_perceptual(pc, tasks)
    if vl:
        lines += render_vlm(vl, tasks)
    return "\n".join(lines) + "\n"


def camera_rows(rows: dict, keys: tuple[str, ...]) -> list[str]:
    """One table row per single-camera evaluation (``camera:<name>``): its mean ``keys``, then states/s."""
    return [f"| {r[7:]} | " + " | ".join(cell(row["mean"][k]) for k in keys) + f" | {row['states_per_s']:.0f} |"
            for r, row in rows.items() if r.startswith("camera:")]


def render_step_prm(versions: dict, tasks: list[str]) -> list[str]:
    """The step-PRM section: per checkpoint its settings and single-camera rows, then one per-task
    table of VOC and AUROC, zero-shot and adapted, with every checkpoint side by side."""
    lines = ["", "## Step-discretized progress model (step-PRM)", ""]
    for label, sp in versions.items():
        s, rows = sp["settings"], sp["zero_shot"]
        lines += [f"`{label}`: measured {s['date']} with `--episodes-per-task {s['episodes_per_task']} --adapt-steps "
                  f"{s['adapt_steps']}` on {s['cpu_cores']} CPU cores (trained on the 40 training tasks only); one-shot "
                  "adaptation fine-tunes it on ONE demo-split demonstration of the task"
                  + (f" ({s['adapt_steps']} steps, {s['adapt_seconds_mean']:.0f} s per task)." if s.get("adapt_seconds_mean") else ".")
                  + (f" {s['note']}" if s.get("note") else ""),
                  "", f"| `{label}` zero-shot, one camera | VOC | VOC reversed | AUROC | success acc | states/s |",
                  "|---|---|---|---|---|---|"]
        lines += camera_rows(rows, ("voc_d1", "voc_reversed", "auroc", "success_acc"))
        lines.append("")
    labels = list(versions)
    head = [f"{what} `{label}`" for what in ("VOC zero-shot", "VOC adapted", "AUROC zero-shot", "AUROC adapted") for label in labels]
    lines += ["Per task, every checkpoint on the same episodes:", "", "| task | " + " | ".join(head) + " |",
              "|---|" + "---|" * len(head)]
    for task in tasks:
        cells = []
        for key, part in (("voc_d1", "zero"), ("voc_d1", "adapted"), ("auroc", "zero"), ("auroc", "adapted")):
            for label in labels:
                sp = versions[label]
                row = sp["zero_shot"]["model"]["per_task"].get(f"metaworld/{task}", {}) if part == "zero" else sp["adapted"].get(task, {})
                cells.append(cell(row.get(key)))
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return lines


def render_perceptual(pc: dict, tasks: list[str]) -> list[str]:
    """The perceptual section: settings, per-task VOC / AUROC per encoder and demos, segmentation Jaccard."""
    import perceptual_report

    s, rc = pc["settings"], pc["settings"]["reward_config"]
    lines = ["", "## Perceptual-feature reward", "",
             f"Measured {s['date']} by `{s.get('command', 'benchmarks/perceptual_report.py')}` "
             f"({s['threads']} torch thread, 96 px). Per task the model is FITTED from the task's first k successful "
             "expert demos (the heldout_demo demo, then the eval store's first successes, which are then not scored). "
             f"Settings `configs/reward/perceptual.yaml`: cameras {', '.join(rc['cameras'])} ({rc['fusion']}), "
             f"{rc['segment_weighting']}-weighted segmentation, alpha {rc['alpha']}, top_k {rc['top_k']}, "
             f"end_frac {rc['end_frac']}, sigma_floor {rc['sigma_floor']}, progress rule {rc['progress_rule']}. Single-camera rows, fitting times "
             "and per-step numbers: [perceptual.md](perceptual.md).", ""]
    encoders = list(pc["encoders"])
    header = [f"{e} {fd}" for e in encoders for fd in pc["encoders"][e]["fits"]]
    lines += ["VOC / AUROC (episodes) per task, by encoder and number of fitting demos:", "",
              "| task | " + " | ".join(f"VOC {h}" for h in header) + " | " + " | ".join(f"AUROC {h}" for h in header) + " |",
              "|---|" + "---|" * (2 * len(header))]
    for task in tasks:
        per = [f["rows"]["model"]["per_task"].get(f"metaworld/{task}", {}) for e in encoders for f in pc["encoders"][e]["fits"].values()]
        lines.append(f"| {task} | " + " | ".join(cell(p.get("voc_d1")) for p in per) + " | "
                     + " | ".join(cell(p.get("auroc")) for p in per) + " |")
    for e in encoders:
        seg = pc["encoders"][e]["segmentation"]
        lines += ["", f"### Segmentation against the simulator's keyframes, encoder `{e}`", "",
                  f"Per-step Jaccard of the discovered split against the keyframe split (ground truth: split after the "
                  f"first n - 1 keyframes), mean over steps and over up to {seg['settings']['episodes_per_task']} "
                  "successful demos per task, next to the ordered-random split (uniform random ordered boundaries "
                  "with the same minimum step length, 200 draws): the paper's Table 1 metric. Pooled over tasks: "]
        for n in (2, 3):
            m, ours = seg["mean"], f"{rc['segment_weighting']}_n{n}"
            if f"random_n{n}" in m:
                lines[-1] += (f"{n} steps {m[ours]['mean']:.2f} "
                              f"({rc['segment_weighting']}-weighted objective, the configured one), "
                              f"{m[f'mean_n{n}']['mean']:.2f} (mean objective, the paper's), random "
                              f"{m[f'random_n{n}']['mean']:.2f}{';' if n == 2 else '.'} ")
        lines += [""] + perceptual_report.segmentation_per_task(pc, e)
    return lines


def render_vlm(vl: dict, tasks: list[str]) -> list[str]:
    """The VLM classifier section: settings, throughput, per-task success metrics zero-shot / adapted."""
    s, zero = vl["settings"], vl["zero_shot"]
    tp = vl["throughput"]
    lines = ["", "## VLM success classifier", "",
             f"Measured {s['date']} on {s['cpu_cores']} CPU cores ({s['threads']} torch threads; load average "
             f"{s['load_average_start'][0]:.1f} at the start, {s['load_average_end'][0]:.1f} at the end). "
             f"Zero-shot: the shipped `{s['model']}` ({s['arch']}, {s['image_size'][0]} px, cameras "
             f"{', '.join(s['cameras'])}; trained on the 40 training tasks only), its own threshold "
             f"{s['model_threshold']:.3f}. Adapted: per task, `stepwise-train-rm reward=vlm_success init={s['model']} "
             f"reward.adapt_steps={s['adapt_steps']}` on that task's store in `{s['adapt_data']}` (`{s['adapt_data_cmd']}`: "
             "10 expert demos and one episode of each failure kind (noise, stall, near-miss, reversal), from the demo "
             "split's variant stream, never the scored eval-split episodes; a failure-kind episode that happens to "
             "succeed is a success and is dropped by the 10-success cap, so 2 to 4 failures per task); the threshold "
             "is the adapted model's own, chosen on its validation episodes (15% of the adaptation episodes). "
             "Whole-rig frames of the scored episodes; the adapted row of the first table is the mean over tasks.",
             "",
             f"Throughput of `success_prob` (256 random frames of 3 cameras at {s['image_size'][0]} px, best of 3"
             + (f"; measured {tp['date']} at load average {tp['load_average']:.1f}" if "date" in tp else "") + "): "
             f"{tp['frames_per_s_1_thread']:.0f} frames/s on 1 thread, {tp['frames_per_s_2_threads']:.0f} frames/s on "
             f"2 threads; inside the evaluation (small batches, I/O excluded, the machine shared with other jobs) "
             f"{zero['model']['states_per_s']:.0f} frames/s.",
             "", "| zero-shot, one camera | AUROC (frames) | success acc | FPR | FNR | frames/s |", "|---|---|---|---|---|---|"]
    lines += camera_rows(zero, ("success_auroc", "success_acc", "success_fpr", "success_fnr"))
    cols = [("success_acc", "acc"), ("success_f1", "F1"), ("success_auroc", "AUROC"), ("success_fpr", "FPR"),
            ("success_fnr", "FNR"), ("success_ece", "ECE")]
    lines += ["", "Per task, zero-shot / adapted (frames of the scored episodes; AUROC over frames):", "",
              "| task | " + " | ".join(h for _, h in cols) + " | adapted: train frames, val AUROC, wall s |",
              "|---|" + "---|" * (len(cols) + 1)]
    for task in tasks:
        z, a = zero["model"]["per_task"].get(f"metaworld/{task}", {}), vl["adapted"].get(task, {})
        c = vl.get("adapted_calibration", {}).get(task, {})
        lines.append(f"| {task} | " + " | ".join(f"{cell(z.get(k))} / {cell(a.get(k))}" for k, _ in cols)
                     + f" | {c.get('train_frames', '-')}, {cell(c.get('auroc'))}, {cell(c.get('wall_s'), 0)} |")
    zm, am = zero["model"]["mean"], mean_over_tasks(vl["adapted"], [k for k, _ in cols])
    best_fps = max(tp["frames_per_s_1_thread"], tp["frames_per_s_2_threads"])
    lines.append("| **mean** | " + " | ".join(f"{cell(zm.get(k))} / {cell(am.get(k))}" for k, _ in cols) + " | |")
    lines += ["", "Targets (issue 8): zero-shot AUROC >= 0.90 on the held-out tasks: "
              f"{'met' if (zm.get('success_auroc') or 0) >= 0.90 else 'NOT met'} ({cell(zm.get('success_auroc'))}); "
              f">= 95% accuracy after adaptation: {'met' if (am.get('success_acc') or 0) >= 0.95 else 'NOT met'} "
              f"({cell(am.get('success_acc'), 3)}); false-positive rate <= 2%: "
              f"{'met' if (am.get('success_fpr') or 1) <= 0.02 else 'NOT met'} (adapted {cell(am.get('success_fpr'), 3)}, "
              f"zero-shot {cell(zm.get('success_fpr'), 3)}); >= 200 frames/s on the 2 cores: "
              f"{'met' if best_fps >= 200 else 'NOT met'} ({best_fps:.0f}, the better of 1 and 2 threads)."]
    return lines


def main() -> None:
    import perceptual_report

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--general", default="general",
                        help="step-PRM general checkpoint (shipped name, dir, or label=dir); each label is cached apart and compared")
    parser.add_argument("--vlm", default="vlm-general", help="VLM classifier checkpoint (dir or shipped name)")
    parser.add_argument("--adapt-steps", type=int, default=150, help="step-PRM one-shot adaptation steps")
    parser.add_argument("--vlm-adapt-steps", type=int, default=60,
                        help="VLM adaptation steps (reward.adapt_steps; 60 fit the 2 shared cores: about 4 min per task)")
    parser.add_argument("--vlm-adapt-data", default=None,
                        help="stores of 10 demos + failures per held-out task (default <data-root>/heldout_adapt; collected if missing)")
    parser.add_argument("--vlm-adapt-seed", type=int, default=1000, help="first demo-split seed of the adaptation stores")
    parser.add_argument("--vlm-reuse-zero-shot", action="store_true",
                        help="take the VLM zero-shot rows from results/vlm_zero_shot/report.json (a run cut short) instead of scoring again")
    parser.add_argument("--vlm-throughput", action="store_true",
                        help="measure the VLM classifier's frames/s again (and only that), e.g. on a quieter machine")
    parser.add_argument("--runs", default=str(ROOT / "runs"), help="adapted checkpoints go to <runs>/bench_adapt, bench_vlm_adapt")
    parser.add_argument("--recompute", nargs="*", default=[], choices=FAMILIES,
                        help="measure these families again even when cached")
    parser.add_argument("--render-only", action="store_true", help="rewrite the markdown from the caches, measure nothing")
    parser.add_argument("--out", default=str(RESULTS / "reward_models.md"))
    parser.add_argument("--prm-threads", type=int, default=2, help="torch threads of the step-PRM part")
    parser.add_argument("--vlm-threads", type=int, default=2, help="torch threads of the VLM part (its target: the 2 cores)")
    perceptual_report.add_arguments(parser)  # --data-root, --encoders, --fit-demos, --episodes-per-task, --threads (perceptual), ...
    args = parser.parse_args()
    args.vlm_adapt_data = args.vlm_adapt_data or str(Path(args.data_root) / "heldout_adapt")

    out = Path(args.out)
    cache = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    if "step_prm" not in cache and (old := migrate_step_prm(cache, out)) is not None:
        cache = {"step_prm": old}
    if "settings" in cache.get("step_prm", {}):  # one checkpoint's entry, from before checkpoints were compared
        cache["step_prm"] = {"general-v1": legacy_step_prm(cache["step_prm"])}
    if (RESULTS / "perceptual.json").exists():  # the perceptual family's own cache is the source of truth
        cache["perceptual"] = json.loads((RESULTS / "perceptual.json").read_text())
    if args.vlm_throughput and "vlm" in cache:
        import reward_models

        model = reward_models.load(args.vlm, device="cpu")
        model.cache_texts(["open the drawer"])
        load = os.getloadavg()[0]
        cache["vlm"]["throughput"] = {f"frames_per_s_{n}_thread{'s' if n > 1 else ''}": vlm_frames_per_s(model, n) for n in (1, 2)}
        cache["vlm"]["throughput"].update(date=str(datetime.date.today()), load_average=load)
    if not args.render_only:
        root = Path(args.data_root)
        ensure_store(root / "heldout_eval", "episodes=12", "failures=2", "split=eval")
        ensure_store(root / "heldout_demo", "episodes=1", "split=demo")
        measure = {"step_prm": measure_step_prm, "perceptual": measure_perceptual, "vlm": measure_vlm}
        for family in FAMILIES:
            if family == "step_prm":
                label = split_label(args.general)[0]
                if family in args.recompute or label not in cache.setdefault("step_prm", {}):
                    print(f"measuring step_prm {label} ...", flush=True)
                    cache["step_prm"][label] = measure_step_prm(args)
            elif family in args.recompute or family not in cache:
                print(f"measuring {family} ...", flush=True)
                cache[family] = measure[family](args)
                out.with_suffix(".json").write_text(json.dumps(
                    {k: v for k, v in cache.items() if k != "perceptual"}, indent=1, default=float))
    text = render(cache)
    print(text)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({k: v for k, v in cache.items() if k != "perceptual"}, indent=1, default=float))


if __name__ == "__main__":
    main()
