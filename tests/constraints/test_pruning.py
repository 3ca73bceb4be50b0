"""Pruning projections: feasibility, exactness, optimality (brute force), tie-breaks, errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from admmcompress.constraints import (
    Channel,
    Column,
    ConstraintError,
    Filter,
    Irregular,
    available_constraints,
    group_count,
    group_mask,
    irregular_mask,
    keep_count,
    make_constraint,
    project_channels,
    project_columns,
    project_filters,
    project_irregular,
    topk_mask,
)

SETTINGS = settings(max_examples=200, deadline=None)

TIE_VALUES = [-1.0, 0.0, 0.5, 1.0]
# Exactly representable in float16, bfloat16, float32 and float64, and so are their squares
# and the sums of a few of them: every comparison is exact in every dtype.
EXACT_VALUES = [-3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0]
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]

STRUCTURED = {
    "filter": (project_filters, Filter),
    "channel": (project_channels, Channel),
    "column": (project_columns, Column),
}


# -- helpers ----------------------------------------------------------------------------------
def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bit pattern of a float tensor (so -0.0 and 0.0 differ), for bitwise equality."""
    int_dtype = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(int_dtype)


def assert_bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(bits(a), bits(b)), f"{a} != {b} bitwise"


def group_ids(shape: tuple[int, ...], axis: str) -> torch.Tensor:
    """Group index of every element, from the definition (row-major flat indices)."""
    numel = math.prod(shape)
    idx = torch.arange(numel).reshape(shape)
    per_row = numel // shape[0]
    if axis == "filter":  # rows of [out, in*kh*kw]
        return idx // per_row
    if axis == "channel":  # input channel: dim 1
        return (idx // math.prod(shape[2:])) % shape[1]
    if axis == "column":  # columns of [out, in*kh*kw]
        return idx % per_row
    raise AssertionError(axis)


def n_groups(shape: tuple[int, ...], axis: str) -> int:
    return {"filter": shape[0], "channel": shape[1], "column": math.prod(shape[1:])}[axis]


def values_strategy(mode: str) -> st.SearchStrategy[float]:
    ties = st.sampled_from(TIE_VALUES)
    floats = st.floats(-100, 100, allow_nan=False, width=32)
    return {"ties": ties, "floats": floats, "mixed": st.one_of(ties, floats)}[mode]


@st.composite
def tensors(
    draw, ndims: list[int], max_side: int = 4, max_numel: int = 64, mode: str | None = None
):
    ndim = draw(st.sampled_from(ndims))
    shape = tuple(draw(st.lists(st.integers(1, max_side), min_size=ndim, max_size=ndim)))
    while math.prod(shape) > max_numel:  # shrink the largest side until the tensor is tiny
        i = max(range(ndim), key=lambda j: shape[j])
        shape = (*shape[:i], shape[i] - 1, *shape[i + 1 :])
    if mode is None:
        mode = draw(st.sampled_from(["ties", "floats", "mixed"]))
    n = math.prod(shape)
    data = draw(st.lists(values_strategy(mode), min_size=n, max_size=n))
    return torch.tensor(data, dtype=torch.float32).reshape(shape)


# -- irregular -----------------------------------------------------------------------------
@SETTINGS
@given(w=tensors([1, 2, 3, 4]), data=st.data())
def test_irregular_projection_is_exact_and_deterministic(w: torch.Tensor, data) -> None:
    n = w.numel()
    k = data.draw(st.integers(0, n + 2), label="k")
    before = w.clone()
    p = project_irregular(w, k)
    mask = irregular_mask(w, k)

    assert_bitwise_equal(w, before)  # input untouched
    assert p.shape == w.shape and p.dtype == w.dtype and p.device == w.device
    assert mask.dtype == torch.bool and mask.shape == w.shape

    # The exact specification: the k largest |w|, ties to the lower flat index.
    v = w.flatten().tolist()
    order = sorted(range(n), key=lambda i: (-abs(v[i]), i))
    expected = torch.zeros(n, dtype=torch.bool)
    expected[order[: min(k, n)]] = True
    assert torch.equal(mask.flatten(), expected)

    # Feasibility: exactly min(k, nnz) non-zeros; kept values unchanged, the rest zero.
    nnz = int(torch.count_nonzero(w))
    assert int(torch.count_nonzero(p)) == min(k, nnz)
    assert torch.equal(p[mask], w[mask])
    assert bool((p[~mask] == 0).all())
    if nnz <= k:
        assert torch.equal(p, w)

    # Idempotence, bitwise.
    assert_bitwise_equal(project_irregular(p, k), p)

    # The constraint object agrees with the function.
    c = Irregular(count=k) if k >= 1 else None
    if c is not None:
        assert_bitwise_equal(c.project(w), p)
        assert torch.equal(c.mask(w), mask)
        assert c.violation(p) is None
        if nnz > min(k, n):
            msg = c.violation(w)
            assert msg is not None and str(nnz) in msg and str(min(k, n)) in msg


@SETTINGS
@given(w=tensors([1, 2, 3, 4], max_side=3, max_numel=8), data=st.data())
def test_irregular_projection_is_optimal_by_brute_force(w: torch.Tensor, data) -> None:
    n = w.numel()
    k = data.draw(st.integers(1, n), label="k")
    p = project_irregular(w, k)
    v = w.double().flatten().tolist()
    pv = p.double().flatten().tolist()
    assert int(torch.count_nonzero(p)) <= k
    dist = math.fsum((a - b) ** 2 for a, b in zip(v, pv, strict=True))
    for support in itertools.combinations(range(n), k):
        # The nearest point with this support keeps w there and zeros the rest.
        other = math.fsum(v[i] ** 2 for i in range(n) if i not in support)
        assert dist <= other, f"support {support} is strictly closer: {other} < {dist}"


@pytest.mark.parametrize("shape", [(7,), (2, 5), (3, 1, 2, 2)])
@pytest.mark.parametrize("k", [1, 3, 6])
def test_irregular_all_equal_keeps_lowest_flat_indices(shape, k) -> None:
    for c in (0.5, -1.0):
        w = torch.full(shape, c)
        mask = irregular_mask(w, k).flatten()
        n = w.numel()
        assert mask.tolist() == [True] * min(k, n) + [False] * (n - min(k, n))


@SETTINGS
@given(w=tensors([1, 2, 3, 4], max_numel=32, mode="ties"), data=st.data())
def test_irregular_identical_across_dtypes(w: torch.Tensor, data) -> None:
    k = data.draw(st.integers(0, w.numel()), label="k")
    w = w * data.draw(st.sampled_from([1.0, 2.0, -3.0]), label="scale")
    ref = project_irregular(w.double(), k)
    ref_mask = irregular_mask(w.double(), k)
    for dt in DTYPES:
        wd = w.to(dt)
        p = project_irregular(wd, k)
        assert p.dtype == dt
        assert torch.equal(irregular_mask(wd, k), ref_mask), dt
        assert torch.equal(p.double(), ref), dt


@pytest.mark.parametrize("dtype", DTYPES)
def test_projections_preserve_dtype_shape_device_and_input(dtype) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, 2, 2, generator=g).to(dtype)
    before = w.clone()
    for fn in (project_irregular, project_filters, project_channels, project_columns):
        p = fn(w, 2)
        assert p.dtype == dtype and p.shape == w.shape and p.device == w.device
        assert_bitwise_equal(w, before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES)
