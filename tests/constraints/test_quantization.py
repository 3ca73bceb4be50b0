"""Quantization projections: on the grid, optimal scale (brute force), idempotence, masks."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import admmcompress.constraints.quantization as quantization
from admmcompress.constraints import (
    Binary,
    Filter,
    Irregular,
    PrunedQuantized,
    Ternary,
    Uniform,
    available_constraints,
    check_on_grid,
    count_levels,
    fit_binary,
    fit_ternary,
    fit_uniform,
    irregular_mask,
    make_constraint,
    max_code,
    project_binary,
    project_pruned_quantized,
    project_ternary,
    project_uniform,
    quantization_error,
)

SETTINGS = settings(max_examples=60, deadline=None)
FEW = settings(max_examples=30, deadline=None)

TIE_VALUES = [-1.0, -0.5, 0.0, 0.5, 1.0, 2.0]
BITS = list(range(2, 9))
KINDS = ["binary", "ternary", "uniform"]


# -- helpers ----------------------------------------------------------------------------------
def values_strategy(mode: str) -> st.SearchStrategy[float]:
    ties = st.sampled_from(TIE_VALUES)
    # No subnormals: a float32 subnormal has too few bits to hold a grid point to 1e-5.
    floats = st.floats(-100, 100, allow_nan=False, allow_subnormal=False, width=32)
    return {"ties": ties, "floats": floats, "mixed": st.one_of(ties, floats)}[mode]


SHAPES = [(1,), (5,), (2, 3), (4, 6), (3, 1), (2, 3, 2, 2), (1, 2, 2, 1)]
SMALL_SHAPES = [(1,), (3,), (8,), (2, 2), (2, 4), (4, 2), (1, 2, 2, 2), (2, 1, 2, 1)]


@st.composite
def tensors(draw, shapes=SHAPES, dtype=torch.float64):
    shape = draw(st.sampled_from(shapes))
    mode = draw(st.sampled_from(["ties", "floats", "mixed"]))
    n = math.prod(shape)
    data = draw(st.lists(values_strategy(mode), min_size=n, max_size=n))
    return torch.tensor(data, dtype=torch.float64).reshape(shape).to(dtype)


def rows(t: torch.Tensor, per_channel: bool) -> torch.Tensor:
    return t.reshape(t.shape[0], -1) if per_channel else t.reshape(1, -1)


def err64(w: torch.Tensor, q: torch.Tensor) -> float:
    return math.fsum(((w.double() - q.double()) ** 2).flatten().tolist())


def naive_uniform(w: torch.Tensor, bits: int, per_channel: bool) -> torch.Tensor:
    """Round to the grid of the naive scale max|w| / L, written out independently."""
    levels = 2 ** (bits - 1) - 1
    out = []
    for r in rows(w.double(), per_channel):
        m = float(r.abs().max())
        if m == 0:
            out.append(torch.zeros_like(r))
            continue
        a = m / levels
        out.append(torch.clamp(torch.round(r / a), -levels, levels) * a)
    return torch.stack(out).reshape(w.shape)


def brute_uniform_error(row: torch.Tensor, bits: int, n_scales: int = 20_000) -> float:
    """Smallest error over a dense grid of scales in (0, 2 max|w| / L]."""
    levels = 2 ** (bits - 1) - 1
    row = row.double()
    m = float(row.abs().max())
    if m == 0:
        return 0.0
    a = torch.linspace(2 * m / levels / n_scales, 2 * m / levels, n_scales, dtype=torch.float64)
    codes = torch.clamp(torch.round(row[None, :] / a[:, None]), -levels, levels)
    return float(((row[None, :] - a[:, None] * codes) ** 2).sum(dim=1).min())


def brute_ternary_error(row: list[float]) -> float:
    """Exact optimum over every set T of non-zeros (best scale on T: the mean of |w| there)."""
    best = math.fsum(v * v for v in row)  # T empty
    for m in range(1, len(row) + 1):
        for subset in itertools.combinations(range(len(row)), m):
            a = math.fsum(abs(row[i]) for i in subset) / m
            err = math.fsum((abs(v) - a) ** 2 if i in subset else v * v for i, v in enumerate(row))
            best = min(best, err)
    return best


def assert_common(w: torch.Tensor, before: torch.Tensor, q: torch.Tensor, scale, per_channel):
    assert torch.equal(w, before), "input modified"
    assert q.shape == w.shape and q.dtype == w.dtype and q.device == w.device
    assert scale.dtype == w.dtype
    assert scale.shape == ((w.shape[0],) if per_channel else ())
    assert bool(torch.isfinite(q).all()) and bool(torch.isfinite(scale).all())
    assert bool((scale >= 0).all())


# -- binary ---------------------------------------------------------------------------------------
@SETTINGS
@given(w=tensors(), per_channel=st.booleans())
def test_binary_is_exact_on_grid_and_idempotent(w: torch.Tensor, per_channel: bool) -> None:
    before = w.clone()
    q, scale = fit_binary(w, per_channel)
    assert_common(w, before, q, scale, per_channel)
    assert torch.equal(project_binary(w, per_channel), q)
    assert check_on_grid(q, "binary", per_channel=per_channel) is None
    assert count_levels(q, per_channel) <= 2

    for r, qr, a in zip(rows(w, per_channel), rows(q, per_channel), scale.reshape(-1), strict=True):
        vals = r.tolist()
        mean = math.fsum(abs(v) for v in vals) / len(vals)
        assert float(a) == pytest.approx(mean, rel=1e-12, abs=0)
        # sign(w) * a, with sign(0) = +1
        expected = torch.where(r >= 0, a, -a)
        assert torch.equal(qr, expected)
        # Closed form: no scale is better; in particular not the naive a = max|w|.
        e = math.fsum((v - float(x)) ** 2 for v, x in zip(vals, qr, strict=True))
        for other in (max(abs(v) for v in vals), mean * 0.9, mean * 1.1, 1.0):
            e_other = math.fsum((abs(v) - other) ** 2 for v in vals)
            assert e <= e_other * (1 + 1e-12) + 1e-12

    assert torch.equal(project_binary(q, per_channel), q)  # bitwise idempotent


# -- ternary --------------------------------------------------------------------------------------
@SETTINGS
@given(w=tensors(), per_channel=st.booleans())
def test_ternary_on_grid_and_idempotent(w: torch.Tensor, per_channel: bool) -> None:
    before = w.clone()
    q, scale = fit_ternary(w, per_channel)
    assert_common(w, before, q, scale, per_channel)
    assert torch.equal(project_ternary(w, per_channel), q)
    assert check_on_grid(q, "ternary", per_channel=per_channel) is None
    assert count_levels(q, per_channel) <= 3
    for qr, a in zip(rows(q, per_channel), scale.reshape(-1), strict=True):
        assert set(qr.abs().tolist()) <= {0.0, float(a)}
    # Never worse than binary (a ternary candidate) or than zero.
    assert err64(w, q) <= err64(w, project_binary(w, per_channel)) * (1 + 1e-12) + 1e-12
    assert err64(w, q) <= err64(w, torch.zeros_like(w)) + 1e-12
    assert torch.equal(project_ternary(q, per_channel), q)  # bitwise idempotent


@SETTINGS
@given(w=tensors(SMALL_SHAPES), per_channel=st.booleans())
def test_ternary_is_exact_by_brute_force(w: torch.Tensor, per_channel: bool) -> None:
    assert w.numel() <= 8
    q = project_ternary(w, per_channel)
    for r, qr in zip(rows(w, per_channel), rows(q, per_channel), strict=True):
        best = brute_ternary_error(r.tolist())
        e = err64(r, qr)
        assert e <= best * (1 + 1e-9) + 1e-12, f"{e} > brute force {best}"


# -- uniform --------------------------------------------------------------------------------------
@SETTINGS
@given(w=tensors(), bits=st.sampled_from(BITS), per_channel=st.booleans())
def test_uniform_on_grid_better_than_naive_and_idempotent(
    w: torch.Tensor, bits: int, per_channel: bool
) -> None:
    levels = max_code(bits)
    before = w.clone()
    q, scale = fit_uniform(w, bits, per_channel)
    assert_common(w, before, q, scale, per_channel)
    assert torch.equal(project_uniform(w, bits, per_channel), q)
    assert check_on_grid(q, "uniform", bits, per_channel) is None
    assert count_levels(q, per_channel) <= 2 * levels + 1
    for qr, a in zip(rows(q, per_channel), scale.reshape(-1), strict=True):
        if float(a) == 0:
            assert bool((qr == 0).all())
            continue
        codes = qr / a
        assert torch.allclose(codes, codes.round(), rtol=0, atol=1e-9)
        assert bool((codes.round().abs() <= levels).all())

    naive = naive_uniform(w, bits, per_channel)
    assert err64(w, q) <= err64(w, naive) * (1 + 1e-12) + 1e-12

    assert torch.equal(project_uniform(q, bits, per_channel), q)  # bitwise idempotent
    q32 = project_uniform(w.float(), bits, per_channel)
    assert check_on_grid(q32, "uniform", bits, per_channel) is None
    assert torch.equal(project_uniform(q32, bits, per_channel), q32)


@SETTINGS
@given(w=tensors(), bits=st.sampled_from(BITS), per_channel=st.booleans())
def test_uniform_scale_beats_brute_force_grid(
    w: torch.Tensor, bits: int, per_channel: bool
) -> None:
    q = project_uniform(w, bits, per_channel)
    for r, qr in zip(rows(w, per_channel), rows(q, per_channel), strict=True):
        brute = brute_uniform_error(r, bits)
        e = err64(r, qr)
        assert e <= brute + 1e-3 * brute + 1e-9, f"{e} > brute force {brute}"


def test_uniform_optimum_can_lie_above_the_naive_scale() -> None:
    # 3 bits (L = 3): the naive scale 1/3 cannot hold 0.5; a = 0.5 holds both values exactly.
    q, a = fit_uniform(torch.tensor([1.0, 0.5], dtype=torch.float64), 3)
    assert q.tolist() == [1.0, 0.5] and float(a) == 0.5
    # The lattice 0.5 * {0, 1, ..., 6} at 4 bits (L = 7): exact, many scales above max|w| / L.
    w = torch.tensor([[3.0, -2.0], [0.5, 1.0]])
    assert torch.equal(project_uniform(w, 4), w)
    assert torch.equal(project_uniform(w, 4, per_channel=True), w)


def test_uniform_two_bits_is_the_ternary_set() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 7, generator=g)
    for pc in (False, True):
        q, a = fit_uniform(w, 2, pc)
        qt, at = fit_ternary(w, pc)
        assert torch.equal(q, qt) and torch.equal(a, at)


@FEW
@given(
    w=tensors([(4, 6), (2, 3, 2, 2)]), bits=st.sampled_from([3, 4, 8]), per_channel=st.booleans()
)
def test_uniform_grid_path_for_large_rows(w: torch.Tensor, bits: int, per_channel: bool) -> None:
    """Rows too large for the exact sweep: grid search + refinement, still >= naive."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quantization, "EXACT_ROW_BREAKPOINTS", 0)
        q, _ = fit_uniform(w, bits, per_channel)
    assert check_on_grid(q, "uniform", bits, per_channel) is None
    assert err64(w, q) <= err64(w, naive_uniform(w, bits, per_channel)) * (1 + 1e-12) + 1e-12


