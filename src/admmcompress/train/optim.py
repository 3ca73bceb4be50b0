"""Optimizers and learning-rate schedules by name, from plain values."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn


def make_optimizer(
    params: Iterable[nn.Parameter],
    name: str = "sgd",
    *,
    lr: float = 0.01,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """``sgd``, ``adam`` or ``adamw`` over ``params``."""
    params = list(params)
    if name == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=momentum,
            nesterov=nesterov and momentum > 0,
            weight_decay=weight_decay,
        )
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose sgd, adam or adamw")


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    epochs: int,
    name: str = "constant",
    *,
    step_size: int = 10,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    min_lr: float = 0.0,
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-epoch schedule over ``epochs``; it restarts from the optimizer's initial lr."""
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("initial_lr", group["lr"])
    sched = torch.optim.lr_scheduler
    if name == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=max(1, epochs), eta_min=min_lr)
    if name == "step":
        return sched.StepLR(optimizer, step_size=step_size, gamma=gamma)
    if name == "multistep":
        return sched.MultiStepLR(optimizer, milestones=list(milestones), gamma=gamma)
    if name == "constant":
        return sched.LambdaLR(optimizer, lambda _: 1.0)
    raise ValueError(f"unknown schedule {name!r}; choose constant, cosine, step or multistep")


def flat_within(epochs: int, name: str = "constant", **kwargs: float | int | Sequence[int]) -> bool:
    """Whether a schedule made for ``epochs`` keeps one lr over those epochs.

    A schedule restarted every ADMM period of ``epochs`` epochs that is flat within it never
    decays at all (a cosine over 1 epoch, a step schedule with ``step_size >= epochs``), which
    a recipe naming it does not make plain. Checked by running it on a throwaway optimizer.
    """
    if name == "constant":
        return True
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = make_scheduler(optimizer, epochs, name, **kwargs)  # type: ignore[arg-type]
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        sched.step()
    return len(set(lrs)) == 1
