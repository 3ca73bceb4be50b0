"""Coupled channel groups (BatchNorm, residual sums) and their compact export on a ResNet-20."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import admmcompress
from admmcompress.formats.admmz import save_admmz
from admmcompress.models import create_model
from admmcompress.structure.compact import CompactResult, compact_model, resize_modules
from admmcompress.structure.groups import (
    ChannelGroup,
    channel_groups,
    coupled_filter_scores,
    describe_groups,
)


class Block(nn.Module):
    """CIFAR basic block: conv-bn-relu-conv-bn, plus an identity or 1x1 conv+bn shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet with 16/32/64-channel stages; ``blocks=(3, 3, 3)`` is ResNet-20."""

    def __init__(self, blocks: tuple[int, int, int] = (3, 3, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        stages = []
        for i, (cout, n) in enumerate(zip((16, 32, 64), blocks, strict=True)):
            stride = 1 if i == 0 else 2
            stages.append(
                nn.Sequential(
                    *(
                        Block(cin if j == 0 else cout, cout, stride if j == 0 else 1)
                        for j in range(n)
                    )
                )
            )
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet(blocks: tuple[int, int, int] = (3, 3, 3), seed: int = 0) -> ResNet:
    """An eval-mode ResNet whose BatchNorms have non-trivial affine parameters and statistics."""
    torch.manual_seed(seed)
    model = ResNet(blocks)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def example(batch: int = 4) -> Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def assert_same_outputs(result: CompactResult, original: nn.Module, x: Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), original(x), atol=1e-5, rtol=1e-5)
    assert result.params_after == sum(p.numel() for p in result.model.parameters())


def test_resnet20_groups_chain_identity_shortcuts_and_split_at_projections() -> None:
    model = resnet()

    groups = channel_groups(model, example(2))

    by_first = {g.producers[0] if g.producers else "<input>": g for g in groups}
    assert len(groups) == len(by_first) == 14
    assert groups[0] == ChannelGroup([], [], ["conv1"], 3, False, "network input")
    # the stem and every conv2 of stage 1 meet in identity-shortcut sums: one group, read by
    # each block's conv1 and by both branches of stage 2's first block
    assert by_first["conv1"] == ChannelGroup(
        ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"],
        ["bn1", "layer1.0.bn2", "layer1.1.bn2", "layer1.2.bn2"],
        [f"layer1.{b}.conv1" for b in range(3)] + ["layer2.0.conv1", "layer2.0.shortcut.0"],
        16,
    )
    # the projection shortcut consumes stage 1 and produces into stage 2 beside conv2
    assert by_first["layer2.0.conv2"] == ChannelGroup(
        ["layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2", "layer2.2.conv2"],
        ["layer2.0.bn2", "layer2.0.shortcut.1", "layer2.1.bn2", "layer2.2.bn2"],
        ["layer2.1.conv1", "layer2.2.conv1", "layer3.0.conv1", "layer3.0.shortcut.0"],
        32,
    )
    assert by_first["layer3.0.conv2"] == ChannelGroup(
        ["layer3.0.conv2", "layer3.0.shortcut.0", "layer3.1.conv2", "layer3.2.conv2"],
        ["layer3.0.bn2", "layer3.0.shortcut.1", "layer3.1.bn2", "layer3.2.bn2"],
        ["layer3.1.conv1", "layer3.2.conv1", "fc"],
        64,
    )
    for s, channels in ((1, 16), (2, 32), (3, 64)):
        for b in range(3):
            inner = f"layer{s}.{b}"
            assert by_first[f"{inner}.conv1"] == ChannelGroup(
                [f"{inner}.conv1"], [f"{inner}.bn1"], [f"{inner}.conv2"], channels
            )
    assert by_first["fc"] == ChannelGroup(["fc"], [], [], 10, False, "graph output")

    table = describe_groups(groups).splitlines()
    assert table[0].split() == ["#", "channels", "producers", "batchnorms", "consumers", "status"]
    assert len(table) == 15
    assert table[1].endswith("pinned: network input")
    assert "layer1.2.conv2" in table[2] and table[2].endswith("prunable")


def test_channel_groups_leave_a_training_model_as_it_was() -> None:
    model = resnet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    channel_groups(model, example(2))

    assert all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


STAGE1 = ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]
STAGE1_BN = ["bn1", "layer1.0.bn2", "layer1.1.bn2", "layer1.2.bn2"]


def pruned_resnet20() -> ResNet:
    """Coupled filter pruning in three residual groups plus a plain conv1 -> conv2 path:

    - stage 1, channels 3 and 7: every producer's filter and BN gamma/beta are 0, so the
      channel is exactly 0 at every sum;
    - stage 2, channel 20: no consumer reads it (channel pruning of all readers);
    - stage 3, channel 40: every filter is 0 and each BN shift is -1, so ReLU clips each sum
      to 0 (BN statistics left as they are otherwise);
    - layer1.0.conv1: filter 5 is a negative constant after BN (ReLU -> 0: removed), filter 6
      a positive one, which the padded conv2 would see only away from its borders (kept).
    """
    model = resnet()
    with torch.no_grad():
        for name in STAGE1:
            model.get_submodule(name).weight[[3, 7]] = 0
        for name in STAGE1_BN:
            bn = model.get_submodule(name)
            bn.weight[[3, 7]] = 0
            bn.bias[[3, 7]] = 0
        for name in ("layer2.1.conv1", "layer2.2.conv1", "layer3.0.conv1", "layer3.0.shortcut.0"):
            model.get_submodule(name).weight[:, 20] = 0
        for b in range(3):
            model.get_submodule(f"layer3.{b}.conv2").weight[40] = 0
            bn = model.get_submodule(f"layer3.{b}.bn2")
            bn.bias[40], bn.running_mean[40] = -1.0, 0.0
        model.layer3[0].shortcut[0].weight[40] = 0
        model.layer3[0].shortcut[1].bias[40] = -1.0
        model.layer3[0].shortcut[1].running_mean[40] = 0.0
        model.layer1[0].conv1.weight[[5, 6]] = 0
        bn = model.layer1[0].bn1
        bn.bias[[5, 6]] = torch.tensor([-1.0, 0.5])
        bn.running_mean[[5, 6]] = torch.tensor([0.2, -0.3])
    return model


def expected_sizes() -> dict[str, dict[str, int]]:
    sizes: dict[str, dict[str, int]] = {"conv1": {"out_channels": 14}, "bn1": {"num_features": 14}}
    for b in range(3):
        sizes[f"layer1.{b}.conv1"] = {"in_channels": 14}
        sizes[f"layer1.{b}.conv2"] = {"out_channels": 14}
        sizes[f"layer1.{b}.bn2"] = {"num_features": 14}
        sizes[f"layer2.{b}.conv2"] = {"out_channels": 31}
        sizes[f"layer2.{b}.bn2"] = {"num_features": 31}
        sizes[f"layer3.{b}.conv2"] = {"out_channels": 63}
        sizes[f"layer3.{b}.bn2"] = {"num_features": 63}
        if b:
            sizes[f"layer2.{b}.conv1"] = {"in_channels": 31}
            sizes[f"layer3.{b}.conv1"] = {"in_channels": 63}
    sizes["layer1.0.conv1"]["out_channels"] = 15
    sizes["layer1.0.bn1"] = {"num_features": 15}
    sizes["layer1.0.conv2"]["in_channels"] = 15
    sizes["layer2.0.conv1"] = {"in_channels": 14}
    sizes["layer2.0.shortcut.0"] = {"in_channels": 14, "out_channels": 31}
    sizes["layer2.0.shortcut.1"] = {"num_features": 31}
    sizes["layer3.0.conv1"] = {"in_channels": 31}
    sizes["layer3.0.shortcut.0"] = {"in_channels": 31, "out_channels": 63}
    sizes["layer3.0.shortcut.1"] = {"num_features": 63}
    sizes["fc"] = {"in_features": 63}
    return sizes


def test_resnet20_coupled_pruning_compacts_every_member_with_equal_outputs() -> None:
    model = pruned_resnet20()
    x = example()

    result = compact_model(model, x)

    assert result.sizes == expected_sizes()
    stage1 = [c for c in range(16) if c not in (3, 7)]
    for name in STAGE1 + STAGE1_BN:
        assert result.kept[name]["out"] == stage1
    assert result.kept["layer2.0.shortcut.0"]["in"] == stage1
    assert result.kept["layer1.0.conv1"]["out"] == [c for c in range(16) if c != 5]
    assert result.kept["layer3.0.shortcut.0"]["out"] == [c for c in range(64) if c != 40]
    assert result.kept["fc"]["in"] == [c for c in range(64) if c != 40]
    assert result.params_after < result.params_before
    assert_same_outputs(result, model, x)


def test_resize_modules_rebuilds_the_compact_resnet20_for_loading() -> None:
    model = pruned_resnet20()
    result = compact_model(model, example(2))
    fresh = resize_modules(ResNet(), result.sizes)

    fresh.load_state_dict(result.model.state_dict())

    x = example(3)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), result.model(x))


@pytest.mark.parametrize("case", ["one_producer", "nonzero_shift"])
def test_a_group_channel_stays_unless_all_its_consumers_can_do_without_it(case: str) -> None:
    """Channel 9 of stage 1 cannot go: either only layer1.1.conv2 pruned it (the stem and the
    other blocks still write it), or all producers did but the BN shifts leave a non-zero
    constant that the padded 3x3 consumers see only away from their borders."""
    model = resnet()
    with torch.no_grad():
        names = ["layer1.1.conv2"] if case == "one_producer" else STAGE1
        for name in names:
            model.get_submodule(name).weight[9] = 0
        if case == "one_producer":
            model.layer1[1].bn2.weight[9] = 0
            model.layer1[1].bn2.bias[9] = 0
        else:
            for name in STAGE1_BN:
                model.get_submodule(name).bias[9] = 0.5
    x = example()

    result = compact_model(model, x)

    assert result.sizes == {}
    assert result.params_after == result.params_before
    assert_same_outputs(result, model, x)


def test_a_residual_constant_read_only_by_the_linear_is_folded() -> None:
    """In a one-block-per-stage ResNet, stage 3 (conv2 + projection shortcut) is read by fc
    alone: with both filters 9 pruned, relu(bn2(0) + bn_shortcut(0)) = 0.8 folds into fc's
    bias."""
    model = resnet((1, 1, 1))
    block = model.layer3[0]
    with torch.no_grad():
        block.conv2.weight[9] = 0
        block.shortcut[0].weight[9] = 0
        block.bn2.bias[9], block.bn2.running_mean[9] = 0.5, 0.0
        block.shortcut[1].bias[9], block.shortcut[1].running_mean[9] = 0.3, 0.0
    x = example()

    result = compact_model(model, x)

    assert result.sizes == {
        "layer3.0.conv2": {"out_channels": 63},
        "layer3.0.bn2": {"num_features": 63},
        "layer3.0.shortcut.0": {"out_channels": 63},
        "layer3.0.shortcut.1": {"num_features": 63},
        "fc": {"in_features": 63},
    }
    assert not torch.equal(result.model.fc.bias, model.fc.bias)
    assert_same_outputs(result, model, x)


class Pinned(nn.Module):
    """``cat``, a gating multiplication and an add with a constant: none can be followed."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.c = nn.Conv2d(8, 6, 1)
        self.d = nn.Conv2d(6, 6, 1)
        self.e = nn.Conv2d(6, 5, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1)
        z = F.relu(self.c(y))
        return self.e(z * torch.sigmoid(self.d(z))) + 1.0