def test_uniform_grid_path_is_near_optimal_on_a_large_gaussian(monkeypatch) -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(3000, generator=g, dtype=torch.float64)
    exact = quantization_error(w, project_uniform(w, 4))
    monkeypatch.setattr(quantization, "EXACT_ROW_BREAKPOINTS", 0)
    grid = quantization_error(w, project_uniform(w, 4))
    naive = quantization_error(w, naive_uniform(w, 4, False))
    assert exact <= grid * (1 + 1e-12)
    assert grid <= exact * 1.01  # the grid is only near-optimal, but close on dense data
    assert grid < 0.6 * naive


# -- dtypes, zeros, edge cases --------------------------------------------------------------------
def fits():
    return {
        "binary": lambda w, pc, mask=None: fit_binary(w, pc, mask),
        "ternary": lambda w, pc, mask=None: fit_ternary(w, pc, mask),
        "uniform": lambda w, pc, mask=None: fit_uniform(w, 4, pc, mask),
    }


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("per_channel", [False, True])
def test_dtypes_and_devices(kind: str, per_channel: bool) -> None:
    fit = fits()[kind]
    g = torch.Generator().manual_seed(2)
    w64 = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    q64, _ = fit(w64, per_channel)
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        w = w64.to(dt)
        before = w.clone()
        q, a = fit(w, per_channel)
        assert torch.equal(w, before)
        assert q.dtype == dt and q.shape == w.shape and a.dtype == dt
        assert bool(torch.isfinite(q).all())
        if dt == torch.float32:  # the same search on the rounded input: nearly the same result
            assert torch.allclose(q.double(), q64, rtol=1e-3, atol=1e-3)
            assert check_on_grid(q, kind, 4 if kind == "uniform" else None, per_channel) is None
    if torch.cuda.is_available():
        qc, _ = fit(w64.cuda(), per_channel)
        assert qc.device.type == "cuda"
        assert torch.allclose(qc.cpu(), q64, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("per_channel", [False, True])
def test_all_zero_projects_to_zero_with_scale_zero(kind: str, per_channel: bool) -> None:
    fit = fits()[kind]
    for w in (torch.zeros(3, 4), -torch.zeros(2, 1, 2, 2), torch.zeros(5)):
        q, a = fit(w, per_channel)
        assert torch.equal(q, torch.zeros_like(w)) and bool((a == 0).all())
        assert not bool(torch.isnan(q).any())
    # One zero channel among others: that channel alone gets scale 0.
    w = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]])
    q, a = fit(w, True)
    assert float(a[0]) == 0 and bool((q[0] == 0).all()) and float(a[1]) > 0
    bits = 4 if kind == "uniform" else None
    assert check_on_grid(q, kind, bits, per_channel=True) is None


