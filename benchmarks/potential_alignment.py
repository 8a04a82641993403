"""How well a run's learned potential tracks the simulator's own measure of progress, on the policy's episodes.

A learned progress model is fitted on demonstrations; during online learning it scores the policy's
own states, which no demonstration visited. This reads the episodes a ``stepwise-train`` run kept
(``<run>/online_episodes.hdf5``: per step the potential the run shaped with, ``infos/progress``, and
Meta-World's hand-written dense reward, ``infos/dense_reward``) and compares the two, per block of
online episodes:

* ``rho``: Spearman correlation, within each episode, between the learned potential and the oracle
  potential (dense reward / 10, the privileged one ``reward.shaping=oracle`` uses), averaged over
  the block's episodes. 1: the learned potential orders an episode's states as the simulator does.
* ``noise``: the standard deviation of the step-to-step change of each potential (learned / oracle),
  averaged over episodes. Shaping pays ``weight * (gamma Phi' - Phi)`` each step, so a noisier
  potential is a noisier reward.
* ``end Phi``: the learned potential at the last state of the failed episodes and of the successful
  ones (their true-terminal step scores 0 by definition; the state before it is taken), beside the
  oracle's at the failures' end. A potential that rates failures' last states near its successes'
  pays the learner for stopping there.

The oracle is the simulator's own reward function: this comparison exists only in simulation.

``--model M [M ...]`` re-scores the same episodes with other progress models (a checkpoint directory,
a shipped name, or ``adapted``: the run's own ``<run>/reward_model``), each in one batched call per
episode as ``stepwise-train`` scores them, with ``--perspective`` (``backward`` takes the run's first
demonstration as the reference). So a candidate reward model is judged on the states a learning policy
actually visits, in minutes and without a learning run.

Run: ``.venv/bin/python benchmarks/potential_alignment.py RUN [RUN ...] [--block 50] [--model adapted general]``;
writes ``benchmarks/results/potential_alignment.md``. A run without kept episodes or without a learned
potential (``reward.shaping`` other than ``progress``) is named and skipped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def episode_terms(path: Path, model=None, perspective: str = "forward", reference=None) -> list[dict]:
    """Per kept episode (in online order): learned and oracle potentials of its non-terminal steps, success.
    The learned potential is the one the run shaped with, or with ``model`` that model's, scored anew."""
    from episodes import EpisodeStore
    from policies.rewards import oracle_potential
    from reward_models.shaping import episode_potentials

    out = []
    cameras = list(model.cameras) if model is not None else []  # no camera: the images are not read
    with EpisodeStore(path, cameras=cameras) as store:
        for i in range(len(store)):
            attrs = store.episode_attrs(i)
            ep = store[i]
            infos = ep.infos
            if "dense_reward" not in infos or (model is None and "progress" not in infos):
                raise KeyError(f"{path}: episode {i} has no infos/progress or infos/dense_reward: was the run shaped "
                               "with reward.shaping=progress?")
            if model is None:
                phi = np.asarray(infos["progress"], np.float64)
            else:  # Phi of frame t+1 follows action t, as the stored potential does
                phi = episode_potentials(model, ep.images, ep.instruction, reference, perspective)[1:].astype(np.float64)
            oracle = oracle_potential(infos["dense_reward"]).astype(np.float64)
            terminated = np.asarray(infos.get("terminated", np.zeros(len(phi))), bool)
            keep = ~terminated  # a true terminal's potential is 0 by definition, not the model's
            index = int(attrs.get("extra_attrs", {}).get("online_episode", i))
            out.append({"episode": index, "phi": phi[keep], "oracle": oracle[keep], "success": bool(attrs["success"])})
    return sorted(out, key=lambda e: e["episode"])


def block_stats(eps: list[dict]) -> dict:
    from reward_models.metrics import spearman

    rho = [spearman(e["phi"], e["oracle"]) for e in eps if len(e["phi"]) >= 5 and np.ptp(e["oracle"]) > 0]
    rho = [r for r in rho if np.isfinite(r)]
    noise = lambda k: float(np.mean([np.std(np.diff(e[k])) for e in eps if len(e[k]) >= 2]))  # noqa: E731
    end = lambda sel, k: [e[k][-1] for e in eps if e["success"] == sel and len(e[k])]  # noqa: E731
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    return {"episodes": len(eps), "success": mean([e["success"] for e in eps]), "rho": mean(rho),
            "noise_phi": noise("phi"), "noise_oracle": noise("oracle"),
            "end_phi_fail": mean(end(False, "phi")), "end_phi_success": mean(end(True, "phi")),
            "end_oracle_fail": mean(end(False, "oracle"))}


