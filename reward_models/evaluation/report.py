"""The evaluation's report: ``report.json`` (every number), ``report.md`` (tables) and PNG plots
(progress curves per task, per-task VOC / AUROC bars) from :func:`~reward_models.evaluation.loop.evaluate`'s results."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

# --------------------------------------------------------------------------- report


def fmt(v: Any) -> str:
    """A report cell: 3 decimals for a float, a dash for a missing value."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def render_report(results: dict, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``report.json``, ``report.md`` and the PNG plots of :func:`evaluate`'s results.

    Returns the paths written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json", out / "report.md"]
    (out / "report.json").write_text(json.dumps(results, indent=2))
    (out / "report.md").write_text(_markdown(results))
    written += _plots(results, out)
    return written


def _markdown(results: dict) -> str:
    s = results["settings"]
    lines = [
        "# Reward-model evaluation",
        "",
        f"- model: `{s['model']}` ({s['model_kind']}, cameras {', '.join(s['cameras']) or '–'})",
        f"- stores: {', '.join(f'`{p}`' for p in s['stores'])}",
        f"- episodes scored: {s['episodes_scored']} (references excluded)",
        f"- reference rule: {s['reference']}",
        ("- success threshold: the model's own (cfg.threshold), success metrics on every scored episode; "
         "baseline rows: chosen for accuracy on the validation half" if s["threshold_metric"] == "model" else
         f"- success threshold: chosen for {s['threshold_metric']} on the validation half; {s['split']}"),
        f"- machine: {s['cpu_cores']} CPU cores ({s['cpu_cores_usable']} usable)",
    ]
    if s.get("fit"):  # a model fitted per task: say on what, so nobody mistakes it for zero-shot
        lines.append("- fitted per task (fitting episodes never scored): " + "; ".join(
            f"{task}: {', '.join(f['demos'])} ({f['n_steps']} steps, {f['seconds']:.1f} s)" for task, f in s["fit"].items()))
    tp = results["throughput"]
    lines.append(f"- scoring throughput: {fmt(tp['states_per_s'])} states/s ({tp['states']} states in "
                 f"{tp['model_seconds']:.1f} s of model calls; whole evaluation {tp['wall_seconds']:.1f} s)")
    lines += ["", "| task | reference | scored | successes | failures |", "|---|---|---|---|---|"]
    for task, info in results["tasks"].items():
        lines.append(f"| {task} | {info['reference'] or '–'} | {info['scored']} | {info['successes']} | {info['failures']} |")
    for name, row in results["rows"].items():
        tasks = list(row["per_task"])
        title = f"## {name}" + (" (PRIVILEGED: simulator state, a reference, not a competitor)" if row["privileged"] else "")
        lines += ["", title, ""]
        if name == "model" or name.startswith("camera:"):
            lines += [f"throughput: {fmt(row['states_per_s'])} states/s", ""]
        lines.append("| metric | " + " | ".join(tasks) + " | mean |")
        lines.append("|---" * (len(tasks) + 2) + "|")
        for key in row["mean"]:
            cells = [fmt(row["per_task"][t].get(key)) for t in tasks]
            lines.append(f"| {key} | " + " | ".join(cells) + f" | {fmt(row['mean'][key])} |")
    if results["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _plots(results: dict, out: Path) -> list[Path]:
    """Progress curves per task (one PNG each) and per-task VOC / AUROC bars (one PNG)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on the robot / CI machines
    import matplotlib.pyplot as plt

    written: list[Path] = []
    for task, kept in results["curves"].items():
        fig, ax = plt.subplots(figsize=(7, 4))
        for j, c in enumerate(kept):
            color = f"C{j % 10}"
            ax.plot(c["progress"], color=color, linestyle="-" if c["success"] else "--",
                    label=f"{c['episode']} ({c['kind']}, {'success' if c['success'] else 'failure'})")
            for k in c["keyframes"]:
                ax.axvline(k, color=color, alpha=0.5, linewidth=0.8, linestyle=":")
        ax.set(title=f"{task}: predicted progress (keyframes as vertical lines)", xlabel="frame",
               ylabel="progress", ylim=(-0.05, 1.05))
        ax.legend(fontsize=6)
        path = out / f"progress_{_safe(task)}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    rows = results["rows"]
    tasks = sorted(results["tasks"])
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 2 + 1.5 * len(tasks) * 2), 4))
    width = 0.8 / max(len(rows), 1)
    for ax, key in zip(axes, ("voc_d1", "auroc")):
        for j, (name, row) in enumerate(rows.items()):
            vals = [row["per_task"].get(t, {}).get(key) for t in tasks]
            ax.bar(np.arange(len(tasks)) + j * width, [np.nan if v is None else v for v in vals], width,
                   label=name + (" (privileged)" if row["privileged"] else ""))
        ax.set_xticks(np.arange(len(tasks)) + width * (len(rows) - 1) / 2)
        ax.set_xticklabels(tasks, rotation=30, ha="right", fontsize=7)
        ax.axhline(0.5 if key == "auroc" else 0.0, color="gray", linewidth=0.8)
        ax.set(title=key, ylim=(-1.05, 1.05) if key == "voc_d1" else (0, 1.05))
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    path = out / "metrics_per_task.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return written + [path]