@pytest.mark.parametrize("kind", KINDS)
def test_edge_shapes_and_errors(kind: str) -> None:
    fit = fits()[kind]
    q, a = fit(torch.tensor(1.5), False)
    assert q.shape == () and a.shape == () and float(q) == 1.5  # exact: a one-value tensor
    q, a = fit(torch.empty(0, 3), False)
    assert q.shape == (0, 3) and a.shape == ()
    with pytest.raises(ValueError, match="per-channel"):
        fit(torch.tensor(1.5), True)
    with pytest.raises(ValueError, match="bool"):
        fit(torch.ones(2, 2), False, torch.ones(2, 2))
    with pytest.raises(ValueError, match="shape"):
        fit(torch.ones(2, 2), False, torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="floating"):
        fit(torch.ones(2, 2, dtype=torch.int64), False)


def test_binary_sign_of_zero_is_plus() -> None:
    q, a = fit_binary(torch.tensor([0.0, -0.0, -2.0, 4.0]))
    assert float(a) == 1.5 and q.tolist() == [1.5, 1.5, -1.5, 1.5]


def test_ternary_examples() -> None:
    # Sorted |w| = 3, 1, 1: S_m^2 / m = 9, 8, 8.33 -> only the 3 survives.
    q, a = fit_ternary(torch.tensor([1.0, -3.0, 1.0]))
    assert q.tolist() == [0.0, -3.0, 0.0] and float(a) == 3.0
    # 2, 1, 1: 4, 4.5, 5.33 -> all three, a = 4/3.
    q, a = fit_ternary(torch.tensor([1.0, -2.0, 1.0], dtype=torch.float64))
    assert float(a) == pytest.approx(4 / 3) and q.tolist() == [4 / 3, -4 / 3, 4 / 3]
    # Per channel: one scale per row of w.reshape(out, -1).
    w = torch.tensor([[[1.0, -3.0]], [[0.5, 0.5]]])
    q, a = fit_ternary(w, per_channel=True)
    assert a.tolist() == [3.0, 0.5] and q.tolist() == [[[0.0, -3.0]], [[0.5, 0.5]]]


