"""The ``nm`` sparsity pattern: which ``n`` of every ``m`` consecutive inputs are stored.

For a weight whose every group of ``m`` consecutive inputs (the groups of
``constraints.nm``: along dim 1, one output and one kernel position each) holds at most
``n`` non-zeros, the pattern is one choice out of ``C(m, n)`` per group. The choices are
ranked (combinations in lexicographic order), and ``k`` ranks share one 64-bit word as the
digits of a base-``C(m, n)`` number, ``k`` the most that fit, each word stored in as many
bits as its largest value needs: 2:4 costs 63 bits per 24 groups, 2.63 bits a group where a
bitmask costs 4. A group with fewer than ``n`` non-zeros also stores its lowest free
positions, as zeros, so that every group stores exactly ``n`` values.

``plan_tensor`` (``encoding``) tries the group sizes ``GROUP_SIZES`` on every weight and
keeps this pattern only where it is the smallest, so files of other models do not change.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np

GROUP_SIZES = (2, 4, 8, 16)


class NMPatternError(ValueError):
    """Encoded N:M data that cannot be a valid pattern."""


def fits(shape: tuple[int, ...], m: int) -> bool:
    return len(shape) >= 2 and shape[1] % m == 0 and shape[1] > 0


def _grid(shape: tuple[int, ...], m: int) -> np.ndarray:
    """``[groups, m]`` flat positions of each group, groups in ``movedim(1, -1)`` order."""
    index = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
    return np.moveaxis(index, 1, -1).reshape(-1, m)


@lru_cache(maxsize=64)
def _choices(m: int, n: int) -> np.ndarray:
    """Bit sets (slot ``i`` is bit ``i``) of every ``n``-of-``m`` choice, sorted: a rank is
    an index into this array."""
    sets = [sum(1 << i for i in c) for c in itertools.combinations(range(m), n)]
    return np.array(sorted(sets), dtype=np.int64)


def _per_word(choices: int) -> int:
    """How many base-``choices`` digits one 64-bit word holds."""
    k = 1
    while choices ** (k + 1) <= 1 << 64:
        k += 1
    return k


def _word_bits(choices: int, digits: int) -> int:
    return (choices**digits - 1).bit_length()


def pattern_bits(groups: int, n: int, m: int) -> int:
    choices = math.comb(m, n)
    k = _per_word(choices)
    full, rest = divmod(groups, k)
    return full * _word_bits(choices, k) + (_word_bits(choices, rest) if rest else 0)


def candidates(positions: np.ndarray, shape: tuple[int, ...]) -> list[tuple[int, int, np.ndarray]]:
    """``(m, n, stored positions)`` for each group size the non-zeros fit with ``n < m``."""
    numel = math.prod(shape)
    out = []
    occupied = np.zeros(numel, dtype=bool)
    occupied[positions] = True
    for m in GROUP_SIZES:
        if not fits(shape, m):
            continue
        grid = _grid(shape, m)
        occ = occupied[grid]
        n = max(1, int(occ.sum(axis=1).max()))
        if n >= m:
            continue
        order = np.argsort(~occ, axis=1, kind="stable")[:, :n]  # non-zeros, then free slots
        out.append((m, n, np.sort(np.take_along_axis(grid, order, axis=1).ravel())))
    return out


def _to_bits(words: np.ndarray, width: int) -> np.ndarray:
    return (
        ((words[:, None] >> np.arange(width, dtype=np.uint64)) & np.uint64(1))
        .astype(np.uint8)
        .ravel()
    )


def _from_bits(bits: np.ndarray, width: int) -> np.ndarray:
    weights = np.left_shift(np.uint64(1), np.arange(width, dtype=np.uint64))
    return (bits.reshape(-1, width).astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)


def _words(ranks: np.ndarray, choices: int, k: int) -> np.ndarray:
    """Base-``choices`` numbers of ``k`` digits each (the first digit least significant)."""
    value = np.zeros(ranks.shape[0], dtype=np.uint64)
    for i in reversed(range(ranks.shape[1])):  # exact: every partial value < choices^k
        value = value * np.uint64(choices) + ranks[:, i].astype(np.uint64)
    return value


def encode(stored: np.ndarray, shape: tuple[int, ...], n: int, m: int) -> bytes:
    """The pattern of ``stored`` (exactly ``n`` positions in every group, sorted)."""
    grid = _grid(shape, m)
    keep = np.zeros(math.prod(shape), dtype=bool)
    keep[stored] = True
    sets = (keep[grid].astype(np.int64) << np.arange(m, dtype=np.int64)).sum(axis=1)
    table = _choices(m, n)
    ranks = np.searchsorted(table, sets)
    if ranks.size and (ranks.max() >= table.size or not np.array_equal(table[ranks], sets)):
        raise ValueError(f"the positions do not keep exactly {n} of every {m}")
    choices = table.size
    k = _per_word(choices)
    full = ranks.size // k
    parts = [
        _to_bits(_words(ranks[: full * k].reshape(full, k), choices, k), _word_bits(choices, k))
    ]
    rest = ranks[full * k :]
    if rest.size:
        parts.append(
            _to_bits(_words(rest[None, :], choices, rest.size), _word_bits(choices, rest.size))
        )
    return np.packbits(np.concatenate(parts), bitorder="little").tobytes()


def decode(data: bytes, shape: tuple[int, ...], n: int, m: int) -> np.ndarray:
    """The stored positions (sorted) of an encoded pattern; checks every length it uses."""
    if not fits(shape, m) or not 1 <= n < m:
        raise NMPatternError(f"an nm pattern of {n}:{m} cannot describe shape {list(shape)}")
    groups = math.prod(shape) // m
    nbits = pattern_bits(groups, n, m)
    if len(data) != (nbits + 7) // 8:
        raise NMPatternError(
            f"an nm pattern of {groups} groups needs {(nbits + 7) // 8} bytes, found {len(data)}"
        )
    table = _choices(m, n)
    choices = table.size
    k = _per_word(choices)
    bits = np.unpackbits(np.frombuffer(data, np.uint8), count=nbits, bitorder="little")
    full, rest = divmod(groups, k)
    width = _word_bits(choices, k)
    blocks = [(_from_bits(bits[: full * width], width), k)] if full else []
    if rest:
        blocks.append((_from_bits(bits[full * width :], _word_bits(choices, rest)), rest))
    ranks = []
    for words, digits in blocks:
        if (
            bool((words >= np.uint64(choices**digits - 1) + np.uint64(1)).any())
            if choices**digits < 1 << 64
            else False
        ):
            raise NMPatternError("nm pattern holds a choice out of range")
        out = np.empty((words.size, digits), dtype=np.int64)
        for i in range(digits):
            out[:, i] = (words % np.uint64(choices)).astype(np.int64)
            words = words // np.uint64(choices)
        ranks.append(out.ravel())
    rank = np.concatenate(ranks) if ranks else np.empty(0, dtype=np.int64)
    sets = table[rank]
    keep = ((sets[:, None] >> np.arange(m, dtype=np.int64)) & 1).astype(bool)
    return np.sort(_grid(shape, m)[keep])
