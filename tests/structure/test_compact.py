"""Compact export: removing dead and constant units keeps the masked model's outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from admmcompress import Filter, create_model
from admmcompress.models import LeNet5, LeNet300
from admmcompress.structure.compact import CompactResult, compact_model, resize_modules


def assert_same_outputs(result: CompactResult, original: nn.Module, x: Tensor) -> None:
    original.eval()
    result.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), original(x), atol=1e-5, rtol=1e-5)
    assert result.params_after == sum(p.numel() for p in result.model.parameters())


def pruned_lenet5() -> LeNet5:
    """conv1: filters 0-2 constant (bias > 0 folds, < 0 and 0 vanish), 5-6 unused by conv2;
    conv2: filters 0-3 constant, filter 10 unused by fc1; fc1: rows 0-9 constant, 20-24 unused."""
    torch.manual_seed(0)
    m = LeNet5()
    with torch.no_grad():
        m.conv1.weight[[0, 1, 2]] = 0
        m.conv1.bias[[0, 1, 2]] = torch.tensor([0.3, -0.2, 0.0])
        m.conv2.weight[:, [5, 6]] = 0
        m.conv2.weight[[0, 1, 2, 3]] = 0
        m.conv2.bias[[0, 1, 2, 3]] = torch.tensor([0.5, 0.2, -0.1, 0.0])
        m.fc1.weight[:, 10 * 16 : 11 * 16] = 0
        m.fc1.weight[:10] = 0
        m.fc1.bias[:5] = 0.4
        m.fc2.weight[:, 20:25] = 0
    return m.eval()


@pytest.mark.parametrize("traced", [False, True], ids=["module", "graph_module"])
def test_lenet5_compacts_to_exact_sizes_with_equal_outputs(traced: bool) -> None:
    model: nn.Module = pruned_lenet5()
    if traced:
        model = fx.symbolic_trace(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(6, 1, 28, 28)

    result = compact_model(model, x)

    assert result.sizes == {
        "conv1": {"out_channels": 15},
        "conv2": {"in_channels": 15, "out_channels": 45},
        "fc1": {"in_features": 45 * 16, "out_features": 485},
        "fc2": {"in_features": 485},
    }
    gone_conv1 = {0, 1, 2, 5, 6}
    assert result.kept["conv1"]["out"] == [i for i in range(20) if i not in gone_conv1]
    assert result.kept["conv2"]["in"] == result.kept["conv1"]["out"]
    assert result.kept["conv2"]["out"] == [i for i in range(50) if i not in {0, 1, 2, 3, 10}]
    assert result.model is not model
    assert isinstance(result.model, fx.GraphModule if traced else LeNet5)
    assert result.model.conv1.out_channels == 15
    assert result.params_after < result.params_before
    assert result.params_before == sum(p.numel() for p in model.parameters())
    assert_same_outputs(result, model, x)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "input model was modified"


def test_library_filter_masks_give_a_physically_smaller_lenet5() -> None:
    torch.manual_seed(1)
    model = LeNet5().eval()
    with torch.no_grad():  # structured pruning masks weights only: biases stay and get folded
        model.conv1.weight.mul_(Filter(keep=0.5).mask(model.conv1.weight))
        model.conv2.weight.mul_(Filter(keep=0.6).mask(model.conv2.weight))
    x = torch.randn(4, 1, 28, 28)

    result = compact_model(model, x)

    assert result.sizes == {
        "conv1": {"out_channels": 10},
        "conv2": {"in_channels": 10, "out_channels": 30},
        "fc1": {"in_features": 30 * 16},
    }
    assert_same_outputs(result, model, x)


def test_lenet300_dead_neurons_cascade_to_a_fixed_point() -> None:
    torch.manual_seed(2)
    model = LeNet300().eval()
    with torch.no_grad():
        model.fc1.weight[:10] = 0  # fc1 0-4 constant > 0 (fold), 5-9 constant 0 after ReLU
        model.fc1.bias[:5] = 0.5
        model.fc1.bias[5:10] = -0.5
        model.fc2.weight[:, 10:20] = 0  # fc1 10-19 unused
        model.fc3.weight[:, :5] = 0  # fc2 0-4 unused ...
        model.fc2.weight[5:, 20] = 0  # ... and fc1 20 only feeds them: dead one round later
        model.fc2.weight[50] = 0  # fc2 50 reads only fc1 0, which folds away: then constant
        model.fc2.weight[50, 0] = 1.0
        model.fc2.bias[50] = 0.2
    x = torch.randn(8, 1, 28, 28)

    result = compact_model(model, x)

    assert result.sizes == {
        "fc1": {"out_features": 279},
        "fc2": {"in_features": 279, "out_features": 94},
        "fc3": {"in_features": 94},
    }
    assert result.kept["fc1"]["out"] == list(range(21, 300))
    assert result.kept["fc2"]["out"] == [i for i in range(5, 100) if i != 50]
    assert result.params_after < result.params_before
    assert_same_outputs(result, model, x)


def conv_bn_model(consumer_padding: int) -> nn.Sequential:
    """Conv(pad 1) + BN + ReLU -> Conv -> AdaptiveAvgPool -> Flatten -> Linear, pruned:
    conv 0 filter 1 is a positive constant after BN+ReLU, filter 2 is zero after ReLU;
    conv 3 filter 3 is a constant that the pooling carries to the Linear."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 6, 3, padding=consumer_padding),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    )
    conv, bn, conv2 = model[0], model[1], model[3]
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        conv.weight[[1, 2]] = 0
        conv.bias[[1, 2]] = torch.tensor([0.3, 0.1])
        bn.running_mean[[1, 2]] = torch.tensor([0.1, 0.5])
        bn.bias[[1, 2]] = torch.tensor([0.5, -1.0])
        conv2.weight[3] = 0
        conv2.bias[3] = 0.4
    return model.eval()