def test_count_levels_and_error() -> None:
    w = torch.tensor([[1.0, -1.0, 0.0, -0.0], [2.0, 2.0, 2.0, 2.0]])
    assert count_levels(w) == 4  # -1, 0, 1, 2 (-0.0 and 0.0 are one value)
    assert count_levels(w, per_channel=True) == 3
    assert count_levels(torch.empty(0)) == 0
    assert quantization_error(w, torch.zeros_like(w)) == 18.0


# -- check_on_grid --------------------------------------------------------------------------------
def test_check_on_grid_messages() -> None:
    w = torch.tensor([[1.0, -1.0], [0.5, 0.5], [2.0, -2.0], [1.0, 2.0]])
    assert check_on_grid(w[:3], "binary", per_channel=True) is None
    msg = check_on_grid(w, "binary", per_channel=True)
    assert msg is not None and "channel 3" in msg and "magnitudes" in msg
    assert check_on_grid(w, "binary") == "tensor has 5 distinct values, binary allows 2"
    w4 = torch.tensor([[1.0, 1.0, 1.0, 1.0]] * 3 + [[0.1, 0.2, 0.3, 0.4]])
    assert check_on_grid(w4, "ternary", per_channel=True) == (
        "channel 3 has 4 distinct values, ternary allows 3"
    )
    msg = check_on_grid(torch.tensor([1.0, 0.0, -1.0]), "binary")
    assert msg is not None and "zero" in msg
    assert check_on_grid(torch.tensor([1.0, 0.0, -1.0]), "ternary") is None
    # Uniform, 3 bits (|q| <= 3): 0.1 * {1, 2, 3} fits, 0.31 fits no scale 0.1 / k.
    assert check_on_grid(torch.tensor([0.1, -0.2, 0.3, 0.0]), "uniform", 3) is None
    msg = check_on_grid(torch.tensor([0.1, -0.2, 0.31, 0.0]), "uniform", 3)
    assert msg is not None and "0.31" in msg and "|q| <= 3" in msg
    # Too large a code: 0.1 * 4 does not fit 3 bits; 0.05 * {2, 8} does not either.
    assert check_on_grid(torch.tensor([0.1, 0.4]), "uniform", 3) is not None
    assert check_on_grid(torch.tensor([0.1, 0.4]), "uniform", 4) is None
    # A scale below the smallest magnitude: 0.2 = 2 * 0.1, 0.3 = 3 * 0.1.
    assert check_on_grid(torch.tensor([0.2, 0.3]), "uniform", 3) is None
    assert check_on_grid(torch.tensor([0.2, 0.3]), "uniform", 2) is not None
    assert check_on_grid(torch.tensor([1.0, float("nan")]), "ternary") is not None
    with pytest.raises(ValueError, match="unknown quantization kind"):
        check_on_grid(w, "octal")
    with pytest.raises(ValueError, match="bits"):
        check_on_grid(w, "uniform")
    with pytest.raises(ValueError, match=r"2\.\.8"):
        check_on_grid(w, "uniform", 9)


