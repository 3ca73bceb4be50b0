"""N:M sparsity: the exact projection, its checks, and its use in ADMM, steps and quantization."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from admmcompress import ADMM, MaskEnforcer
from admmcompress.constraints import (
    ConstraintError,
    FixedSupport,
    PrunedQuantized,
    Uniform,
    available_constraints,
    make_constraint,
)
from admmcompress.constraints.nm import NM, nm_groups
from admmcompress.core.verify import model_violations
from admmcompress.recipe.schema import ConfigError, validate_config


def _groups(w: torch.Tensor, m: int) -> torch.Tensor:
    return nm_groups(w, m)


shapes = st.sampled_from([(3, 8), (2, 4), (4, 8, 2, 2), (1, 12, 3, 1), (5, 4, 1, 3)])


@st.composite
def case(draw: st.DrawFn) -> tuple[torch.Tensor, int, int]:
    shape = draw(shapes)
    m = draw(st.sampled_from([m for m in (2, 4) if shape[1] % m == 0]))
    n = draw(st.integers(1, m - 1))
    seed = draw(st.integers(0, 10_000))
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    if draw(st.booleans()):  # ties and exact zeros, where tie-breaking matters
        w = torch.round(w * 2) / 2
    return w, n, m


@settings(max_examples=150, deadline=None)
@given(case())
def test_projection_is_feasible_idempotent_and_keeps_the_largest(
    c: tuple[torch.Tensor, int, int],
) -> None:
    w, n, m = c
    nm = NM(n=n, m=m)
    p = nm.project(w)
    assert nm.violation(p) is None
    assert torch.equal(nm.project(p), p)  # idempotent
    assert int((_groups(p, m) != 0).sum(dim=1).max()) <= n
    kept = _groups(nm.mask(w), m)
    assert bool((kept.sum(dim=1) == n).all())  # exactly n kept per group
    # no feasible point is closer: per group, the kept magnitudes are the n largest
    mags = _groups(w.abs(), m)
    for row, keep in zip(mags, kept, strict=True):
        assert float(row[keep].min()) >= float(row[~keep].max())
    assert torch.equal(p, w * nm.mask(w))


def _brute_force(w: torch.Tensor, n: int, m: int) -> float:
    """Smallest ||w - p||^2 over every choice of n kept entries in every group."""
    best = 0.0
    for row in _groups(w, m):
        best += min(
            float(row.pow(2).sum() - row[list(keep)].pow(2).sum())
            for keep in itertools.combinations(range(m), n)
        )
    return best


@settings(max_examples=60, deadline=None)
@given(case())
def test_no_feasible_point_is_closer_than_the_projection(c: tuple[torch.Tensor, int, int]) -> None:
    w, n, m = c
    p = NM(n=n, m=m).project(w)
    err = float((w - p).double().pow(2).sum())
    assert err == pytest.approx(_brute_force(w.double(), n, m), rel=1e-9, abs=1e-12)


def test_groups_run_along_the_input_dimension_of_a_conv() -> None:
    w = torch.zeros(1, 4, 1, 2)
    w[0, :, 0, 0] = torch.tensor([1.0, 4.0, 3.0, 2.0])  # one kernel position, 4 inputs
    w[0, :, 0, 1] = torch.tensor([5.0, 0.5, 0.1, 6.0])
    p = NM(n=2, m=4).project(w)
    assert p[0, :, 0, 0].tolist() == [0.0, 4.0, 3.0, 0.0]
    assert p[0, :, 0, 1].tolist() == [5.0, 0.0, 0.0, 6.0]


def test_ties_go_to_the_lower_input() -> None:
    p = NM(n=1, m=4).project(torch.ones(2, 4))
    assert p.tolist() == [[1.0, 0.0, 0.0, 0.0]] * 2


def test_budget_and_describe() -> None:
    nm = NM(n=2, m=4)
    assert nm.budget(torch.zeros(8, 16)) == 64
    assert nm.describe() == "nm (2:4)"
    assert "nm" in available_constraints("prune")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"n": 4, "m": 4}, r"n must be an integer in 1..3, got 4 \(n = m = 4 would keep every"),
        ({"n": 0, "m": 4}, "n must be an integer in 1..3, got 0$"),
        ({"n": 1, "m": 1}, "m must be an integer >= 2"),
        ({"n": 2}, "nm needs m"),
        ({"n": 2, "m": 4, "keep": 0.5}, "unknown parameter 'keep'; nm takes n"),
        ({"n": 2.5, "m": 4}, "n must be an integer"),
    ],
)
def test_bad_parameters_are_named(params: dict, message: str) -> None:
    with pytest.raises(ConstraintError, match=message):
        make_constraint("nm", **params)


def test_a_layer_whose_inputs_do_not_divide_is_refused_before_training() -> None:
    model = nn.Sequential(nn.Linear(6, 3))
    with pytest.raises(ConstraintError, match="layer '0': nm: groups of 4 need"):
        ADMM(model, {"0": NM(n=2, m=4)})


def test_admm_hardens_to_exact_nm_and_retraining_keeps_it() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    rules = {"0": NM(n=2, m=4), "2": NM(n=1, m=4)}
    admm = ADMM(model, rules, rho=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for it in range(6):
        loss = nn.functional.cross_entropy(model(x), y) + admm.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 2 == 1:
            admm.update()
    masks = admm.harden()
    assert int(masks["0"].sum()) == 2 * 16 * 8 // 4 and int(masks["2"].sum()) == 8
    MaskEnforcer.for_layers(model, masks).attach(opt)
    for _ in range(5):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model_violations(model, rules, masks) == []


def test_nm_with_quantization_and_inside_an_earlier_mask() -> None:
    w = torch.randn(4, 8)
    both = PrunedQuantized(NM(n=2, m=4), Uniform(bits=3))
    p = both.project(w)
    assert both.violation(p) is None
    assert int((p != 0).sum()) <= 16
    support = torch.rand(4, 8) > 0.3  # an earlier step's mask
    inside = FixedSupport(NM(n=1, m=4), support)
    q = inside.project(w)
    assert inside.violation(q) is None
    assert not bool(q[~support].any())


def test_a_config_rule_takes_nm_and_its_parameters() -> None:
    base = {"model": "lenet5"}
    cfg = validate_config(
        {**base, "rules": {"fc1": {"prune": "nm", "n": 2, "m": 4, "quantize": 4}}}
    )
    rule = cfg.rules["fc1"]
    assert rule.prune_params() == {"n": 2, "m": 4}
    assert rule.constraint().describe() == "nm (2:4) + uniform 4-bit"
    with pytest.raises(ConfigError, match=r"rules\.fc1\.m: nm: m must be"):
        validate_config({**base, "rules": {"fc1": {"prune": "nm", "n": 2, "m": 1}}})
    with pytest.raises(ConfigError, match=r"rules\.fc1\.keep: nm: unknown parameter 'keep'"):
        validate_config({**base, "rules": {"fc1": {"prune": "nm", "n": 2, "m": 4, "keep": 0.1}}})
