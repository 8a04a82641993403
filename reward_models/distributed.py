"""Data-parallel training of the reward models over several processes (``torchrun``).

    torchrun --nproc_per_node=2 -m reward_models.train reward=step_prm data=... out=... num_threads=1

:func:`launch` starts the process group from torchrun's environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): gloo on the CPU, NCCL for CUDA tensors (with a GPU
the backend is ``cpu:gloo,cuda:nccl``, so CPU-side collectives still work). Without those variables,
or with ``WORLD_SIZE=1``, nothing starts and every helper here is a no-op: one process trains exactly
as before.

How a trainer splits the work, the way ``DistributedSampler`` does: every rank draws the SAME global
batch from the same seeded sampler (so the sampler's state in ``trainer_state.pt`` is every rank's),
augments it with the same generator, and keeps only its share, the episode slots (or frames)
``rank, rank + world, ...`` (:func:`shard`). Each rank encodes and back-propagates its share only.
Its mean loss is weighted by ``world * n_local / n_global`` (:func:`share_weight`) so that the mean
that DistributedDataParallel's all-reduce takes of the gradients equals the gradient of the mean
over the whole batch: N processes at ``batch_episodes=B`` take the same step as one process at B,
up to float32 summation order (tests/test_distributed_rm.py measures it). Only rank 0 writes logs,
TensorBoard, tqdm, ``trainer_state.pt`` and the checkpoint; every rank reads ``trainer_state.pt``
on resume. The network is wrapped in DDP through :class:`_Call` and saved unwrapped, so checkpoints
are those of one process.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: ``rank`` of ``world`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes logs, TensorBoard and checkpoints."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        """More than one process trains."""
        return self.world > 1


def current() -> Ranks:
    """This process's :class:`Ranks` (rank 0 of 1 when no process group was started)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def is_main() -> bool:
    """True on rank 0 and in a single process."""
    return current().main


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if current().parallel:
        dist.barrier()


def _env_world() -> int:
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"WORLD_SIZE={raw!r} is not a number: launch with torchrun --nproc_per_node=N") from None


@contextlib.contextmanager
def launch(timeout_minutes: float = 30.0) -> Iterator[Ranks]:
    """Start the process group when torchrun launched several processes, stop it on exit.

    Sets the rank's GPU (``LOCAL_RANK``) when CUDA is present, and keeps the other ranks' logging
    at WARNING so that rank 0 alone reports progress. Yields this process's :class:`Ranks`.
    """
    if _env_world() <= 1 or (dist.is_available() and dist.is_initialized()):
        yield current()
        return
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 but this torch build has no torch.distributed: train in one process")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPU(s): "
                             "use --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(local_rank)  # torch.device("cuda") is now this rank's own GPU
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    ranks = current()
    if not ranks.main:
        logging.getLogger().setLevel(logging.WARNING)
    log.info("data-parallel training: %d processes, backend %s", ranks.world, backend)
    try:
        yield ranks
    finally:
        dist.destroy_process_group()


class _Call(torch.nn.Module):
    """Runs ``fn(net, *args)`` as its forward, so DDP sees every network method a trainer calls
    (``encode_states``, ``hop_logp``, ...) as one forward pass and syncs their gradients."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, fn: Callable, *args, **kwargs):
        return fn(self.net, *args, **kwargs)


def data_parallel(net: torch.nn.Module) -> torch.nn.Module:
    """``wrapped(fn, *args)`` -> ``fn(net, *args)``, under DistributedDataParallel when several
    processes train (gradients averaged over ranks in backward), plainly in one process.

    BatchNorm layers are made to normalise over the global batch first (:func:`sync_batchnorm`).
    ``find_unused_parameters``: a rank's share may leave a parameter unused in a step (the learned
    no-goal anchor when every goal of its share is present); DDP then counts its gradient as zero there.
    """
    if not current().parallel:
        return _Call(net)
    call = _Call(sync_batchnorm(net))
    from torch.nn.parallel import DistributedDataParallel

    device = next(net.parameters()).device
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(call, device_ids=ids, find_unused_parameters=True)


class CrossRankBatchNorm(torch.nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of the whole global batch, over every rank, on
    any device: each rank's per-channel sums (float64) are all-reduced with gradient
    (``torch.distributed.nn.functional.all_reduce``), so N processes normalise exactly as one process
    would on the whole batch. torch's SyncBatchNorm does the same on GPUs only. Evaluation uses the
    running statistics like any BatchNorm (and they are updated from the global batch). Any input
    of 2 or more dims (it stands in for BatchNorm1d/2d/3d alike)."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-d input (N, C, ...), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and current().parallel):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        x64 = x.double()
        count = torch.full((1,), x.numel() / c, dtype=torch.float64, device=x.device)
        total = all_reduce(torch.cat([x64.sum(dims), (x64 * x64).sum(dims), count]))
        n = total[-1]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp(min=0)
        shape = (1, c, *[1] * (x.dim() - 2))
        y = ((x64 - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)).to(x.dtype)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
                unbiased = var * n / (n - 1).clamp(min=1)
                self.running_var.mul_(1 - m).add_(m * unbiased.to(self.running_var.dtype))
        return y


BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)


def sync_batchnorm(net: torch.nn.Module) -> torch.nn.Module:
    """Every BatchNorm of ``net`` normalised over the global batch when several processes train:
    torch's SyncBatchNorm on GPUs, :class:`CrossRankBatchNorm` elsewhere (gloo on CPUs). Replaces the
    modules in place, keeping their Parameter objects and buffers (an optimiser built before still
    holds them, and the state dict keeps its keys). One process: ``net`` unchanged."""
    if not current().parallel:
        return net
    if next(net.parameters()).device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, BATCH_NORMS) and not isinstance(child, CrossRankBatchNorm):
                new = CrossRankBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                         child.track_running_stats)
                if child.affine:
                    new.weight, new.bias = child.weight, child.bias
                for buf in ("running_mean", "running_var", "num_batches_tracked"):
                    if getattr(child, buf, None) is not None:
                        setattr(new, buf, getattr(child, buf))
                new.train(child.training)
                setattr(module, name, new)
    return net


def shard(n: int, ranks: Ranks | None = None) -> np.ndarray:
    """This rank's slots of a global batch of ``n``: int (n_local,) = ``rank, rank + world, ...``."""
    ranks = ranks or current()
    if n < ranks.world:
        raise ValueError(f"a global batch of {n} cannot be split over {ranks.world} processes: raise the batch "
                         f"(batch_episodes / reward.batch_episodes / reward.batch_size) to at least {ranks.world}")
    return np.arange(ranks.rank, n, ranks.world)


