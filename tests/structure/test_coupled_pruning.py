"""Filter pruning of coupled layers inside ADMM: one joint projection per residual group,
BatchNorm entries of pruned channels held at zero, and a compact export that really shrinks."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from admmcompress import ADMM, register_model
from admmcompress.cli import main
from admmcompress.constraints import Channel, Filter, Irregular, coupled_group_masks
from admmcompress.formats import read_model_file
from admmcompress.models import create_model
from admmcompress.recipe.planning import layer_constraints
from admmcompress.recipe.schema import RuleConfig, load_config
from admmcompress.structure.compact import compact_model
from admmcompress.structure.groups import batchnorm_masks, channel_groups, coupled_layer_sets
from helpers import REPO

DATA_DIR = REPO / "data"


@settings(max_examples=60, deadline=None)
@given(
    channels=st.integers(2, 6),
    members=st.integers(1, 3),
    k=st.integers(0, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_coupled_masks_are_the_exact_joint_projection(
    channels: int, members: int, k: int, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    ws = [torch.randn(channels, 2, 3, generator=gen) for _ in range(members)]
    masks = coupled_group_masks(ws, k)
    rows = [m.reshape(channels, -1) for m in masks]
    kept = rows[0].all(dim=1)
    for r in rows:  # the same whole filters in every member
        assert torch.equal(r.all(dim=1), kept) and torch.equal(r.any(dim=1), kept)
    assert int(kept.sum()) == min(k, channels)

    def cost(keep: set[int]) -> float:
        return sum(float(w[c].pow(2).sum()) for w in ws for c in range(channels) if c not in keep)

    best = min(cost(set(s)) for s in itertools.combinations(range(channels), min(k, channels)))
    got = cost(set(kept.nonzero().flatten().tolist()))
    assert math.isclose(got, best, rel_tol=1e-9, abs_tol=1e-12)


def test_coupling_errors_name_the_layers() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3))
    with pytest.raises(ValueError, match="'1' must be under a filter or channel rule"):
        ADMM(model, {"0": Filter(keep=0.5), "1": Irregular(keep=0.5)}, couple=[("0", "1")])
    with pytest.raises(ValueError, match=r"same number of filters.*0: 2, 1: 1"):
        ADMM(model, {"0": Filter(keep=0.5), "1": Filter(keep=0.25)}, couple=[("0", "1")])
    with pytest.raises(ValueError, match="'2' has no ADMM rule"):
        ADMM(model, {"0": Filter(keep=0.5)}, couple=[("0", "2")])
    with pytest.raises(ValueError, match="all prune filters or all channels"):
        ADMM(model, {"1": Filter(keep=0.5), "2": Channel(keep=0.5)}, couple=[("1", "2")])


def test_channel_rules_on_a_stage_s_readers_drop_the_same_inputs_and_compact_exactly() -> None:
    """Channel pruning from the reading side: every layer that reads ResNet-20's stage-3
    channels (the next blocks' conv1 and the classifier) drops the same ones; compact export
    then removes them from the writers too (nothing reads them)."""
    torch.manual_seed(1)
    model = create_model("resnet20_cifar")
    x = torch.randn(2, 3, 32, 32)
    readers = ["layer3.1.conv1", "layer3.2.conv1", "fc"]
    constraints = {n: Channel(keep=0.25) for n in readers}
    groups = channel_groups(model, x[:1])
    sets, notes = coupled_layer_sets(model, groups, {n: "channel" for n in readers})
    assert sets == [tuple(readers)] and notes == []
    admm = ADMM(model, constraints, rho=1e-2, couple=sets)
    with torch.no_grad():
        admm.update()
        masks = admm.harden()
    cols = [masks[n].transpose(0, 1).reshape(64, -1).all(dim=1) for n in readers]
    assert all(torch.equal(c, cols[0]) for c in cols) and int(cols[0].sum()) == 16
    model.eval()
    result = compact_model(model, x[:1])
    small = result.model.eval()
    assert small.layer3[2].conv2.out_channels == 16 and small.fc.in_features == 16
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), atol=1e-5, rtol=1e-5)
    _, notes = coupled_layer_sets(model, groups, {"fc": "channel", "layer3.1.conv1": "channel"})
    assert len(notes) == 1 and "layer3.2.conv1" in notes[0]


def test_coupled_filters_that_are_also_quantized_stay_on_their_grids() -> None:
    """{prune: filter, quantize: 3}: the kept filters are chosen jointly, then each layer's
    kept weights are quantized with its own scale."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 6, 3), nn.Conv2d(2, 6, 3))
    rules = {n: RuleConfig(prune="filter", keep=0.5, quantize=3).constraint() for n in ("0", "1")}
    admm = ADMM(model, rules, rho=1e-2, couple=[("0", "1")])
    with torch.no_grad():
        admm.update()
        masks = admm.harden()
    rows = [masks[n].reshape(6, -1).all(dim=1) for n in ("0", "1")]
    assert torch.equal(rows[0], rows[1]) and int(rows[0].sum()) == 3
    for n, c in rules.items():
        w = model.get_submodule(n).weight
        assert c.violation(w) is None  # 3 filters, 3-bit grid
        assert torch.all(w[~masks[n]] == 0) and len(torch.unique(w[masks[n]].abs())) <= 4


def test_resnet20_recipe_prunes_whole_residual_channels_and_compacts_exactly() -> None:
    """configs/resnet20_cifar10_filter.yaml's rules on the registry ResNet-20: every stage's
    producers lose the same filters, so the compact model is half as wide everywhere."""
    torch.manual_seed(0)
    model = create_model("resnet20_cifar")
    x = torch.randn(4, 3, 32, 32)
    cfg = load_config(REPO / "configs" / "resnet20_cifar10_filter.yaml")
    constraints = layer_constraints(model, cfg)
    groups = channel_groups(model, x[:1])
    sets, notes = coupled_layer_sets(model, groups, {n: "filter" for n in constraints})
    assert notes == []  # the stem and the projection shortcuts are pruned too
    assert sorted(len(s) for s in sets) == [4, 4, 4]
    admm = ADMM(model, constraints, rho=1e-2, couple=sets)
    with torch.no_grad():
        for _ in range(3):  # stand-ins for W-steps
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
            admm.update()
        masks = admm.harden()
        for s in sets:
            first = masks[s[0]].reshape(masks[s[0]].shape[0], -1).all(dim=1)
            for name in s:
                assert torch.equal(masks[name].reshape(first.numel(), -1).all(dim=1), first)
        params = dict(model.named_parameters())
        bn = batchnorm_masks(model, groups, masks)
        assert "bn1.weight" in bn and "layer3.2.bn2.bias" in bn
        for key, keep in bn.items():
            params[key].masked_fill_(~keep, 0.0)
        for m in model.modules():  # non-trivial BatchNorm statistics
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    model.eval()
    result = compact_model(model, x[:1])
    small = result.model.eval()
    assert small.conv1.out_channels == 8
    assert small.layer2[1].conv2.out_channels == 16 and small.layer3[2].conv2.out_channels == 32
    assert small.layer1[0].conv1.out_channels == 8 and small.fc.in_features == 32
    assert result.params_after < 0.3 * result.params_before
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), atol=1e-5, rtol=1e-5)


