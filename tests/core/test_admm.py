"""ADMM: sparse least squares solved to the brute-force optimum, and the algebra of each step."""

from __future__ import annotations

import copy
import io
import itertools

import pytest
import torch
from torch import nn

import admmcompress.core.admm as admm_module
from admmcompress import (
    ADMM,
    Filter,
    Irregular,
    MaskEnforcer,
    Residual,
    SelectionError,
    create_model,
    select_layers,
)


class Net(nn.Module):
    """A conv layer and a linear layer: enough to see per-layer state."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)  # 4 filters of 18 weights
        self.fc = nn.Linear(12, 5)  # 60 weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - not used
        return self.fc(self.conv(x).flatten(1)[:, :12])


RULES = {"conv": Filter(count=2), "fc": Irregular(keep=0.25)}  # fc keeps 15 of 60


def make_net(seed: int = 0, dtype: torch.dtype = torch.float32) -> Net:
    torch.manual_seed(seed)
    return Net().to(dtype)


@torch.no_grad()
def perturb(model: nn.Module, seed: int, scale: float = 0.3) -> None:
    """Stand-in for a W-step: move every weight deterministically."""
    g = torch.Generator().manual_seed(1000 + seed)
    for p in model.parameters():
        p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


# -- end to end: sparse least squares ---------------------------------------------------------
class LSModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 1, bias=False)


def test_sparse_least_squares_reaches_brute_force_optimum() -> None:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(30, 8, generator=g)
    x_true = torch.zeros(8)
    x_true[[1, 4, 6]] = torch.tensor([1.5, -2.0, 1.0])
    b = A @ x_true + 0.3 * torch.randn(30, generator=g)

    # Brute force: exact least squares on every support of size 3, in float64.
    A64, b64 = A.double(), b.double()
    opt_loss, opt_support = float("inf"), None
    for support in itertools.combinations(range(8), 3):
        cols = A64[:, list(support)]
        sol = torch.linalg.lstsq(cols, b64.unsqueeze(1)).solution.squeeze(1)
        loss = float(((cols @ sol - b64) ** 2).sum())
        if loss < opt_loss:
            opt_loss, opt_support = loss, support

    model = LSModel()
    with torch.no_grad():
        model.lin.weight.zero_()

    def f() -> torch.Tensor:
        return ((model.lin(A).squeeze(1) - b) ** 2).sum() / 30

    sgd = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(300):  # dense start, as the method prescribes
        sgd.zero_grad()
        f().backward()
        sgd.step()

    admm = ADMM(model, {"lin": Irregular(count=3)}, rho=0.05, rho_growth=1.5, rho_max=8.0)
    for _ in range(14):
        for _ in range(60):
            sgd.zero_grad()
            (f() + admm.penalty()).backward()
            sgd.step()
        admm.update()
    assert admm.residuals()["lin"].relative_primal < 1e-2  # ADMM has driven W onto its set

    masks = admm.harden()
    assert set(masks) == {"lin"}
    assert int(masks["lin"].sum()) == 3
    enforcer = MaskEnforcer.for_layers(model, masks)
    enforcer.attach(sgd)
    for _ in range(200):
        sgd.zero_grad()
        f().backward()
        sgd.step()

    x = model.lin.weight.detach().double().squeeze(0)
    assert int(torch.count_nonzero(x)) == 3
    assert tuple(torch.nonzero(x).flatten().tolist()) == opt_support
    loss = float(((A64 @ x - b64) ** 2).sum())
    assert loss <= 1.05 * opt_loss + 1e-6, (loss, opt_loss)


# -- penalty --------------------------------------------------------------------------------
def test_penalty_value_and_gradient_match_hand_computation() -> None:
    model = make_net(dtype=torch.float64)
    admm = ADMM(model, RULES, rho=0.5, rho_growth=1.3)
    for it in range(2):
        perturb(model, it)
        admm.update()
    perturb(model, 7)

    expected = torch.zeros((), dtype=torch.float64)
    grads = {}
    for name, layer in admm.layers.items():
        w = layer.weight.detach()
        assert bool((layer.u != 0).any()), "after two updates U must be non-zero"
        d = w - layer.z + layer.u
        expected = expected + layer.rho / 2 * d.pow(2).sum()
        grads[name] = layer.rho * d

    pen = admm.penalty()
    assert pen.requires_grad and pen.dim() == 0
    torch.testing.assert_close(pen.detach(), expected, rtol=1e-12, atol=0)
    model.zero_grad()
    pen.backward()
    for name, layer in admm.layers.items():
        torch.testing.assert_close(layer.weight.grad, grads[name], rtol=1e-12, atol=1e-15)
    assert model.conv.bias.grad is None and model.fc.bias.grad is None  # biases not penalised


@pytest.mark.parametrize("all_at_once", [False, True])
def test_add_penalty_grad_matches_penalty_backward(
    all_at_once: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both paths (per layer on the CPU; all layers at once, as on a GPU) add exactly the
    penalty's gradient, to existing gradients and to missing ones, per-layer rho included."""
    if all_at_once:
        monkeypatch.setattr(admm_module, "FOREACH_DEVICES", frozenset({"cpu", "cuda"}))
    model = make_net(dtype=torch.float64)
    admm = ADMM(model, RULES, rho=0.5)
    for it in range(2):
        perturb(model, it)
        admm.update()
    admm.layers["fc"].rho = 0.25  # two rho groups
    perturb(model, 7)

    model.zero_grad()
    admm.penalty().backward()
    want = {n: layer.weight.grad.clone() for n, layer in admm.layers.items()}

    model.zero_grad(set_to_none=True)
    admm.add_penalty_grad_()  # no .grad yet
    for n, layer in admm.layers.items():
        torch.testing.assert_close(layer.weight.grad, want[n], rtol=1e-12, atol=1e-15)

    base = {n: torch.full_like(g, 0.125) for n, g in want.items()}
    for n, layer in admm.layers.items():
        layer.weight.grad = base[n].clone()
    admm.add_penalty_grad_()  # added to what backward() left
    for n, layer in admm.layers.items():
        w = layer.weight.detach()
        exact = base[n].clone().add_(w - layer.target, alpha=layer.rho)
        assert torch.equal(layer.weight.grad, exact)


