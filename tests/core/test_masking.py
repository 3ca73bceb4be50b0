"""MaskEnforcer: pruned weights stay exactly zero under every common optimizer."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from admmcompress import Irregular, MaskEnforcer

OPTIMIZERS: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "sgd_momentum_wd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-4),
    "sgd_nesterov": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
    "adam_wd": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-4),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=1e-2),
}


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3))


def batches(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 6, generator=g), torch.randint(3, (8,), generator=g)) for _ in range(n)]


def step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def masks_for(model: nn.Module) -> dict[str, torch.Tensor]:
    c = Irregular(keep=0.4)
    return {name: c.mask(model.get_submodule(name).weight.detach()) for name in ("0", "2")}


def dense_then_state(name: str) -> tuple[nn.Module, torch.optim.Optimizer]:
    """A model trained a few dense steps, so the optimizer state is non-zero everywhere."""
    model = make_model()
    opt = OPTIMIZERS[name](list(model.parameters()))
    for x, y in batches(5, seed=1):
        step(model, opt, x, y)
    return model, opt


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_pruned_weights_stay_exactly_zero(name: str) -> None:
    model, opt = dense_then_state(name)
    for state in opt.state.values():  # momentum / moments exist before the mask does
        bufs = [v for v in state.values() if torch.is_tensor(v) and v.dim() > 0]
        assert bufs and all(bool((b != 0).all()) for b in bufs if b.dim() == 2)
    masks = masks_for(model)
    layers = {n: model.get_submodule(n) for n in masks}
    before = {n: layers[n].weight.detach().clone() for n in masks}

    enforcer = MaskEnforcer.for_layers(model, masks)
    enforcer.attach(opt)
    for n, m in masks.items():  # attach zeroes the pruned weights at once
        assert bool((layers[n].weight.detach()[~m] == 0).all())
        assert torch.equal(layers[n].weight.detach()[m], before[n][m])

    got_grad = {n: torch.zeros_like(m) for n, m in masks.items()}
    for x, y in batches(20, seed=2):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        for n, m in masks.items():
            assert bool((layers[n].weight.grad[~m] == 0).all()), f"{name}: gradient leaks"
            got_grad[n] |= layers[n].weight.grad != 0
        opt.step()
        for n, m in masks.items():
            w = layers[n].weight.detach()
            assert bool((w[~m] == 0.0).all()), f"{name}: pruned weight of {n} revived"
            assert int(torch.count_nonzero(w)) == int(m.sum())

    for n, m in masks.items():
        changed = layers[n].weight.detach() != before[n]
        # A kept weight can see a zero gradient (its hidden unit feeds only pruned weights),
        # but every kept weight that got a gradient must have moved, and most did.
        assert bool(changed[m & got_grad[n]].all()), f"{name}: kept weights of {n} frozen"
        assert float(changed[m].float().mean()) > 0.5, f"{name}: kept weights of {n} frozen"
    assert set(enforcer.masks) == set(masks)
    for n in masks:
        assert torch.equal(enforcer.masks[n], masks[n])


@pytest.mark.parametrize("name", ["sgd_momentum_wd", "adamw"])
def test_without_enforcer_pruned_weights_revive(name: str) -> None:
    """The control: the same run without the enforcer does revive pruned weights."""
    model, opt = dense_then_state(name)
    masks = masks_for(model)
    with torch.no_grad():
        for n, m in masks.items():
            model.get_submodule(n).weight.masked_fill_(~m, 0.0)
    x, y = batches(1, seed=2)[0]
    step(model, opt, x, y)
    assert any(bool((model.get_submodule(n).weight[~m] != 0).any()) for n, m in masks.items())


def test_apply_alone_in_a_loop() -> None:
    model, opt = dense_then_state("sgd_momentum_wd")
    masks = masks_for(model)
    enforcer = MaskEnforcer.for_layers(model, masks)
    revived = 0
    for x, y in batches(10, seed=3):
        step(model, opt, x, y)
        revived += sum(
            int((model.get_submodule(n).weight.detach()[~m] != 0).sum()) for n, m in masks.items()
        )
        enforcer.apply()
        for n, m in masks.items():
            assert bool((model.get_submodule(n).weight.detach()[~m] == 0).all())
    assert revived > 0  # without attach, the step itself moves pruned weights; apply fixes it


def test_detach_removes_hooks() -> None:
    model, opt = dense_then_state("sgd_momentum_wd")
    masks = masks_for(model)
    enforcer = MaskEnforcer.for_layers(model, masks)
    enforcer.attach(opt)
    x, y = batches(1, seed=4)[0]
    step(model, opt, x, y)
    first = model.get_submodule("0")
    assert bool((first.weight.detach()[~masks["0"]] == 0).all())

    enforcer.detach()
    enforcer.detach()  # idempotent
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    assert bool((first.weight.grad[~masks["0"]] != 0).any())  # gradient hook gone
    opt.step()
    assert bool((first.weight.detach()[~masks["0"]] != 0).any())  # step hook gone


def test_attach_to_several_optimizers() -> None:
    model = make_model()
    masks = masks_for(model)
    opt_a = torch.optim.SGD(model.get_submodule("0").parameters(), lr=0.1, weight_decay=0.1)
    opt_b = torch.optim.Adam(model.get_submodule("2").parameters(), lr=0.1, weight_decay=0.1)
    MaskEnforcer.for_layers(model, masks).attach([opt_a, opt_b])
    for x, y in batches(5, seed=5):
        loss = F.cross_entropy(model(x), y)
        opt_a.zero_grad()
        opt_b.zero_grad()
        loss.backward()
        opt_a.step()
        opt_b.step()
        for n, m in masks.items():
            assert bool((model.get_submodule(n).weight.detach()[~m] == 0).all())


def test_errors() -> None:
    model = make_model()
    masks = masks_for(model)
    with pytest.raises(ValueError, match="shape"):
        MaskEnforcer.for_layers(model, {"0": masks["0"].t()})
    with pytest.raises(ValueError, match="'2'"):
        MaskEnforcer.for_layers(model, {"2": torch.ones(3, 9, dtype=torch.bool)})
    with pytest.raises(KeyError, match="fc9"):
        MaskEnforcer.for_layers(model, {"fc9": masks["0"]})
    with pytest.raises(KeyError, match="nope"):
        MaskEnforcer({"a": model.get_submodule("0").weight}, {"nope": masks["0"]})


def test_params_mapping_and_non_bool_mask() -> None:
    model = make_model()
    w = model.get_submodule("0").weight
    m = masks_for(model)["0"]
    enforcer = MaskEnforcer({"first": w}, {"first": m.float()})  # 0/1 floats work as a mask
    enforcer.apply()
    assert int(torch.count_nonzero(w)) == int(m.sum())
    assert enforcer.masks["first"].dtype == torch.bool
