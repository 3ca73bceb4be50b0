"""The nm pattern encoding: exact round trips, under 3 bits per 2:4 group, corrupt data refused."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from admmcompress.constraints import PrunedQuantized, Ternary
from admmcompress.constraints.nm import NM
from admmcompress.formats import nm_pattern
from admmcompress.formats.admmz import ModelFormatError, read_admmz, save_admmz
from admmcompress.formats.encoding import QuantSpec, StorageError, decode_pattern, plan_tensor
from admmcompress.models import registry as model_registry


@st.composite
def nm_tensor(draw: st.DrawFn) -> tuple[torch.Tensor, int, int]:
    m = draw(st.sampled_from([2, 4, 8, 16]))
    n = draw(st.integers(1, m - 1))
    shape = draw(st.sampled_from([(3, m), (2, 2 * m), (2, m, 3, 1), (1, 3 * m, 2, 2), (5, m * 4)]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 10_000)))
    w = NM(n=n, m=m).project(torch.randn(shape, generator=g))
    if draw(st.booleans()):  # groups with fewer than n non-zeros: stored zeros fill them
        w = w * (torch.rand(shape, generator=g) > 0.4)
    return w, n, m


@settings(max_examples=200, deadline=None)
@given(nm_tensor())
def test_round_trip_is_exact(case: tuple[torch.Tensor, int, int]) -> None:
    w, n, m = case
    shape = tuple(w.shape)
    positions = np.flatnonzero(w.numpy().ravel())
    for mm, nn_, stored in nm_pattern.candidates(positions, shape):
        assert set(positions) <= set(stored.tolist())
        assert stored.size == nn_ * math.prod(shape) // mm
        data = nm_pattern.encode(stored, shape, nn_, mm)
        assert len(data) == (nm_pattern.pattern_bits(stored.size // nn_, nn_, mm) + 7) // 8
        assert np.array_equal(nm_pattern.decode(data, shape, nn_, mm), stored)
    assert any(mm == m and nn_ <= n for mm, nn_, _ in nm_pattern.candidates(positions, shape))


def test_two_of_four_costs_under_three_bits_a_group() -> None:
    assert nm_pattern.pattern_bits(24, 2, 4) == 63
    assert nm_pattern.pattern_bits(1000, 2, 4) / 1000 < 2.7


@settings(max_examples=100, deadline=None)
@given(nm_tensor(), st.integers(0, 10_000))
def test_corrupt_patterns_are_refused_or_decode_to_valid_positions(
    case: tuple[torch.Tensor, int, int], seed: int
) -> None:
    w, _, m = case
    shape = tuple(w.shape)
    positions = np.flatnonzero(w.numpy().ravel())
    mm, n, stored = next(c for c in nm_pattern.candidates(positions, shape) if c[0] == m)
    data = bytearray(nm_pattern.encode(stored, shape, n, mm))
    rng = np.random.default_rng(seed)
    data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
    try:
        got = decode_pattern(bytes(data), w.numel(), 0, "nm", mm, stored.size, shape, n)
    except StorageError:
        return
    assert got is not None and got.size == stored.size and got.max() < w.numel()
    assert np.array_equal(np.unique(got), got)
    with pytest.raises(StorageError, match="needs"):
        decode_pattern(bytes(data) + b"\0", w.numel(), 0, "nm", mm, stored.size, shape, n)


def test_plan_picks_nm_only_where_it_is_smallest() -> None:
    torch.manual_seed(0)
    w = NM(n=2, m=4).project(torch.randn(64, 128))
    assert plan_tensor(w).pattern == "nm"
    irregular = torch.randn(64, 128) * (torch.rand(64, 128) < 0.05)  # not N:M at all
    assert plan_tensor(irregular).pattern != "nm"
    assert plan_tensor(torch.randn(64, 128)).pattern == "dense"


def test_an_nm_model_file_is_smaller_and_reloads_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_registry._MODELS, "_items", dict(model_registry._MODELS._items))
    model_registry.register_model("nm_mlp")(
        lambda: nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 8))
    )
    torch.manual_seed(0)
    model = model_registry.create_model("nm_mlp")
    with torch.no_grad():
        model[0].weight.copy_(NM(n=2, m=4).project(model[0].weight))
        model[2].weight.copy_(PrunedQuantized(NM(n=1, m=4), Ternary()).project(model[2].weight))
    summary = save_admmz(
        tmp_path / "m.admmz", model, model_name="nm_mlp", model_args={}, quant={"2": QuantSpec(2)}
    )
    rows = {r["name"]: r for r in summary.rows}
    assert rows["0.weight"]["encoding"] == "nm" and rows["0.weight"]["pattern_n"] == 2
    assert rows["0.weight"]["index_bytes"] < 64 * 128 // 8  # below a bitmask
    assert rows["0.weight"]["nnz"] == int((model[0].weight != 0).sum())
    back = read_admmz(tmp_path / "m.admmz").model
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    # a header that lies about the non-zeros behind its nm pattern is refused
    blob = bytearray((tmp_path / "m.admmz").read_bytes())
    assert b'"kind":"nm"' not in blob  # the header is compressed: tamper through the API
    with pytest.raises(ModelFormatError):
        (tmp_path / "bad.admmz").write_bytes(bytes(blob[:-5]))
        read_admmz(tmp_path / "bad.admmz")