def test_check_on_grid_tolerance() -> None:
    a = 0.1
    w = torch.tensor([a, 2 * a * (1 + 1e-7), 3 * a], dtype=torch.float64)
    assert check_on_grid(w, "uniform", 3) is None
    assert check_on_grid(w, "uniform", 3, tol=1e-9) is not None
    assert check_on_grid(torch.tensor([1.0, -1.0 - 1e-7]), "binary") is None
    assert check_on_grid(torch.tensor([1.0, -1.001]), "binary") is not None


def test_check_on_grid_with_mask() -> None:
    mask = torch.tensor([True, True, False, True])
    w = torch.tensor([1.0, -1.0, 0.0, 0.0])
    assert check_on_grid(w, "binary", mask=mask) is None  # zeros are pruned weights
    msg = check_on_grid(torch.tensor([1.0, -1.0, 0.5, 0.0]), "binary", mask=mask)
    assert msg == "1 non-zero values outside the mask"
    assert check_on_grid(torch.tensor([1.0, -2.0, 0.0, 0.0]), "binary", mask=mask) is not None


# -- pruned + quantized ---------------------------------------------------------------------------
QUANTS = [
    Binary(),
    Binary(per_channel=True),
    Ternary(),
    Ternary(True),
    Uniform(3),
    Uniform(8, True),
]


