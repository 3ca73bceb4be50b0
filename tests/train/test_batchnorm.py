"""BatchNorm recalibration: the statistics become exactly those of the new weights."""

from __future__ import annotations

import torch
from torch import nn

from admmcompress import recalibrate_batchnorm
from admmcompress.train.batchnorm import batchnorm_layers


def test_running_stats_are_the_plain_average_over_the_batches() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.ReLU())
    batches = [torch.randn(8, 3, 6, 6) for _ in range(3)]
    with torch.no_grad():
        model[0].weight.mul_(torch.rand_like(model[0].weight) > 0.5)  # a pruned conv
        feats = torch.cat([model[0](x) for x in batches])
    rng = torch.get_rng_state()
    assert recalibrate_batchnorm(model, ((x, None) for x in batches), num_batches=10) == 3
    assert torch.equal(torch.get_rng_state(), rng)  # Dropout stayed off: nothing was drawn
    bn = model[1]
    per_batch = torch.stack([model[0](x).mean(dim=(0, 2, 3)) for x in batches]).detach()
    torch.testing.assert_close(bn.running_mean, per_batch.mean(dim=0))
    assert bn.momentum == 0.1 and model.training  # put back as found
    assert feats.shape[1] == 4


def test_no_batchnorm_and_no_batches_leave_the_model_alone() -> None:
    model = nn.Sequential(nn.Linear(3, 3))
    assert recalibrate_batchnorm(model, [torch.randn(2, 3)]) == 0
    bn_model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    bn_model[1].running_mean.fill_(5.0)
    assert recalibrate_batchnorm(bn_model, []) == 0
    assert bool((bn_model[1].running_mean == 5.0).all())  # not reset for nothing
    assert len(batchnorm_layers(bn_model)) == 1
