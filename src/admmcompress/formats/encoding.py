"""How a compressed weight tensor is stored: the byte-exact encodings of the ``.admmz`` file.

A tensor is stored as a sparsity pattern (which positions hold a non-zero) plus the values at
those positions. ``plan_tensor`` picks, per tensor, the smallest of:

- ``dense``: no pattern, every value stored (what an unpruned layer uses);
- ``bitmask``: one bit per position;
- ``relative``: Deep Compression's relative index: per non-zero, the number of zeros skipped
  since the last one in ``w`` bits (best ``w`` in 1..16). The all-ones field is an escape that
  skips ``2^w - 1`` positions and carries no value, so long gaps cost index bits only;
- ``rice``: the same gaps in a Golomb-Rice code with parameter ``k`` (best in 0..16): the gap
  ``>> k`` in unary, then the low ``k`` bits. All unary parts come first, then all remainders,
  so that decoding is vectorised. It is within a few percent of the entropy of a random
  pattern, about 14% below the best relative index at LeNet-5's 300x;
- ``nm``: for a weight with at most ``n`` non-zeros in every ``m`` consecutive inputs, one of
  ``C(m, n)`` choices per group (``nm_pattern``): under 3 bits a group for 2:4.

Values are raw (fp32, or fp16 when asked: lossy) or, for a quantized layer, ``b``-bit codes
packed back to back plus one scale per tensor or output channel. The scale is fp32 when one
exists that rebuilds every value bit for bit, else fp64 (a quantizer computes its grid in
float64). Each section is padded to a whole byte. The report's storage figures are these
sizes, so ``admmcompress export`` writes exactly what the report promised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import nm_pattern

MAX_WIDTH = 16  # widest relative-index field and largest Rice parameter tried
PATTERNS = ("dense", "bitmask", "relative", "rice", "nm")
#: how raw weight values are stored; bfloat16 travels as its 16 bits (numpy has no bfloat16)
VALUE_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "bfloat16": np.dtype("<u2")}
#: a half-precision weight keeps its own 16 bits when float32 storage is asked for
NATIVE_VALUES = {torch.float16: "float16", torch.bfloat16: "bfloat16"}


def to_value_bytes(values: np.ndarray, encoding: str) -> bytes:
    """float32 values in a value encoding (rounded to nearest where it is narrower)."""
    if encoding == "bfloat16":
        bits = torch.from_numpy(np.ascontiguousarray(values, np.float32)).to(torch.bfloat16)
        return bits.view(torch.int16).numpy().astype("<i2").tobytes()
    return values.astype(VALUE_DTYPES[encoding]).tobytes()


def from_value_bytes(data: bytes, encoding: str) -> np.ndarray:
    """float32 values from a value encoding (exact)."""
    if encoding == "bfloat16":
        bits = torch.from_numpy(np.frombuffer(data, "<i2").copy())
        return bits.view(torch.bfloat16).float().numpy()
    return np.frombuffer(data, VALUE_DTYPES[encoding]).astype(np.float32)


class StorageError(ValueError):
    """Encoded data that cannot be a valid tensor: the file is corrupt."""


@dataclass(frozen=True)
class QuantSpec:
    """Which grid a quantized layer's values lie on: what a decoder needs besides codes."""

    bits: int  # 1 = binary {-a, +a}; b >= 2: codes -L..L with L = 2^(b-1) - 1
    per_channel: bool = False

    @property
    def binary(self) -> bool:
        return self.bits == 1

    @property
    def levels(self) -> int:
        return 1 if self.bits == 1 else 2 ** (self.bits - 1) - 1

    def as_dict(self) -> dict[str, Any]:
        return {"bits": self.bits, "per_channel": self.per_channel}


# -- bit packing ----------------------------------------------------------------------------
_CHUNK = 1 << 18  # values per step: bounds the bit matrices to a few MiB on big layers