def test_cat_multiplication_and_constants_pin_their_groups() -> None:
    torch.manual_seed(8)
    model = Pinned().eval()
    with torch.no_grad():
        for conv in (model.a, model.c, model.d):
            conv.weight[1] = 0
            conv.bias[1] = 0
    x = torch.randn(2, 3, 8, 8)

    groups = channel_groups(model, x)

    assert [(g.producers, g.consumers, g.prunable, g.reason) for g in groups] == [
        ([], ["a", "b"], False, "network input"),
        (["a"], [], False, "cat"),
        (["b"], [], False, "cat"),
        ([], ["c"], False, "output of cat"),
        (["c"], ["d"], False, "multiplication"),
        (["d"], [], False, "multiplication"),
        ([], ["e"], False, "output of mul"),
        (["e"], [], False, "add with a constant or a broadcast"),
    ]
    result = compact_model(model, x)
    assert result.sizes == {}
    assert_same_outputs(result, model.eval(), x)


class FanOut(nn.Module):
    """A stem read by two convs whose sum goes through a depthwise conv, then an MLP with
    BatchNorm1d."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.left = nn.Conv2d(6, 4, 1)
        self.right = nn.Conv2d(6, 4, 1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.fc1 = nn.Linear(4, 5)
        self.bn = nn.BatchNorm1d(5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.stem(x))
        y = F.adaptive_avg_pool2d(self.dw(self.left(h) + self.right(h)), 1).flatten(1)
        return self.fc2(F.relu(self.bn(self.fc1(y))))


def test_fan_out_and_linear_batchnorm_compact_while_a_grouped_conv_pins() -> None:
    """The stem's two readers form one group (channel 2 is clipped to 0 by ReLU: both drop
    it); fc1 -> BatchNorm1d -> fc2 folds fc1's constant neuron 1; the depthwise conv pins
    left + right, so their jointly pruned filter 0 stays."""
    torch.manual_seed(9)
    model = FanOut().eval()
    with torch.no_grad():
        model.bn.running_mean.normal_()
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.bias.normal_()
        model.stem.weight[2], model.stem.bias[2] = 0, -0.5
        model.left.weight[0], model.right.weight[0] = 0, 0
        model.fc1.weight[1], model.fc1.bias[1] = 0, 0.3
    x = torch.randn(4, 3, 6, 6)

    groups = channel_groups(model, x)

    assert [(g.producers, g.batchnorms, g.consumers, g.reason) for g in groups] == [
        ([], [], ["stem"], "network input"),
        (["stem"], [], ["left", "right"], ""),
        (["left", "right"], [], [], "unsupported op grouped Conv2d 'dw'"),
        ([], [], ["fc1"], "output of grouped Conv2d 'dw'"),
        (["fc1"], ["bn"], ["fc2"], ""),
        (["fc2"], [], [], "graph output"),
    ]
    result = compact_model(model, x)
    assert result.sizes == {
        "stem": {"out_channels": 5},
        "left": {"in_channels": 5},
        "right": {"in_channels": 5},
        "fc1": {"out_features": 4},
        "bn": {"num_features": 4},
        "fc2": {"in_features": 4},
    }
    assert_same_outputs(result, model, x)


def test_coupled_filter_scores_rank_a_group_by_all_its_producers() -> None:
    model = resnet()
    group = channel_groups(model, example(1))[1]
    assert group.producers == STAGE1
    with torch.no_grad():
        for name in STAGE1:
            model.get_submodule(name).weight[3] = 0
        model.layer1[2].conv2.weight[5] = 0

    scores = coupled_filter_scores(model, group)

    expected = sum(model.get_submodule(n).weight.detach().pow(2).sum(dim=(1, 2, 3)) for n in STAGE1)
    torch.testing.assert_close(scores, expected)
    assert scores.shape == (16,)
    assert scores[3] == 0 and scores[5] > 0  # one shared ranking: 3 is out, 5 still counts
    with pytest.raises(ValueError, match="no producers"):
        coupled_filter_scores(model, ChannelGroup([], [], ["conv1"], 3))
    with pytest.raises(ValueError, match="16 filters"):
        coupled_filter_scores(model, ChannelGroup(["conv1"], [], [], 8))


class InPlace(nn.Module):
    """``relu_`` overwrites ``h``, which ``c`` reads afterwards: ``c`` sees the ReLU's output."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(4, 4, 1)
        self.c = nn.Conv2d(4, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        return self.b(F.relu(h, inplace=True)) + self.c(h)


def test_an_in_place_op_on_a_tensor_read_again_pins() -> None:
    groups = channel_groups(InPlace(), torch.randn(1, 3, 4, 4))

    reason = "in-place op on a tensor that is read again"
    assert [(g.producers, g.consumers, g.reason) for g in groups] == [
        ([], ["a"], "network input"),
        (["a"], ["c"], reason),
        ([], ["b"], reason),
        (["b", "c"], [], "graph output"),
    ]


class Branchy(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x if x.sum() > 0 else -x


def test_an_untraceable_model_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="fx-traceable"):
        channel_groups(Branchy(), torch.randn(1, 3, 4, 4))


def test_registry_resnet20_coupled_pruning_exports_compact_with_equal_outputs(
    tmp_path: Path,
) -> None:
    """The model configs name (``resnet20_cifar``): prune each residual group by one shared
    ranking, export compact to .admmz, load it back: smaller, same outputs."""
    torch.manual_seed(0)
    model = create_model("resnet20_cifar").eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        for m in model.modules():  # non-trivial BatchNorm statistics
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        groups = [g for g in channel_groups(model, x) if g.prunable and len(g.producers) > 1]
        assert len(groups) == 3  # one per stage, chained by the identity shortcuts
        modules = dict(model.named_modules())
        for g in groups:
            scores = coupled_filter_scores(model, g)
            drop = torch.argsort(scores)[: g.channels // 4]  # the weakest quarter, group-wide
            for name in g.producers:
                modules[name].weight[drop] = 0
                if modules[name].bias is not None:
                    modules[name].bias[drop] = 0
            for name in g.batchnorms:
                modules[name].weight[drop] = 0
                modules[name].bias[drop] = 0
    path = tmp_path / "small.admmz"
    save_admmz(
        path,
        compact_model(model, x[:1]).model,
        model_name="resnet20_cifar",
        model_args={},
        resized=compact_model(model, x[:1]).sizes,
    )
    small = admmcompress.load(path)
    assert small.layer3[0].conv2.out_channels == 64 - 16
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(small(x), model(x), atol=1e-5, rtol=1e-5)
