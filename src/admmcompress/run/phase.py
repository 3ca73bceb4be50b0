"""One training phase (pretrain, ADMM or retrain) as an epoch loop, and what it trains with.

``Phase`` holds the objects a phase's epochs update (optimizer, schedule, ADMM state, the
quantized-retraining helper, the mask enforcer) and their checkpoint form; ``run_epochs``
runs the remaining epochs, each ending with an evaluation, a history record, a log line
and a checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..core.admm import ADMM
from ..core.masking import MaskEnforcer
from ..data import Augment, BatchSource
from ..train.distill import Distillation
from ..train.distributed import DistContext, broadcast_buffers, check_identical
from ..train.loop import EpochStats, train_epoch
from ..train.quantized import SnapFreeze, STEQuantizer
from .checkpoint import check_like, check_optimizer_state
from .state import RunState

log = logging.getLogger("admmcompress")

QuantRetrainer = STEQuantizer | SnapFreeze


@dataclass
class Phase:
    """The objects one phase trains with."""

    name: str
    epochs: int
    period: int  # epochs per ADMM iteration (the whole phase outside ADMM)
    restart: bool  # restart the lr schedule every period
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    new_scheduler: Callable[[], torch.optim.lr_scheduler.LRScheduler]
    admm: ADMM | None = None
    quant: QuantRetrainer | None = None
    enforcer: MaskEnforcer | None = None

    def restore(self, ckpt: dict[str, Any], epoch: int, keep_optimizer: bool = True) -> None:
        """Continue from a checkpoint written inside this phase (``keep_optimizer=False``:
        the optimizer and schedule start afresh, for a resume that changed them)."""
        if keep_optimizer:
            check_optimizer_state(ckpt["optimizer"], self.optimizer)
            self.optimizer.load_state_dict(ckpt["optimizer"])
            # checked even where a restarted schedule will not use it: a damaged
            # checkpoint is refused whatever epoch the run was stopped at
            check_like(ckpt["scheduler"], self.scheduler.state_dict(), "scheduler")
            if not (self.restart and epoch % self.period == 0):
                self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.admm is not None:
            self.admm.load_state_dict(ckpt["admm"])
        if self.quant is not None:
            check_like(ckpt["quant"], self.quant.state_dict(), "quantization state")
            self.quant.load_state_dict(ckpt["quant"])

    def fast_forward(self, epoch: int) -> None:
        """Put a new schedule where the phase is: ``epoch`` epochs done."""
        for _ in range(epoch % self.period if self.restart else epoch):
            self.scheduler.step()

    def attach(self) -> None:
        if self.quant is not None:
            self.quant.attach(self.optimizer)

    def after_backward(self) -> Callable[[], None] | None:
        """What runs between ``backward()`` and the optimizer step."""
        if self.admm is not None:
            return self.admm.add_penalty_grad_
        if self.quant is not None:
            return self.quant.after_backward
        return None

    def checkpoint(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "admm": self.admm.state_dict() if self.admm is not None else None,
            "quant": self.quant.state_dict() if self.quant is not None else None,
        }

    def close(self) -> None:
        if self.enforcer is not None:
            self.enforcer.detach()
        if self.quant is not None:
            self.quant.detach()


@dataclass
class EpochContext:
    """What every epoch of a run needs besides the phase: the model, its data and how to
    train, evaluate and checkpoint."""

    model: nn.Module
    train: BatchSource
    batch_size: int
    generator: torch.Generator
    augment: Augment | None
    dist: DistContext
    autocast: torch.dtype | None
    progress: bool
    evaluate: Callable[[], tuple[float, float]]
    save: Callable[[dict[str, Any]], None]


def _residual_record(admm: ADMM, dist: DistContext) -> dict[str, Any]:
    """One ADMM update, checked identical on every rank, as a history record."""
    t0 = time.perf_counter()
    residuals = admm.update()
    seconds = time.perf_counter() - t0
    if dist.enabled:
        zu = {
            f"{n}.{k}": layer[k]
            for n, layer in admm.state_dict()["layers"].items()
            for k in ("z", "u")
        }
        check_identical(zu, dist, "ADMM state (Z, U)")
    return {
        "admm_update_seconds": seconds,
        "residuals": {
            k: {
                "primal": r.primal,
                "dual": r.dual,
                "rho": r.rho,
                "relative_primal": r.relative_primal,
            }
            for k, r in residuals.items()
        },
    }


def run_epochs(
    phase: Phase,
    state: RunState,
    ctx: EpochContext,
    *,
    label_prefix: str = "",
    step_number: int | None = None,
    teacher: Callable[[], nn.Module] | None = None,
    distill: Distillation | None = None,
) -> None:
    """Train the phase's remaining epochs; ``state.epoch`` counts the finished ones.

    ``teacher`` is called when an epoch needs it (loading a model draws from torch's random
    generator, so it happens exactly where it always has).
    """
    scheduler = phase.scheduler
    after_backward = phase.after_backward()
    while state.epoch < phase.epochs:
        if phase.restart and state.epoch % phase.period == 0 and state.epoch > 0:
            scheduler = phase.scheduler = phase.new_scheduler()
        if phase.quant is not None:
            phase.quant.start_epoch(state.epoch, phase.epochs)
        lr = phase.optimizer.param_groups[0]["lr"]
        label = f"{label_prefix}{phase.name} {state.epoch + 1}/{phase.epochs}"
        stats: EpochStats = train_epoch(
            ctx.model,
            ctx.train,
            phase.optimizer,
            batch_size=ctx.batch_size,
            generator=ctx.generator,
            after_backward=after_backward,
            progress=ctx.progress,
            desc=label,
            augment=ctx.augment,
            teacher=teacher() if teacher is not None else None,
            distill=distill,
            dist=ctx.dist,
            autocast=ctx.autocast,
        )
        broadcast_buffers(ctx.model, ctx.dist)  # BatchNorm running stats of rank 0
        scheduler.step()
        record: dict[str, Any] = {"phase": phase.name, "epoch": state.epoch + 1, "lr": lr}
        if step_number is not None:
            record["step"] = step_number
        if phase.admm is not None:
            with torch.no_grad():
                record["penalty"] = float(phase.admm.penalty())  # before this epoch's update
        if phase.admm is not None and (state.epoch + 1) % phase.period == 0:
            record.update(_residual_record(phase.admm, ctx.dist))
        t0 = time.perf_counter()
        test_loss, test_acc = ctx.evaluate()
        record.update(
            train_loss=stats.loss,
            train_accuracy=stats.accuracy,
            test_loss=test_loss,
            test_accuracy=test_acc,
            train_seconds=stats.seconds,
            eval_seconds=time.perf_counter() - t0,
        )
        state.history.append(record)
        state.seconds[phase.name] = (
            state.seconds.get(phase.name, 0.0) + stats.seconds + record["eval_seconds"]
        )
        state.epoch += 1
        msg = (
            f"{label}: loss {stats.loss:.4f}  train acc {stats.accuracy:.4f}  "
            f"test acc {test_acc:.4f}  lr {lr:.3g}  ({stats.seconds:.1f}s)"
        )
        log.info(msg)
        if "residuals" in record:  # each layer: how far W still is from its set, and rho
            log.info(
                "  ADMM update %d: ||W-Z||/||W|| (rho) %s",
                len(
                    [r for r in state.history if "residuals" in r and r.get("step") == step_number]
                ),
                ", ".join(
                    f"{n} {r['relative_primal']:.3g} ({r['rho']:.2g})"
                    for n, r in record["residuals"].items()
                ),
            )
        ctx.save(phase.checkpoint())
