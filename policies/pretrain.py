"""Pre-training on the demonstrations, written once for both jobs: a behaviour-cloning warm start of
the actor, then Cal-QL updates (the conservative term lower-bounded by the rows' Monte-Carlo returns)."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from policies.augment import translate_xy


def bc_warm_start(agent, buffer, steps: int, batch_size: int, rng: np.random.Generator, writer=None,
                  log_every: int = 50, weights: np.ndarray | None = None, translate: float = 0.0) -> None:
    """``steps`` actor-only behaviour-cloning updates on batches of ``buffer``; the loss goes to
    ``writer`` (a TensorBoard SummaryWriter, or None) every ``log_every`` steps.

    ``weights`` float (N,), one per row of ``buffer`` (reward-aligned BC, :func:`demo_bc_weights`):
    rows are drawn with probability proportional to their weight instead of uniformly, the sampling
    form of a weighted BC loss (rows of weight 0 are never cloned).

    ``translate`` > 0: every cloned state's workspace moved by a random offset of up to this many metres
    in x and y (:func:`policies.augment.translate_xy`), the demonstrated action kept."""
    rows = p = None
    gen = torch.Generator(device=agent.device).manual_seed(int(rng.integers(2**31))) if translate > 0 else None
    if weights is not None:
        weights = np.asarray(weights, np.float64)
        if len(weights) != len(buffer) or weights.sum() <= 0:
            raise ValueError(f"BC weights: {len(weights)} weights summing to {weights.sum():.3g} for a buffer of "
                             f"{len(buffer)} rows: one non-negative weight per row, some positive")
        rows, p = buffer.rows(), weights / weights.sum()
    for step in tqdm(range(int(steps)), desc="BC warm start", unit="step"):
        if rows is None:
            b = buffer.sample(int(batch_size), rng, agent.device)
        else:
            idx = rng.choice(len(p), size=int(batch_size), p=p)
            b = {k: torch.as_tensor(rows[k][idx], device=agent.device) for k in ("obs", "action")}
        obs = translate_xy(b["obs"], translate, gen) if translate > 0 else b["obs"]
        loss = agent.bc_update(obs, b["action"])
        if writer is not None and step % log_every == 0:
            writer.add_scalar("pretrain/bc_loss", loss, step)
    if getattr(agent.cfg, "proposal", False):  # IBRL: the cloned actor, frozen, proposes actions from now on
        agent.freeze_proposal()
    if getattr(agent.cfg, "residual_scale", None) is not None:  # residual RL: the cloned actor, frozen, is the base
        agent.make_residual()


def demo_bc_weights(cfg, records, demo_terms) -> np.ndarray | None:
    """``pretrain.bc_weighting=progress``: each demonstration action weighted by the progress it made
    under the shaping potential (`reward_models.score.progress_weights`, after SARM's reward-aligned
    BC): (rows,) in replay order, one per step of each record. None with ``bc_weighting=none``.

    A demonstration ends at success, a true terminal whose potential is 0 by the shaping convention:
    its last step's gain is measured to progress 1, where success puts it."""
    if cfg.pretrain.get("bc_weighting", "none") == "none":
        return None
    from reward_models.score import progress_weights

    out = []
    for rec, terms in zip(records, demo_terms):
        end = 1.0 if bool(rec.terminated[-1]) else float(terms["phi_next"][-1])
        out.append(progress_weights(np.r_[np.asarray(terms["phi"], np.float64), end]))
    return np.concatenate(out)


def calql_pretrain(agent, buffer, steps: int, batch_rows: int, rng: np.random.Generator, writer=None,
                   log_every: int = 50, critic_only: bool = False) -> None:
    """``steps`` Cal-QL updates on ``batch_rows``-row batches of ``buffer``, every row marked a
    demonstration (the BC term applies); the update's statistics go to ``writer`` every ``log_every``.

    ``critic_only``: the critics' steps alone (`SAC.critic_update`, eager); the actor
    and the temperature stay as the BC warm start left them, so online learning starts from the cloned
    policy with critics fitted to it (its targets and conservative term read that policy's actions)."""
    for step in tqdm(range(int(steps)), desc="Cal-QL pre-training" + (" (critics)" if critic_only else ""), unit="step"):
        b = buffer.sample(int(batch_rows), rng, agent.device)
        b["demo"] = torch.ones(int(batch_rows), device=agent.device)
        stats = agent.critic_update(b) if critic_only else agent.update(b)
        if writer is not None and step % log_every == 0:
            for k, v in stats.items():
                writer.add_scalar(f"pretrain/{k}", v, step)


def anneal_bc(agent, episode: int, anneal_episodes: int, final: float) -> None:
    """The BC term's multiplier, linear from 1.0 at episode 0 to ``final`` at ``anneal_episodes``."""
    frac = min(1.0, int(episode) / max(1, int(anneal_episodes)))
    agent.bc_coef = 1.0 + frac * (float(final) - 1.0)


def start_online(agent, online) -> None:
    """The agent's settings for online fine-tuning from the job's ``online`` block: the conservative
    weight, and the rows it is computed on (``cql_rows``, where the block has it)."""
    agent.cql_alpha = float(online.cql_alpha)
    rows = online.get("cql_rows") if hasattr(online, "get") else getattr(online, "cql_rows", None)
    if rows is not None:
        agent.cql_rows = int(rows)
