"""The model registry: every built-in builds and runs, documented weight counts hold, CIFAR
models trace with torch.fx, ``weights=`` files load strictly, configs for them validate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from admmcompress import models
from admmcompress.core.selection import select_layers
from admmcompress.formats.safetensors_model import save_model
from admmcompress.models import (
    available_models,
    create_model,
    model_input_shape,
    register_model,
)
from admmcompress.recipe.schema import load_config
from helpers import REPO

CONFIGS = REPO / "configs"

MNIST = ["lenet5", "lenet300"]
CIFAR = ["vgg16_cifar", "resnet20_cifar", "resnet32_cifar", "resnet56_cifar"]
IMAGENET = ["resnet18", "resnet50", "alexnet", "mobilenet_v2", "vgg16"]

# conv + linear weights (no biases, no BatchNorm), as written in the factories' docstrings
WEIGHTS = {
    "lenet5": 430_500,
    "lenet300": 266_200,
    "vgg16_cifar": 14_715_584,
    "resnet20_cifar": 270_896,
    "resnet32_cifar": 464_432,
    "resnet56_cifar": 851_504,
}


def weight_count(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- building and running ------------------------------------------------------------------


def test_builtins_are_registered() -> None:
    assert set(MNIST + CIFAR + IMAGENET) <= set(available_models())


@pytest.mark.parametrize("name", MNIST + CIFAR)
def test_small_models_run_on_their_input_shape(name: str) -> None:
    model = create_model(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *model_input_shape(name)))
    assert out.shape == (2, 7)


@pytest.mark.parametrize("name", IMAGENET)
def test_torchvision_models_build_and_run(name: str) -> None:
    # 64x64 instead of 224x224: the adaptive pooling heads accept it, and it is 12x cheaper
    model = create_model(name, num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5)


def test_torchvision_default_is_imagenet_1000_classes() -> None:
    assert create_model("resnet18").fc.out_features == 1000


@pytest.mark.parametrize("name", list(WEIGHTS))
def test_documented_weight_counts(name: str) -> None:
    assert weight_count(create_model(name)) == WEIGHTS[name]


def test_resnet_depth_and_option_b_shortcuts() -> None:
    for name, n in (("resnet20_cifar", 3), ("resnet32_cifar", 5), ("resnet56_cifar", 9)):
        model = create_model(name)
        layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        projections = [m for m in layers if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
        assert len(layers) - len(projections) == 6 * n + 2
        assert len(projections) == 2  # one 1x1 conv + BN where each later stage starts
    model = create_model("resnet20_cifar")
    assert isinstance(model.layer1[0].shortcut, nn.Identity)
    conv, bn = model.layer2[0].shortcut
    assert isinstance(conv, nn.Conv2d) and conv.stride == (2, 2) and isinstance(bn, nn.BatchNorm2d)


@pytest.mark.parametrize("name", ["resnet20_cifar", "vgg16_cifar"])
def test_cifar_models_trace_with_fx(name: str) -> None:
    model = create_model(name).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x))


# -- input shapes --------------------------------------------------------------------------


@pytest.mark.parametrize("channels_last", [False, True])
def test_lenet5_pool_then_relu_is_bitwise_the_classic_order(channels_last: bool) -> None:
    """LeNet-5 pools before its ReLUs (a quarter of the work); outputs and gradients are
    those of the classic ReLU-then-pool order, to the bit, ties at zero included."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = models.create_model("lenet5")
    x = torch.randn(16, 1, 28, 28)
    x[:, :, :8] = 0.0  # flat regions: ties inside pooling windows
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.as_strided(x.shape, (784, 1, 28, 1))
    y = torch.arange(16) % 10

    def classic(m: nn.Module, inp: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(m.conv1(inp)), 2)
        h = F.max_pool2d(F.relu(m.conv2(h)), 2)
        return m.fc2(F.relu(m.fc1(h.flatten(1))))

    results = []
    for forward in (classic, lambda m, inp: m(inp)):
        model.zero_grad()
        out = forward(model, x)
        F.cross_entropy(out, y).backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1], strict=True):
        assert torch.equal(a, b)


def test_model_input_shapes() -> None:
    for name in MNIST:
        assert model_input_shape(name) == (1, 28, 28)
    for name in CIFAR:
        assert model_input_shape(name) == (3, 32, 32)
    for name in IMAGENET:
        assert model_input_shape(name) == (3, 224, 224)


@pytest.fixture
def scratch_names() -> Iterator[list[str]]:
    """Names a test registers, removed again so the global registry stays as it was."""
    names: list[str] = []
    yield names
    for name in names:
        models.registry._MODELS._items.pop(name, None)
        models.registry._INPUT_SHAPES.pop(name, None)


def test_register_without_shape_still_works(scratch_names: list[str]) -> None:
    scratch_names.append("_test_plain")

    @register_model("_test_plain")
    def plain(num_classes: int = 3) -> nn.Module:
        return nn.Linear(4, num_classes)

    assert isinstance(create_model("_test_plain"), nn.Linear)
    with pytest.raises(ValueError, match=r"_test_plain.*without an input shape.*input_shape="):
        model_input_shape("_test_plain")


def test_register_with_shape(scratch_names: list[str]) -> None:
    scratch_names.append("_test_shaped")
    register_model("_test_shaped", input_shape=(3, 8, 8))(lambda: nn.Identity())
    assert model_input_shape("_test_shaped") == (3, 8, 8)
    with pytest.raises(ValueError, match="already registered"):
        register_model("_test_shaped", input_shape=(1, 2, 2))(lambda: nn.Identity())
    assert model_input_shape("_test_shaped") == (3, 8, 8)  # a failed duplicate changes nothing


