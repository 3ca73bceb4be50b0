"""sparsify: CSR twins of pruned Linear / Conv2d layers give the dense model's outputs."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from admmcompress.inference.sparse import (
    SparseConv2d,
    SparseLinear,
    SparseMLP,
    fuse_linear_chain,
    sparsify,
)
from admmcompress.models import create_model
from admmcompress.structure.compact import compact_model


def prune_at_random(model: nn.Module, keep: float, seed: int = 0) -> nn.Module:
    """Zero all but about ``keep`` of every weight matrix / kernel, as a pruned model has."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(torch.rand(p.shape, generator=g) < keep)
    return model.eval()


def assert_same(sparse: nn.Module, dense: nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode():
        torch.testing.assert_close(sparse(x), dense(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["lenet5", "lenet300"])
@pytest.mark.parametrize("batch", [1, 7])
def test_sparsified_lenets_match_dense(name: str, batch: int) -> None:
    torch.manual_seed(0)
    dense = prune_at_random(create_model(name), keep=0.05)
    sparse = sparsify(dense)
    kinds = {"lenet5": (SparseConv2d, SparseConv2d, SparseLinear, SparseLinear)}
    expected = kinds.get(name, (SparseLinear,) * 3)
    layers = [m for m in sparse.children()]
    assert tuple(type(m) for m in layers) == expected
    assert sparse.sparsify_report.dense == []
    x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    assert_same(sparse, dense, x)
    # the input model is untouched
    assert all(type(m) in (nn.Conv2d, nn.Linear) for m in dense.children())


def test_layers_above_max_density_stay_dense() -> None:
    torch.manual_seed(0)
    dense = prune_at_random(create_model("lenet300"), keep=0.05)
    with torch.no_grad():
        dense.fc2.weight.normal_()  # fully dense
    sparse = sparsify(dense, max_density=0.3)
    assert isinstance(sparse.fc1, SparseLinear) and isinstance(sparse.fc3, SparseLinear)
    assert type(sparse.fc2) is nn.Linear
    report = sparse.sparsify_report
    assert report.converted == ["fc1", "fc3"] and report.dense == ["fc2"]
    assert report.layers[1].density == 1.0 and "max_density" in report.layers[1].reason
    assert_same(sparse, dense, torch.randn(3, 784))
    # max_density=1 converts every layer, skip keeps the named ones dense
    assert sparsify(dense, max_density=1.0).sparsify_report.dense == []
    assert sparsify(dense, max_density=1.0, skip=["fc1"]).sparsify_report.dense == ["fc1"]


def test_all_zero_weight_layer() -> None:
    lin = nn.Linear(6, 4)
    conv = nn.Conv2d(2, 3, 3)
    with torch.no_grad():
        lin.weight.zero_()
        conv.weight.zero_()
    for dense, x in ((lin, torch.randn(5, 6)), (conv, torch.randn(2, 2, 7, 7))):
        sparse = sparsify(dense)
        assert sparse.sparsify_report.layers[0].density == 0.0
        assert sparse.weight._nnz() == 0
        assert_same(sparse, dense, x)
        assert_same(sparse, dense, x[:1])


@pytest.mark.parametrize("batch", [1, 4])
def test_conv_with_stride_padding_and_no_bias(batch: int) -> None:
    torch.manual_seed(0)
    conv = prune_at_random(
        nn.Conv2d(3, 8, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2), bias=False),
        keep=0.2,
    )
    sparse = SparseConv2d.from_dense(conv)
    assert sparse.bias is None
    x = torch.randn(batch, 3, 11, 13)
    assert_same(sparse, conv, x)
    assert_same(sparse, conv, x[0])  # unbatched (C, H, W) input, as nn.Conv2d allows
    torch.testing.assert_close(sparse.to_dense().weight, conv.weight)


def test_linear_without_bias_and_extra_leading_dims() -> None:
    torch.manual_seed(0)
    lin = prune_at_random(nn.Linear(9, 5, bias=False), keep=0.3)
    sparse = SparseLinear.from_dense(lin)
    for x in (torch.randn(1, 9), torch.randn(4, 9), torch.randn(2, 3, 9), torch.randn(9)):
        assert_same(sparse, lin, x)


def test_unsupported_convs_stay_dense() -> None:
    model = nn.Sequential(
        nn.Conv2d(4, 4, 3, groups=2, bias=False),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(4, 4, 3, padding="same"),
    )
    prune_at_random(model, keep=0.05)
    sparse = sparsify(model)
    assert all(type(m) is nn.Conv2d for m in sparse)
    reasons = [layer.reason for layer in sparse.sparsify_report.layers]
    assert "groups" in reasons[0] and "padding_mode" in reasons[1] and "same" in reasons[2]
    with pytest.raises(ValueError, match="groups=2"):
        SparseConv2d.from_dense(model[0])


def test_sparsified_model_deep_copies_and_sparsifies_again() -> None:
    """torch cannot deepcopy CSR tensors; the twins work around it."""
    dense = prune_at_random(create_model("lenet300"), keep=0.05)
    sparse = sparsify(dense)
    twice = sparsify(sparse)
    clone = copy.deepcopy(sparse)
    assert clone.fc1.weight is not sparse.fc1.weight
    x = torch.randn(2, 784)
    assert_same(clone, dense, x)
    assert_same(twice, dense, x)


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, float("nan"), "0.3", True])
def test_max_density_outside_unit_interval(bad: object) -> None:
    with pytest.raises(ValueError, match=r"max_density must be a number in \(0, 1\]"):
        sparsify(nn.Linear(2, 2), max_density=bad)  # type: ignore[arg-type]


