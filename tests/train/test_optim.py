"""Learning-rate schedules: which ones stay flat within an ADMM period."""

from __future__ import annotations

import pytest

from admmcompress.train.optim import flat_within


@pytest.mark.parametrize(
    ("epochs", "schedule", "flat"),
    [
        (1, {"name": "cosine"}, True),  # a cosine over one epoch never gets to decay
        (2, {"name": "cosine"}, False),
        (4, {"name": "step", "step_size": 10}, True),
        (4, {"name": "step", "step_size": 2}, False),
        (3, {"name": "multistep", "milestones": [3, 6]}, True),
        (3, {"name": "multistep", "milestones": [2]}, False),
        (5, {"name": "constant"}, True),
    ],
)
def test_flat_within_a_period(epochs: int, schedule: dict, flat: bool) -> None:
    assert flat_within(epochs, **schedule) is flat