def test_bad_shape_and_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        register_model("_never", input_shape=(32, 32))  # type: ignore[arg-type]
    assert "_never" not in available_models()
    with pytest.raises(ValueError, match=r"unknown model 'nope'.*resnet20_cifar"):
        model_input_shape("nope")


# -- weights files -------------------------------------------------------------------------


def test_weights_from_safetensors(tmp_path: Path) -> None:
    src = create_model("resnet20_cifar")
    path = tmp_path / "r20.safetensors"
    save_file(src.state_dict(), str(path))
    assert same_state(create_model("resnet20_cifar", weights=str(path)), src)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd},
        lambda sd: {"net": sd, "acc": 93.1},  # kuangliu/pytorch-cifar checkpoints
        lambda sd: {f"module.{k}": v for k, v in sd.items()},  # DataParallel / DDP
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    ],
    ids=["bare", "state_dict", "model", "net", "module_prefix", "state_dict_module_prefix"],
)
def test_weights_from_torch_file(tmp_path: Path, wrap: Any) -> None:
    src = create_model("vgg16_cifar")
    path = tmp_path / "vgg.pt"
    torch.save(wrap(src.state_dict()), path)
    assert same_state(create_model("vgg16_cifar", weights=path), src)


def test_weights_from_an_admmcompress_model_file(tmp_path: Path) -> None:
    src = create_model("lenet5")
    masks = {"fc1.weight": torch.rand_like(src.fc1.weight) > 0.5}
    path = tmp_path / "model.safetensors"
    save_model(path, src, masks, model_name="lenet5", model_args={})
    assert same_state(create_model("lenet5", weights=str(path)), src)  # masks are skipped


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_wrong_shape_names_file_and_key(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"lenet5_10{suffix}"
    state = create_model("lenet5", num_classes=10).state_dict()
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    with pytest.raises(ValueError, match=r"lenet5_10.*shape mismatch 2: fc2\.weight \(file \(10,"):
        create_model("lenet5", num_classes=5, weights=str(path))


def test_other_architecture_names_missing_and_unexpected(tmp_path: Path) -> None:
    path = tmp_path / "lenet300.pt"
    torch.save(create_model("lenet300").state_dict(), path)
    with pytest.raises(ValueError) as info:
        create_model("lenet5", weights=str(path))
    msg = str(info.value)
    assert str(path) in msg
    assert "missing 4: conv1.weight" in msg and "unexpected 2: fc3.weight" in msg


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.safetensors"
    with pytest.raises(FileNotFoundError, match=r"nowhere\.safetensors does not exist"):
        create_model("resnet20_cifar", weights=str(path))


@pytest.mark.parametrize(
    ("content", "match"),
    [([1, 2, 3], "holds no state dict.*list"), (b"not a torch file", "cannot be read")],
)
def test_unreadable_torch_file(tmp_path: Path, content: Any, match: str) -> None:
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match=rf"bad\.pt.*{match}|{match}.*bad\.pt"):
        create_model("lenet5", weights=str(path))


def test_corrupt_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match=r"bad\.safetensors is not a readable safetensors"):
        create_model("lenet5", weights=str(path))


# -- configs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "model", "layers"),
    [
        ("vgg16_cifar10_prune.yaml", "vgg16_cifar", 14),
        ("vgg16_cifar10_binary.yaml", "vgg16_cifar", 12),
        ("resnet20_cifar10_filter.yaml", "resnet20_cifar", 21),
        ("resnet20_cifar10_filter_2x.yaml", "resnet20_cifar", 21),
        ("resnet20_cifar10_filter_3x.yaml", "resnet20_cifar", 21),
        ("resnet20_cifar10_filter_2x_aligned.yaml", "resnet20_cifar", 14),  # stages 2 and 3
        ("resnet20_cifar10_4bit.yaml", "resnet20_cifar", 22),  # every conv and the classifier
        ("resnet20_cifar10_ternary.yaml", "resnet20_cifar", 22),
        ("resnet20_cifar10_ternary_8bit_ends.yaml", "resnet20_cifar", 22),
        ("resnet20_cifar10_dense.yaml", "resnet20_cifar", 22),
    ],
)
def test_cifar_configs_validate(file: str, model: str, layers: int) -> None:
    cfg = load_config(CONFIGS / file)
    assert cfg.model.name == model and cfg.data.dataset == "cifar10"
    assert len(select_layers(create_model(model), cfg.rules)) == layers


def test_vgg_prune_config_reaches_16x() -> None:
    cfg = load_config(CONFIGS / "vgg16_cifar10_prune.yaml")
    model = create_model("vgg16_cifar")
    rules = select_layers(model, cfg.rules)
    layers = dict(model.named_modules())
    total = weight_count(model)
    kept = sum(round(layers[n].weight.numel() * r.keep) for n, r in rules.items())
    assert len(rules) == 14 and total / kept >= 16


def test_vgg_binary_config_keeps_first_conv_full_precision() -> None:
    rules = select_layers(
        create_model("vgg16_cifar"), load_config(CONFIGS / "vgg16_cifar10_binary.yaml").rules
    )
    assert "features.0" not in rules and "classifier" not in rules
    assert all(r.quantize.kind == "binary" and r.quantize.per_channel for r in rules.values())


def test_imagenet_config_validates_and_selects_every_conv_and_fc() -> None:
    cfg = load_config(CONFIGS / "resnet50_imagenet_prune.yaml")
    assert cfg.model.name == "resnet50" and cfg.data.dataset == "imagenet"
    with torch.device("meta"):  # layer names only: no need to initialise 25M weights
        model = create_model("resnet50")
    assert len(select_layers(model, cfg.rules)) == 54  # stem + 52 stage convs + fc
