"""Data-parallel training under torchrun: one process per rank, gradients averaged before each optimizer step.

    python -m torch.distributed.run --standalone --nproc-per-node 2 -m stages.train_memory
(a training stage relaunches itself so when `base.processes` is 2: stages.common.run_ranks)
Every rank builds the same networks from the same seed and draws the same full batch from `step_rngs`; `shard`
keeps this rank's contiguous slice (batch B -> B / world each), and a pre-step hook on every optimizer averages the
gradients over the ranks. For a loss that is a mean over the batch, N ranks with B / N each then take the step one
process takes with batch B. BatchNorm statistics stay per rank (as in torch's DDP without SyncBatchNorm, which
has no CPU path). Rank 0 alone writes checkpoints, loss logs and reports: the others leave after the last step.

Backend: gloo for CPU tensors, nccl for CUDA ones (each rank on `cuda:<LOCAL_RANK>`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def leader(self) -> bool:
        """The rank that writes (rank 0)."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's rank and the number of ranks (0 of 1 outside a process group)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def launched_ranks() -> int:
    """WORLD_SIZE as torchrun sets it (1 when the stage runs as a plain `python -m`)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join_process_group() -> World:
    """Join torchrun's process group when it launched more than one rank (idempotent); returns the world.

    One group serves both devices: gloo for CPU tensors, nccl for CUDA ones (each rank on `cuda:<LOCAL_RANK>`,
    which `pick_device` returns under torchrun).
    """
    if launched_ranks() <= 1 or (dist.is_available() and dist.is_initialized()):
        return world()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")
    return world()


def leave_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(batch: T, w: World | None = None) -> T:
    """This rank's contiguous slice along dim 0 of every tensor / array in `batch` (nested tuples, lists, dicts,
    dataclasses; scalars and None pass through).

    The batch size must divide by the number of ranks: uneven shards would weigh samples unequally in the
    averaged gradient.
    """
    w = w or world()
    if not w.parallel:
        return batch

    def cut(x: Any) -> Any:
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return dataclasses.replace(x, **{f.name: cut(getattr(x, f.name)) for f in dataclasses.fields(x)
                                             if f.init})
        if isinstance(x, Mapping):
            return type(x)({k: cut(v) for k, v in x.items()})
        if isinstance(x, tuple | list):
            return type(x)(cut(v) for v in x)
        if hasattr(x, "shape") and len(x.shape) > 0:
            if x.shape[0] % w.size:
                raise ValueError(f"a batch of {x.shape[0]} does not split over {w.size} ranks: make the batch size "
                                 f"a multiple of base.processes")
            n = x.shape[0] // w.size
            return x[w.rank * n:(w.rank + 1) * n]
        return x

    return cut(batch)


def average_gradients(parameters: Iterable[torch.nn.Parameter], w: World | None = None) -> None:
    """All-reduce the mean of the gradients over the ranks, in one flat buffer (a parameter without a gradient on
    this rank counts as zeros, so every rank reduces the same layout)."""
    w = w or world()
    params = [p for p in parameters if p.requires_grad]
    if not w.parallel or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= w.size
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def synchronise_optimizers(optimizers: Mapping[str, torch.optim.Optimizer]) -> list[Any]:
    """Average gradients over the ranks before every `step()` of these optimizers; returns the hook handles."""
    if not world().parallel:
        return []

    def before_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        average_gradients(p for group in optimizer.param_groups for p in group["params"])

    return [opt.register_step_pre_hook(before_step) for opt in optimizers.values()]


def mean_over_ranks(values: Mapping[str, float]) -> dict[str, float]:
    """The mean of each logged number over the ranks (every rank passes the same keys in the same order)."""
    w = world()
    if not w.parallel or not values:
        return dict(values)
    t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) / w.size for k, v in zip(values, t.tolist(), strict=True)}


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on one (a wall-clock guard must stop all ranks at the same step)."""
    if not world().parallel:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
