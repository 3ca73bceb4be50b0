"""Epoch-level training and evaluation over a batch source.

Plain values in (a torch optimizer, augmentation and distillation settings), numbers out:
nothing here knows the config file.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..data import Augment, BatchSource, num_batches
from .distill import Distillation
from .distributed import SINGLE, DistContext, all_reduce_gradients, all_reduce_sum


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: continuing would only corrupt the weights."""


@dataclass(frozen=True)
class EpochStats:
    loss: float  # mean task loss (cross entropy) over the epoch
    penalty: float  # mean ADMM penalty over the epoch (0 outside the ADMM phase)
    accuracy: float  # training accuracy, 0..1
    seconds: float


def train_epoch(
    model: nn.Module,
    split: BatchSource,
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int,
    generator: torch.Generator,
    penalty: Callable[[], Tensor] | None = None,
    after_backward: Callable[[], None] | None = None,
    progress: bool = True,
    desc: str = "train",
    augment: Augment | None = None,
    teacher: nn.Module | None = None,
    distill: Distillation | None = None,
    dist: DistContext = SINGLE,
    params: list[nn.Parameter] | None = None,
    autocast: torch.dtype | None = None,
) -> EpochStats:
    """One pass over ``split`` in shuffled mini-batches.

    ``penalty`` (differentiable) is added to every loss; ``after_backward`` runs between
    ``backward()`` and ``optimizer.step()``, e.g. ``ADMM.add_penalty_grad_``. With a
    ``teacher`` and ``distill``, the objective mixes the cross entropy with the
    temperature-scaled KL divergence to the teacher's outputs (Hinton et al. 2015); the
    reported loss stays the cross entropy.

    With ``dist`` (several ranks), each rank trains on its slice of every global batch and
    the gradients of ``params`` (default: the model's) are summed over ranks before
    ``after_backward``; see ``distributed``. ``autocast`` (e.g. ``torch.bfloat16``) runs the
    forward passes and losses under autocast; the ADMM penalty stays in full precision.
    """
    if (teacher is None) != (distill is None):
        raise ValueError("distillation needs both a teacher and its settings")
    model.train()
    start = time.perf_counter()
    total = num_batches(len(split), batch_size)
    loss_sum = torch.zeros((), dtype=torch.float64, device=split.device)
    pen_sum = torch.zeros((), dtype=torch.float64, device=split.device)
    correct = torch.zeros((), dtype=torch.int64, device=split.device)
    bar = tqdm(total=total, desc=desc, leave=False, disable=not progress, unit="batch")
    seen = 0
    synced = list(model.parameters()) if params is None else params
    rows = dist.shard if dist.enabled else None  # each rank keeps its slice of a global batch
    batches = split.train_batches(batch_size, generator, rows, augment)
    for step, (x, y, global_n) in enumerate(batches):
        with _autocast(x, autocast):
            logits = model(x)
            loss = F.cross_entropy(logits, y) if y.numel() else logits.sum() * 0.0
        # summed over ranks, the scaled slice losses give the global batch's mean loss
        scale = y.numel() * dist.world_size / global_n
        objective = loss * scale
        if teacher is not None and distill is not None and y.numel():
            with torch.no_grad(), _autocast(x, autocast):
                teacher_logits = teacher(x)
            objective = distill.objective(loss, logits, teacher_logits) * scale
        if penalty is not None:
            pen = penalty()
            objective = objective + pen
            pen_sum += pen.detach() * y.numel()
        bad = not bool(torch.isfinite(objective))
        if bad and not dist.enabled:
            raise NonFiniteLossError(
                f"{desc}: the loss became {float(objective.detach())} at batch "
                f"{step + 1} of {total}"
            )
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if dist.enabled and all_reduce_gradients(synced, dist, bad):
            raise NonFiniteLossError(
                f"{desc}: the loss became non-finite on at least one process at batch "
                f"{step + 1} of {total}"
            )
        if after_backward is not None:
            after_backward()
        optimizer.step()
        loss_sum += loss.detach() * y.numel()
        correct += (logits.detach().argmax(dim=1) == y).sum()
        seen += y.numel()
        if progress:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(
                    loss=f"{float(loss_sum) / seen:.4f}", acc=f"{float(correct) / seen:.4f}"
                )
    bar.close()
    totals = all_reduce_sum(
        torch.stack(
            [
                loss_sum,
                pen_sum,
                correct.double(),
                torch.tensor(float(seen), device=loss_sum.device, dtype=torch.float64),
            ]
        ),
        dist,
    )
    loss_sum, pen_sum, correct_f, seen_f = (float(v) for v in totals)
    return EpochStats(
        loss=loss_sum / seen_f,
        penalty=pen_sum / seen_f,
        accuracy=correct_f / seen_f,
        seconds=time.perf_counter() - start,
    )


def _autocast(x: Tensor, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=x.device.type, dtype=dtype)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: BatchSource,
    batch_size: int = 256,
    dist: DistContext = SINGLE,
    autocast: torch.dtype | None = None,
) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy in 0..1) over ``split`` (shared out over ranks)."""
    model.eval()
    n = len(split)
    rows = dist.shard(n) if dist.enabled else None
    loss_sum = torch.zeros((), dtype=torch.float64, device=split.device)
    correct = torch.zeros((), dtype=torch.float64, device=split.device)
    for x, y in split.eval_batches(batch_size, rows):
        with _autocast(x, autocast):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(dim=1) == y).sum()
    totals = all_reduce_sum(torch.stack([loss_sum, correct]), dist)
    return float(totals[0]) / n, float(totals[1]) / n
