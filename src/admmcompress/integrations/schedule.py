"""What the framework callbacks share: the ADMM schedule over epochs, and its end."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..constraints import Constraint
from ..core.admm import ADMM
from ..core.masking import MaskEnforcer
from ..core.verify import model_violations

log = logging.getLogger("admmcompress")


class ADMMSchedule:
    """ADMM for ``admm_epochs`` epochs (an update every ``period``), then hardening and masked
    training for whatever epochs the framework runs after that.

    ``rules`` are as for ``ADMM``; ``rho``, ``rho_growth`` and ``rho_max`` too. After the
    hardening, ``masks`` holds the masks and ``violations()`` checks every constraint.
    """

    def __init__(
        self,
        rules: Mapping[str, Constraint],
        *,
        admm_epochs: int,
        period: int = 1,
        rho: float | str = 1e-3,
        rho_growth: float = 1.3,
        rho_max: float | None = None,
    ) -> None:
        if admm_epochs < 1 or period < 1 or period > admm_epochs:
            raise ValueError(
                f"admm_epochs ({admm_epochs}) and period ({period}) must be >= 1, with "
                "period <= admm_epochs"
            )
        self.rules = dict(rules)
        self.admm_epochs = admm_epochs
        self.period = period
        self.options: dict[str, Any] = {"rho": rho, "rho_growth": rho_growth, "rho_max": rho_max}
        self.admm: ADMM | None = None
        self.masks: dict[str, Tensor] = {}
        self._enforcer: MaskEnforcer | None = None

    def start(self, model: nn.Module) -> None:
        if self.admm is None:
            self.admm = ADMM(model, self.rules, **self.options)

    @property
    def hardened(self) -> bool:
        return bool(self.masks)

    def before_optimizer_step(self) -> None:
        """The W-step: the penalty's gradient, added to the loss's (ADMM phase only)."""
        if self.admm is not None and not self.hardened:
            self.admm.add_penalty_grad_()

    def epoch_end(
        self, epoch: int, model: nn.Module, optimizers: Iterable[torch.optim.Optimizer]
    ) -> None:
        """After epoch ``epoch`` (1-based): an update every period, then the hardening."""
        if self.admm is None or self.hardened:
            return
        if epoch % self.period == 0:
            residuals = self.admm.update()
            log.info(
                "ADMM update %d: ||W-Z||/||W|| %s",
                self.admm.iteration,
                ", ".join(f"{n} {r.relative_primal:.3g}" for n, r in residuals.items()),
            )
        if epoch >= self.admm_epochs:
            self.masks = self.admm.harden()
            self._enforcer = MaskEnforcer.for_layers(model, self.masks)
            self._enforcer.attach([getattr(o, "optimizer", o) for o in optimizers])

    def violations(self, model: nn.Module) -> list[str]:
        """Every constraint the model breaks now (empty: it is compressed as asked)."""
        if self.admm is None:
            return ["ADMM never started"]
        constraints = {n: layer.constraint for n, layer in self.admm.layers.items()}
        return model_violations(model, constraints, self.masks)

    def state_dict(self) -> dict[str, Any]:
        return {
            "admm": self.admm.state_dict() if self.admm is not None else None,
            "masks": {n: m.cpu() for n, m in self.masks.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any], model: nn.Module) -> None:
        self.start(model)
        assert self.admm is not None
        if state.get("admm") is not None:
            self.admm.load_state_dict(state["admm"])
        self.masks = dict(state.get("masks") or {})