def test_penalty_is_finite_at_the_first_step() -> None:
    model = make_net()
    admm = ADMM(model, RULES, rho=1e-2)
    pen = admm.penalty()
    # Z0 = Proj(W0), U0 = 0: the penalty is the distance to the set, squared.
    expected = sum(
        1e-2
        / 2
        * (layer.weight.detach() - layer.constraint.project(layer.weight.detach())).pow(2).sum()
        for layer in admm.layers.values()
    )
    torch.testing.assert_close(pen.detach(), expected)
    pen.backward()
    for layer in admm.layers.values():
        assert bool(torch.isfinite(layer.weight.grad).all())
        mask = layer.constraint.mask(layer.weight.detach())
        assert bool((layer.weight.grad[mask] == 0).all())  # W == Z on the kept entries

    # Weights already in the set: W - Z + U == 0 everywhere, penalty and gradient exactly 0.
    admm.harden()
    fresh = ADMM(model, RULES, rho=1e-2)
    model.zero_grad()
    pen = fresh.penalty()
    assert float(pen.detach()) == 0.0
    pen.backward()
    for layer in fresh.layers.values():
        assert torch.equal(layer.weight.grad, torch.zeros_like(layer.weight))


def test_z_and_u_carry_no_autograd_history() -> None:
    model = make_net()
    admm = ADMM(model, RULES, rho=0.1)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        loss = sum(p.pow(2).sum() for p in model.parameters()) + admm.penalty()
        sgd.zero_grad()
        loss.backward()
        sgd.step()
        with torch.enable_grad():
            admm.update()
        for layer in admm.layers.values():
            for t in (layer.z, layer.u, layer.target):
                assert not t.requires_grad and t.grad_fn is None
    # A second backward through a fresh penalty works (nothing retained from earlier graphs).
    admm.penalty().backward()