@SETTINGS
@given(w=tensors(dtype=torch.float32), quant=st.sampled_from(QUANTS), data=st.data())
def test_pruned_quantized_projection(w: torch.Tensor, quant, data) -> None:
    k = data.draw(st.integers(1, w.numel()), label="k")
    mask = irregular_mask(w, k)
    before = w.clone()
    q = project_pruned_quantized(w, mask, quant)
    q2, scale = quant.fit(w, mask=mask)
    assert torch.equal(q, q2) and torch.equal(w, before)
    assert q.dtype == w.dtype and q.shape == w.shape
    assert bool((q[~mask] == 0).all())
    assert int(torch.count_nonzero(q)) <= k
    bits = quant.bits if quant.kind == "uniform" else None
    assert check_on_grid(q, quant.kind, bits, quant.per_channel, mask=mask) is None

    # The scale is fitted on the kept values alone.
    wr, mr, qr = (
        rows(w, quant.per_channel),
        rows(mask, quant.per_channel),
        rows(q, quant.per_channel),
    )
    for r, m, rq, a in zip(wr, mr, qr, scale.reshape(-1), strict=True):
        if quant.kind == "binary":
            live = m & (r != 0)  # a kept exact zero stays 0 (zeros are allowed with a mask)
            assert bool((rq[m & (r == 0)] == 0).all())
            if bool(live.any()):
                assert bool((rq[live].abs() == a).all())  # every kept non-zero is +-a
                assert float(a) == pytest.approx(float(r[live].abs().double().mean()), rel=1e-6)
            else:
                assert float(a) == 0
        elif bool(m.any()):  # quantizing the kept values alone (one row) gives the same
            ref = fit_ternary(r[m])[0] if quant.kind == "ternary" else fit_uniform(r[m], bits)[0]
            assert torch.allclose(rq[m], ref, rtol=1e-6, atol=0)

    c = PrunedQuantized(Irregular(count=k), quant)
    assert torch.equal(c.project(w), q)
    assert torch.equal(c.mask(w), mask)
    assert c.violation(q) is None
    assert c.budget(w) == k
    assert torch.equal(c.project(q), q)  # bitwise idempotent


def test_pruned_binary_keeps_exact_zeros() -> None:
    w = torch.tensor([1.0, 0.0, 0.0, -3.0])
    mask = torch.tensor([True, True, False, True])
    q, a = fit_binary(w, mask=mask)
    assert q.tolist() == [2.0, 0.0, 0.0, -2.0] and float(a) == 2.0
    q, a = fit_binary(torch.zeros(4), mask=mask)
    assert q.tolist() == [0.0] * 4 and float(a) == 0.0