@pytest.mark.parametrize("padding", [0, 1])
def test_bn_constants_fold_unless_a_padded_consumer_sees_them(padding: int) -> None:
    model = conv_bn_model(padding)
    x = torch.randn(2, 3, 8, 8)

    result = compact_model(model, x)

    n = 6 if padding == 0 else 7  # with padding, filter 1's non-zero constant is pinned
    assert result.sizes == {
        "0": {"out_channels": n},
        "1": {"num_features": n},
        "3": {"in_channels": n, "out_channels": 5},
        "6": {"in_features": 5},
    }
    assert (1 in result.kept["0"]["out"]) == (padding == 1)
    assert 2 not in result.kept["0"]["out"]
    assert result.kept["1"]["out"] == result.kept["0"]["out"]
    assert isinstance(result.model, nn.Sequential)
    assert result.model[1].running_mean.shape == (n,)
    assert_same_outputs(result, model, x)


class ResidualNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv0(x))
        y = self.conv2(F.relu(self.conv1(x)))
        x = F.adaptive_avg_pool2d(F.relu(x + y), 1).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


@pytest.mark.parametrize("coupled", [False, True], ids=["one_producer", "both_producers"])
def test_residual_add_couples_its_producers(coupled: bool) -> None:
    """conv0 and conv2 meet in ``x + y``: one channel group, read by conv1 and fc1. This test
    used to check that the add pins both producers; with channel groups a channel that both
    have pruned now goes (channel 5: conv0's constant is clipped to 0 by its ReLU, so the
    padded conv1 reads 0, and the sum's constant relu(0 + 0.3) folds into fc1's bias), while
    channels pruned in one producer only (0 and 1 in conv0, 2 and 3 in conv2) stay."""
    torch.manual_seed(4)
    model = ResidualNet().eval()
    with torch.no_grad():
        model.conv0.weight[[0, 1]] = 0  # conv2 still writes these: kept
        model.conv2.weight[[2, 3]] = 0  # conv0 still writes these: kept
        model.conv1.weight[4] = 0  # inside the block: a clean conv1 -> conv2 path
        model.conv1.bias[4] = 0.0
        model.fc2.weight[:, 3] = 0
        if coupled:
            model.conv0.weight[5] = 0
            model.conv0.bias[5] = -0.1
            model.conv2.weight[5] = 0
            model.conv2.bias[5] = 0.3
    x = torch.randn(2, 3, 6, 6)

    result = compact_model(model, x)

    expected = {
        "conv1": {"out_channels": 7},
        "conv2": {"in_channels": 7},
        "fc1": {"out_features": 15},
        "fc2": {"in_features": 15},
    }
    if coupled:
        expected["conv0"] = {"out_channels": 7}
        expected["conv1"]["in_channels"] = 7
        expected["conv2"]["out_channels"] = 7
        expected["fc1"]["in_features"] = 7
        assert result.kept["conv2"]["out"] == result.kept["conv0"]["out"] == [0, 1, 2, 3, 4, 6, 7]
    assert result.sizes == expected
    assert_same_outputs(result, model, x)


