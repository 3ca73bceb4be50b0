"""Euclidean projections onto quantization sets, as pure tensor functions.

The sets, for one tensor or one output channel (a row of ``w.reshape(out, -1)``) at a time:

- binary  ``{-a, +a}``;
- ternary ``{-a, 0, +a}``;
- b-bit symmetric uniform ``{a*q : q integer, |q| <= L}``, ``L = 2^(b-1) - 1``, b = 2..8.

Each set is a union over the scale ``a >= 0`` of a fixed grid, so the projection is a search
over ``a`` that minimises ``||w - Q_a(w)||^2``, where ``Q_a`` rounds to the nearest grid point.
How the scale is found, and why:

- binary: exact, closed form. Every value goes to ``sign(w) * a`` whatever ``a`` is, so the
  error is ``sum (|w| - a)^2``, minimised by ``a = mean|w|``. ``sign(0)`` is taken as ``+1``
  (a deterministic tie: a zero is equally far from ``-a`` and ``+a``).
- ternary: exact. For a fixed set of non-zeros T (with the signs of w), the best scale is
  ``mean(|w| over T)`` and the error is ``sum w^2 - S_T^2 / |T|`` (``S_T = sum |w| over T``). For
  a given size m, ``S_T`` is largest for the m largest ``|w|``, so the optimum is a top-m set:
  one stable descending sort, a cumulative sum, and the m maximising ``S_m^2 / m`` (ties in
  ``|w|`` to the lower index, ties in m to the smaller m).
- uniform: there is no closed form; ``E(a)`` is piecewise quadratic in ``a`` with a breakpoint
  wherever some ``|w_i| / a`` crosses a half-integer. Two regimes:

  * small rows (``nnz * L <= 2^18`` per row and ``<= 2^22`` in all; only non-zeros count, as
    a zero costs nothing at any scale): an exact sweep over all breakpoints
    ``|w_i| / (k + 1/2)``. Between two breakpoints the codes are fixed and the quadratic's
    minimiser is ``<w, q> / <q, q>`` clipped to the interval; the 8 best interval minima (by
    the swept, slightly rounded, formula) are re-evaluated exactly.
  * larger rows: a grid of candidate scales ``max|w| / L * c`` with 128 values of c in
    (0, 1] (c = 1 is the naive scale) plus ``c = L / j`` for j = 1..L-1 (the scales at which the
    largest value lands exactly on level j: the optimum can be far above ``max|w| / L`` when
    only a few distinct magnitudes are present, e.g. ``[1, 0.5]`` at 3 bits is exact at
    ``a = 0.5``), every candidate's error evaluated exactly, then two rounds of a 33-point
    local grid around the best, each 16 times finer. Near-optimal, not guaranteed: for
    dense rows of 500 to 2000 values it came within 0.3% of the exact sweep in our checks
    (the error curve gets rugged at 8 bits, where the breakpoints are dense).

  Either way the best candidate is then refined by alternating minimisation (codes
  ``q = clip(round(w / a))``, then ``a = <w, q> / <q, q>``), a step kept only when the error
  drops, and the naive scale ``max|w| / L`` is always one of the candidates: the result is
  never worse than the naive one. b = 2 (L = 1) is the ternary set and uses the exact ternary
  search.

All searches run in float64 on the tensor's device and return the input dtype; the input is
never modified and ties are broken deterministically. An all-zero tensor (channel, or set of
kept entries) projects to zeros with scale 0.

Pruned + quantized (``project_pruned_quantized``): the kept support is chosen first by the
pruning projection (by magnitude), then the kept values are quantized with a scale fitted on
them alone. Binary: every kept non-zero becomes +-a (a kept exact zero stays 0: zeros are
allowed where weights are pruned); ternary and uniform: a kept value may round to 0. This is
the paper's two-stage scheme, not the joint optimum over support and scale: for w = [1, 0.1],
keep 2, binary gives [0.55, 0.55] (error 0.405) where [1, 0] (error 0.01) is also allowed.

Idempotence: binary and ternary take the common magnitude itself as the scale when all
non-zeros share it, and uniform returns a row unchanged when it is already on its fitted grid
to within 2 ulps of its dtype; so projecting a projected tensor gives it back bitwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .base import (
    Constraint,
    ConstraintError,
    check_flag,
    check_int,
    make_constraint,
    register_constraint,
)

MIN_BITS = 2
MAX_BITS = 8
#: Candidate scales in (0, 1] * max|w| / L for the grid search of large rows.
GRID_SIZE = 128
#: Rounds of zooming in around the best grid scale, each with 2*ZOOM+1 scales ZOOM x finer.
ZOOM_ROUNDS = 2
ZOOM = 16
#: Alternating-minimisation steps after the candidate search (each kept only if it helps).
REFINE_STEPS = 8
#: Rows with at most this many breakpoints (numel * L) get the exact sweep ...
EXACT_ROW_BREAKPOINTS = 1 << 18
#: ... as long as the whole tensor has at most this many.
EXACT_TOTAL_BREAKPOINTS = 1 << 22
#: Interval minima of the sweep that are re-evaluated exactly.
SWEEP_CANDIDATES = 8
_SWEEP_CHUNK = 1 << 19  # breakpoints sorted at once
_EVAL_CHUNK = 1 << 21  # (candidate, weight) pairs evaluated at once

KINDS = ("binary", "ternary", "uniform")


# -- helpers ------------------------------------------------------------------------------------
def check_bits(bits: Any) -> int:
    """``bits`` as an int in 2..8, or a ConstraintError naming the allowed range."""
    hint = " (1 bit is the binary kind)" if bits == 1 and not isinstance(bits, bool) else ""
    return check_int("uniform", "bits", bits, MIN_BITS, MAX_BITS, hint)


def max_code(bits: int) -> int:
    """Largest integer code L = 2^(b-1) - 1 of a b-bit symmetric uniform grid."""
    return 2 ** (check_bits(bits) - 1) - 1


def _rows(t: Tensor, per_channel: bool) -> Tensor:
    """2-D view: one row per scale (the whole tensor, or each output channel)."""
    if per_channel:
        if t.dim() == 0:
            raise ValueError("per-channel quantization needs a weight with >= 1 dims, got a scalar")
        return t.reshape(t.shape[0], -1)
    return t.reshape(1, -1)


def _check_mask(w: Tensor, mask: Tensor | None) -> None:
    if mask is None:
        return
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    if mask.shape != w.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(w.shape)}")


def _prepare(w: Tensor, per_channel: bool, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """float64 rows of ``w`` (entries outside the mask zeroed) and the kept-entry rows."""
    if not torch.is_floating_point(w):
        raise TypeError(f"quantization needs a floating-point tensor, got {w.dtype}")
    _check_mask(w, mask)
    x = _rows(w.detach(), per_channel).to(torch.float64)
    if mask is None:
        return x, None
    kept = _rows(mask.to(w.device), per_channel)
    return torch.where(kept, x, torch.zeros((), dtype=x.dtype, device=x.device)), kept


def _finish(w: Tensor, q: Tensor, scale: Tensor, per_channel: bool) -> tuple[Tensor, Tensor]:
    q = q.reshape(w.shape).to(w.dtype) + 0.0  # no -0.0: a stored zero carries no sign
    scale = scale.to(w.dtype)
    return q, (scale if per_channel else scale.reshape(()))


def _empty(w: Tensor, per_channel: bool) -> tuple[Tensor, Tensor]:
    n = (w.shape[0] if w.dim() > 0 else 1) if per_channel else 1
    scale = torch.zeros(n, dtype=w.dtype, device=w.device)
    return w.detach().clone(), (scale if per_channel else scale.reshape(()))


def _signed(x: Tensor, a: Tensor) -> Tensor:
    """``sign(x) * a`` per row, with sign(0) = +1."""
    a = a[:, None]
    return torch.where(x >= 0, a, -a)


# -- binary -------------------------------------------------------------------------------------
def _fit_binary_rows(x: Tensor, kept: Tensor | None) -> tuple[Tensor, Tensor]:
    ax = x.abs()
    if kept is None:
        count = torch.full((x.shape[0],), x.shape[1], dtype=x.dtype, device=x.device)
        smallest = ax.min(dim=1).values
    else:
        # With a mask a zero is allowed (it is a pruned weight): a kept entry that is exactly
        # 0 stays 0 and is left out of the mean. Sending it to +-a would only add a^2 to the
        # error and pull the other values' scale down; and it keeps the projection idempotent.
        kept = kept & (x != 0)
        count = kept.sum(dim=1).to(x.dtype)
        smallest = torch.where(kept, ax, math.inf).min(dim=1).values
    largest = ax.max(dim=1).values
    a = ax.sum(dim=1) / count.clamp_min(1)
    # All kept magnitudes equal: take that value itself, so that projecting twice is bitwise
    # idempotent (a float64 mean of n equal float64 values can be off by an ulp).
    a = torch.where(largest == smallest, largest, a)
    q = _signed(x, a)
    if kept is not None:
        q = torch.where(kept, q, 0.0)
    return q, a


# -- ternary ------------------------------------------------------------------------------------
def _fit_ternary_rows(x: Tensor, kept: Tensor | None) -> tuple[Tensor, Tensor]:
    g, n = x.shape
    ax = x.abs()
    key = ax if kept is None else torch.where(kept, ax, -1.0)
    srt, order = torch.sort(key, dim=1, descending=True, stable=True)
    srt = srt.clamp_min(0.0)  # entries outside the mask sort last and add nothing
    csum = srt.cumsum(dim=1)
    m = torch.arange(1, n + 1, dtype=x.dtype, device=x.device)
    gain = csum * csum / m  # error = sum w^2 - gain
    if kept is not None:
        gain = torch.where(m <= kept.sum(dim=1, keepdim=True), gain, -math.inf)
    best = torch.argmax(gain, dim=1, keepdim=True)  # first maximum: the smallest m
    size = best + 1
    a = (csum.gather(1, best) / size.to(x.dtype)).squeeze(1)
    top, kth = srt[:, 0], srt.gather(1, best).squeeze(1)
    a = torch.where(kth == top, top, a)  # exact when the top-m are equal (idempotence)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n, device=x.device).expand(g, n))
    nonzero = rank < size
    if kept is not None:
        nonzero &= kept
    return torch.where(nonzero, _signed(x, a), 0.0), a


# -- uniform ------------------------------------------------------------------------------------
def _codes(x: Tensor, a: Tensor, levels: int) -> Tensor:
    """Nearest codes ``clip(round(x / a), -L, L)`` for scales ``a`` (> 0) broadcast to x."""
    return torch.round(x / a).clamp_(-levels, levels)


def _uniform_errors(x: Tensor, a: Tensor, levels: int) -> Tensor:
    """Exact error ``||x - a * codes||^2`` of every candidate scale: x (G, n), a (G, K) -> (G, K).

    A scale <= 0 means all codes 0 (the error is ``||x||^2``).
    """
    g, n = x.shape
    k = a.shape[1]
    safe = torch.where(a > 0, a, 1.0)
    out = torch.empty(g, k, dtype=x.dtype, device=x.device)
    step = max(1, _EVAL_CHUNK // max(1, g * n))
    xb = x[:, None, :]
    for k0 in range(0, k, step):
        ac = safe[:, k0 : k0 + step, None]
        out[:, k0 : k0 + step] = (xb - ac * _codes(xb, ac, levels)).square_().sum(dim=2)
    return torch.where(a > 0, out, x.square().sum(dim=1, keepdim=True))


def _sweep_candidates(ax: Tensor, levels: int) -> Tensor:
    """Interval minimisers of the exact breakpoint sweep: ax = |x| rows (G, n) -> (G, C).

    For a -> 0+ every non-zero value has code L. Growing a past ``|x_i| / (k + 1/2)`` moves
    value i from code k + 1 to k, changing ``<|x|, q>`` by ``-|x_i|`` and ``<q, q>`` by
    ``-(2k + 1)``. Sorting all breakpoints and accumulating these changes gives the codes on
    every interval, hence the quadratic ``sum x^2 - 2 a <|x|, q> + a^2 <q, q>`` there.
    """
    g_all, n = ax.shape
    per_row = n * levels
    kk = torch.arange(levels, dtype=ax.dtype, device=ax.device)
    half = kk + 0.5
    dqq = -(2.0 * kk + 1.0)
    step = max(1, _SWEEP_CHUNK // per_row)
    take = min(SWEEP_CANDIDATES, per_row + 1)
    out = []
    for g0 in range(0, g_all, step):
        xa = ax[g0 : g0 + step]
        g = xa.shape[0]
        pos = (xa > 0)[..., None]
        bp = torch.where(pos, xa[..., None] / half, math.inf).reshape(g, per_row)
        d_xq = (-xa[..., None]).expand(g, n, levels).reshape(g, per_row)
        d_qq = torch.where(pos, dqq, 0.0).reshape(g, per_row)
        bp, order = torch.sort(bp, dim=1, stable=True)
        d_xq = d_xq.gather(1, order)
        d_qq = d_qq.gather(1, order)
        sxq0 = levels * xa.sum(dim=1, keepdim=True)
        sqq0 = float(levels * levels) * pos.squeeze(-1).sum(dim=1, keepdim=True).to(ax.dtype)
        sxq = torch.cat([sxq0, sxq0 + d_xq.cumsum(dim=1)], dim=1)
        sqq = torch.cat([sqq0, sqq0 + d_qq.cumsum(dim=1)], dim=1)
        zero = torch.zeros(g, 1, dtype=ax.dtype, device=ax.device)
        lo = torch.cat([zero, bp], dim=1)
        hi = torch.cat([bp, zero + math.inf], dim=1)
        ok = (sqq > 0.5) & torch.isfinite(lo)
        a = torch.minimum(torch.maximum(sxq / torch.where(ok, sqq, 1.0), lo), hi)
        sxx = xa.square().sum(dim=1, keepdim=True)
        err = sxx - 2.0 * a * sxq + a * a * sqq
        err = torch.where(ok & (a > 0) & torch.isfinite(a), err, math.inf)
        idx = torch.sort(err, dim=1, stable=True).indices[:, :take]
        out.append(torch.where(torch.isfinite(err.gather(1, idx)), a.gather(1, idx), 0.0))
    return torch.cat(out, dim=0)


def _refine(x: Tensor, a: Tensor, err: Tensor, levels: int) -> tuple[Tensor, Tensor]:
    """Alternating minimisation from scale a (G,), each step kept only if the error drops."""
    for _ in range(REFINE_STEPS):
        codes = _codes(x, a[:, None], levels)
        num = (x * codes).sum(dim=1)
        den = codes.square().sum(dim=1)
        new = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), a)
        new = torch.where(new > 0, new, a)
        new_err = _uniform_errors(x, new[:, None], levels)[:, 0]
        better = new_err < err
        if not bool(better.any()):
            break
        a = torch.where(better, new, a)
        err = torch.where(better, new_err, err)
    return a, err


def _fit_uniform_rows(
    x: Tensor, kept: Tensor | None, levels: int, eps: float
) -> tuple[Tensor, Tensor]:
    if levels == 1:  # {-a, 0, a}: the exact ternary search
        return _fit_ternary_rows(x, kept)
    g = x.shape[0]
    ax = x.abs()  # entries outside the mask are 0: code 0, no error, no breakpoint
    largest = ax.max(dim=1).values
    live = largest > 0
    naive = torch.where(live, largest, 1.0) / levels
    # Zeros cost nothing at any scale: search on the non-zero magnitudes only (the grid is
    # symmetric, so |x| has the same error as x), packed to the widest row's count.
    width = int((ax > 0).sum(dim=1).max())
    if width == 0:
        return torch.zeros_like(x), torch.zeros_like(largest)
    if width < x.shape[1]:
        ax = torch.sort(ax, dim=1, descending=True).values[:, :width]
    exact = (
        width * levels <= EXACT_ROW_BREAKPOINTS and g * width * levels <= EXACT_TOTAL_BREAKPOINTS
    )
    if exact:
        cand = _sweep_candidates(ax, levels)
        cand = torch.where(cand > 0, cand, naive[:, None])
    else:
        c = torch.cat(
            [
                torch.arange(1, GRID_SIZE + 1, dtype=x.dtype, device=x.device) / GRID_SIZE,
                levels / torch.arange(levels - 1, 0, -1, dtype=x.dtype, device=x.device),
            ]
        )
        cand = naive[:, None] * c
    cand = torch.cat([naive[:, None], cand], dim=1)  # the naive scale first: wins ties
    err = _uniform_errors(ax, cand, levels)
    best = torch.argmin(err, dim=1, keepdim=True)  # first minimum
    a, e = cand.gather(1, best).squeeze(1), err.gather(1, best).squeeze(1)
    if not exact:  # zoom in around the best grid point, each round 16x finer
        span = naive / GRID_SIZE
        offsets = torch.arange(-ZOOM, ZOOM + 1, dtype=x.dtype, device=x.device) / ZOOM
        for _ in range(ZOOM_ROUNDS):
            local = a[:, None] + span[:, None] * offsets
            local = torch.where(local > 0, local, a[:, None])
            local_err = _uniform_errors(ax, local, levels)
            j = torch.argmin(local_err, dim=1, keepdim=True)
            better = local_err.gather(1, j).squeeze(1) < e
            a = torch.where(better, local.gather(1, j).squeeze(1), a)
            e = torch.where(better, local_err.gather(1, j).squeeze(1), e)
            span = span / ZOOM
    a, _ = _refine(ax, a, e, levels)
    q = a[:, None] * _codes(x, a[:, None], levels) + 0.0  # + 0.0 turns -0.0 into 0.0
    # A row already on its grid to within the rounding of its dtype is its own projection:
    # return it unchanged, so that projecting twice is bitwise idempotent (a refitted scale
    # may differ from the first in the last bit).
    on_grid = ((q - x).abs() <= 2.0 * eps * x.abs()).all(dim=1, keepdim=True)
    q = torch.where(on_grid, x, q)
    a = torch.where(live, a, 0.0)
    q = torch.where(live[:, None], q, 0.0)
    return q, a


# -- public fits and projections ----------------------------------------------------------------
def fit_binary(
    w: Tensor, per_channel: bool = False, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Nearest ``{-a, +a}`` tensor (per tensor or per output channel) and its scale(s).

    ``a = mean|w|`` (exact); ``sign(0) = +1``. With a mask, the scale is the mean over the kept
    entries, every kept non-zero entry becomes ``+-a`` and the rest 0 (a kept entry that is
    exactly 0 stays 0: with a mask zeros are allowed, and that is never farther). Returns
    ``(q, scale)``, scale of shape ``()`` or ``(out,)`` in w's dtype.
    """
    if w.numel() == 0:
        return _empty(w, per_channel)
    x, kept = _prepare(w, per_channel, mask)
    return _finish(w, *_fit_binary_rows(x, kept), per_channel)