def describe(run: Path) -> str:
    """task, demos, seed and the refresh setting, from the run's resolved config."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    refresh = cfg.get("refresh", {}).get("every", 0) or 0
    return (f"{cfg.task.split('/')[-1]}, {cfg.demos} demos, seed {cfg.seed}, "
            + (f"refreshed every {refresh}" if refresh else "no refresh"))


def load_model(name: str, run: Path):
    """A progress model by name: ``adapted`` is the run's own adapted model, anything else goes to `reward_models.load`."""
    import reward_models

    if name == "adapted":
        if not (run / "reward_model" / "config.json").is_file():
            raise FileNotFoundError(f"--model adapted: {run} has no reward_model/ (the run adapted none); name a "
                                    "checkpoint directory or a shipped model instead")
        return reward_models.load(run / "reward_model")
    return reward_models.load(name)


def first_demo(run: Path, cameras: list[str]):
    """The run's first demonstration (the reference of ``perspective=backward``)."""
    from episodes import EpisodeStore

    stores = sorted((run / "demos").glob("*.hdf5"))
    if not stores:
        raise FileNotFoundError(f"--perspective backward needs the run's demonstrations, and {run}/demos holds none")
    with EpisodeStore(stores[0], cameras=cameras) as store:
        return store[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="stepwise-train run directories (reward.shaping=progress)")
    parser.add_argument("--block", type=int, default=50, help="online episodes per row")
    parser.add_argument("--model", nargs="+", default=None,
                        help="re-score with these progress models (a directory, a shipped name, or 'adapted': the run's own)")
    parser.add_argument("--perspective", choices=["forward", "backward"], default="forward",
                        help="with --model: the progress perspective (backward: the run's first demo as reference)")
    parser.add_argument("--out", type=Path, default=RESULTS / "potential_alignment.md")
    args = parser.parse_args()
    if args.block < 1:
        parser.error(f"--block must be >= 1, got {args.block}")
    rows, skipped = [], []
    for run in args.runs:
        store = run / "online_episodes.hdf5"
        if not store.is_file() or not (run / ".hydra" / "config.yaml").is_file():
            skipped.append(f"{run}: no online_episodes.hdf5 or .hydra/config.yaml "
                           "(a stepwise-train run with keep_episodes?)")
            continue
        for name in args.model or [None]:
            try:
                model = None if name is None else load_model(name, run)
                reference = first_demo(run, list(model.cameras)) if model is not None and args.perspective == "backward" else None
                eps = episode_terms(store, model, args.perspective, reference)
            except (KeyError, FileNotFoundError) as err:
                skipped.append(str(err))
                continue
            label = describe(run) + ("" if name is None else f"; {name}, {args.perspective}")
            for lo in range(0, len(eps), args.block):
                block = eps[lo:lo + args.block]
                rows.append({"run": str(run), "model": name or "as shaped", "label": label, "from": block[0]["episode"],
                             "to": block[-1]["episode"], **block_stats(block)})
    f = lambda v: "-" if not np.isfinite(v) else f"{v:.2f}"  # noqa: E731
    lines = [
        "# Learned potential against the simulator's, on the policy's own episodes", "",
        f"Written {datetime.datetime.now():%Y-%m-%d %H:%M} by `benchmarks/potential_alignment.py` (block of "
        f"{args.block} online episodes per row). rho: within-episode Spearman correlation of the learned "
        "potential with the oracle potential (Meta-World's dense reward / 10), averaged over episodes. noise: std "
        "of the per-step change of each potential. end Phi: the learned potential at the last state of failed / "
        "successful episodes (the state before a success's terminal), and the oracle's at the failures' end. "
        "See the script's docstring.", "",
        "| run | episodes | success (training) | rho | noise learned / oracle | end Phi failed / succeeded | oracle at failures' end |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['label']} | {r['from']}-{r['to']} | {f(r['success'])} | {f(r['rho'])} | "
                     f"{r['noise_phi']:.3f} / {r['noise_oracle']:.3f} | {f(r['end_phi_fail'])} / {f(r['end_phi_success'])} | "
                     f"{f(r['end_oracle_fail'])} |")
    if skipped:
        lines += ["", "Skipped:", *[f"- {s}" for s in skipped]]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
