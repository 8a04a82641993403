"""State-based SAC with a batched, LayerNorm critic ensemble (RLPD-style).

Read top to bottom: `SACConfig` (every hyperparameter), then `SAC.update`: the loss methods
(`critic_loss`, `actor_loss`, `alpha_loss`) and the eager steps that apply them (`policies.sac_fused`
compiles the same loss methods into one graph with ``compile``), the residual and proposal actors, and
save/load. The networks it learns (`TanhGaussianActor`, `ResidualActor`, `CriticEnsemble`) are in
`policies.networks` and importable from here as before. The file is longer than 400 lines because the
algorithm is kept whole, as CleanRL keeps its single-file agents: config, losses, update steps and
save/load read in order without jumping between files.

Batch contract (what `update` reads; `policies.replay` produces it), all float32 torch tensors:
    obs (N, S), action (N, A) in [-1, 1], reward (N,), next_obs (N, S),
    terminated (N,) 1.0 only at TRUE terminals (task solved / failed for good). A time-limit
    truncation is NOT terminal: its transition bootstraps like any other. There is deliberately
    no generic ``done`` key.
    demo (N,) optional, 1.0 on demonstration rows; the behaviour-cloning term uses only those.
    mc_return (N,) optional, a Monte-Carlo lower bound on V(s) (discounted return-to-go of the
    episode, computed from the SAME rewards the critic learns; -inf where unknown). Cal-QL
    lower-bounds the conservative term's policy Q-values by it.
    horizon (N,) optional, the env steps the row spans (n-step transitions: reward is the discounted
    sum over them, next_obs the observation after them); the bootstrap is discounted by gamma ** horizon.
N = utd_ratio * batch_size: the critic takes utd_ratio steps on consecutive slices of
batch_size rows, then the actor and temperature take one step on the last slice (as RLPD).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from policies.networks import (STATE_FEATURES, CriticEnsemble, EnsembleLayerNorm, EnsembleLinear, ResidualActor,
                               StateFeatures, TanhGaussianActor, tanh_gaussian_sample)

__all__ = ["SACConfig", "SAC", "BATCH_KEYS",  # and, from policies.networks, the networks it learns:
           "StateFeatures", "TanhGaussianActor", "ResidualActor", "CriticEnsemble", "EnsembleLinear", "EnsembleLayerNorm",
           "tanh_gaussian_sample"]

BATCH_KEYS = ("obs", "action", "reward", "next_obs", "terminated")
OPTIONAL_KEYS = ("demo", "mc_return", "horizon")


@dataclass
class SACConfig:
    """Every hyperparameter of the agent. Defaults follow RLPD/CleanRL where they agree."""

    hidden_sizes: tuple[int, ...] = (256, 256)
    """widths of the hidden layers, shared by actor and every critic"""
    num_critics: int = 2
    """critic ensemble size E (RLPD uses 10; on 2 CPU cores 2 is the affordable choice)"""
    critic_subsample: int | None = None
    """target = min over a random subset of this many critics (RLPD: 2 of 10); None = min over all E"""
    utd_ratio: int = 1
    """critic updates per `update` call (update-to-data ratio); the actor updates once per call"""
    batch_size: int = 256
    """rows per gradient step; `update` expects utd_ratio * batch_size rows"""
    lr: float = 3e-4
    """Adam learning rate of actor, critics and temperature"""
    gamma: float = 0.99
    """discount; reward shaping must use the same value"""
    tau: float = 0.005
    """Polyak rate of the target critics: target <- (1 - tau) target + tau online"""
    init_temperature: float = 1.0
    """initial entropy temperature alpha (RLPD 1.0; SERL 0.01)"""
    target_entropy: float | None = None
    """entropy the temperature steers towards; None = -|A| (RLPD uses -|A|/2)"""
    backup_entropy: bool = True
    """include -alpha log pi(a'|s') in the critic's target (SAC, RLPD); Cal-QL and SERL leave it out,
    which keeps Q on the scale of the task's returns when the policy's entropy turns negative"""
    bc_q_floor: float = 1.0
    """TD3+BC divides the RL term by mean|Q|; below this floor the floor is used (Q near 0 would blow the RL term up)"""
    bc_weight: float = 0.0
    """TD3+BC's alpha: actor loss = (bc_weight / mean|Q|) * SAC loss + MSE to demo actions; 0 = no BC term"""
    cql_alpha: float = 0.0
    """weight of the conservative (CQL) term in the critic loss; 0 = plain SAC. Cal-QL uses 5 (AntMaze, Kitchen), 1 (Adroit)"""
    cql_n_actions: int = 4
    """actions sampled per state for the CQL log-sum-exp, from each of uniform, pi(s) and pi(s') (Cal-QL: 10)"""
    cql_temperature: float = 1.0
    """temperature of the CQL log-sum-exp"""
    calql_bound: bool = True
    """Cal-QL: lower-bound the policy actions' Q in the CQL term by the batch's mc_return (False = plain CQL)"""
    cql_rows: int | None = None
    """rows of each critic slice the conservative term is computed on: a strided subset, so a mixed
    batch keeps its offline/online shares (None = every row). The term scores 3 * cql_n_actions actions
    per row: on all 256 rows it made an update 5.8x slower (16.8 against 97.5 updates/s, 1 thread)"""
    n_step: int = 1
    """n-step returns: stepwise-train's replay stores n-step transitions (rewards summed with gamma over
    n steps, or to the episode's end; `policies.replay.n_step_transitions`) and the target discounts
    by gamma ** horizon; 1 = one-step TD"""
    proposal: bool = False
    """IBRL (Hu et al. 2023): the behaviour-cloned actor, frozen after the BC warm start, proposes an
    action beside the RL actor's, in acting and in the critic's target; the one the critics value
    higher (min over members) is taken. The agent can then do no worse than BC where Q ranks right"""
    residual_scale: float | None = None
    """residual RL: after the BC warm start (`make_residual`) the cloned actor is frozen as a base and RL
    learns a correction of at most this size per action dimension on top of its deterministic action
    (`ResidualActor`); None = off, the actor itself is fine-tuned"""
    layer_norm: bool = True
    """LayerNorm after every hidden layer of each critic (RLPD: keeps Q bounded off the data)"""
    device: str = "auto"
    """'auto' (cuda when available, else cpu), 'cpu', 'cuda', 'cuda:1', ..."""
    precision: str = "fp32"
    """'fp32', or 'bf16': forward passes under bfloat16 autocast (matrix products in bfloat16; weights,
    optimiser state, losses and gradients accumulated in float32). On CPUs with AMX bfloat16 matrix
    products run about 4x faster (benchmarks/sac_speed.py); check learning before relying on it"""
    state_features: str = "raw"
    """what actor and critics read of a flat state: 'raw' (the state itself) or 'relative' (the
    Meta-World 39-d state plus the object-to-hand, goal-to-hand and goal-to-object vectors, x10;
    robosuite's object observations carry the same relative positions). An MLP fed absolute
    positions must learn the differences from a few demonstrations; given them it generalises
    across object and goal placements (benchmarks/learning.py, push and pick-place)"""
    fused_adam: bool = True
    """Adam's fused kernel (one kernel per parameter tensor; the same update as the default one);
    falls back to the default where this torch lacks it for the device"""
    compile: bool = False
    """the whole update (critic steps, actor, temperature, Adam, target averaging) as one graph compiled by
    torch.compile (`policies.sac_fused`): the same step with far fewer kernel launches, after a compile of
    tens of seconds on first use (stepwise-train's ``agent.compile=auto`` turns it on for runs long enough
    to repay that; benchmarks/sac_speed.py measures both). Flat states only (not ImageSAC)"""

    def __post_init__(self) -> None:
        self.hidden_sizes = tuple(int(h) for h in self.hidden_sizes)
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ValueError(f"hidden_sizes must be non-empty positive widths, got {self.hidden_sizes}")
        if self.num_critics < 1:
            raise ValueError(f"num_critics must be >= 1, got {self.num_critics}")
        if self.critic_subsample is not None and not 1 <= self.critic_subsample <= self.num_critics:
            raise ValueError(
                f"critic_subsample must be in [1, num_critics={self.num_critics}] or None (min over all), "
                f"got {self.critic_subsample}"
            )
        if self.utd_ratio < 1 or self.batch_size < 1:
            raise ValueError(f"utd_ratio and batch_size must be >= 1, got {self.utd_ratio}, {self.batch_size}")
        if not 0.0 <= self.gamma < 1.0 or not 0.0 < self.tau <= 1.0:
            raise ValueError(f"need 0 <= gamma < 1 and 0 < tau <= 1, got gamma={self.gamma}, tau={self.tau}")
        if self.cql_alpha < 0 or self.cql_n_actions < 1 or self.cql_temperature <= 0:
            raise ValueError(
                f"need cql_alpha >= 0, cql_n_actions >= 1, cql_temperature > 0; got {self.cql_alpha}, "
                f"{self.cql_n_actions}, {self.cql_temperature}"
            )
        if self.n_step < 1:
            raise ValueError(f"n_step must be >= 1, got {self.n_step}")
        if self.residual_scale is not None and not 0.0 < self.residual_scale <= 2.0:
            raise ValueError(f"residual_scale must be in (0, 2] (2 reaches every action from any base action) or None "
                             f"(off), got {self.residual_scale}")
        if self.residual_scale is not None and self.proposal:
            raise ValueError("residual_scale and proposal both build on the frozen BC actor: pick one (the residual "
                             "policy already starts from the BC action)")
        if self.cql_rows is not None and self.cql_rows < 1:
            raise ValueError(f"cql_rows must be >= 1 or None (every row), got {self.cql_rows}")
        if self.state_features not in STATE_FEATURES:
            raise ValueError(f"state_features must be one of {STATE_FEATURES}, got {self.state_features!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be true or false, got {self.compile!r} (stepwise-train resolves 'auto' "
                             "from the run's length before building the agent)")
        if self.bc_q_floor <= 0:
            raise ValueError(f"bc_q_floor must be > 0, got {self.bc_q_floor}")
        if self.init_temperature <= 0 or self.bc_weight < 0:
            raise ValueError(
                f"init_temperature must be > 0 and bc_weight >= 0, got {self.init_temperature}, {self.bc_weight}"
            )