def pack_uint(values: np.ndarray, width: int) -> bytes:
    """Unsigned integers < 2^width back to back, least significant bit first."""
    v = np.asarray(values, dtype=np.uint64).reshape(-1)
    shifts = np.arange(width, dtype=np.uint64)
    bits = np.empty(v.size * width, dtype=np.uint8)
    for i in range(0, v.size, _CHUNK):  # _CHUNK is a multiple of 8: whole bytes per chunk
        part = v[i : i + _CHUNK]
        bits[i * width : (i + part.size) * width] = (
            (part[:, None] >> shifts) & np.uint64(1)
        ).reshape(-1)
    return np.packbits(bits, bitorder="little").tobytes()


def unpack_uint(data: bytes, count: int, width: int) -> np.ndarray:
    if len(data) != (count * width + 7) // 8:
        raise StorageError(
            f"{count} fields of {width} bits need {(count * width + 7) // 8} bytes, "
            f"found {len(data)}"
        )
    raw = np.frombuffer(data, np.uint8)
    out = np.empty(count, dtype=np.uint64)
    weights = np.left_shift(np.uint64(1), np.arange(width, dtype=np.uint64))
    for i in range(0, count, _CHUNK):
        n = min(_CHUNK, count - i)
        first = i * width // 8
        part = raw[first : first + (n * width + 7) // 8]
        bits = np.unpackbits(part, count=n * width, bitorder="little")
        out[i : i + n] = (bits.reshape(n, width).astype(np.uint64) * weights).sum(
            axis=1, dtype=np.uint64
        )
    return out


def _nbytes(bits: int) -> int:
    return (bits + 7) // 8


# -- sparsity patterns ----------------------------------------------------------------------
def _gaps(positions: np.ndarray) -> np.ndarray:
    """Zeros skipped before each non-zero (positions sorted, distinct)."""
    return np.diff(positions, prepend=-1) - 1


def relative_entries(positions: np.ndarray, width: int) -> int:
    """Index entries (real and escape) the relative encoding needs with ``width``-bit fields."""
    escape = (1 << width) - 1
    return int(positions.size + (_gaps(positions) // escape).sum())


def rice_bits(positions: np.ndarray, k: int) -> int:
    gaps = _gaps(positions)
    return int((gaps >> k).sum() + gaps.size * (1 + k))


def pattern_sizes(positions: np.ndarray, numel: int) -> list[tuple[str, int | None, int]]:
    """``(kind, parameter, bytes)`` of every pattern encoding of ``positions`` in ``numel``."""
    out: list[tuple[str, int | None, int]] = [("dense", None, 0), ("bitmask", None, _nbytes(numel))]
    for w in range(1, MAX_WIDTH + 1):
        out.append(("relative", w, _nbytes(relative_entries(positions, w) * w)))
    for k in range(MAX_WIDTH + 1):
        out.append(("rice", k, _nbytes(rice_bits(positions, k))))
    return out


def encode_pattern(
    positions: np.ndarray,
    numel: int,
    kind: str,
    param: int | None,
    shape: tuple[int, ...] | None = None,
    n: int | None = None,
) -> bytes:
    """The pattern section; ``nm`` needs the tensor's ``shape`` and ``n`` (``param`` is m)."""
    if kind == "nm":
        assert shape is not None and param is not None and n is not None
        return nm_pattern.encode(positions, shape, n, param)
    if kind == "dense":
        return b""
    if kind == "bitmask":
        bits = np.zeros(numel, dtype=np.uint8)
        bits[positions] = 1
        return np.packbits(bits, bitorder="little").tobytes()
    gaps = _gaps(positions)
    if kind == "relative":
        assert param is not None
        escape = (1 << param) - 1
        escapes = gaps // escape
        entries = np.full(int(positions.size + escapes.sum()), escape, dtype=np.uint64)
        entries[np.cumsum(escapes + 1) - 1] = gaps % escape
        return pack_uint(entries, param)
    if kind == "rice":
        assert param is not None
        quotients = gaps >> param
        unary = np.ones(int(quotients.sum() + gaps.size), dtype=np.uint8)
        unary[np.cumsum(quotients + 1) - 1] = 0  # each unary code ends with a zero
        rem = gaps & ((1 << param) - 1)
        rem_bits = ((rem[:, None] >> np.arange(param)) & 1).astype(np.uint8).reshape(-1)
        return np.packbits(np.concatenate([unary, rem_bits]), bitorder="little").tobytes()
    raise ValueError(f"unknown pattern kind {kind!r}")


def _positions_from_gaps(gaps: np.ndarray, numel: int, what: str) -> np.ndarray:
    positions = np.cumsum(gaps.astype(np.int64) + 1) - 1
    if positions.size and (gaps.min() < 0 or positions[-1] >= numel):
        raise StorageError(f"{what} index points past the tensor's {numel} positions")
    return positions


def decode_pattern(
    data: bytes,
    numel: int,
    nnz: int,
    kind: str,
    param: int | None,
    entries: int | None,
    shape: tuple[int, ...] | None = None,
    n: int | None = None,
) -> np.ndarray | None:
    """Positions of the stored values (``None`` for dense); checks every count it relies on.

    ``nm`` needs the tensor's ``shape`` and its ``n`` (``param`` is ``m``); it stores
    ``entries`` values, of which ``nnz`` are non-zero.
    """
    if not 0 <= nnz <= numel:
        raise StorageError(f"{nnz} non-zeros declared in a tensor of {numel} positions")
    if kind == "nm":
        if shape is None or param is None or n is None:
            raise StorageError("an nm pattern needs the tensor's shape, m and n")
        try:
            positions = nm_pattern.decode(data, shape, n, param)
        except nm_pattern.NMPatternError as e:
            raise StorageError(str(e)) from None
        if entries != positions.size or nnz > positions.size:
            raise StorageError(
                f"nm pattern stores {positions.size} values, header says {entries} ({nnz} non-zero)"
            )
        return positions
    if kind == "dense":
        if data or nnz != numel:
            raise StorageError("a dense tensor has no pattern and stores every position")
        return None
    if kind == "bitmask":
        if len(data) != _nbytes(numel):
            raise StorageError(f"bitmask of {numel} positions needs {_nbytes(numel)} bytes")
        bits = np.unpackbits(np.frombuffer(data, np.uint8), count=numel, bitorder="little")
        positions = np.flatnonzero(bits)
        if positions.size != nnz:
            raise StorageError(f"bitmask holds {positions.size} non-zeros, header says {nnz}")
        return positions
    if param is None or not (1 if kind == "relative" else 0) <= param <= MAX_WIDTH:
        raise StorageError(f"{kind} pattern with invalid parameter {param!r}")
    if kind == "relative":
        if entries is None or not nnz <= entries <= 8 * len(data):
            raise StorageError(f"relative index with an impossible entry count {entries!r}")
        fields = unpack_uint(data, entries, param).astype(np.int64)
        escape = (1 << param) - 1
        advance = np.where(fields == escape, escape, fields + 1)
        real = np.flatnonzero(fields != escape)
        if real.size != nnz or (entries and fields[-1] == escape):
            raise StorageError(f"relative index holds {real.size} non-zeros, header says {nnz}")
        positions = np.cumsum(advance)[real] - 1
        if positions.size and positions[-1] >= numel:
            raise StorageError(f"relative index points past the tensor's {numel} positions")
        return positions
    if kind == "rice":
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
        ends = np.flatnonzero(bits == 0)[:nnz]
        if ends.size != nnz:
            raise StorageError(f"rice index holds fewer than the {nnz} non-zeros declared")
        quotients = np.diff(ends, prepend=-1) - 1
        start = int(ends[-1]) + 1 if nnz else 0
        if start + nnz * param > bits.size or _nbytes(start + nnz * param) != len(data):
            raise StorageError("rice index has the wrong length")
        rem = bits[start : start + nnz * param].reshape(nnz, param).astype(np.int64)
        low = (rem << np.arange(param)).sum(axis=1)
        return _positions_from_gaps((quotients.astype(np.int64) << param) + low, numel, "rice")
    raise StorageError(f"unknown pattern kind {kind!r}")


# -- quantized values -----------------------------------------------------------------------
def decode_codes(codes: np.ndarray, rows: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Values from signed codes: ``float32(float64(code) * scale)``, as the quantizers round."""
    return (codes.astype(np.float64) * scales.astype(np.float64)[rows]).astype(np.float32)


def _float32_bounds(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Open interval of reals that round to each positive float32 ``v`` (in float64)."""
    v64 = v.astype(np.float64)
    lower = np.nextafter(v, np.float32(0)).astype(np.float64)
    upper = np.nextafter(v, np.float32(np.inf)).astype(np.float64)
    return (v64 + lower) / 2, (v64 + upper) / 2


def _exact_scales(
    mags: np.ndarray, codes: np.ndarray, rows: np.ndarray, nrows: int, hint: np.ndarray
) -> np.ndarray:
    """Per row, a float64 scale that rebuilds every ``mags`` from ``codes`` (NaN: none found).

    Each value confines its row's scale to an interval (the reals that round to it, divided
    by its code); a scale inside every interval of the row rebuilds the row exactly. A tie
    (a product exactly halfway between two float32) rounds to even, so the interval's ends
    and the quantizer's own scale are tried too. The first candidate that rebuilds a row
    exactly is taken, float32-representable ones first. Rows without values keep the hint.
    """
    lo, hi = _float32_bounds(mags)
    c = codes.astype(np.float64)
    row_lo = np.full(nrows, -np.inf)
    row_hi = np.full(nrows, np.inf)
    np.maximum.at(row_lo, rows, lo / c)
    np.minimum.at(row_hi, rows, hi / c)
    empty = np.isinf(row_lo)
    with np.errstate(invalid="ignore"):  # empty rows: inf - inf
        mid = np.where(empty, hint, (row_lo + row_hi) / 2)
    ends_lo = np.where(empty, hint, row_lo)
    ends_hi = np.where(empty, hint, row_hi)
    candidates = [mid.astype(np.float32), hint.astype(np.float32), mid, ends_lo, ends_hi]
    chosen = np.full(nrows, np.nan)
    target = mags.astype(np.float32).view(np.uint32)
    with np.errstate(all="ignore"):
        for cand in candidates:
            cand = cand.astype(np.float64)
            got = (c * cand[rows]).astype(np.float32).view(np.uint32)
            bad_rows = np.bincount(rows[got != target], minlength=nrows) > 0
            take = np.isnan(chosen) & ~bad_rows & np.isfinite(cand) & (cand > 0)
            chosen[take] = cand[take]
    chosen[empty] = hint[empty]
    return chosen


def _codes_for(
    values: np.ndarray, rows: np.ndarray, spec: QuantSpec, hint: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Signed codes under per-row scales ``hint``, and which rows they fit the grid in."""
    safe = np.where(hint > 0, hint, 1.0)
    if spec.binary:
        signed = np.where(values > 0, 1, -1).astype(np.int64)
        bad = values == 0  # binary has no zero code
    else:
        signed = np.rint(values.astype(np.float64) / safe[rows]).astype(np.int64)
        bad = (np.abs(signed) > spec.levels) | ((signed == 0) != (values == 0))
    ok = np.bincount(rows[bad], minlength=hint.size) == 0
    return signed, ok


@dataclass(frozen=True)
class QuantizedValues:
    codes: np.ndarray  # unsigned, one per stored value, < 2^bits
    scales: np.ndarray  # float32 or float64, one per row


def quantize_values(
    values: np.ndarray, rows: np.ndarray, nrows: int, spec: QuantSpec, hint: np.ndarray
) -> QuantizedValues | None:
    """Codes and scales that rebuild ``values`` bit for bit, or None if the grid does not fit.

    ``hint`` is the quantizer's own scale per row (e.g. from ``fit``): it fixes the codes,
    the exact scale is then solved for. A row the hint does not fit (a refit on a subset of
    the values, after compaction, can pick another scale) tries the steps ``min|v| / c``.
    """
    hint = np.broadcast_to(np.asarray(hint, dtype=np.float64).reshape(-1), (nrows,)).copy()
    mags = np.abs(values.astype(np.float32))
    smallest = np.full(nrows, np.inf)
    np.minimum.at(smallest, rows[values != 0], mags[values != 0].astype(np.float64))
    signed = np.zeros(values.size, dtype=np.int64)
    scales = np.full(nrows, np.nan)
    tries = [hint] + [smallest / c for c in range(1, spec.levels + 1)]
    for guess in tries:
        todo = np.isnan(scales)
        if not todo.any():
            break
        guess = np.where(np.isfinite(guess), guess, 0.0)
        codes, ok = _codes_for(values, rows, spec, guess)
        nz = codes != 0
        exact = _exact_scales(mags[nz], np.abs(codes[nz]), rows[nz], nrows, guess)
        take = todo & ok & ~np.isnan(exact)
        if take.any():
            scales[take] = exact[take]
            in_rows = take[rows]
            signed[in_rows] = codes[in_rows]
    if np.any(np.isnan(scales)):
        return None
    rebuilt = decode_codes(signed, rows, scales).view(np.uint32)
    if not np.array_equal(rebuilt, values.astype(np.float32).view(np.uint32)):
        return None
    if np.all(scales.astype(np.float32).astype(np.float64) == scales):
        scales = scales.astype(np.float32)
    unsigned = (signed + 1) // 2 if spec.binary else signed + spec.levels
    return QuantizedValues(unsigned.astype(np.uint64), scales)


def signed_codes(unsigned: np.ndarray, spec: QuantSpec) -> np.ndarray:
    u = unsigned.astype(np.int64)
    if spec.binary:
        return 2 * u - 1
    if np.any(u > 2 * spec.levels):
        raise StorageError(f"code out of range for a {spec.bits}-bit grid")
    return u - spec.levels


# -- the plan for one tensor ----------------------------------------------------------------
@dataclass
class TensorPlan:
    """What ``plan_tensor`` chose for one tensor, with the exact bytes of each section."""

    shape: tuple[int, ...]
    positions: np.ndarray | None  # None: dense
    pattern: str
    pattern_param: int | None
    pattern_entries: int | None  # relative index: number of fields; nm: values stored
    pattern_bytes: int
    value_encoding: str  # float32 | float16 | codes
    raw_values: np.ndarray | None
    quant: QuantSpec | None
    quantized: QuantizedValues | None
    value_bytes: int
    scale_bytes: int
    pattern_n: int | None = None  # nm: the n of n:m (pattern_param is m)
    stored_zeros: int = 0  # nm: zeros stored to fill groups with fewer than n non-zeros

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nnz(self) -> int:
        stored = self.numel if self.positions is None else int(self.positions.size)
        return stored - self.stored_zeros

    @property
    def bytes(self) -> int:
        return self.pattern_bytes + self.value_bytes + self.scale_bytes

    def summary(self) -> dict[str, Any]:
        return {
            "encoding": self.pattern,
            "pattern_param": self.pattern_param,
            **({"pattern_n": self.pattern_n} if self.pattern_n is not None else {}),
            "values": self.value_encoding if self.quant is None else f"{self.quant.bits}-bit codes",
            "scale_dtype": None if self.quantized is None else str(self.quantized.scales.dtype),
            "index_bytes": self.pattern_bytes,
            "value_bytes": self.value_bytes,
            "scale_bytes": self.scale_bytes,
            "bytes": self.bytes,
        }


def _as_float32(w: Tensor) -> np.ndarray:
    flat = w.detach().to("cpu", torch.float32).contiguous().reshape(-1).numpy()
    return flat + np.float32(0.0)  # -0.0 becomes 0.0: the pattern stores no sign of a zero


def plan_tensor(
    w: Tensor,
    quant: QuantSpec | None = None,
    scale_hint: Tensor | np.ndarray | float | None = None,
    values: str = "float32",
) -> TensorPlan:
    """The smallest encoding of a float weight: pattern, then raw values or quantized codes.

    A quantized layer whose values do not lie exactly on a grid (``quantize_values`` returns
    None) falls back to raw values, so the file always rebuilds the weights it was given.
    """
    if values not in VALUE_DTYPES:
        raise ValueError(f"values must be one of {sorted(VALUE_DTYPES)}, got {values!r}")
    if values == "float32":  # exact either way; a half-precision weight needs half the bytes
        values = NATIVE_VALUES.get(w.dtype, values)
    flat = _as_float32(w)
    shape = tuple(int(s) for s in w.shape)
    numel = flat.size
    positions = np.flatnonzero(flat)
    nrows = shape[0] if quant is not None and quant.per_channel and shape else 1
    row_len = max(1, numel // max(1, nrows))
    quantized_sparse = quantized_dense = None
    hint = np.zeros(nrows) if scale_hint is None else np.asarray(scale_hint, np.float64)
    if quant is not None:
        quantized_sparse = quantize_values(
            flat[positions], positions // row_len, nrows, quant, hint
        )
        quantized_dense = quantize_values(flat, np.arange(numel) // row_len, nrows, quant, hint)

    def value_cost(count: int, q: QuantizedValues | None) -> tuple[int, int]:
        if q is not None and quant is not None:
            return _nbytes(count * quant.bits), q.scales.size * q.scales.itemsize
        return count * VALUE_DTYPES[values].itemsize, 0

    # (kind, parameter, n of n:m, pattern bytes, stored positions, their quantized values)
    options: list[tuple[str, int | None, int | None, int, np.ndarray, Any]] = [
        (
            kind,
            param,
            None,
            pbytes,
            positions,
            quantized_dense if kind == "dense" else quantized_sparse,
        )
        for kind, param, pbytes in pattern_sizes(positions, numel)
    ]
    for m, n, stored in nm_pattern.candidates(positions, shape):
        pbytes = _nbytes(nm_pattern.pattern_bits(stored.size // n, n, m))
        q = None
        if quant is not None:
            q = quantize_values(flat[stored], stored // row_len, nrows, quant, hint)
        options.append(("nm", m, n, pbytes, stored, q))

    best: tuple[int, TensorPlan] | None = None
    for kind, param, n, pbytes, stored, q in options:
        dense = kind == "dense"
        if quant is not None and dense and q is None and quantized_sparse is not None:
            continue  # e.g. binary with zeros: only a pattern can say where the zeros are
        vbytes, sbytes = value_cost(numel if dense else stored.size, q)
        total = pbytes + vbytes + sbytes
        if best is None or total < best[0]:  # ties keep the earlier, simpler encoding
            chosen = flat if dense else flat[stored]
            entries = None
            if kind == "relative" and param is not None:
                entries = relative_entries(positions, param)
            elif kind == "nm":
                entries = int(stored.size)
            best = (
                total,
                TensorPlan(
                    shape=shape,
                    positions=None if dense else stored,
                    pattern=kind,
                    pattern_param=param,
                    pattern_entries=entries,
                    pattern_bytes=pbytes,
                    value_encoding="codes" if q is not None else values,
                    raw_values=None if q is not None else chosen,
                    quant=quant if q is not None else None,
                    quantized=q,
                    value_bytes=vbytes,
                    scale_bytes=sbytes,
                    pattern_n=n,
                    stored_zeros=int(stored.size - positions.size) if kind == "nm" else 0,
                ),
            )
    assert best is not None
    return best[1]


def encode_values(plan: TensorPlan) -> tuple[bytes, bytes]:
    """The value section and the scale section of a planned tensor."""
    if plan.quantized is not None and plan.quant is not None:
        q = plan.quantized
        scales = q.scales.astype(q.scales.dtype.newbyteorder("<"))
        return pack_uint(q.codes, plan.quant.bits), scales.tobytes()
    assert plan.raw_values is not None
    return to_value_bytes(plan.raw_values, plan.value_encoding), b""