# -- update ---------------------------------------------------------------------------------
@pytest.mark.parametrize("rescale_dual", [True, False])
def test_update_steps_exactly(rescale_dual: bool) -> None:
    model = make_net()
    admm = ADMM(model, RULES, rho=1.0, rho_growth=2.0, rho_max=5.0, rescale_dual=rescale_dual)
    rhos = []
    for it in range(5):
        perturb(model, it)
        before = {
            name: (layer.weight.detach().clone(), layer.z.clone(), layer.u.clone(), layer.rho)
            for name, layer in admm.layers.items()
        }
        res = admm.update()
        assert set(res) == set(RULES)
        assert admm.iteration == it + 1 and len(admm.history) == it + 1
        assert admm.history[-1] == res
        rhos.append(admm.layers["fc"].rho)
        for name, layer in admm.layers.items():
            w, z_old, u_old, rho_old = before[name]
            c = layer.constraint
            z_new = c.project(w + u_old)
            assert torch.equal(layer.z, z_new)
            assert c.violation(layer.z) is None
            rho_new = min(rho_old * 2.0, 5.0)
            assert layer.rho == rho_new
            if rescale_dual and rho_new != rho_old:
                u_expected = (u_old + w - z_new) * (rho_old / rho_new)
            else:
                u_expected = u_old + w - z_new
            assert torch.equal(layer.u, u_expected)
            assert torch.equal(layer.target, layer.z - layer.u)
            r = res[name]
            assert isinstance(r, Residual)
            assert r.primal == float(torch.linalg.vector_norm(w - z_new))
            assert r.dual == rho_old * float(torch.linalg.vector_norm(z_new - z_old))
            assert r.rho == rho_old
            assert r.relative_primal == pytest.approx(r.primal / float(w.norm()), rel=1e-12)
    assert rhos == [2.0, 4.0, 5.0, 5.0, 5.0]


def test_rho_growth_one_keeps_rho() -> None:
    admm = ADMM(make_net(), RULES, rho=0.3, rho_growth=1.0)
    for _ in range(3):
        admm.update()
    assert all(layer.rho == 0.3 for layer in admm.layers.values())


# -- harden and residuals --------------------------------------------------------------------
def test_harden_projects_in_place_and_returns_masks() -> None:
    model = make_net()
    admm = ADMM(model, RULES, rho=0.5)
    perturb(model, 0)
    admm.update()
    perturb(model, 1)
    weights = {name: layer.weight for name, layer in admm.layers.items()}
    ptrs = {name: w.data_ptr() for name, w in weights.items()}
    before = {name: w.detach().clone() for name, w in weights.items()}

    masks = admm.harden()

    assert set(masks) == {"conv", "fc"}
    assert model.conv.weight is weights["conv"] and model.fc.weight is weights["fc"]
    for name, w in weights.items():
        assert w.data_ptr() == ptrs[name]
        c = RULES[name]
        assert torch.equal(w.detach(), c.project(before[name]))
        assert c.violation(w.detach()) is None
        m = masks[name]
        assert m.dtype == torch.bool and m.shape == w.shape
        assert torch.equal(m, c.mask(before[name]))
        assert bool((w.detach()[~m] == 0).all())
    assert int(masks["fc"].sum()) == 15
    assert int(torch.count_nonzero(model.fc.weight)) == 15
    assert int(masks["conv"].sum()) == 2 * 18
    assert int((model.conv.weight.detach().reshape(4, -1) != 0).any(dim=1).sum()) == 2

    last = admm.history[-1]
    res = admm.residuals()
    for name, layer in admm.layers.items():
        w = layer.weight.detach()
        assert res[name].primal == float(torch.linalg.vector_norm(w - layer.z))
        assert res[name].dual == last[name].dual
        assert res[name].rho == layer.rho
        assert res[name].relative_primal == pytest.approx(
            res[name].primal / float(w.norm()), rel=1e-12
        )


def test_residuals_before_any_update() -> None:
    model = make_net()
    admm = ADMM(model, RULES, rho=0.02)
    res = admm.residuals()
    for name, layer in admm.layers.items():
        w = layer.weight.detach()
        assert res[name].dual == 0.0 and res[name].rho == 0.02
        assert res[name].primal == float(torch.linalg.vector_norm(w - RULES[name].project(w)))