def test_skip_must_name_layers() -> None:
    with pytest.raises(ValueError, match="fc9"):
        sparsify(create_model("lenet300"), skip=["fc9"])


# -- autotune and the fused Linear chain -----------------------------------------------------


def test_sparsify_autotune_keeps_outputs_and_reports_times() -> None:
    """Which form wins depends on the machine: only the bookkeeping is checked, not timings."""
    torch.manual_seed(0)
    dense = prune_at_random(create_model("lenet5"), keep=0.05)
    sparse = sparsify(dense, autotune=True)
    for info in sparse.sparsify_report.layers:
        module = sparse.get_submodule(info.name)
        assert isinstance(module, SparseLinear | SparseConv2d) == info.sparse
        if info.kind == "Linear":
            assert info.dense_s is not None and info.sparse_s is not None
            assert info.sparse == (info.sparse_s < info.dense_s)
            assert "timed" in info.reason
        else:  # convolutions: by density, not timed
            assert info.sparse and info.dense_s is None and "not timed" in info.reason
    for batch in (1, 5):
        assert_same(sparse, dense, torch.randn(batch, 1, 28, 28))


@pytest.mark.parametrize("autotune", [False, True])
@pytest.mark.parametrize("batch", [1, 7])
def test_fused_lenet300_matches_dense(autotune: bool, batch: int) -> None:
    torch.manual_seed(0)
    dense = prune_at_random(create_model("lenet300"), keep=0.05)
    fused = fuse_linear_chain(dense, autotune=autotune)
    assert isinstance(fused, SparseMLP) and fused.flatten and fused.relu == (True, True, False)
    report = fused.sparsify_report
    assert [info.name for info in report.layers] == ["fc1", "fc2", "fc3"]
    for info, layer in zip(report.layers, fused.layers, strict=True):
        assert isinstance(layer, SparseLinear) == info.sparse
        assert (info.dense_s is not None) == autotune
    if not autotune:  # by density: all three are below 0.3
        assert report.dense == []
    x = torch.randn(batch, 1, 28, 28)
    assert_same(fused, dense, x)
    assert_same(fused, dense, x.flatten(1))
    assert all(type(m) is nn.Linear for m in dense.children())  # the input is untouched


def test_fused_all_dense_and_mixed_layers() -> None:
    torch.manual_seed(0)
    dense = prune_at_random(create_model("lenet300"), keep=0.05)
    x = torch.randn(1, 784)
    all_dense = fuse_linear_chain(dense, skip=["fc1", "fc2", "fc3"])
    assert all(type(m) is nn.Linear for m in all_dense.layers)
    assert all_dense.sparsify_report.converted == []
    mixed = fuse_linear_chain(dense, skip=["fc3"])
    assert [type(m) for m in mixed.layers] == [SparseLinear, SparseLinear, nn.Linear]
    for fused in (all_dense, mixed):
        assert_same(fused, dense, x)
        assert_same(fused, dense, torch.randn(4, 784))