def test_projections_identical_on_cuda(dtype) -> None:
    g = torch.Generator().manual_seed(1)
    values = torch.tensor(EXACT_VALUES)
    w = values[torch.randint(len(EXACT_VALUES), (6, 4, 3, 3), generator=g)].to(dtype)
    wc = w.cuda()
    for k in (1, 5, 17, 100):
        pc = project_irregular(wc, k)
        assert pc.device == wc.device
        assert torch.equal(pc.cpu(), project_irregular(w, k))
        assert torch.equal(irregular_mask(wc, k).cpu(), irregular_mask(w, k))
    for axis, (fn, _) in STRUCTURED.items():
        for k in (1, 2, 3):
            pc = fn(wc, k)
            assert pc.device == wc.device
            assert torch.equal(pc.cpu(), fn(w, k)), axis
            assert torch.equal(group_mask(wc, k, axis).cpu(), group_mask(w, k, axis)), axis


# -- structured: filter, channel, column -------------------------------------------------------
@SETTINGS
@given(
    w=tensors([2, 4], max_side=3, max_numel=48),
    axis=st.sampled_from(sorted(STRUCTURED)),
    data=st.data(),
)
def test_group_projection_is_exact(w: torch.Tensor, axis: str, data) -> None:
    fn, cls = STRUCTURED[axis]
    shape = tuple(w.shape)
    g = n_groups(shape, axis)
    assert group_count(w, axis) == g
    k = data.draw(st.integers(0, g + 1), label="k")
    before = w.clone()
    p = fn(w, k)
    mask = group_mask(w, k, axis)

    assert_bitwise_equal(w, before)
    assert p.shape == w.shape and p.dtype == w.dtype and p.device == w.device
    assert mask.dtype == torch.bool and mask.shape == w.shape

    ids = group_ids(shape, axis).flatten()
    flat_w, flat_p, flat_m = w.flatten(), p.flatten(), mask.flatten()
    kept_groups = sorted({int(i) for i in ids[flat_m]})
    # The mask is a union of whole groups, exactly min(k, groups) of them.
    assert torch.equal(flat_m, torch.isin(ids, torch.tensor(kept_groups, dtype=torch.long)))
    assert len(kept_groups) == min(k, g)

    alive = {int(i) for i in ids[flat_w != 0]}
    alive_after = {int(i) for i in ids[flat_p != 0]}
    assert len(alive_after) == min(k, len(alive))
    assert alive_after <= alive
    assert torch.equal(flat_p[flat_m], flat_w[flat_m])
    assert bool((flat_p[~flat_m] == 0).all())
    if len(alive) <= k:
        assert torch.equal(p, w)

    assert_bitwise_equal(fn(p, k), p)

    if k >= 1:
        c = cls(count=k)
        assert_bitwise_equal(c.project(w), p)
        assert torch.equal(c.mask(w), mask)
        assert c.violation(p) is None
        assert c.budget(w) == min(k, g) * (w.numel() // g)
        if len(alive) > k:
            msg = c.violation(w)
            assert msg is not None and str(len(alive)) in msg and axis in msg


@SETTINGS
@given(
    w=tensors([2, 4], max_side=3, max_numel=36, mode="ties"),
    axis=st.sampled_from(sorted(STRUCTURED)),
    data=st.data(),
)
def test_group_projection_tie_break_and_dtypes(w: torch.Tensor, axis: str, data) -> None:
    """Largest L2 norms, ties to the lower group index; the same result in every dtype."""
    fn, _ = STRUCTURED[axis]
    shape = tuple(w.shape)
    g = n_groups(shape, axis)
    k = data.draw(st.integers(0, g), label="k")
    ids = group_ids(shape, axis).flatten()
    v = w.flatten().tolist()
    norms = [sum(v[i] ** 2 for i in range(len(v)) if int(ids[i]) == j) for j in range(g)]
    order = sorted(range(g), key=lambda j: (-norms[j], j))
    expected = torch.isin(ids, torch.tensor(order[:k], dtype=torch.long)).reshape(shape)
    assert torch.equal(group_mask(w, k, axis), expected)
    for dt in DTYPES:
        wd = w.to(dt)
        assert torch.equal(group_mask(wd, k, axis), expected), dt
        p = fn(wd, k)
        assert p.dtype == dt
        assert torch.equal(p.double(), w.double() * expected), dt


@st.composite
def few_group_tensors(draw):
    """2-D or 4-D tensors with at most 6 filters, channels and columns each."""
    if draw(st.booleans()):
        shape = (draw(st.integers(1, 4)), draw(st.integers(1, 6)))
    else:
        dims = draw(st.sampled_from([(1, 1, 1), (1, 2, 2), (2, 1, 3), (2, 3, 1), (1, 3, 2)]))
        shape = (draw(st.integers(1, 3)), *dims)
    mode = draw(st.sampled_from(["ties", "floats", "mixed"]))
    n = math.prod(shape)
    data = draw(st.lists(values_strategy(mode), min_size=n, max_size=n))
    return torch.tensor(data, dtype=torch.float32).reshape(shape)


@SETTINGS
@given(w=few_group_tensors(), axis=st.sampled_from(sorted(STRUCTURED)), data=st.data())
def test_group_projection_is_optimal_by_brute_force(w: torch.Tensor, axis: str, data) -> None:
    fn, _ = STRUCTURED[axis]
    shape = tuple(w.shape)
    g = n_groups(shape, axis)
    assert g <= 6
    k = data.draw(st.integers(1, g), label="k")
    p = fn(w, k)
    ids = group_ids(shape, axis).flatten().tolist()
    v = w.double().flatten().tolist()
    pv = p.double().flatten().tolist()
    dist = math.fsum((a - b) ** 2 for a, b in zip(v, pv, strict=True))
    for kept in itertools.combinations(range(g), k):
        other = math.fsum(x**2 for x, j in zip(v, ids, strict=True) if j not in kept)
        assert dist <= other * (1 + 1e-12), f"groups {kept} strictly closer: {other} < {dist}"


@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 2, 2)])
@pytest.mark.parametrize("axis", sorted(STRUCTURED))
def test_group_all_equal_keeps_lowest_group_indices(shape, axis) -> None:
    w = torch.ones(shape)
    g = n_groups(shape, axis)
    ids = group_ids(shape, axis)
    for k in (1, 2, g):
        assert torch.equal(group_mask(w, k, axis), ids < k)