# -- persistence -----------------------------------------------------------------------------
def test_state_dict_round_trip_is_bitwise() -> None:
    model = make_net()
    admm = ADMM(model, RULES, rho=0.3, rho_growth=1.7)
    for it in range(2):
        perturb(model, it)
        admm.update()
    perturb(model, 5)

    model2 = copy.deepcopy(model)
    buf = io.BytesIO()
    torch.save(admm.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    admm2 = ADMM(model2, RULES, rho=0.3, rho_growth=1.7)
    admm2.load_state_dict(state)

    assert admm2.iteration == admm.iteration == 2
    assert admm2.history == admm.history
    assert torch.equal(admm.penalty(), admm2.penalty())
    for step in range(2):
        perturb(model, 10 + step)
        perturb(model2, 10 + step)
        r1, r2 = admm.update(), admm2.update()
        assert r1 == r2
        for name in RULES:
            a, b = admm.layers[name], admm2.layers[name]
            assert torch.equal(a.z, b.z) and torch.equal(a.u, b.u) and a.rho == b.rho
        assert torch.equal(admm.penalty(), admm2.penalty())
    assert admm.residuals() == admm2.residuals()


def test_load_state_for_other_layers_raises() -> None:
    model = make_net()
    state = ADMM(model, RULES).state_dict()
    other = ADMM(copy.deepcopy(model), {"fc": Irregular(keep=0.25)})
    with pytest.raises(ValueError, match="conv"):
        other.load_state_dict(state)


# -- rules -----------------------------------------------------------------------------------
def test_rules_by_name_glob_and_type() -> None:
    model = create_model("lenet5")
    a, b = Irregular(keep=0.5), Irregular(keep=0.1)
    assert list(ADMM(model, {"conv*": a}).layers) == ["conv1", "conv2"]
    assert list(ADMM(model, {"fc?": a}).layers) == ["fc1", "fc2"]
    admm = ADMM(model, {"type:Linear": b, "type:Conv2d": a})
    assert list(admm.layers) == ["conv1", "conv2", "fc1", "fc2"]  # model order
    assert admm.layers["conv2"].constraint is a and admm.layers["fc1"].constraint is b
    assert select_layers(model, {"fc2": b, "conv1": a}) == {"conv1": a, "fc2": b}
    # Irregular(keep=0.5) on conv1 (500 weights): Z starts with exactly 250 non-zeros.
    assert int(torch.count_nonzero(ADMM(model, {"conv1": a}).layers["conv1"].z)) == 250


@pytest.mark.parametrize("selector", ["conv3", "fc*x", "type:LSTM"])
def test_rule_matching_nothing_raises(selector: str) -> None:
    model = create_model("lenet5")
    with pytest.raises(SelectionError) as info:
        ADMM(model, {"conv1": Irregular(keep=0.5), selector: Irregular(keep=0.5)})
    msg = str(info.value)
    assert repr(selector) in msg
    assert "conv1, conv2, fc1, fc2" in msg
    assert isinstance(info.value, ValueError)


def test_overlapping_rules_raise() -> None:
    model = create_model("lenet5")
    with pytest.raises(SelectionError) as info:
        ADMM(model, {"conv*": Irregular(keep=0.5), "type:Conv2d": Irregular(keep=0.2)})
    msg = str(info.value)
    assert "'conv1'" in msg and "'conv*'" in msg and "'type:Conv2d'" in msg
    with pytest.raises(SelectionError, match=r"'fc2'.*'fc2'.*'fc\*'"):
        ADMM(model, {"fc2": Irregular(keep=0.5), "fc*": Irregular(keep=0.2)})


# -- constructor errors ----------------------------------------------------------------------
@pytest.mark.parametrize("rho", [0.0, -1e-3, float("nan"), float("inf")])
def test_bad_rho_raises(rho: float) -> None:
    with pytest.raises(ValueError, match="rho must be a positive number"):
        ADMM(make_net(), RULES, rho=rho)


@pytest.mark.parametrize("growth", [0.0, 0.5, 0.999])
def test_bad_rho_growth_raises(growth: float) -> None:
    with pytest.raises(ValueError, match="rho_growth must be >= 1"):
        ADMM(make_net(), RULES, rho_growth=growth)


def test_empty_rules_rejected() -> None:
    with pytest.raises(ValueError, match="no layer"):
        ADMM(make_net(), {})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_add_penalty_grad_on_cuda_matches_cpu_bitwise() -> None:
    """The GPU's all-layers-at-once path gives the CPU path's gradients to the bit."""
    model = make_net()
    admm = ADMM(model, RULES, rho=0.5)
    for it in range(2):
        perturb(model, it)
        admm.update()
    perturb(model, 7)
    gpu_model = copy.deepcopy(model).cuda()
    gpu_admm = ADMM(gpu_model, RULES, rho=0.5)
    gpu_admm.load_state_dict(admm.state_dict())
    for m, a in ((model, admm), (gpu_model, gpu_admm)):
        m.zero_grad(set_to_none=True)
        a.add_penalty_grad_()
        a.add_penalty_grad_()
    for n, layer in admm.layers.items():
        assert torch.equal(gpu_admm.layers[n].weight.grad.cpu(), layer.weight.grad), n