def test_resize_modules_rebuilds_the_compact_architecture_for_loading() -> None:
    result = compact_model(pruned_lenet5(), torch.randn(2, 1, 28, 28))
    fresh = create_model("lenet5")

    assert resize_modules(fresh, result.sizes) is fresh
    fresh.load_state_dict(result.model.state_dict())

    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), result.model.eval()(x))
    with pytest.raises(ValueError, match="conv9"):
        resize_modules(fresh, {"conv9": {"out_channels": 3}})
    with pytest.raises(ValueError, match="kernel_size"):
        resize_modules(fresh, {"conv1": {"kernel_size": 3}})
    with pytest.raises(ValueError, match="ReLU"):
        resize_modules(nn.Sequential(nn.ReLU()), {"0": {"num_features": 3}})


class ViewNet(nn.Module):
    def __init__(self, hard_coded: bool) -> None:
        super().__init__()
        self.hard_coded = hard_coded
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv(x))
        x = x.view(-1, 64) if self.hard_coded else x.view(x.size(0), -1)
        return self.fc(x)


@pytest.mark.parametrize("hard_coded", [False, True], ids=["view_batch", "view_hard_coded"])
def test_folding_creates_a_bias_and_hard_coded_views_pin(hard_coded: bool) -> None:
    torch.manual_seed(5)
    model = ViewNet(hard_coded).eval()
    with torch.no_grad():
        model.conv.weight[1] = 0
        model.conv.bias[1] = 0.5
    x = torch.randn(3, 1, 6, 6)

    result = compact_model(model, x)

    if hard_coded:  # view(-1, 64) would break with fewer channels
        assert result.sizes == {}
    else:
        assert result.sizes == {"conv": {"out_channels": 3}, "fc": {"in_features": 48, "bias": 1}}
        loaded = resize_modules(ViewNet(hard_coded), result.sizes)
        loaded.load_state_dict(result.model.state_dict())
        with torch.no_grad():
            assert torch.equal(loaded.eval()(x), result.model.eval()(x))
    assert_same_outputs(result, model, x)


def test_a_fully_pruned_layer_keeps_one_zero_channel() -> None:
    torch.manual_seed(7)
    model = LeNet300().eval()
    with torch.no_grad():
        model.fc2.weight.zero_()  # every fc1 neuron unused, every fc2 neuron a constant
        model.fc2.bias.uniform_(0.1, 1.0)
    x = torch.randn(4, 1, 28, 28)

    result = compact_model(model, x)

    assert result.sizes == {
        "fc1": {"out_features": 1},
        "fc2": {"in_features": 1, "out_features": 1},
        "fc3": {"in_features": 1},
    }
    assert torch.count_nonzero(result.model.fc3.weight) == 0
    assert_same_outputs(result, model, x)


def test_unpruned_model_keeps_its_sizes() -> None:
    torch.manual_seed(6)
    model = LeNet5().eval()
    x = torch.randn(2, 1, 28, 28)

    result = compact_model(model, x)

    assert result.sizes == {}
    assert result.kept == {}
    assert result.params_after == result.params_before
    with torch.no_grad():
        assert torch.equal(result.model(x), model(x))
