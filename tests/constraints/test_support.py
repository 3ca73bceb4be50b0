"""A set held inside an earlier step's mask (FixedSupport): masks only shrink."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from admmcompress.constraints import (
    FixedSupport,
    make_constraint,
    prunes,
    quantizer_of,
)

# ------------------------------------------------------------------------------ FixedSupport

shapes = st.tuples(st.integers(1, 5), st.integers(1, 6))


@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000), k=st.integers(0, 30))
def test_fixed_support_irregular_is_exact(shape: tuple[int, int], seed: int, k: int) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    support = torch.rand(shape, generator=g) > 0.4
    c = FixedSupport(make_constraint("irregular", count=max(k, 1)), support)
    p = c.project(w)
    assert c.violation(p) is None
    assert torch.count_nonzero(p[~support]) == 0
    assert int(torch.count_nonzero(p)) <= min(max(k, 1), int(support.sum()))
    assert torch.equal(c.project(p), p)  # idempotent
    # optimal: the best feasible point keeps the largest |w| inside the support
    inside = (w.abs() * support).flatten().sort(descending=True).values
    best = (w**2).sum() - (inside[: max(k, 1)] ** 2).sum()
    assert torch.isclose(((w - p) ** 2).sum(), best, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000), kind=st.sampled_from(["binary", "ternary"]))
def test_fixed_support_quantize_keeps_the_mask(
    shape: tuple[int, int], seed: int, kind: str
) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    support = torch.rand(shape, generator=g) > 0.5
    c = FixedSupport(make_constraint(kind), support)
    p = c.project(w)
    assert c.violation(p) is None
    assert torch.count_nonzero(p[~support]) == 0
    if kind == "binary" and support.any():
        assert torch.equal(p != 0, support)  # binary: every kept weight is +-a
    assert quantizer_of(c) is not None and prunes(c)


def test_fixed_support_names_revived_weights() -> None:
    support = torch.tensor([[True, False], [False, True]])
    c = FixedSupport(make_constraint("irregular", count=2), support)
    assert "pruned by an earlier step" in c.violation(torch.ones(2, 2))
