"""`SAC.update` as one compiled graph (``SACConfig.compile``): the same losses, the same Adam, fewer kernels.

The eager update runs about 2,000 small kernels per step (layer norms, activations, Adam's per-tensor
arithmetic, autograd's bookkeeping), each paying the dispatcher's fixed cost; at batch 256 on a CPU
that overhead rivals the matrix products (benchmarks/sac_speed.py). Here the whole step, critic
slices, actor and temperature, is one function that torch.compile turns into one graph: gradients by
`torch.func.grad_and_value` over the agent's own loss methods (`SAC.critic_loss`, `SAC.actor_loss`,
`SAC.alpha_loss`, so the two paths cannot drift apart), Adam written out over the optimisers' own
state tensors, and the target critics' Polyak averaging. Inductor fuses the element-wise work
around the matrix products into a few loops.

The networks' parameters, the optimisers' state (step, exp_avg, exp_avg_sq) and the target critics
are updated in place, so `SAC.state_dict`, a resume, and any eager step after it (the BC warm start,
a later `compile=False` run) see exactly what the eager path would have left.

The first call compiles (tens of seconds on 2 CPU cores; inductor caches the result on disk, so a
later process starts faster); a change of batch layout, of ``cql_alpha``'s sign, of ``cql_rows``, of
the proposal actor or of the actor's kind (`SAC.make_residual`) compiles once more. ``bc_coef`` enters
as a tensor, so its annealing never does.
A call whose full signature (`FusedUpdate._signature`) has run before skips dynamo's guard checks.
"""

from __future__ import annotations

import contextlib
import logging
import time

import torch
from torch import nn
from torch.func import functional_call, grad_and_value

__all__ = ["FusedUpdate"]
log = logging.getLogger(__name__)


class _Losses(nn.Module):
    """Holds the agent's actor and critics as submodules, so `functional_call` can swap in the
    parameters being differentiated while the agent's loss methods call its networks as usual."""

    def __init__(self, agent) -> None:
        super().__init__()
        self.actor, self.critic = agent.actor, agent.critic
        object.__setattr__(self, "agent", agent)  # a plain attribute: not a submodule

    def forward(self, which: str, mb: dict, features: torch.Tensor | None, bc_coef: torch.Tensor):
        if which == "critic":
            loss, features, stats = self.agent.critic_loss(mb)
            return loss, (features, stats)
        loss, logp, stats = self.agent.actor_loss(features, mb, bc_coef)
        return loss, (logp, stats)


def _adam_state(opt: torch.optim.Adam, params: list[nn.Parameter]) -> list[tuple[torch.Tensor, ...]]:
    """(step, exp_avg, exp_avg_sq) per parameter: the optimiser's own state tensors, created as its first
    step would create them where it has taken none, so eager and compiled steps share one state."""
    out = []
    for p in params:
        st = opt.state[p]
        if not st:
            st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        out.append((st["step"], st["exp_avg"], st["exp_avg_sq"]))
    return out


