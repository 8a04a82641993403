"""The learning jobs' reports: ``report.json`` (every number), ``report.md`` (the summary a person
reads) and ``success_curve.png`` in the run directory, for stepwise-train and stepwise-train-reset-free."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from policies.run_dir import RunState
from policies.reset_free.loop import DIRECTIONS
from policies.success import ClassifierSuccess, DetectorCounts


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def refresh_segments(state: RunState, threshold: float) -> list[dict]:
    """With in-the-loop refreshes: per segment of online episodes scored by one progress model (from the
    start or a refresh to the next), its hacking count, successes, and the refresh that opened it."""
    if not state.refreshes:
        return []
    starts = [0] + [r["episode"] for r in state.refreshes]
    ends = starts[1:] + [state.episode]
    out = []
    for k, (a, b) in enumerate(zip(starts, ends)):
        seg = [h for h in state.history if a <= h["episode"] < b]
        out.append({"from": a, "to": b, "episodes": len(seg), "hacking": sum(bool(h.get("hacking")) for h in seg),
                    "successes": sum(bool(h["success"]) for h in seg),
                    "seconds": round(state.refreshes[k - 1]["seconds"], 1) if k else None})
    return out


def write_train_report(run: Path, cfg, state: RunState, final: dict, demo_terms: list[dict],
                 image_policy: dict | None = None) -> dict:
    """stepwise-train's report.json, report.md and success_curve.png in the run directory. ``image_policy``: its
    cameras, image_size and render_size (None: the state policy)."""
    plt = _pyplot()
    hist = state.history
    hacked = [h["episode"] for h in hist if h.get("hacking")]
    report = {
        "task": cfg.task, "algo": cfg.algo, "demos": cfg.demos, "seed": cfg.seed,
        "reward": {"source": cfg.reward.source, "shaping": cfg.reward.shaping, "weight": cfg.reward.weight,
                   "model": str(cfg.reward.model), "adapt_steps": cfg.adapt.steps, "kind": cfg.reward.kind,
                   **({"success_model": str(cfg.reward.success_model),
                       "success_threshold": cfg.reward.success_threshold} if cfg.reward.source == "success_prob" else {})},
        "final_success_rate": final["success_rate"], "final_eval_episodes": final["episodes"],
        "online_episodes": state.episode, "env_steps": state.env_steps, "wall_time_s": round(state.wall_time_s, 1),
        "stage_seconds": {k: round(v, 1) for k, v in state.stage_seconds.items()},
        "evals": state.evals,
        "first_episode_at_full_success": next((e["episode"] for e in state.evals if e["success_rate"] >= 1.0), None),
        "train_success_rate_last_20": float(np.mean([h["success"] for h in hist[-20:]])) if hist else None,
        "hacking_monitor": {"threshold": cfg.reward.hacking_progress, "episodes": len(hacked),
                            "of": len(hist), "episode_ids": hacked},
        "after_pretraining_success_rate": next((e["success_rate"] for e in state.evals if e["episode"] == 0), None),
        "refreshes": refresh_segments(state, cfg.reward.hacking_progress),
        "imitated_episodes": sum(bool(h.get("imitated")) for h in hist),
        "demo_final_progress": [float(t["final_progress"]) for t in demo_terms],
        "policy": {"kind": cfg.policy, **(image_policy or {})},
    }
    if cfg.reward.source == "success_prob":
        report["detector"] = {"false_positives": sum(h.get("detector_false_positive", 0) for h in hist),
                              "false_negatives": sum(h.get("detector_false_negative", 0) for h in hist)}
    (run / "report.json").write_text(json.dumps(report, indent=1))

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([e["episode"] for e in state.evals], [e["success_rate"] for e in state.evals], "o-", label="eval (deterministic)")
    if hist:
        s = np.array([h["success"] for h in hist], float)
        k = min(10, len(s))
        ax.plot(np.arange(k - 1, len(s)), np.convolve(s, np.ones(k) / k, "valid"), alpha=0.6, label=f"train ({k}-episode mean)")
    ax.set(xlabel="online episodes", ylabel="success rate", ylim=(-0.05, 1.05), title=f"{cfg.task} ({cfg.algo}, {cfg.reward.shaping})")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(run / "success_curve.png", dpi=100)
    plt.close(fig)

    lines = [f"# stepwise-train: {cfg.task}", "",
             f"algo {cfg.algo}, {cfg.demos} demonstrations, reward {cfg.reward.source} + shaping {cfg.reward.shaping} "
             f"(lambda {cfg.reward.weight}), seed {cfg.seed}"
             + (f"; image policy: {len(image_policy['cameras'])} cameras at {image_policy['image_size'][0]} px."
                if image_policy is not None else "."), "",
             f"**Final success rate: {final['success_rate']:.2f}** over {final['episodes']} evaluation episodes "
             f"(eval split), after {state.episode} online episodes ({state.env_steps} env steps), "
             f"{state.wall_time_s / 60:.1f} min wall time.", "",
             "| online episodes | eval success | eval episodes |", "|---|---|---|"]
    lines += [f"| {e['episode']} | {e['success_rate']:.2f} | {e['episodes']} |" for e in state.evals]
    if report["after_pretraining_success_rate"] is not None:
        lines += ["", f"After pre-training alone (before any online episode): "
                      f"{report['after_pretraining_success_rate']:.2f}."]
    if report["refreshes"]:
        lines += ["", "Progress model refreshed in the loop (refresh.every): hacking per segment between refreshes:", "",
                  "| episodes | hacking | successes | refresh s |", "|---|---|---|---|"]
        lines += [f"| {r['from']}-{r['to'] - 1} | {r['hacking']}/{r['episodes']} | {r['successes']} | "
                  f"{r['seconds'] if r['seconds'] is not None else '-'} |" for r in report["refreshes"]]
    lines += ["", f"Reward-hacking monitor: {len(hacked)} of {len(hist)} training episodes ended with progress >= "
              f"{cfg.reward.hacking_progress} and no success" + (f" (episodes {hacked[:20]})" if hacked else "") + ".",
              *(["", f"Self-imitation: {report['imitated_episodes']} successful online episodes joined the "
                  f"{cfg.demos} demonstrations."] if cfg.online.get("imitate_successes", False) else []),
              "", "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in state.stage_seconds.items()),
              "", "![success curve](success_curve.png)"]
    if "detector" in report:
        lines.insert(-2, f"Success detector against ground truth: {report['detector']['false_positives']} false positives, "
                         f"{report['detector']['false_negatives']} false negatives.")
    (run / "report.md").write_text("\n".join(lines) + "\n")
    return report


def write_reset_free_report(run_path: Path, cfg, state, final: dict, classifier: ClassifierSuccess | None) -> dict:
    """stepwise-train-reset-free's report.json, report.md and success_curve.png in the run directory
    (``state``: its `policies.reset_free.checkpoint.RunState`)."""
    from sim.task_pair import get_pair

    plt = _pyplot()
    hist = state.history
    fwd, bwd = get_pair(cfg.pair)
    per_dir = {}
    for name in DIRECTIONS:
        rows = [h for h in hist if h["direction"] == name]
        per_dir[name] = {"attempts": len(rows), "claimed": sum(h["claimed"] for h in rows),
                         "sim_success": sum(h["sim_success"] for h in rows)}
    detector = DetectorCounts(**state.detector).summary()
    report = {
        "pair": cfg.pair, "forward_task": fwd, "backward_task": bwd, "success_signal": cfg.success,
        "classifier": state.classifier if classifier is not None else None,
        "classifier_adaptation": ({"from": str(cfg.classifier), "steps": int(cfg.adapt.steps),
                                   "chains": int(cfg.adapt.chains), "data": "reset-free expert chains + near misses "
                                   "(demo split), labelled by the simulator's per-step success",
                                   "command": f"stepwise-train-rm reward=vlm_success init={cfg.classifier} "
                                              f"data=<run>/classifier_data out=<run>/classifier "
                                              f"reward.adapt_steps={cfg.adapt.steps} reward.adapt_lr={cfg.adapt.lr}"}
                                  if classifier is not None and int(cfg.adapt.steps) > 0 else None),
        "threshold": classifier.threshold if classifier is not None else None,
        "confirm_steps": int(cfg.confirm_steps), "reset_every": int(cfg.reset_every), "max_steps": int(cfg.max_steps),
        "flip_on_timeout": bool(cfg.flip_on_timeout), "demos": int(cfg.demos), "seed": int(cfg.seed),
        "final": final, "attempts": state.loop.get("episodes", 0), "resets": state.loop.get("resets", 0),
        "flips": state.loop.get("flips", 0), "env_steps": state.loop.get("env_steps", 0),
        "wall_time_s": round(state.wall_time_s, 1),
        "stage_seconds": {k: round(v, 1) for k, v in state.stage_seconds.items()},
        "training_attempts": per_dir, "evals": state.evals,
        "detector": detector if classifier is not None else None,
        "detector_role": ("success signal" if cfg.success == "classifier" else "monitor only")
        if classifier is not None else None,
        "detector_on_expert_chains": state.demo_detector,
    }
    (run_path / "report.json").write_text(json.dumps(report, indent=1))

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    xs = [e["episode"] for e in state.evals]
    ax.plot(xs, [e["forward"] for e in state.evals], "o-", label=f"forward ({fwd.split('/')[-1]})")
    ax.plot(xs, [e["backward"] for e in state.evals], "s-", label=f"backward ({bwd.split('/')[-1]})")
    ax.plot(xs, [e["backward_own_reset"] for e in state.evals], "^:", alpha=0.6, label="backward, own reset")
    ax.set(xlabel="training attempts (reset-free)", ylabel="eval success (with resets)", ylim=(-0.05, 1.05),
           title=f"{cfg.pair}: success from {cfg.success}")
    ax.legend(loc="lower right")
    if hist:
        ax2.plot([h["episode"] for h in hist], [h["resets"] for h in hist], label="resets used")
        ax2.plot([h["episode"] for h in hist], np.cumsum([h["claimed"] for h in hist]), label="instruction flips")
        ax2.set(xlabel="training attempts", ylabel="count", title=f"reset every {cfg.reset_every} attempts")
        ax2.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(run_path / "success_curve.png", dpi=100)
    plt.close(fig)

    lines = [f"# stepwise-train-reset-free: {cfg.pair} ({fwd} / {bwd})", "",
             f"Success signal: **{cfg.success}**" + (f" ({state.classifier}, P(done) > {classifier.threshold:.3f}"
                                                     f" for {cfg.confirm_steps} frame(s))" if cfg.success == "classifier" else "")
             + f"; forced reset every {cfg.reset_every} attempts, {cfg.max_steps} steps per attempt, "
               f"{cfg.demos} demonstration chains, seed {cfg.seed}.", "",
             f"**Final success (with resets, {final['episodes']} episodes per direction): forward "
             f"{final['forward']:.2f}, backward {final['backward']:.2f}** (from its own task's reset "
             f"{final['backward_own_reset']:.2f}) after {report['attempts']} attempts, "
             f"{report['resets']} resets, {report['env_steps']} env steps, {state.wall_time_s / 60:.1f} min.", "",
             "Eval: forward from its task's reset; backward from the scene the forward expert leaves (where it "
             "starts reset-free), and from the backward task's own reset.", "",
             "| attempts | resets | forward | backward | backward (own reset) |", "|---|---|---|---|---|"]
    lines += [f"| {e['episode']} | {e['resets']} | {e['forward']:.2f} | {e['backward']:.2f} | {e['backward_own_reset']:.2f} |"
              for e in state.evals]
    lines += ["", "Training attempts: " + "; ".join(
        f"{k}: {v['attempts']} attempts, {v['claimed']} ended as done by the signal, {v['sim_success']} reached the "
        "simulator's success" for k, v in per_dir.items()) + "."]
    if classifier is not None:
        d = detector
        lines += ["", f"Classifier against the simulator ({report['detector_role']}): {d['false_positives']} false "
                  f"positive and {d['false_negatives']} false negative attempts (of {report['attempts']}); frames: "
                  f"FPR {d['frame_fpr'] if d['frame_fpr'] is None else round(d['frame_fpr'], 4)}, "
                  f"FNR {d['frame_fnr'] if d['frame_fnr'] is None else round(d['frame_fnr'], 4)}."]
    lines += ["", "![success curve](success_curve.png)"]
    (run_path / "report.md").write_text("\n".join(lines) + "\n")
    return report


def closing_line(report: dict, path: Path) -> str:
    """The job's last line: the final success rate, the rate after pre-training alone (what the online
    phase and its reward added), the wall time and where the report is."""
    pre = report.get("after_pretraining_success_rate")
    pre_text = "" if pre is None else f" ({pre:.2f} after pre-training alone)"
    return (f"final success rate {report['final_success_rate']:.2f} over {report['final_eval_episodes']} eval episodes "
            f"after {report['online_episodes']} online episodes{pre_text}, {report['wall_time_s'] / 60:.1f} min; report: {path}")