def test_fuse_takes_sparsified_and_compacted_models() -> None:
    torch.manual_seed(0)
    dense = prune_at_random(create_model("lenet300"), keep=0.02)
    x = torch.randn(1, 784)
    from_sparse = fuse_linear_chain(sparsify(dense), max_density=1.0)
    assert all(isinstance(m, SparseLinear) for m in from_sparse.layers)
    compact = compact_model(dense, x).model
    assert compact.fc1.out_features < 300  # keep=0.02 leaves dead fc1 neurons to remove
    from_compact = fuse_linear_chain(compact, autotune=True)
    for fused in (from_sparse, from_compact):
        assert_same(fused, dense, x)
        assert_same(fused, dense, torch.randn(3, 1, 28, 28))


class _FunctionalChain(nn.Module):
    """The other spellings of flatten / ReLU a chain may use, a trailing ReLU, no biases."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(12, 8, bias=False)
        self.drop = nn.Dropout(0.5)
        self.b = nn.Linear(8, 6)
        self.c = nn.Linear(6, 5, bias=False)
        self.d = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.a(torch.flatten(x, 1)))
        x = F.relu(self.b(self.drop(x)), inplace=True)
        x = self.c(x).relu()
        return torch.relu_(self.d(x))


def test_fuse_other_spellings_and_no_bias() -> None:
    torch.manual_seed(0)
    model = prune_at_random(_FunctionalChain(), keep=0.5)
    fused = fuse_linear_chain(model, max_density=1.0)
    assert fused.flatten and fused.relu == (True, True, True, True)
    assert [m.bias is None for m in fused.layers] == [True, False, True, False]
    seq = prune_at_random(
        nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Identity(), nn.Linear(8, 4)),
        keep=0.5,
    )
    fused_seq = fuse_linear_chain(seq, max_density=1.0)
    assert fused_seq.relu == (True, False)
    for batch in (1, 4):
        x = torch.randn(batch, 3, 2, 2)
        assert_same(fused, model, x)
        assert_same(fused_seq, seq, x)
    # one Linear alone, and inputs nn.Linear also takes: 1-D, extra leading dims
    lin = prune_at_random(nn.Linear(9, 4), keep=0.5)
    fused_lin = fuse_linear_chain(lin, max_density=1.0)
    assert fused_lin.relu == (False,) and not fused_lin.flatten
    for x in (torch.randn(9), torch.randn(2, 3, 9), torch.randn(1, 9)):
        assert_same(fused_lin, lin, x)


def test_fused_runs_outside_inference_mode_and_deep_copies() -> None:
    torch.manual_seed(0)
    dense = prune_at_random(create_model("lenet300"), keep=0.05)
    fused = fuse_linear_chain(dense, skip=["fc3"])  # a dense layer with a grad-requiring weight
    x = torch.randn(1, 784)
    torch.testing.assert_close(fused(x).detach(), dense(x).detach(), atol=1e-5, rtol=1e-5)
    clone = copy.deepcopy(fused).to("cpu")
    assert clone.layers[0].weight is not fused.layers[0].weight
    assert clone._steps[0][0] is clone.layers[0].weight  # the batch-1 aliases follow the copy
    assert_same(clone, dense, x)
    assert set(fused.state_dict()) == set(clone.state_dict())


def test_fuse_rejects_what_is_not_a_chain() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x)) + x

    for model in (
        create_model("lenet5"),  # convolutions
        Branchy(),
        nn.Sequential(nn.ReLU(), nn.Linear(4, 2)),  # ReLU before the first Linear
        nn.Sequential(nn.Linear(4, 2), nn.Sigmoid()),
        nn.Sequential(nn.Linear(4, 2), nn.Dropout()),  # in training mode: not the identity
    ):
        with pytest.raises(ValueError, match="chain"):
            fuse_linear_chain(model)
    with pytest.raises(ValueError, match="max_density"):
        fuse_linear_chain(nn.Linear(2, 2), max_density=0)
    with pytest.raises(ValueError, match="fc9"):
        fuse_linear_chain(create_model("lenet300"), skip=["fc9"])


def test_sparse_mlp_checks_its_layers() -> None:
    with pytest.raises(ValueError, match="do not chain"):
        SparseMLP([nn.Linear(4, 3), nn.Linear(2, 1)])
    with pytest.raises(ValueError, match="one flag per layer"):
        SparseMLP([nn.Linear(4, 3)], relu=[True, False])
    with pytest.raises(TypeError, match=r"nn\.Linear or SparseLinear"):
        SparseMLP([nn.Conv2d(1, 1, 1)])
    with pytest.raises(ValueError, match="at least one"):
        SparseMLP([])