def test_group_definitions_on_a_conv_weight() -> None:
    """Filter = out row, channel = input channel, column = one (in, kh, kw) position."""
    w = torch.zeros(3, 2, 2, 2)
    w[1] = 1.0  # filter 1 dominates
    assert torch.equal(project_filters(w, 1), w)
    w = torch.zeros(3, 2, 2, 2)
    w[:, 1] = 1.0  # channel 1 dominates
    assert torch.equal(project_channels(w, 1), w)
    w = torch.zeros(3, 2, 2, 2)
    w[:, 1, 0, 1] = 1.0  # column (1, 0, 1) dominates, flat column index 5
    assert torch.equal(project_columns(w, 1), w)
    m = group_mask(torch.rand(3, 2, 2, 2) + w * 10, 1, "column")
    assert int(m.sum()) == 3 and bool(m[:, 1, 0, 1].all())


@pytest.mark.parametrize("axis", sorted(STRUCTURED))
def test_structured_on_1d_raises(axis) -> None:
    fn, cls = STRUCTURED[axis]
    w = torch.randn(6)
    with pytest.raises(ValueError, match="dims"):
        fn(w, 2)
    with pytest.raises(ValueError):
        cls(count=2).project(w)
    with pytest.raises(ValueError):
        cls(keep=0.5).violation(w)


