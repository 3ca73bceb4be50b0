"""A PyTorch Lightning callback that compresses the LightningModule with ADMM.

    trainer = lightning.Trainer(max_epochs=10, callbacks=[
        ADMMCallback({"fc*": Irregular(keep=0.05)}, admm_epochs=6, period=2, rho=0.01)])
    trainer.fit(module, loader)   # 6 ADMM epochs, hardening, 4 masked epochs

The module's parameters are selected as ``ADMM`` selects them (names are the module's own,
e.g. ``"model.fc1"`` if the network sits in ``self.model``). Needs ``lightning``
(``pip install 'admmcompress[lightning]'``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - the message is the point
    raise ImportError(
        "admmcompress.integrations.lightning needs lightning: pip install 'admmcompress[lightning]'"
    ) from None

from ..constraints import Constraint
from .schedule import ADMMSchedule


class ADMMCallback(pl.Callback):
    """ADMM for ``admm_epochs`` epochs, then hardening; pruned weights stay zero after it."""

    def __init__(self, rules: Mapping[str, Constraint], **schedule: Any) -> None:
        super().__init__()
        self.schedule = ADMMSchedule(rules, **schedule)

    @property
    def masks(self) -> dict[str, Any]:
        return self.schedule.masks

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.schedule.start(pl_module)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        self.schedule.before_optimizer_step()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.schedule.epoch_end(trainer.current_epoch + 1, pl_module, trainer.optimizers)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        problems = self.schedule.violations(pl_module) if self.schedule.hardened else []
        if problems:
            raise RuntimeError("the model breaks its constraints: " + "; ".join(problems))

    def state_dict(self) -> dict[str, Any]:
        return self.schedule.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict  # the module is known at fit start

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pending = getattr(self, "_pending", None)
        if pending is not None:
            self.schedule.load_state_dict(pending, pl_module)
            self._pending = None
