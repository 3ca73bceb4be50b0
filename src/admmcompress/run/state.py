"""What survives a kill: where the run is, what it has measured, and the current step's plan.

Every epoch ends with an atomic checkpoint of this state together with the model, the
optimizer, the schedule, the ADMM state and the random generators, so that a resumed run
finishes with the weights an uninterrupted one would have had.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..recipe.rules import RuleConfig
from ..train.distributed import DistContext, gather_objects

log = logging.getLogger("admmcompress")


@dataclass
class RunState:
    phase: str = "pretrain"
    epoch: int = 0  # epochs completed in ``phase``
    step: int = 0  # index of the step that ``phase`` belongs to (admm, retrain)
    history: list[dict[str, Any]] = field(default_factory=list)
    phases: dict[str, dict[str, float]] = field(default_factory=dict)  # of the current step
    seconds: dict[str, float] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)  # summaries of finished steps
    warnings: list[str] = field(default_factory=list)  # what the report must tell the user
    # The current step's per-layer rules (targets resolved to counts) and the masks it
    # started from; both go into every checkpoint so a resume rebuilds the same sets.
    planned_step: int | None = None
    rules: dict[str, RuleConfig] = field(default_factory=dict)
    plan_info: dict[str, Any] = field(default_factory=dict)
    support: dict[str, Tensor] = field(default_factory=dict)
    masks: dict[str, Tensor] = field(default_factory=dict)
    # Full-precision weights of quantized layers just before hardening: where the
    # retraining of those layers starts (STE shadows, or snap-and-freeze).
    quant_init: dict[str, Tensor] = field(default_factory=dict)

    def progress(self) -> dict[str, Any]:
        """Where the run is and what it measured, in checkpoint form."""
        return {
            "phase": self.phase,
            "epoch": self.epoch,
            "history": self.history,
            "phases": self.phases,
            "seconds": self.seconds,
            "warnings": self.warnings,
        }

    def plan(self) -> dict[str, Any]:
        """The step and its plan, in checkpoint form."""
        return {
            "step": self.step,
            "steps": self.steps,
            "planned_step": self.planned_step,
            "rules": {
                n: r.model_dump(mode="json", exclude_none=True) for n, r in self.rules.items()
            },
            "plan": self.plan_info,
            "support": self.support,
            "masks": self.masks,
            "quant_init": self.quant_init,
        }

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], device: torch.device) -> RunState:
        def on(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.to(device) for k, v in tensors.items()}

        return cls(
            phase=ckpt["phase"],
            epoch=ckpt["epoch"],
            step=ckpt.get("step", 0),
            history=ckpt["history"],
            phases=ckpt["phases"],
            seconds=ckpt["seconds"],
            steps=ckpt.get("steps", []),
            warnings=list(ckpt.get("warnings", [])),
            planned_step=ckpt.get("planned_step"),
            rules={n: RuleConfig.model_validate(r) for n, r in ckpt.get("rules", {}).items()},
            plan_info=ckpt.get("plan", {}),
            support=on(ckpt.get("support", {})),
            masks=on(ckpt["masks"]),
            quant_init=on(ckpt.get("quant_init", {})),
        )


def capture_rng(generator: torch.Generator, dist: DistContext) -> dict[str, Any]:
    """Every random generator the next epoch draws from (torch's on every rank)."""
    torch_rng = gather_objects(torch.get_rng_state(), dist)  # one per process
    return {
        "torch": torch_rng[0],
        "torch_per_rank": torch_rng,
        "data": generator.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(rng: dict[str, Any], generator: torch.Generator, dist: DistContext) -> None:
    per_rank = rng.get("torch_per_rank") or [rng["torch"]]
    if len(per_rank) != dist.world_size and dist.enabled:
        log.warning(
            "the checkpoint was written by %d processes, this run has %d: dropout masks "
            "will differ from an uninterrupted run",
            len(per_rank),
            dist.world_size,
        )
    torch.set_rng_state(per_rank[dist.rank % len(per_rank)])
    generator.set_state(rng["data"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