# -- keep ratio, counts, errors, registry ------------------------------------------------------
@SETTINGS
@given(total=st.integers(1, 100_000), keep=st.floats(1e-6, 1.0, exclude_min=False))
def test_keep_count_rounds_and_is_at_least_one(total: int, keep: float) -> None:
    k = keep_count(total, keep)
    assert 1 <= k <= total
    if keep * total >= 1:
        assert abs(k - keep * total) <= 0.5 + 1e-9
    else:
        assert k == 1


def test_keep_count_examples() -> None:
    assert keep_count(500, 0.2) == 100
    assert keep_count(25000, 0.2) == 5000
    assert keep_count(400_000, 0.05) == 20000
    assert keep_count(5000, 0.05) == 250
    assert keep_count(10, 0.01) == 1  # at least one
    assert keep_count(10, 0.26) == 3
    assert keep_count(10, 0.24) == 2
    assert keep_count(7, 1.0) == 7
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="keep"):
            keep_count(10, bad)


def test_irregular_keep_ratio_keeps_exact_count() -> None:
    g = torch.Generator().manual_seed(0)
    for shape in [(500,), (20, 1, 5, 5)]:
        w = torch.randn(shape, generator=g)
        c = Irregular(keep=0.2)
        assert c.k(w) == 100 and c.budget(w) == 100
        p = c.project(w)
        assert int(torch.count_nonzero(p)) == 100
        assert int(c.mask(w).sum()) == 100
        assert c.violation(p) is None
        assert c.violation(w) == "500 non-zero weights, at most 100 allowed"
    # A count above the size of the tensor keeps everything.
    assert Irregular(count=50).k(torch.ones(10)) == 10