def _adam_(params: list[torch.Tensor], grads: list[torch.Tensor], state: list[tuple[torch.Tensor, ...]],
           hyper: tuple[float, float, float, float], scale: torch.Tensor) -> None:
    """torch.optim.Adam's step (no weight decay, no amsgrad), in place, written out for the compiler.

    ``scale`` holds this step's bias corrections, (lr / (1 - beta1^t), 1 / sqrt(1 - beta2^t)), computed
    once outside the graph (`_bias_scale`): computed inside, inductor inlined the two powers into every
    parameter's loop, two scalar ``pow`` calls per 8 elements (the critic's Adam kernel took 0.91 ms per
    step that way, 0.56 ms with them computed once; one AMD EPYC thread)."""
    _, beta1, beta2, eps = hyper
    for p, g, (step, m, v) in zip(params, grads, state):
        step.add_(1.0)
        m.lerp_(g, 1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        p.sub_(m / (v.sqrt() * scale[1] + eps) * scale[0])


def _bias_scale(opt: torch.optim.Adam, state: list[tuple[torch.Tensor, ...]], steps: int,
                device: torch.device | str) -> torch.Tensor:
    """(steps, 2) on ``device``: row k holds `_adam_`'s ``scale`` for the k-th of the next ``steps`` steps of
    ``opt``. Every parameter of an optimiser steps together, so the first parameter's count is the count."""
    lr, beta1, beta2, _ = _hyper(opt)
    t = [float(state[0][0]) + k for k in range(1, steps + 1)]
    return torch.tensor([[lr / (1.0 - beta1 ** s), (1.0 - beta2 ** s) ** -0.5] for s in t], device=device)


def _hyper(opt: torch.optim.Adam) -> tuple[float, float, float, float]:
    group = opt.param_groups[0]
    if group.get("weight_decay") or group.get("amsgrad") or group.get("maximize"):
        raise ValueError("the compiled SAC update writes out plain Adam: weight_decay, amsgrad and maximize must be off")
    return float(group["lr"]), float(group["betas"][0]), float(group["betas"][1]), float(group["eps"])


def _step(agent, losses: _Losses, batch: dict, bc_coef: torch.Tensor, critic_params: list[torch.Tensor],
          critic_state: list, critic_scale: torch.Tensor, target_params: list[torch.Tensor],
          actor_params: list[torch.Tensor], actor_state: list, actor_scale: torch.Tensor, log_alpha: torch.Tensor,
          alpha_state: list, alpha_scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """One whole update (the function torch.compile compiles); returns the statistics as tensors."""
    cfg = agent.cfg
    critic_names = [f"critic.{n}" for n, _ in agent.critic.named_parameters()]
    actor_names = [f"actor.{n}" for n, p in agent.actor.named_parameters() if p.requires_grad]  # a residual's base: frozen
    n = batch["action"].shape[0] // cfg.utd_ratio
    for k in range(cfg.utd_ratio):
        mb = {key: value[k * n:(k + 1) * n] for key, value in batch.items()}  # flat states: every value a tensor

        def critic_objective(params: dict) -> tuple:
            return functional_call(losses, params, ("critic", mb, None, bc_coef))

        grads, (_, (features, stats)) = grad_and_value(critic_objective, has_aux=True)(
            dict(zip(critic_names, critic_params)))
        _adam_(critic_params, [grads[name] for name in critic_names], critic_state, _hyper(agent.critic_opt),
               critic_scale[k])
        for target, online in zip(target_params, critic_params):
            target.lerp_(online, cfg.tau)

    def actor_objective(params: dict) -> tuple:
        return functional_call(losses, params, ("actor", mb, features, bc_coef))

    grads, (_, (logp, actor_stats)) = grad_and_value(actor_objective, has_aux=True)(dict(zip(actor_names, actor_params)))
    _adam_(actor_params, [grads[name] for name in actor_names], actor_state, _hyper(agent.actor_opt), actor_scale[0])
    alpha_grad, alpha_loss = grad_and_value(agent.alpha_loss)(log_alpha, logp)
    _adam_([log_alpha], [alpha_grad], alpha_state, _hyper(agent.alpha_opt), alpha_scale[0])
    return {**stats, **actor_stats, "alpha_loss": alpha_loss, "alpha": log_alpha.exp()}


class FusedUpdate:
    """`SAC.update` through the compiled step, built on first use; ``agent.fused(batch)`` -> floats."""

    def __init__(self, agent) -> None:
        self.agent, self.losses = agent, _Losses(agent)
        # cpp_wrapper: the graph's kernels called from generated C++ rather than Python (on the 2-core
        # machine 79 against 66 updates/s, benchmarks/results/sac_speed.md). fallback_random: the actor's
        # noise drawn by torch's own generator (the eager path's stream) instead of inductor's per-element
        # Philox loop, which took 120 us for 256 x 4 draws; 83 -> 86 updates/s on one AMD EPYC thread.
        self.step = torch.compile(_step, fullgraph=True, dynamic=False, options={"cpp_wrapper": True, "fallback_random": True})
        self.compiled: set[tuple] = set()
        """the settings a graph was compiled for (a new one logs its compile time)"""
        self.seen: set[tuple] = set()
        """the full signatures (`_signature`) of the calls that have run with dynamo's guards checked"""

    @staticmethod
    def _signature(agent, batch: dict[str, torch.Tensor]) -> tuple:
        """Everything the compiled step reads as a constant, or whose layout it was compiled for: the agent's
        settings (its config, the conservative weight and rows, the proposal actor), every batch tensor's
        name, shape, dtype and device, the thread count, and the parameters' and optimiser states'
        identities (a `load_state_dict` of the optimisers swaps their state tensors). A call whose
        signature has run before passes the guards dynamo would check, so it skips them
        (`torch.compiler.set_stance(skip_guard_eval_unsafe=True)`: 0.4-0.6 ms of a ~12 ms step on one
        AMD EPYC thread); any other call has them checked, and recompiles where they fail."""
        return (repr(agent.cfg), agent.cql_alpha, agent.cql_rows, id(agent.proposal), id(agent.actor), id(agent.critic),
                id(agent.critic_target), id(agent.log_alpha), torch.get_num_threads(),
                tuple((k, v.shape, v.dtype, v.device) for k, v in batch.items()),
                tuple(id(s) for opt in (agent.critic_opt, agent.actor_opt, agent.alpha_opt) for s in opt.state.values()))

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        agent = self.agent
        critic, actor = list(agent.critic.parameters()), [p for p in agent.actor.parameters() if p.requires_grad]
        key = (agent.cql_alpha > 0, agent.cql_rows, agent.proposal is not None, type(agent.actor).__name__,
               tuple(sorted(batch)))
        if key not in self.compiled:  # a new graph: say why this update takes a while
            log.info("compiling the SAC update as one graph (agent.compile; about a minute on 2 CPU cores, once per setting)")
            started = time.perf_counter()
        critic_state, actor_state = _adam_state(agent.critic_opt, critic), _adam_state(agent.actor_opt, actor)
        alpha_state = _adam_state(agent.alpha_opt, [agent.log_alpha])
        device = agent.device
        signature = self._signature(agent, batch)
        stance = (torch.compiler.set_stance("default", skip_guard_eval_unsafe=True) if signature in self.seen
                  else contextlib.nullcontext())
        with torch.no_grad(), stance:  # gradients come from grad_and_value alone; nothing records an outer graph
            stats = self.step(
                agent, self.losses, batch, torch.tensor(float(agent.bc_coef), device=device),
                critic, critic_state, _bias_scale(agent.critic_opt, critic_state, agent.cfg.utd_ratio, device),
                list(agent.critic_target.parameters()),
                actor, actor_state, _bias_scale(agent.actor_opt, actor_state, 1, device),
                agent.log_alpha, alpha_state, _bias_scale(agent.alpha_opt, alpha_state, 1, device))
        self.seen.add(signature)
        if key not in self.compiled:
            self.compiled.add(key)
            log.info("compiled in %.0f s", time.perf_counter() - started)
        return {k: float(v) for k, v in stats.items()}
