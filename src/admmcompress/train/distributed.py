"""Data-parallel runs across processes and machines, launched by ``torchrun``.

Every process ("rank") holds the whole model, the whole data set in memory and the same
seeded data generator, so all ranks draw the same global batches and the same augmentation.
Each rank computes the loss of its contiguous slice of every global batch, weighted by the
slice's share of the batch; after one coalesced all-reduce of the gradients (a sum, then
divided by the number of ranks) every rank holds the gradient of the whole global batch's
mean loss. STE shadow weights take their gradient from the reduced weight gradients. For a
model without BatchNorm the run follows a one-process run with the same ``batch_size`` up to
floating-point summation order; with BatchNorm, batch statistics are per slice (as with
PyTorch's DDP), and the running estimates are taken from rank 0 after every epoch.

ADMM's Z- and U-steps are computed from the (identical) weights on every rank; after each
update the ranks compare checksums of their ADMM state and stop the run if they differ. A
non-finite loss on any rank stops every rank at the same batch. Only rank 0 writes
checkpoints, models and reports, and the teacher of a distilling run is sent from rank 0;
on several machines, ``--resume`` needs the run folder on a shared filesystem.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous rows of a global batch of ``n``."""
        return slice(n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


SINGLE = DistContext()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(use_cuda: bool) -> DistContext:
    """Join the process group torchrun describes (gloo on CPU, NCCL on GPUs), or run alone."""
    if not launched_by_torchrun():
        return SINGLE
    ctx = DistContext(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return ctx


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_module(module: nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's parameters and buffers."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def broadcast_buffers(module: nn.Module, ctx: DistContext) -> None:
    if not ctx.enabled:
        return
    for t in module.buffers():
        dist.broadcast(t.data, src=0)


def all_reduce_gradients(params: Iterable[Tensor], ctx: DistContext, bad: bool = False) -> bool:
    """Average the gradients over ranks in one coalesced all-reduce; True if any rank is bad.

    Only tensors that have a gradient take part (every rank runs the same forward, so the
    set is the same on all of them). ``bad`` rides along in the same buffer, so that a
    non-finite loss on one rank stops every rank at the same step instead of leaving the
    others waiting in the next collective.
    """
    if not ctx.enabled:
        return bad
    live = [p for p in params if p.requires_grad and p.grad is not None]
    flag = torch.ones(1, device=live[0].grad.device if live else "cpu") * float(bad)
    flat = torch.cat(
        [*(p.grad.reshape(-1) for p in live), flag.to(live[0].grad.dtype)] if live else [flag]
    )
    dist.all_reduce(flat)
    offset = 0
    for p in live:
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad)).div_(ctx.world_size)
        offset += n
    return bool(flat[-1] > 0)


def all_reduce_sum(values: Tensor, ctx: DistContext) -> Tensor:
    if ctx.enabled:
        dist.all_reduce(values)
    return values


def gather_objects(obj: object, ctx: DistContext) -> list[object]:
    """``obj`` from every rank, in rank order (``[obj]`` when running alone)."""
    if not ctx.enabled:
        return [obj]
    out: list[object] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, ctx: DistContext) -> T:
    """Rank 0's ``obj`` on every rank (picklable objects only)."""
    if not ctx.enabled:
        return obj
    box: list[object] = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


def check_identical(state: Mapping[str, Tensor], ctx: DistContext, what: str) -> None:
    """Raise if ``state`` (e.g. ADMM's Z and U) differs between ranks."""
    if not ctx.enabled:
        return
    sums = torch.stack(
        [t.detach().double().sum() for t in state.values()]
        + [t.detach().double().abs().sum() for t in state.values()]
    )
    gathered = [torch.empty_like(sums) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, sums)
    for r, other in enumerate(gathered):
        if not torch.equal(other, gathered[0]):
            raise RuntimeError(f"{what} differs between rank 0 and rank {r}: the ranks diverged")