def block(n: int, ranks: Ranks | None = None) -> slice:
    """This rank's contiguous block of a global batch of ``n`` rows (for :func:`gather_rows`, which
    puts the blocks back in order); ``n`` must split evenly."""
    ranks = ranks or current()
    if n % ranks.world:
        raise ValueError(f"a global batch of {n} rows cannot be split evenly over {ranks.world} processes: "
                         f"choose a batch size that is a multiple of {ranks.world}")
    size = n // ranks.world
    return slice(ranks.rank * size, (ranks.rank + 1) * size)


class _GatherRows(torch.autograd.Function):
    """All ranks' equal blocks concatenated in rank order; backward sums the gradient of every
    rank's loss and hands each rank its own block (all-reduce, so gloo can run it too)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        rank = dist.get_rank()
        return grad[rank * ctx.rows:(rank + 1) * ctx.rows]


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows of every rank (each its :func:`block`) in global order, differentiable; ``x`` in one process.

    For losses over the whole batch (contrastive negatives): every rank computes the same loss on the
    gathered rows; the backward sum over ranks times DDP's mean over ranks is the gradient of that loss."""
    if not current().parallel:
        return x
    return _GatherRows.apply(x)


def share_weight(n_local: int, n_global: int) -> float:
    """Factor on a rank's mean loss so that DDP's mean of the ranks' gradients is the gradient of the
    mean over all ``n_global`` rows (1.0 in one process)."""
    return current().world * n_local / n_global


def global_means(values: dict[str, tuple[float, int]]) -> dict[str, float]:
    """``{name: (local mean, local count)}`` -> the means over every rank's rows (one all-reduce);
    in one process the local means. For logging only (no gradient)."""
    if not current().parallel:
        return {k: float(v) for k, (v, _) in values.items()}
    t = torch.tensor([[float(v) * n, float(n)] for v, n in values.values()], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(s / c) if c else float("nan") for k, (s, c) in zip(values, t.tolist())}


class _NoWriter:
    """Stands in for a SummaryWriter on ranks other than 0."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def summary_writer(log_dir: str):
    """A TensorBoard SummaryWriter on rank 0, a writer that writes nothing on the other ranks."""
    if not is_main():
        return _NoWriter()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir)


def save_main(obj, path) -> None:
    """Write a trainer state on rank 0 only: ``torch.save`` bytes with a sha256 trailer, written durably
    (:mod:`episodes.durable`: temp file, fsync, rename), so a kill at any instant leaves either the old
    state or the new one, and :func:`load_state` detects a file damaged after that."""
    if not is_main():
        return
    import io

    from episodes.durable import write_checksummed

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_checksummed(path, buf.getvalue())


def load_state(path, map_location=None):
    """Read a trainer state written by :func:`save_main` (checksum verified) or a plain ``torch.save``
    file. A damaged file is refused with the fix (delete it to start over).

    Loaded with ``weights_only=True``: tensors, numbers, strings and containers only (the samplers'
    generators travel as their ``bit_generator.state`` dicts), so no file runs code when read."""
    import io

    from episodes.durable import ChecksumError, read_checksummed

    try:
        body, _ = read_checksummed(path)
    except ChecksumError as err:
        raise ValueError(f"the trainer state {err}") from None
    try:
        return torch.load(io.BytesIO(body), map_location=map_location, weights_only=True)
    except Exception as err:  # a truncated file, or one holding objects (an older Stepwise pickled its generators)
        raise ValueError(f"{path} cannot be read as a trainer state ({str(err).splitlines()[0]}): delete it to train "
                         "from the start (a state of an older Stepwise resumes only with that version)") from err