def test_resnet20_aligned_recipe_compacts_to_16_channel_widths_with_2x_fewer_flops() -> None:
    """configs/resnet20_cifar10_filter_2x_aligned.yaml: every width of the compact model is a
    whole number of onnxruntime's 16-channel blocks, and it has at least 2x fewer FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    def flops(m: nn.Module) -> int:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            m.eval()(x[:1])
        return int(counter.get_total_flops())

    torch.manual_seed(0)
    model = create_model("resnet20_cifar")
    x = torch.randn(2, 3, 32, 32)
    dense = flops(model)
    cfg = load_config(REPO / "configs" / "resnet20_cifar10_filter_2x_aligned.yaml")
    constraints = layer_constraints(model, cfg)
    groups = channel_groups(model, x[:1])
    sets, _ = coupled_layer_sets(model, groups, {n: "filter" for n in constraints})
    masks = ADMM(model, constraints, couple=sets).harden()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, keep in batchnorm_masks(model, groups, masks).items():
            params[key].masked_fill_(~keep, 0.0)
    small = compact_model(model.eval(), x[:1]).model
    convs = {n: m for n, m in small.named_modules() if isinstance(m, nn.Conv2d)}
    assert all(m.out_channels % 16 == 0 for m in convs.values())
    assert all(m.in_channels % 16 == 0 for n, m in convs.items() if n != "conv1")
    assert convs["layer2.2.conv2"].out_channels == 16 and convs["layer3.1.conv1"].out_channels == 16
    assert convs["layer3.2.conv2"].out_channels == 32 and small.fc.in_features == 32
    assert dense / flops(small) >= 2.0
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), atol=1e-5, rtol=1e-5)


class TinyResNet(nn.Module):
    """conv -> BN -> ReLU, one residual block, pool, linear: the smallest coupled group."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(h)) + x)
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


register_model("tiny_resnet_mnist", input_shape=(1, 28, 28))(TinyResNet)


def test_a_run_keeps_pruned_channels_batchnorm_at_zero_and_exports_smaller(
    tmp_path: Path,
) -> None:
    cfg = {
        "name": "coupled",
        "model": "tiny_resnet_mnist",
        "data": {"train_subset": 256, "test_subset": 200, "batch_size": 64},
        "admm": {"epochs": 2, "period": 1, "rho": 0.01},
        "retrain": {"epochs": 1},
        "steps": [  # the second step quantizes: the filter pruning (and zero BN) carries on
            {"rules": {"conv*": {"prune": "filter", "keep": 0.5}}},
            {"rules": {"conv*": {"quantize": 4}}, "admm": {"epochs": 1}},
        ],
        "runtime": {"progress": False},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--data-dir", str(DATA_DIR)]) == 0
    saved = read_model_file(out / "model.safetensors")
    model, masks = saved.model, saved.masks
    rows = {n: masks[n].reshape(8, -1).all(dim=1) for n in ("conv1", "conv3")}
    assert torch.equal(rows["conv1"], rows["conv3"]) and int(rows["conv1"].sum()) == 4
    for bn, conv in (("bn1", "conv1"), ("bn3", "conv1"), ("bn2", "conv2")):
        dead = ~masks[conv].reshape(8, -1).any(dim=1)
        module = model.get_submodule(bn)
        assert int(dead.sum()) == 4
        assert torch.all(module.weight[dead] == 0) and torch.all(module.bias[dead] == 0)
    assert main(["export", str(out), "--compact", "--out", str(tmp_path / "s.admmz")]) == 0
    import admmcompress

    small = admmcompress.load(tmp_path / "s.admmz")
    assert small.conv1.out_channels == 4 and small.conv2.out_channels == 4
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model.eval()(x), atol=1e-5, rtol=1e-5)
