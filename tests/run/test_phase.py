"""A phase's restore from a checkpoint: what it checks before anything uses the state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from admmcompress.run.phase import Phase


def _phase(epochs: int = 4, period: int = 2) -> Phase:
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def schedule() -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, period)

    return Phase("admm", epochs, period, True, optimizer, schedule(), schedule)


@pytest.mark.parametrize("epoch", [1, 2])  # 2: a period boundary, where the schedule restarts
def test_a_damaged_schedule_state_is_refused_at_every_epoch(epoch: int) -> None:
    saved = _phase().checkpoint()
    saved["scheduler"]["last_epoch"] = "x"
    with pytest.raises(ValueError, match="scheduler"):
        _phase().restore(saved, epoch)


@pytest.mark.parametrize("epoch", [1, 2])
def test_a_sound_checkpoint_restores_at_every_epoch(epoch: int) -> None:
    phase = _phase()
    phase.fast_forward(epoch)
    saved = phase.checkpoint()
    fresh = _phase()
    fresh.restore(saved, epoch)
    if epoch % 2:  # inside a period the schedule goes on where it was
        assert fresh.scheduler.state_dict() == saved["scheduler"]