def fit_ternary(
    w: Tensor, per_channel: bool = False, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Nearest ``{-a, 0, +a}`` tensor (per tensor or per output channel), exact, and its scale."""
    if w.numel() == 0:
        return _empty(w, per_channel)
    x, kept = _prepare(w, per_channel, mask)
    return _finish(w, *_fit_ternary_rows(x, kept), per_channel)


def fit_uniform(
    w: Tensor, bits: int, per_channel: bool = False, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Nearest ``{a*q : |q| <= 2^(bits-1)-1}`` tensor and its scale (see the module docstring)."""
    levels = max_code(bits)
    if w.numel() == 0:
        return _empty(w, per_channel)
    x, kept = _prepare(w, per_channel, mask)
    eps = torch.finfo(w.dtype).eps
    return _finish(w, *_fit_uniform_rows(x, kept, levels, eps), per_channel)


def project_binary(w: Tensor, per_channel: bool = False) -> Tensor:
    return fit_binary(w, per_channel)[0]


def project_ternary(w: Tensor, per_channel: bool = False) -> Tensor:
    return fit_ternary(w, per_channel)[0]


def project_uniform(w: Tensor, bits: int, per_channel: bool = False) -> Tensor:
    return fit_uniform(w, bits, per_channel)[0]


def project_pruned_quantized(w: Tensor, mask: Tensor, quantizer: Any) -> Tensor:
    """Quantize the entries kept by the bool ``mask`` (scale fitted on them); zeros elsewhere.

    ``quantizer`` is a ``Binary``, ``Ternary`` or ``Uniform`` constraint (anything with
    ``fit(w, mask=...)``). The support is the given mask, chosen by the pruning projection
    beforehand: a two-stage projection, not the joint optimum over support and scale.
    """
    if mask is None:
        raise ValueError("project_pruned_quantized needs a bool mask")
    return quantizer.fit(w, mask=mask)[0]


def quantization_error(w: Tensor, q: Tensor) -> float:
    """Squared L2 distance ``||w - q||^2``, summed in float64."""
    return float((w.detach().double() - q.detach().double()).square().sum())


def _distinct_per_row(x: Tensor) -> Tensor:
    """Number of distinct values in each row (-0.0 and 0.0 count as one)."""
    s = torch.sort(x, dim=1).values
    new = torch.ones_like(s, dtype=torch.bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    return new.sum(dim=1)


def count_levels(w: Tensor, per_channel: bool = False) -> int:
    """Most distinct values in the tensor (or in any one output channel)."""
    if w.numel() == 0:
        return 0
    return int(_distinct_per_row(_rows(w.detach(), per_channel)).max())


# -- verification -------------------------------------------------------------------------------
def _where(per_channel: bool, row: int) -> str:
    return f"channel {row}" if per_channel else "tensor"


def check_on_grid(
    w: Tensor,
    kind: str,
    bits: int | None = None,
    per_channel: bool = False,
    tol: float = 1e-5,
    mask: Tensor | None = None,
) -> str | None:
    """None when every tensor (channel) of ``w`` lies in the set for SOME scale, else why not.

    Needs no stored scale. ``kind`` is ``"binary"``, ``"ternary"`` or ``"uniform"`` (``bits``
    needed for uniform). Values are compared with a relative tolerance ``tol``, raised to 4 ulps
    of ``w``'s dtype when that is coarser (a bfloat16 weight cannot be checked to 1e-5).
    The number of distinct values is checked exactly.

    Binary allows no zeros, except in an all-zero tensor (channel): scale 0. With a ``mask``,
    zeros are allowed anywhere (a zero is a pruned weight), a non-zero outside the mask is a
    violation, and the set is checked on the non-zero kept values only. Uniform: the scale is
    searched among ``a = m / k``, k = 1..L, m the smallest non-zero magnitude; the first a with
    every ``|value| / a`` within ``tol`` (relative) of an integer ``<= L`` is accepted.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown quantization kind {kind!r}; allowed: {', '.join(KINDS)}")
    if kind == "uniform":
        if bits is None:
            raise ValueError("uniform quantization needs bits")
        levels = max_code(bits)
    else:
        implied = {"binary": 1, "ternary": 2}[kind]
        if bits not in (None, implied):
            raise ValueError(f"{kind} weights use {implied} bit(s), got bits={bits}")
        levels = 1
    _check_mask(w, mask)
    if w.numel() == 0:
        return None
    if not torch.is_floating_point(w):
        raise TypeError(f"quantization needs a floating-point tensor, got {w.dtype}")
    tol = max(float(tol), 4.0 * torch.finfo(w.dtype).eps)
    wd = w.detach()
    if not bool(torch.isfinite(wd).all()):
        return "non-finite values (nan or inf)"
    x = _rows(wd, per_channel).to(torch.float64)
    if mask is not None:
        kept = _rows(mask.to(wd.device), per_channel)
        outside = int(((x != 0) & ~kept).sum())
        if outside:
            return f"{outside} non-zero values outside the mask"

    nonzero = x != 0
    if kind == "binary" and mask is None:
        bad = torch.nonzero(nonzero.any(dim=1) & ~nonzero.all(dim=1)).flatten()
        if bad.numel():
            r = int(bad[0])
            return (
                f"{_where(per_channel, r)} has {int((~nonzero[r]).sum())} zero value(s); "
                "binary allows only -a and +a (zeros only where a mask prunes)"
            )

    # How many distinct values each row may hold.
    allowed = {"binary": 2 if mask is None else 3, "ternary": 3}.get(kind, 2 * levels + 1)
    counts = _distinct_per_row(x)
    bad = torch.nonzero(counts > allowed).flatten()
    if bad.numel():
        r = int(bad[0])
        what = (
            f"{kind} allows {allowed}"
            if kind != "uniform"
            else (f"uniform {bits}-bit allows {allowed}")
        )
        if kind == "binary" and mask is not None:
            what += " (-a, 0, +a with a mask)"
        return f"{_where(per_channel, r)} has {int(counts[r])} distinct values, {what}"

    mag = x.abs()
    smallest = torch.where(nonzero, mag, math.inf).min(dim=1).values
    largest = mag.max(dim=1).values
    live = nonzero.any(dim=1)
    if kind in ("binary", "ternary"):
        bad = torch.nonzero(live & (largest - smallest > tol * largest)).flatten()
        if bad.numel():
            r = int(bad[0])
            return (
                f"{_where(per_channel, r)} has non-zero magnitudes {float(smallest[r]):.6g} and "
                f"{float(largest[r]):.6g}; {kind} needs a single magnitude a"
            )
        return None

    # Uniform: the distinct non-zero magnitudes of each row, padded with nan.
    key = torch.where(nonzero, mag, math.inf)
    s = torch.sort(key, dim=1).values
    first = torch.isfinite(s)
    first[:, 1:] &= s[:, 1:] != s[:, :-1]
    width = int(first.sum(dim=1).max()) if bool(first.any()) else 0
    if width == 0:
        return None
    slot = torch.where(first, first.long().cumsum(dim=1) - 1, width)
    pad = torch.full((x.shape[0], width + 1), math.nan, dtype=x.dtype, device=x.device)
    pad.scatter_(1, slot, s)
    pad = pad[:, :width]
    valid = ~torch.isnan(pad)
    fits = ~live  # rows that are all zero fit with scale 0
    best_hits = torch.full_like(counts, -1)
    best_k = torch.ones_like(counts)
    for k in range(1, levels + 1):
        a = smallest / k
        r = pad / a[:, None]
        code = torch.round(r)
        ok = ((r - code).abs() <= tol * r) & (code <= levels) | ~valid
        hits = ok.sum(dim=1)
        fits |= live & ok.all(dim=1)
        better = hits > best_hits
        best_k = torch.where(better, k, best_k)
        best_hits = torch.where(better, hits, best_hits)
        if bool(fits.all()):
            return None
    r = int(torch.nonzero(~fits).flatten()[0])
    k = int(best_k[r])
    a = float(smallest[r]) / k
    vals = pad[r][valid[r]]
    ratio = vals / a
    code = torch.round(ratio)
    wrong = ~(((ratio - code).abs() <= tol * ratio) & (code <= levels))
    v = float(vals[wrong][0])
    return (
        f"{_where(per_channel, r)}: value {v:.6g} is not an integer multiple of scale {a:.6g} "
        f"within |q| <= {levels} (nor of any scale min|w|/k, k = 1..{levels})"
    )


# -- constraint classes -------------------------------------------------------------------------
class Quantizer(Constraint):
    """A quantization set: every weight (every kept one, with a mask) on a grid of few values.

    Besides the projection, a quantizer fits its grid to a subset of the weights (``fit`` with
    a ``mask``), so it can quantize the weights a pruning set keeps; ``bits`` and
    ``per_channel`` tell the file writer how the codes are stored.
    """

    family: ClassVar[str] = "quantize"
    per_channel: bool
    bits: int  # a dataclass field (uniform) or a property (binary 1, ternary 2)

    parameter_help: ClassVar[Mapping[str, str]] = {
        "bits": "bits per weight, 2..8",
        "per_channel": "one scale per output channel instead of one per tensor",
    }

    def _check_per_channel(self) -> None:
        check_flag(self.kind, "per_channel", self.per_channel)

    def fit(self, w: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def project(self, w: Tensor) -> Tensor:
        return self.fit(w)[0]

    def mask(self, w: Tensor) -> Tensor:
        """All True: quantization alone prunes nothing."""
        return torch.ones(w.shape, dtype=torch.bool, device=w.device)

    def budget(self, w: Tensor) -> int:
        return w.numel()

    def violation(self, w: Tensor) -> str | None:
        return self.grid_violation(w)

    def grid_violation(self, w: Tensor, mask: Tensor | None = None) -> str | None:
        """Why ``w`` (its entries inside ``mask``, zeros allowed elsewhere) is off the grid."""
        bits = self.bits if self.kind == "uniform" else None
        return check_on_grid(w, self.kind, bits, self.per_channel, mask=mask)

    def _suffix(self) -> str:
        return " (per channel)" if self.per_channel else ""


@register_constraint("binary")
@dataclass(frozen=True)
class Binary(Quantizer):
    """Every weight is +-a (one a per tensor, or per output channel)."""

    per_channel: bool = False

    def __post_init__(self) -> None:
        self._check_per_channel()

    @property
    def bits(self) -> int:
        return 1

    def fit(self, w: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return fit_binary(w, self.per_channel, mask)

    def describe(self) -> str:
        return f"binary{self._suffix()}"


@register_constraint("ternary")
@dataclass(frozen=True)
class Ternary(Quantizer):
    """Every weight is -a, 0 or +a (one a per tensor, or per output channel)."""

    per_channel: bool = False

    def __post_init__(self) -> None:
        self._check_per_channel()

    @property
    def bits(self) -> int:
        return 2

    def fit(self, w: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return fit_ternary(w, self.per_channel, mask)

    def describe(self) -> str:
        return f"ternary{self._suffix()}"


@register_constraint("uniform")
@dataclass(frozen=True)
class Uniform(Quantizer):
    """Every weight is a*q, q an integer with |q| <= 2^(bits-1)-1 (bits = 2..8)."""

    bits: int
    per_channel: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", check_bits(self.bits))
        self._check_per_channel()

    def fit(self, w: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return fit_uniform(w, self.bits, self.per_channel, mask)

    def describe(self) -> str:
        return f"uniform {self.bits}-bit{self._suffix()}"


def _as_constraint(spec: Any, role: str) -> Constraint:
    if isinstance(spec, Constraint):
        return spec
    if isinstance(spec, Mapping) and "kind" in spec:
        params = dict(spec)
        return make_constraint(params.pop("kind"), **params)
    raise ConstraintError(
        f"pruned_quantized: {role} must be a constraint or a mapping with 'kind', got {spec!r}"
    )


@register_constraint("pruned_quantized")
@dataclass(frozen=True)
class PrunedQuantized(Constraint):
    """Pruned AND quantized: the pruning set's support, its non-zeros on a quantization grid.

    The projection keeps the pruning projection's support (by magnitude) and quantizes the
    kept values with a scale fitted on them: two stages, not a joint optimum.
    ``prune`` and ``quant`` may also be given as mappings, e.g. ``{"kind": "irregular",
    "keep": 0.1}``.
    """

    family: ClassVar[str] = "combined"
    parameter_help: ClassVar[Mapping[str, str]] = {
        "prune": "the pruning set",
        "quant": "the quantization set of the kept weights",
    }

    prune: Constraint
    quant: Constraint

    def __post_init__(self) -> None:
        prune = _as_constraint(self.prune, "prune")
        quant = _as_constraint(self.quant, "quant")
        if not isinstance(quant, Quantizer):
            raise ConstraintError(
                f"pruned_quantized: quant must be a quantization set, got {quant.kind!r}"
            )
        if prune.family != "prune":
            raise ConstraintError(
                f"pruned_quantized: prune must be a pruning set, got {prune.kind!r}"
            )
        object.__setattr__(self, "prune", prune)
        object.__setattr__(self, "quant", quant)

    @property
    def bits(self) -> int:
        return self.quant.bits  # type: ignore[attr-defined]

    @property
    def per_channel(self) -> bool:
        return self.quant.per_channel  # type: ignore[attr-defined]

    def mask(self, w: Tensor) -> Tensor:
        return self.prune.mask(w)

    def fit(self, w: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Quantized on ``mask`` (default: the pruning mask of w) and the fitted scale(s)."""
        return self.quant.fit(w, mask=self.prune.mask(w) if mask is None else mask)  # type: ignore[attr-defined]

    def project(self, w: Tensor) -> Tensor:
        return project_pruned_quantized(w, self.prune.mask(w), self.quant)

    def budget(self, w: Tensor) -> int:
        return self.prune.budget(w)

    def violation(self, w: Tensor) -> str | None:
        msg = self.prune.violation(w)
        if msg is not None:
            return msg
        return self.quant.grid_violation(w, mask=self.prune.mask(w))  # type: ignore[attr-defined]

    def describe(self) -> str:
        return f"{self.prune.describe()} + {self.quant.describe()}"

    def check_fits(self, w: Tensor) -> None:
        self.prune.check_fits(w)
        self.quant.check_fits(w)


def combine(prune: Constraint | None, quant: Constraint | None) -> Constraint:
    """The set a rule describes: its pruning set, its quantization set, or both at once."""
    if prune is not None and quant is not None:
        return PrunedQuantized(prune, quant)
    if prune is None and quant is None:
        raise ConstraintError("a rule needs a pruning set, a quantization set or both")
    return prune or quant  # type: ignore[return-value]


def quantizer_of(constraint: Constraint | None) -> Any | None:
    """The quantization set inside a constraint: itself, the ``quant`` of a pruned+quantized
    set, or None for a pure pruning set. Sees through wrappers (``FixedSupport``,
    ``Transposed``) by ``inner``."""
    inner = getattr(constraint, "inner", None)
    if isinstance(inner, Constraint):
        return quantizer_of(inner)
    if isinstance(constraint, PrunedQuantized):
        return constraint.quant
    if isinstance(constraint, Quantizer):
        return constraint
    return None


def prunes(constraint: Constraint | None) -> bool:
    """Whether the constraint removes weights (counts towards the pruning rate)."""
    inner = getattr(constraint, "inner", None)
    if isinstance(inner, Constraint):  # a wrapper: an earlier step's mask, or a layout
        return True if getattr(constraint, "holds_support", True) else prunes(inner)
    return constraint is not None and (
        isinstance(constraint, PrunedQuantized) or quantizer_of(constraint) is None
    )