def test_pruned_quantized_class() -> None:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 4, 3, 3, generator=g)
    c = make_constraint("pruned_quantized", prune=Irregular(keep=0.1), quant=Ternary())
    assert isinstance(c, PrunedQuantized) and c.kind == "pruned_quantized"
    assert c.describe() == "irregular (keep 0.1) + ternary"
    assert c.bits == 2 and c.family == "combined"
    p = c.project(w)
    assert c.violation(p) is None
    assert int(torch.count_nonzero(p)) <= c.budget(w) == 22
    assert c.violation(w) == "216 non-zero weights, at most 22 allowed"
    # On the budget but off the grid: the grid check on the kept entries speaks.
    msg = c.violation(Irregular(keep=0.1).project(w))
    assert msg is not None and "distinct values" in msg

    f = PrunedQuantized({"kind": "filter", "count": 2}, {"kind": "uniform", "bits": 4})
    assert f == PrunedQuantized(Filter(count=2), Uniform(4))
    assert f.describe() == "filter (count 2) + uniform 4-bit" and f.bits == 4
    p = f.project(w)
    assert int((p.reshape(6, -1) != 0).any(dim=1).sum()) <= 2
    assert f.violation(p) is None
    assert PrunedQuantized(Irregular(count=3), Binary(True)).describe() == (
        "irregular (count 3) + binary (per channel)"
    )
    with pytest.raises(ValueError, match="quant must be"):
        PrunedQuantized(Irregular(count=3), Irregular(count=2))
    with pytest.raises(ValueError, match="prune must be"):
        PrunedQuantized(Binary(), Ternary())
    with pytest.raises(ValueError, match="mapping"):
        PrunedQuantized("irregular", Ternary())


# -- constraint classes ---------------------------------------------------------------------------
def test_registry_and_classes() -> None:
    kinds = available_constraints()
    assert {"binary", "ternary", "uniform", "pruned_quantized"} <= set(kinds)
    assert {"binary", "ternary", "uniform"} <= set(available_constraints("quantize"))
    assert not {"binary", "ternary", "uniform"} & set(available_constraints("prune"))
    u = make_constraint("uniform", bits=4)
    assert u == Uniform(4) and u.bits == 4 and u.kind == "uniform"
    assert make_constraint("binary", per_channel=True) == Binary(True)
    assert make_constraint("ternary") == Ternary()
    assert Binary().bits == 1 and Ternary().bits == 2
    assert Binary().describe() == "binary" and Binary(True).describe() == "binary (per channel)"
    assert Ternary(per_channel=True).describe() == "ternary (per channel)"
    assert Uniform(4).describe() == "uniform 4-bit"
    assert Uniform(8, per_channel=True).describe() == "uniform 8-bit (per channel)"
    assert hash(Uniform(4)) == hash(Uniform(4))
    for bad in (1, 9, 0, "x", 4.5, True, None):
        with pytest.raises(ValueError, match=r"2\.\.8"):
            Uniform(bad)
        with pytest.raises(ValueError, match=r"2\.\.8"):
            make_constraint("uniform", bits=bad)
    with pytest.raises(ValueError, match="per_channel"):
        Binary(per_channel="yes")


@pytest.mark.parametrize(
    "c", [Binary(), Binary(True), Ternary(), Ternary(True), Uniform(4), Uniform(8, True)]
)
def test_constraint_methods(c) -> None:
    g = torch.Generator().manual_seed(4)
    w = torch.randn(6, 4, 3, 3, generator=g)
    p = c.project(w)
    assert c.violation(p) is None
    msg = c.violation(w)
    assert isinstance(msg, str)
    assert "distinct values" in msg or "is not an integer multiple of scale" in msg
    m = c.mask(w)
    assert m.dtype == torch.bool and m.shape == w.shape and bool(m.all())
    assert c.budget(w) == w.numel()
    q, scale = c.fit(w)
    assert torch.equal(q, p) and scale.shape == ((6,) if c.per_channel else ())
    assert torch.equal(c.project(p), p)
    assert c.family == "quantize"