def test_structured_keep_ratio() -> None:
    w = torch.randn(10, 4, 3, 3)
    assert Filter(keep=0.3).k(w) == 3
    assert Channel(keep=0.5).k(w) == 2
    assert Column(keep=0.25).k(w) == 9  # 36 columns
    p = Filter(keep=0.3).project(w)
    assert int((p.reshape(10, -1) != 0).any(dim=1).sum()) == 3
    assert Filter(keep=0.3).budget(w) == 3 * 36


@pytest.mark.parametrize("cls", [Irregular, Filter, Channel, Column])
def test_constructor_errors_name_the_problem(cls) -> None:
    ratio = r"keep must be a ratio in \(0, 1\] \(0.05 keeps 5%\)"
    with pytest.raises(ConstraintError, match=ratio + ", got 0"):
        cls(keep=0)
    with pytest.raises(ConstraintError, match=ratio + ", got 1.5"):
        cls(keep=1.5)
    with pytest.raises(ValueError, match="exactly one of keep"):
        cls(keep=0.5, count=3)
    with pytest.raises(ValueError, match="exactly one of keep"):
        cls()
    with pytest.raises(ConstraintError, match="count must be an integer >= 1, got 0"):
        cls(count=0)


def test_make_constraint_and_registry() -> None:
    kinds = available_constraints()
    assert {"irregular", "filter", "channel", "column"} <= set(kinds)
    c = make_constraint("irregular", keep=0.1)
    assert isinstance(c, Irregular) and c == Irregular(keep=0.1)
    assert c.kind == "irregular" and c.describe() == "irregular (keep 0.1)"
    assert make_constraint("filter", count=2) == Filter(count=2)
    assert Channel(count=2).describe() == "channel (count 2)"
    with pytest.raises(ValueError, match="unknown constraint kind 'bogus'") as info:
        make_constraint("bogus", keep=0.1)
    for kind in kinds:
        assert kind in str(info.value)
    with pytest.raises(ValueError, match="exactly one"):
        make_constraint("irregular")


def test_violation_none_for_projected_and_message_for_dense() -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 4, 3, 3, generator=g)
    for c in (Irregular(keep=0.1), Filter(count=2), Channel(count=1), Column(keep=0.5)):
        assert c.violation(c.project(w)) is None
        msg = c.violation(w)
        assert isinstance(msg, str) and "allowed" in msg
    assert Filter(count=2).violation(w) == "6 non-zero filters, at most 2 allowed"
    assert Channel(count=1).violation(w) == "4 non-zero channels, at most 1 allowed"
    assert Column(keep=0.5).violation(w) == "36 non-zero columns, at most 18 allowed"
    # Fewer non-zeros than the budget is fine.
    assert Irregular(count=5).violation(torch.tensor([0.0, 1.0, 0.0])) is None


def test_topk_mask_errors_and_edges() -> None:
    with pytest.raises(ValueError, match="1-D"):
        topk_mask(torch.ones(2, 2), 1)
    with pytest.raises(ValueError, match="k must be >= 0"):
        topk_mask(torch.ones(3), -1)
    assert topk_mask(torch.ones(3), 0).tolist() == [False] * 3
    assert topk_mask(torch.ones(3), 5).tolist() == [True] * 3
    assert topk_mask(torch.tensor([1.0, 3.0, 3.0, 2.0]), 2).tolist() == [False, True, True, False]
