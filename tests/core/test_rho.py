"""Choosing rho: residuals per layer, the warning when ADMM ends far from its sets, and
rho='auto' (residual balancing on top of the growth schedule)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from admmcompress import ADMM, Irregular
from admmcompress.core.admm import (
    AUTO_RHO,
    BALANCE_MU,
    BALANCE_TAU,
    ADMMConvergenceWarning,
)


def _train(admm: ADMM, model: nn.Module, updates: int, steps: int = 20) -> None:
    torch.manual_seed(1)
    x, y = torch.randn(64, 20), torch.randint(0, 3, (64,))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(updates):
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(x), y) + admm.penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
        admm.update()


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3))


def test_a_tiny_rho_ends_far_from_the_set_and_harden_says_what_to_change() -> None:
    model = _mlp()
    admm = ADMM(model, {"0": Irregular(keep=0.05)}, rho=1e-6)
    _train(admm, model, updates=3)
    far = admm.far_from_sets()
    assert far["0"] > 0.1
    with pytest.warns(ADMMConvergenceWarning, match="Raise rho .* or use rho='auto'"):
        admm.harden()


def test_auto_balances_each_layer_and_reaches_the_set() -> None:
    model = _mlp()
    admm = ADMM(model, {"0": Irregular(keep=0.05), "2": Irregular(keep=0.3)}, rho="auto")
    assert all(layer.rho == AUTO_RHO for layer in admm.layers.values())
    _train(admm, model, updates=8)
    for it in range(1, len(admm.history)):
        for name, r in admm.history[it - 1].items():
            new = admm.history[it][name].rho
            if r.primal > BALANCE_MU * r.dual:  # far from the set: pushed harder
                assert new == pytest.approx(r.rho * admm.rho_growth * BALANCE_TAU)
    fixed = _mlp()
    plain = ADMM(fixed, {"0": Irregular(keep=0.05), "2": Irregular(keep=0.3)}, rho=AUTO_RHO)
    _train(plain, fixed, updates=8)
    auto_r = admm.residuals()["0"].relative_primal
    assert auto_r < plain.residuals()["0"].relative_primal
    assert auto_r < 0.1


def test_auto_survives_a_save_and_restore() -> None:
    model = _mlp()
    admm = ADMM(model, {"0": Irregular(keep=0.1)}, rho="auto")
    _train(admm, model, updates=2, steps=5)
    again = ADMM(model, {"0": Irregular(keep=0.1)}, rho="auto")
    again.load_state_dict(admm.state_dict())
    assert again.layers["0"].rho == admm.layers["0"].rho and again.balance
