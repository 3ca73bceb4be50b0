"""A Hugging Face ``Trainer`` callback that compresses the model with ADMM.

    trainer = Trainer(model, args, train_dataset=data, callbacks=[
        ADMMTrainerCallback({"*.attention.self.query": Irregular(keep=0.1)},
                            admm_epochs=2, period=1, rho=0.01)])
    trainer.train()

Epochs are the Trainer's (``num_train_epochs`` counts the ADMM epochs too). Needs
``transformers`` with ``accelerate`` (``pip install 'admmcompress[hf]'``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - the message is the point
    raise ImportError(
        "admmcompress.integrations.huggingface needs transformers: pip install 'admmcompress[hf]'"
    ) from None

from ..constraints import Constraint
from .schedule import ADMMSchedule


class ADMMTrainerCallback(TrainerCallback):
    """ADMM for ``admm_epochs`` epochs, then hardening; pruned weights stay zero after it."""

    def __init__(self, rules: Mapping[str, Constraint], **schedule: Any) -> None:
        self.schedule = ADMMSchedule(rules, **schedule)
        self._epochs_done = 0

    @property
    def masks(self) -> dict[str, Any]:
        return self.schedule.masks

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.schedule.start(kwargs["model"])

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.schedule.before_optimizer_step()

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._epochs_done += 1
        self.schedule.epoch_end(self._epochs_done, kwargs["model"], [kwargs["optimizer"]])

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        problems = self.schedule.violations(kwargs["model"]) if self.schedule.hardened else []
        if problems:
            raise RuntimeError("the model breaks its constraints: " + "; ".join(problems))