PRECISIONS = ("fp32", "bf16")


def make_adam(params, lr: float, fused: bool) -> torch.optim.Adam:
    """Adam over ``params``; with ``fused`` its fused kernel where this torch has one for their device."""
    params = list(params)
    if fused:
        try:
            return torch.optim.Adam(params, lr=lr, fused=True)
        except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device or dtype
            pass
    return torch.optim.Adam(params, lr=lr)


def autocast_context(device: torch.device, precision: str):
    """bfloat16 autocast on ``device`` for precision 'bf16', else a no-op context."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda if available else cpu; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# --------------------------------------------------------------------------- agent


def batch_rows(batch: Mapping, rows: slice) -> dict:
    """The rows ``rows`` of a batch whose values are tensors or dicts of tensors (image observations)."""
    return {k: batch_rows(v, rows) if isinstance(v, Mapping) else v[rows] for k, v in batch.items()}


class SAC:
    """Soft actor-critic over flat observations (obs_dim,) and actions in [-1, 1]^act_dim.

    `update(batch)` does one learning step (see the module docstring for the batch);
    `act(obs)` picks actions; `state_dict()` / `load_state_dict()` save and resume everything
    (networks, target critics, temperature, optimisers, update count).
    """

    def __init__(self, obs_dim: int, act_dim: int, config: SACConfig | None = None) -> None:
        if obs_dim < 1 or act_dim < 1:
            raise ValueError(f"obs_dim and act_dim must be >= 1, got {obs_dim}, {act_dim}")
        self.cfg = cfg = config if config is not None else SACConfig()
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.device = resolve_device(cfg.device)
        self.actor = TanhGaussianActor(obs_dim, act_dim, cfg.hidden_sizes, cfg.state_features).to(self.device)
        self.critic = CriticEnsemble(obs_dim, act_dim, cfg.hidden_sizes, cfg.num_critics, cfg.layer_norm,
                                     cfg.state_features).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(cfg.init_temperature), device=self.device, requires_grad=True)
        self.target_entropy = float(-act_dim if cfg.target_entropy is None else cfg.target_entropy)
        self.actor_opt = make_adam(self.actor.parameters(), cfg.lr, cfg.fused_adam)
        self.critic_opt = make_adam(self.critic.parameters(), cfg.lr, cfg.fused_adam)
        self.alpha_opt = make_adam([self.log_alpha], cfg.lr, cfg.fused_adam)
        self.num_updates = 0
        self.cql_alpha = float(cfg.cql_alpha)
        """conservative weight in use; the trainer may change it between phases (pre-training, online)"""
        self.bc_coef = 1.0
        """multiplier of the behaviour-cloning term; the trainer anneals it"""
        self.cql_rows = cfg.cql_rows
        """rows the conservative term uses (None: all); the trainer may lower it online"""
        self.fused = None
        """the compiled update (`policies.sac_fused.FusedUpdate`), built by the first `update` with ``compile``"""
        self.proposal: TanhGaussianActor | None = None
        """IBRL's frozen BC actor (`freeze_proposal`), None until then or without ``proposal``"""

    @property
    def alpha(self) -> float:
        """Current entropy temperature."""
        return float(self.log_alpha.detach().exp())

    # -- the learning step ----------------------------------------------------------------

    def critic_target_values(self, reward: torch.Tensor, next_obs: torch.Tensor, terminated: torch.Tensor,
                             horizon: torch.Tensor | None = None) -> torch.Tensor:
        """y = r + gamma^h * (1 - terminated) * (min_{subset} Q'(s', a') - alpha log pi(a'|s')), a' ~ pi(s'); (B,).
        h = ``horizon`` (n-step rows; None: 1). Without ``backup_entropy`` the entropy term is left out of the target."""
        with torch.no_grad():
            next_action, next_logp, _ = self.actor.sample(next_obs)
            q_next = self.critic_target(next_obs, next_action)  # (E, B)
            idx = slice(None)
            if self.cfg.critic_subsample is not None:  # RLPD: min over a random subset of the ensemble
                idx = torch.randperm(self.cfg.num_critics, device=self.device)[: self.cfg.critic_subsample]
            v_next = q_next[idx].min(dim=0).values
            if self.cfg.backup_entropy:
                v_next = v_next - self.log_alpha.exp() * next_logp
            if self.proposal is not None:  # IBRL: bootstrap from the better of the RL and the BC action
                q_bc = self.critic_target(next_obs, self.proposal(next_obs)[0].tanh())[idx].min(dim=0).values
                take_bc = q_bc > q_next[idx].min(dim=0).values
                self.proposal_share = take_bc.float().mean()  # logged by critic_step
                v_next = torch.where(take_bc, q_bc, v_next)
            discount = self.cfg.gamma if horizon is None else self.cfg.gamma ** horizon
            return reward + discount * (1.0 - terminated) * v_next

    def conservative_penalty(self, obs: torch.Tensor, next_obs: torch.Tensor, q_data: torch.Tensor,
                             mc_return: torch.Tensor | None) -> torch.Tensor:
        """CQL(H)'s penalty with Cal-QL's calibration, summed over ensemble members (a scalar).

        For each member: logsumexp over n uniform actions, n from pi(.|s) and n from pi(.|s')
        (all scored at s, importance-weighted by their densities, as CQL's reference code) minus
        Q(s, a_data). Cal-QL: the Q-values of the policy's actions enter as max(Q, mc_return),
        so the critic is not pushed below a Monte-Carlo estimate of the data policy's value.
        """
        cfg = self.cfg
        if self.cql_rows is not None and self.cql_rows < obs.shape[0]:  # a strided subset keeps the offline/online mix
            stride = obs.shape[0] // self.cql_rows
            rows = slice(0, stride * self.cql_rows, stride)
            obs, next_obs, q_data = obs[rows], next_obs[rows], q_data[:, rows]
            mc_return = None if mc_return is None else mc_return[rows]
        b, n, a_dim = obs.shape[0], cfg.cql_n_actions, self.act_dim
        rep_obs = obs.repeat_interleave(n, dim=0)
        with torch.no_grad():
            a_pi, logp_pi, _ = self.actor.sample(rep_obs)
            a_next, logp_next, _ = self.actor.sample(next_obs.repeat_interleave(n, dim=0))
        a_rand = torch.rand(b * n, a_dim, device=self.device) * 2.0 - 1.0
        q = self.critic(rep_obs.repeat(3, 1), torch.cat([a_rand, a_pi, a_next]))  # (E, 3 * b * n)
        q_rand, q_pi, q_next = q.view(-1, 3, b, n).unbind(1)  # each (E, b, n)
        if cfg.calql_bound and mc_return is not None:
            bound = mc_return.view(1, b, 1)
            q_pi, q_next = torch.maximum(q_pi, bound), torch.maximum(q_next, bound)
        log_uniform = a_dim * math.log(0.5)  # density of U[-1, 1]^A
        cat_q = torch.cat(
            [q_rand - log_uniform, q_pi - logp_pi.view(1, b, n), q_next - logp_next.view(1, b, n)], dim=-1
        )
        t = cfg.cql_temperature
        ood = torch.logsumexp(cat_q / t, dim=-1) * t  # (E, b)
        return (ood - q_data).mean(dim=1).sum()

    def encode(self, obs, augment: bool) -> torch.Tensor:
        """Observation -> the features actor and critics read; the identity for flat states.
        (`policies.image_sac.ImageSAC` overrides it with the pixel encoder.)"""
        return obs

    def autocast(self):
        """The context the forward passes of a learning step run in (bfloat16 autocast with precision 'bf16')."""
        return autocast_context(self.device, self.cfg.precision)

    def update(self, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """One learning step: utd_ratio critic steps, then one actor and one temperature step.

        Returns floats: critic_loss, actor_loss, alpha_loss, alpha, q_mean, bc_loss, entropy,
        cql_loss (the conservative penalty before weighting; 0 when cql_alpha is 0). With ``compile``
        the same step runs as one compiled graph (`policies.sac_fused`).
        """
        b = self._check_batch(batch)
        if self.cfg.compile:
            if self.fused is None:
                from policies.sac_fused import FusedUpdate

                self.fused = FusedUpdate(self)
            info = self.fused(b)
            self.num_updates += 1
            return info
        features, mb, info = self._critic_steps(b)
        info.update(self.actor_step(features, mb))  # actor and temperature on the last slice
        self.num_updates += 1
        return info

    def _critic_steps(self, b: Mapping) -> tuple[torch.Tensor, dict, dict[str, float]]:
        """utd_ratio critic steps, one per slice of the checked batch ``b`` (every member regressed onto the
        shared target). Returns the last slice's detached features, the slice and its statistics."""
        n = b["action"].shape[0] // self.cfg.utd_ratio
        for k in range(self.cfg.utd_ratio):
            mb = batch_rows(b, slice(k * n, (k + 1) * n))
            features, info = self.critic_step(mb)
        return features, mb, info

    def critic_update(self, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """The critics' part of `update` alone (utd_ratio steps, eager): the actor and the temperature stay
        as they are (`policies.pretrain.calql_pretrain` with ``critic_only``). Returns critic_loss, q_mean, cql_loss."""
        return self._critic_steps(self._check_batch(batch))[2]

    def critic_loss(self, mb: Mapping) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Every critic's regression onto the shared target (+ the conservative term when cql_alpha > 0),
        forward passes under `autocast`. Returns (loss, detached features of ``mb["obs"]``, detached
        statistics: critic_loss, q_mean, cql_loss and, with a proposal actor, proposal_share). With an
        encoder (ImageSAC) this loss is what trains it; the next observation is encoded without gradient."""
        cfg = self.cfg
        with self.autocast():  # forward passes only: backward and the optimiser step run outside
            obs = self.encode(mb["obs"], augment=True)
            with torch.no_grad():
                next_obs = self.encode(mb["next_obs"], augment=True)
            y = self.critic_target_values(mb["reward"], next_obs, mb["terminated"], mb.get("horizon")).float()
            q = self.critic(obs, mb["action"]).float()  # (E, B)
            loss = F.mse_loss(q, y.unsqueeze(0).expand_as(q)) * cfg.num_critics  # sum over members
            cql_loss = torch.zeros((), device=self.device)
            if self.cql_alpha > 0:
                cql_loss = self.conservative_penalty(obs, next_obs, q, mb.get("mc_return"))
                loss = loss + self.cql_alpha * cql_loss
        stats = {"critic_loss": loss.detach(), "q_mean": q.detach().mean(), "cql_loss": cql_loss.detach()}
        if self.proposal is not None:  # the share of target rows bootstrapped from the BC action
            stats["proposal_share"] = self.proposal_share
        return loss, obs.detach(), stats

    def actor_loss(self, features: torch.Tensor, mb: Mapping, bc_coef: float | torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """mean over rows of alpha log pi - mean_e Q_e(s, pi(s)) (RLPD's mean over members), with TD3+BC's
        scaling and the BC term on demo rows (times ``bc_coef``) when bc_weight > 0. Returns (loss, the
        detached log-probabilities the temperature reads, detached statistics: actor_loss, bc_loss, entropy).
        Gradients reach the critics' parameters unless the caller keeps them out (`actor_step`)."""
        cfg = self.cfg
        with self.autocast():
            action, logp, _ = self.actor.sample(features)
            action, logp = action.float(), logp.float()
            q_pi = self.critic(features, action).float().mean(dim=0)
        loss = (self.log_alpha.exp().detach() * logp - q_pi).mean()
        demo = mb.get("demo")
        bc_loss = torch.zeros((), device=self.device)
        if demo is not None:  # MSE to the demonstrated actions on demo rows (0 where a batch holds none)
            bc_loss = (((action - mb["action"]) ** 2).sum(-1) * demo).sum() / demo.sum().clamp_min(1.0)
        if cfg.bc_weight > 0:  # TD3+BC: scale the RL term by bc_weight / mean|Q| so BC's pull is scale-free
            loss = cfg.bc_weight / q_pi.abs().mean().detach().clamp_min(cfg.bc_q_floor) * loss + bc_coef * bc_loss
        return loss, logp.detach(), {"actor_loss": loss.detach(), "bc_loss": bc_loss.detach(), "entropy": -logp.detach().mean()}

    def alpha_loss(self, log_alpha: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
        """The temperature's loss: raises alpha when the entropy -logp is below its target, lowers it when above."""
        return -(log_alpha * (logp + self.target_entropy)).mean()

    def critic_step(self, mb: Mapping) -> tuple[torch.Tensor, dict[str, float]]:
        """One optimiser step of the critics on `critic_loss`, then Polyak averaging of their targets.
        Returns the detached features of ``mb["obs"]`` and the statistics as floats."""
        loss, features, stats = self.critic_loss(mb)
        self.critic_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.critic_opt.step()
        with torch.no_grad():  # Polyak averaging of the target critics (the ensemble: a few stacked tensors)
            for target, online in zip(self.critic_target.parameters(), self.critic.parameters()):
                target.lerp_(online, self.cfg.tau)
        return features, {k: float(v) for k, v in stats.items()}

    def actor_step(self, features: torch.Tensor, mb: Mapping) -> dict[str, float]:
        """One optimiser step of the actor on `actor_loss` (the critics' parameters get no gradient), then one
        of the temperature. ``features`` are detached: an encoder gets no gradient from the actor (DrQ)."""
        self.critic.requires_grad_(False)  # gradients flow through Q to the action only
        try:
            loss, logp, stats = self.actor_loss(features.detach(), mb, self.bc_coef)
        finally:
            self.critic.requires_grad_(True)
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_opt.step()
        alpha_loss = self.alpha_loss(self.log_alpha, logp)
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()
        return {**{k: float(v) for k, v in stats.items()}, "alpha_loss": alpha_loss.item(), "alpha": self.alpha}

    def bc_update(self, obs: torch.Tensor, action: torch.Tensor) -> float:
        """One behaviour-cloning step of the actor alone (the warm start): MSE of a reparameterised
        sample to the demonstrated action. Returns the loss."""
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        action = torch.as_tensor(action, dtype=torch.float32, device=self.device)
        sampled, _, _ = self.actor.sample(obs)
        loss = ((sampled - action) ** 2).sum(-1).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.actor_opt.step()
        return loss.item()

    def _check_batch(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Move the batch to the device as float32 and check keys and shapes, with errors that say the fix."""
        if "done" in batch and "terminated" not in batch:
            raise KeyError(
                "batch has 'done' but no 'terminated': pass terminated (1 only at true terminals); "
                "time-limit truncations must bootstrap, so a generic done flag is not accepted"
            )
        missing = [k for k in BATCH_KEYS if k not in batch]
        if missing:
            raise KeyError(f"batch lacks {missing}; it needs {list(BATCH_KEYS)} (+ optional 'demo')")
        b = {k: torch.as_tensor(batch[k], dtype=torch.float32, device=self.device) for k in (*BATCH_KEYS, *OPTIONAL_KEYS) if k in batch}
        n = b["obs"].shape[0]
        if n % self.cfg.utd_ratio:
            raise ValueError(f"batch of {n} rows does not split into utd_ratio={self.cfg.utd_ratio} equal slices")
        if b["obs"].shape != (n, self.obs_dim) or b["next_obs"].shape != (n, self.obs_dim):
            raise ValueError(f"obs/next_obs must be ({n}, {self.obs_dim}), got {tuple(b['obs'].shape)}, {tuple(b['next_obs'].shape)}")
        if b["action"].shape != (n, self.act_dim):
            raise ValueError(f"action must be ({n}, {self.act_dim}), got {tuple(b['action'].shape)}")
        for k in ("reward", "terminated", *OPTIONAL_KEYS):
            if k in b and b[k].shape != (n,):
                raise ValueError(f"{k} must be ({n},), got {tuple(b[k].shape)}")
        if self.cfg.bc_weight > 0 and "demo" not in b:
            raise KeyError("bc_weight > 0 needs a 'demo' mask in the batch: sample through MixedReplay, or set bc_weight=0")
        return b

    # -- acting -----------------------------------------------------------------------------

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """obs float (S,) or (N, S) -> action float32 (A,) or (N, A) in [-1, 1]; deterministic = tanh(mean)."""
        if isinstance(obs, Mapping):
            raise TypeError("act() takes the flat observation array, e.g. obs['state'], not the observation dict")
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        if x.shape[-1] != self.obs_dim or x.ndim not in (1, 2):
            raise ValueError(f"obs must have shape ({self.obs_dim},) or (N, {self.obs_dim}), got {tuple(x.shape)}")
        flat = x.reshape(-1, self.obs_dim)
        action, _, mean_action = self.actor.sample(flat)
        chosen = mean_action if deterministic else action
        if self.proposal is not None:  # IBRL: the BC actor's action where the critics value it higher
            chosen = self.pick_proposal(flat, chosen)
        out = chosen.cpu().numpy().astype(np.float32)
        return out.reshape(*x.shape[:-1], self.act_dim)

    # -- the residual policy -------------------------------------------------------------------

    def make_residual(self) -> None:
        """Freeze the actor as the base of a `ResidualActor` with ``residual_scale`` (after the BC warm start);
        the actor's optimiser now holds the correction's parameters only.

        The composite action lives in a box of width 2 * scale around the base action, whose entropy is at
        most |A| log(2 scale) (uniform): below scale = e^-1 / 2 that is under SAC's default target -|A|, which
        the temperature would chase without end. The default target becomes min(-|A|, |A| (log(2 scale) - 0.5)):
        half a nat per dimension below uniform on the box (scale 0.2: -5.7, a spread of about 0.06 per
        dimension, against SAC's 0.09 at -|A|). A configured ``target_entropy`` is kept as given."""
        if self.cfg.residual_scale is None:
            raise ValueError("make_residual needs SACConfig.residual_scale (the correction's bound)")
        if isinstance(self.actor, ResidualActor):
            raise ValueError("the actor is already residual: make_residual freezes a plain actor once")
        scale = self.cfg.residual_scale
        self.actor = ResidualActor(copy.deepcopy(self.actor), self.act_dim, self.cfg.hidden_sizes, scale).to(self.device)
        if self.cfg.target_entropy is None:  # -|A| unless the box of width 2 * scale cannot hold it (docstring)
            self.target_entropy = min(-float(self.act_dim), self.act_dim * (math.log(2.0 * scale) - 0.5))
        self.actor_opt = make_adam([p for p in self.actor.parameters() if p.requires_grad], self.cfg.lr,
                                   self.cfg.fused_adam)

    # -- the proposal actor (IBRL) -------------------------------------------------------------

    def freeze_proposal(self) -> None:
        """Freeze a copy of the actor as IBRL's proposal policy (after the BC warm start)."""
        self.proposal = copy.deepcopy(self.actor).requires_grad_(False).eval()

    @torch.no_grad()
    def pick_proposal(self, features: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Per row, ``action`` or the proposal's deterministic action, whichever min_e Q_e values higher."""
        bc_action = self.proposal(features)[0].tanh()
        q = self.critic(features.repeat(2, 1), torch.cat([action, bc_action])).min(dim=0).values
        take_bc = (q[features.shape[0]:] > q[: features.shape[0]]).unsqueeze(-1)
        return torch.where(take_bc, bc_action, action)

    # -- save / resume ----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to resume: config, dims, networks, target, temperature, optimisers, update count."""
        return {
            "config": asdict(self.cfg),
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "alpha_opt": self.alpha_opt.state_dict(),
            "num_updates": self.num_updates,
            "cql_alpha": self.cql_alpha,
            "bc_coef": self.bc_coef,
            "cql_rows": self.cql_rows,
            "proposal": None if self.proposal is None else self.proposal.state_dict(),
            "residual": isinstance(self.actor, ResidualActor),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore from `state_dict()`; the dims and network shapes must match this agent's."""
        if (state["obs_dim"], state["act_dim"]) != (self.obs_dim, self.act_dim):
            raise ValueError(
                f"checkpoint is for obs_dim={state['obs_dim']}, act_dim={state['act_dim']}, this agent has "
                f"{self.obs_dim}, {self.act_dim}: build it with SAC.from_state_dict(state) instead"
            )
        if state.get("residual") and not isinstance(self.actor, ResidualActor):
            self.make_residual()  # the checkpoint's actor is a frozen base plus a correction
        elif not state.get("residual") and isinstance(self.actor, ResidualActor):
            raise ValueError("the checkpoint holds a plain actor and this agent a residual one: load it into an agent "
                             "built without make_residual (SAC.from_state_dict(state))")
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.alpha_opt.load_state_dict(state["alpha_opt"])
        self.num_updates = int(state["num_updates"])
        self.cql_alpha = float(state.get("cql_alpha", self.cfg.cql_alpha))
        self.bc_coef = float(state.get("bc_coef", 1.0))
        self.cql_rows = state.get("cql_rows", self.cfg.cql_rows)
        if state.get("proposal") is not None:
            self.freeze_proposal()
            self.proposal.load_state_dict(state["proposal"])

    @classmethod
    def from_state_dict(cls, state: Mapping, device: str | None = None) -> "SAC":
        """Build an agent with the checkpoint's config (optionally on another device) and load it."""
        if not isinstance(state, Mapping) or not {"config", "obs_dim", "act_dim", "actor"} <= set(state):
            raise ValueError("not a SAC checkpoint (needs config, obs_dim, act_dim, actor): pass what SAC.state_dict() saved")
        cfg = dict(state["config"])
        if device is not None:
            cfg["device"] = device
        agent = cls(state["obs_dim"], state["act_dim"], SACConfig(**cfg))
        agent.load_state_dict(state)
        return agent
