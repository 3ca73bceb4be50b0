"""sparsify: CSR twins of pruned Linear / Conv2d layers give the dense model's outputs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from admmcompress.models import create_model
from admmcompress.sparse_inference import SparseConv2d, SparseLinear, sparsify


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
