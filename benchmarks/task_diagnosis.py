"""Why a general step-PRM fails on a held-out task: what it predicts along the expert episodes.

For each task and model, on the clean held-out stores of ``benchmarks/robustness.py``
(``<data-root>/clean``, the first success per task is the reference):

* forward progress at each keyframe (the end of each scripted step) and at the last frame, averaged
  over the successful episodes: a model that is near 1 at the first keyframe rates "gripper at the
  object" as done;
* VOC of forward progress with and without the reference's goal anchor, and of ``backward``;
* VOC per camera alone;
* the instruction test: VOC and mean |change| of forward progress when the instruction is replaced
  by the twin task's (e.g. "close the door" on door-open) and by an unrelated one. A model that reads
  the instruction must change its prediction; one that ignores it does not.

Run: ``.venv/bin/python benchmarks/task_diagnosis.py --models general-v1 general`` (a minute per
model); writes ``benchmarks/results/task_diagnosis.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

# task -> (twin instruction, unrelated instruction)
PROBES = {
    "door-open": ("close the door", "press the button from the top"),
    "handle-pull": ("press the handle down", "open the window"),
    "drawer-open": ("close the drawer", "press the button from the top"),
    "window-close": ("open the window", "pull the handle up"),
}


def voc(values: np.ndarray) -> float:
    from reward_models.metrics import spearman

    return float(spearman(np.arange(len(values)), values))


def diagnose(model, store: Path) -> dict:
    from episodes import EpisodeStore

    with EpisodeStore(store, cameras=list(model.cameras)) as s:
        eps = [s[i] for i in range(len(s)) if s.episode_attrs(i)["success"] and s.episode_attrs(i)["kind"] == "expert"]
    reference, scored = eps[0], eps[1:]
    task = scored[0].task.split("/", 1)[-1]
    twin, other = PROBES[task]
    keys = ["kf", "last", "voc_fwd", "voc_fwd_ref", "voc_bwd", "voc_twin", "dv_twin", "voc_other", "dv_other",
            *(f"cam:{c}" for c in model.cameras)]
    out: dict[str, list] = {k: [] for k in keys}
    for ep in scored:
        end = int(ep.keyframes[-1]) + 1
        frames = {c: ep.images[c][:end] for c in model.cameras}
        fwd = model.progress(frames, ep.instruction, perspective="forward")
        out["kf"].append([float(fwd[min(int(k), end - 1)]) for k in ep.keyframes])
        out["last"].append(float(fwd[-1]))
        out["voc_fwd"].append(voc(fwd))
        out["voc_fwd_ref"].append(voc(model.progress(frames, ep.instruction, reference=reference, perspective="forward")))
        out["voc_bwd"].append(voc(model.progress(frames, ep.instruction, reference=reference, perspective="backward")))
        for name, text in (("twin", twin), ("other", other)):
            alt = model.progress(frames, text, perspective="forward")
            out[f"voc_{name}"].append(voc(alt))
            out[f"dv_{name}"].append(float(np.abs(alt - fwd).mean()))
        for c in model.cameras:
            out[f"cam:{c}"].append(voc(model.progress({c: frames[c]}, ep.instruction, perspective="forward", cameras=[c])))
    width = min(len(k) for k in out["kf"])
    res = {k: float(np.mean(v)) for k, v in out.items() if k != "kf"}
    res["kf"] = [float(x) for x in np.mean([k[:width] for k in out["kf"]], axis=0)]
    res["episodes"] = len(scored)
    res["twin"], res["other"] = twin, other
    return res


def main() -> None:
    import torch

    import reward_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["general-v1", "general"])
    parser.add_argument("--tasks", nargs="+", default=list(PROBES), choices=list(PROBES))
    parser.add_argument("--data-root", default=str(ROOT / "data" / "robustness"))
    parser.add_argument("--out", default=str(RESULTS / "task_diagnosis.md"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    lines = ["# Held-out task diagnosis (step-PRM, zero-shot)", "",
             "Written by `benchmarks/task_diagnosis.py` on the clean held-out stores of `benchmarks/robustness.py` "
             "(`split=eval seed=1000`, successful expert episodes after the first, which is the reference). "
             "Forward progress is without a reference unless marked.", ""]
    for name in args.models:
        model = reward_models.load(name)
        lines += [f"## `{name}`", "",
                  "| task | fwd at keyframes | fwd last | VOC fwd | VOC fwd+goal | VOC bwd | "
                  + " | ".join(f"VOC {c}" for c in model.cameras) + " | VOC twin text (mean abs change) | VOC other text (change) |",
                  "|---" * (8 + len(model.cameras)) + "|"]
        for task in args.tasks:
            r = diagnose(model, Path(args.data_root) / "clean" / f"{task}.hdf5")
            lines.append(f"| {task} | {' / '.join(f'{x:.2f}' for x in r['kf'])} | {r['last']:.2f} | {r['voc_fwd']:.2f} | "
                         f"{r['voc_fwd_ref']:.2f} | {r['voc_bwd']:.2f} | "
                         + " | ".join(f"{r[f'cam:{c}']:.2f}" for c in model.cameras)
                         + f" | {r['voc_twin']:.2f} ({r['dv_twin']:.3f}) | {r['voc_other']:.2f} ({r['dv_other']:.3f}) |")
            print(name, task, {k: v for k, v in r.items() if k not in ("twin", "other")}, flush=True)
        lines.append("")
    lines += ["Twin and unrelated instructions: " + "; ".join(f"{t}: \"{a}\" / \"{b}\"" for t, (a, b) in PROBES.items()
                                                            if t in args.tasks) + ".", ""]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
