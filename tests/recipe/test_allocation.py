"""Splitting a target rate over layers: budgets, floors, ceilings, the sensitivity scan."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from admmcompress.models import create_model
from admmcompress.recipe.allocation import (
    METHODS,
    ScanPoint,
    allocate,
    keep_grid,
    lamp_scores,
    sensitivity_scan,
)

# ------------------------------------------------------------------------------ allocation


def test_the_recipe_schema_offers_exactly_the_methods_allocate_knows() -> None:
    from typing import get_args

    from admmcompress.recipe.schema import TargetConfig

    assert get_args(TargetConfig.model_fields["allocation"].annotation) == METHODS


def test_keep_grid_descends_to_the_floor() -> None:
    grid = keep_grid(1000, 8)
    assert grid[0] == 1000 and grid[-1] == 8
    assert all(b < a for a, b in itertools.pairwise(grid))


SIZES = {"a": 1000, "b": 100, "c": 10}


@pytest.mark.parametrize("method", ["uniform", "global_magnitude", "lamp", "sensitivity"])
def test_allocation_meets_the_budget_within_floors_and_ceilings(method: str) -> None:
    g = torch.Generator().manual_seed(0)
    weights = {n: torch.randn(s, generator=g) * (i + 1) for i, (n, s) in enumerate(SIZES.items())}
    scan = {
        n: [ScanPoint(c, 1.0 + 50.0 / c * (i + 1), 0.5) for c in keep_grid(s, 2)]
        for i, (n, s) in enumerate(SIZES.items())
    }
    available = {"a": 600, "b": 100, "c": 10}
    counts = allocate(
        200, SIZES, method, min_count=5, available=available, weights=weights, scan=scan
    )
    assert sum(counts.values()) <= 200
    assert sum(counts.values()) >= 180  # uses the budget, up to rounding
    for n, c in counts.items():
        assert min(5, available[n]) <= c <= available[n]


def test_global_magnitude_keeps_the_largest_weights() -> None:
    weights = {"a": torch.tensor([5.0, 4.0, 0.1, 0.2]), "b": torch.tensor([3.0, 0.3, 0.01])}
    counts = allocate(3, {"a": 4, "b": 3}, "global_magnitude", min_count=1, weights=weights)
    assert counts == {"a": 2, "b": 1}


def test_lamp_scores_by_hand() -> None:
    # squares 9, 1, 4; each over the sum of the squares at least as large: 9/9, 1/14, 4/13
    scores = lamp_scores(torch.tensor([3.0, -1.0, 2.0]))
    assert torch.allclose(scores, torch.tensor([1.0, 1 / 14, 4 / 13], dtype=scores.dtype))
    assert torch.equal(lamp_scores(torch.zeros(2, 2)), torch.zeros(4, dtype=scores.dtype))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=40),
    st.floats(1e-30, 1e30),
)
def test_lamp_scores_ignore_the_layers_scale(values: list[float], scale: float) -> None:
    w = torch.tensor(values)
    scores = lamp_scores(w)
    assert torch.all((scores >= 0) & (scores <= 1))
    if bool(w.any()):
        assert float(scores.max()) == 1.0  # the layer's largest weight, however small
    scaled = w.double() * scale  # tiny or huge layers: no underflow, no overflow
    if bool(scaled.float().isfinite().all()) and bool((scaled.float() != 0).eq(w != 0).all()):
        assert torch.allclose(lamp_scores(scaled.float()), scores, rtol=1e-4, atol=1e-6)


def test_lamp_scores_survive_weights_whose_squares_underflow_float32() -> None:
    scores = lamp_scores(torch.tensor([1e-30, 3e-30, 2e-30]))
    assert torch.allclose(scores, torch.tensor([1 / 14, 1.0, 4 / 13], dtype=scores.dtype))


def test_lamp_does_not_starve_a_layer_of_small_weights() -> None:
    g = torch.Generator().manual_seed(0)
    weights = {"big": torch.randn(100, generator=g) * 10, "small": torch.randn(100, generator=g)}
    weights["small"] *= 0.01
    sizes = {"big": 100, "small": 100}
    kept = allocate(50, sizes, "global_magnitude", min_count=2, weights=weights)
    assert kept == {"big": 48, "small": 2}  # global magnitude leaves the floor
    kept = allocate(50, sizes, "lamp", min_count=2, weights=weights)
    assert sum(kept.values()) == 50 and 15 <= kept["small"] <= 35  # same shape: a fair share


def test_uniform_uses_one_ratio() -> None:
    counts = allocate(111, SIZES, "uniform", min_count=1)
    assert counts["a"] == pytest.approx(100, abs=1) and counts["b"] == pytest.approx(10, abs=1)


def test_sensitivity_spares_the_fragile_layer() -> None:
    # "robust" loses nothing until 10 weights; "fragile" loses as soon as it is pruned.
    scan = {
        "robust": [ScanPoint(c, 1.0 if c >= 10 else 5.0, 0.9) for c in keep_grid(1000, 1)],
        "fragile": [ScanPoint(c, 1.0 + (1000 - c) / 100, 0.9) for c in keep_grid(1000, 1)],
    }
    counts = allocate(
        1000, {"robust": 1000, "fragile": 1000}, "sensitivity", min_count=1, scan=scan
    )
    assert counts["robust"] < 100 < counts["fragile"]


def test_allocation_refuses_a_budget_below_the_floors() -> None:
    with pytest.raises(ValueError, match="floor"):
        allocate(10, SIZES, "uniform", min_count=8)


def test_sensitivity_scan_restores_weights_and_respects_zeros() -> None:
    model = create_model("lenet300")
    fc3 = model.fc3.weight
    with torch.no_grad():
        fc3[:, ::2] = 0.0
    before = fc3.detach().clone()
    seen: list[int] = []

    def score() -> tuple[float, float]:
        seen.append(int(torch.count_nonzero(model.fc3.weight)))
        return 1.0, 0.5

    curves = sensitivity_scan(model, ["fc3"], score, min_count=8)
    assert torch.equal(model.fc3.weight, before)
    assert seen[0] == int(torch.count_nonzero(before))  # starts from the layer's non-zeros
    assert [p.count for p in curves["fc3"]] == seen and seen[-1] == 8
