"""Model registry: configs name an architecture, ``create_model`` builds it.

Every built-in factory takes ``weights``: a path to a state dict (``.safetensors`` or a torch
file) loaded strictly, so a config can start from published or earlier-trained weights
without this tool ever downloading anything at run time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import Registry

_MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
_INPUT_SHAPES: dict[str, tuple[int, int, int] | None] = {}

MNIST_SHAPE = (1, 28, 28)
CIFAR_SHAPE = (3, 32, 32)
IMAGENET_SHAPE = (3, 224, 224)

WeightsPath = str | os.PathLike[str] | None


def register_model(
    name: str, *, input_shape: tuple[int, int, int] | None = None
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make a model factory available to configs under ``name``.

    ``input_shape`` (C, H, W) is the image size the model is meant for; tools that need an
    example input (tracing, export, benchmarks) read it back with ``model_input_shape``.
    """
    shape = None if input_shape is None else tuple(int(d) for d in input_shape)
    if shape is not None and (len(shape) != 3 or min(shape) < 1):
        raise ValueError(f"input_shape must be (C, H, W) of positive ints, got {input_shape}")

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS.register(name)(factory)  # raises on a duplicate name before we record a shape
        _INPUT_SHAPES[name] = shape  # type: ignore[assignment]  # length checked above
        return factory

    return wrap


def available_models() -> list[str]:
    return _MODELS.names()


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model, e.g. ``create_model("lenet5", num_classes=10)``."""
    return _MODELS.get(name)(**kwargs)


def model_input_shape(name: str) -> tuple[int, int, int]:
    """The (C, H, W) input a registered model expects, e.g. ``(3, 32, 32)`` for CIFAR models."""
    _MODELS.get(name)  # an unknown name gets the registry's error listing the known ones
    shape = _INPUT_SHAPES.get(name)
    if shape is None:
        raise ValueError(
            f"model {name!r} was registered without an input shape; register it with "
            f'register_model("{name}", input_shape=(C, H, W))'
        )
    return shape


# -- weights files -------------------------------------------------------------------------

# where training scripts nest the state dict: Lightning and most scripts, our checkpoint.pt,
# kuangliu/pytorch-cifar (whose VGG layout vgg16_cifar shares)
_WRAPPER_KEYS = ("state_dict", "model", "net")
_MASK_PREFIX = "__mask__."  # export.MASK_PREFIX (not imported: export imports this module)
_SHOWN = 5  # keys named per kind of mismatch in an error message


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(
                f"weights file {path} is not a readable safetensors file: {e}"
            ) from None
        # an admmcompress model.safetensors also holds its masks; its weights are already zero
        obj = {k: v for k, v in obj.items() if not k.startswith(_MASK_PREFIX)}
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for corrupt or pickled-code files
            raise ValueError(
                f"weights file {path} cannot be read as a torch state dict "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            ) from None
        if isinstance(obj, Mapping):
            for key in _WRAPPER_KEYS:
                if isinstance(obj.get(key), Mapping):
                    obj = obj[key]
                    break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        if isinstance(obj, Mapping):
            what = "keys " + ", ".join(map(str, list(obj)[:_SHOWN]))
        else:
            what = type(obj).__name__
        raise ValueError(
            f"weights file {path} holds no state dict (name -> tensor), found {what}; expected "
            f"a bare state dict or one under {' or '.join(map(repr, _WRAPPER_KEYS))}"
        )
    return dict(obj)


def load_weights_file(model: nn.Module, weights: str | os.PathLike[str]) -> nn.Module:
    """Load a state dict file into ``model`` strictly and return the model.

    Reads ``.safetensors`` or a torch file (``weights_only=True``: a weights file can never run
    code), bare or under a ``state_dict`` / ``model`` / ``net`` key, and drops the ``module.``
    prefix that DataParallel / DDP checkpoints carry. A file that does not fit raises a ValueError
    naming the file and the first offending keys, not torch's wall of text.
    """
    path = Path(weights)
    if not path.is_file():
        why = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"weights file {path} {why}")
    state = _read_state_dict(path)
    own = model.state_dict()
    prefix = "module."
    if (
        state
        and all(k.startswith(prefix) for k in state)
        and not any(k.startswith(prefix) for k in own)
    ):
        state = {k[len(prefix) :]: v for k, v in state.items()}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [  # in the model's order, which a reader knows; a file's may be sorted
        f"{k} (file {tuple(state[k].shape)}, model {tuple(v.shape)})"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{label} {len(keys)}: {', '.join(keys[:_SHOWN])}{', ...' if len(keys) > _SHOWN else ''}"
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", wrong),
        )
        if keys
    ]
    if problems:
        raise ValueError(
            f"weights file {path} does not fit model {type(model).__name__}: " + "; ".join(problems)
        )
    model.load_state_dict(state, strict=True)
    return model


def _finish(model: nn.Module, weights: WeightsPath) -> nn.Module:
    return model if weights is None else load_weights_file(model, weights)


# -- MNIST ---------------------------------------------------------------------------------


class LeNet5(nn.Module):
    """The Caffe LeNet-5 used by the pruning papers: 20-50-800-500, 430.5K weights.

    Caffe's original has no ReLU after the convolutions; we add one (a common PyTorch
    variant) which trains faster and leaves the weight count unchanged.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        # Pooling before the ReLU gives the same values and gradients, to the bit (max and
        # ReLU commute), with the ReLU on a quarter of the elements.
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


class LeNet300(nn.Module):
    """LeNet-300-100: a 784-300-100-10 perceptron, 266.2K weights."""

    def __init__(self, num_classes: int = 10, in_features: int = 784) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


@register_model("lenet5", input_shape=MNIST_SHAPE)
def lenet5(num_classes: int = 10, in_channels: int = 1, weights: WeightsPath = None) -> nn.Module:
    return _finish(LeNet5(num_classes=num_classes, in_channels=in_channels), weights)


@register_model("lenet300", input_shape=MNIST_SHAPE)
def lenet300(
    num_classes: int = 10, in_features: int = 784, weights: WeightsPath = None
) -> nn.Module:
    return _finish(LeNet300(num_classes=num_classes, in_features=in_features), weights)


# -- CIFAR-10 ------------------------------------------------------------------------------

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class VGGCifar(nn.Module):
    """VGG-16 with BatchNorm for 32x32 images: 13 conv3x3+BN+ReLU, one Linear(512, classes).

    The common CIFAR variant (as in kuangliu/pytorch-cifar): after five 2x2 max-pools a 32x32
    image is 1x1x512, so the ImageNet head (4096-4096 FC) is replaced by a single linear
    layer: 14,715,584 conv+linear weights (14,710,464 conv + 5,120 linear; 14,728,266
    parameters with biases and BatchNorm).
    The layout (``features.<i>``, ``classifier``, conv biases kept although BN makes them
    redundant) matches that repository, so its checkpoints load with ``weights=``.
    Convolutions are ``features.0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40``.
    """

    def __init__(
        self, cfg: tuple[int | str, ...] = VGG16_CFG, num_classes: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                out = int(v)
                layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
                channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    """Two conv3x3+BN with an identity shortcut, or a 1x1 conv+BN one where the shape changes.

    The shortcut is always a module (``nn.Identity`` or ``nn.Sequential(conv, bn)``), never an
    ``if`` in ``forward``, so ``torch.fx`` traces every block the same way.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """He et al. (2016) CIFAR ResNet: a 16-channel stem, 3 stages of ``n`` basic blocks at
    16/32/64 channels (the 2nd and 3rd stages start with stride 2), global average pooling
    and one linear layer: 6n+2 weighted layers, plus two shortcut projections.

    Shortcuts use option B (1x1 conv + BN projection where the shape changes), not the
    paper's parameter-free option A (strided slice + zero padding): a projection is an
    ordinary conv that pruning and compact export already handle, where option A is an op
    they would have to special-case. It adds 512 + 2,048 weights, so counts are slightly
    above the paper's (270,896 vs. 0.27M for ResNet-20).
    """

    def __init__(self, n: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, stride=1)
        self.layer2 = self._stage(16, 32, n, stride=2)
        self.layer3 = self._stage(32, 64, n, stride=2)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():  # He init, as in the paper; BN starts as the identity
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _stage(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_planes, planes, stride)]
        blocks += [BasicBlock(planes, planes) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register_model("vgg16_cifar", input_shape=CIFAR_SHAPE)
def vgg16_cifar(num_classes: int = 10, weights: WeightsPath = None) -> nn.Module:
    """VGG-16-BN, CIFAR variant: 14,710,464 conv + 5,120 linear = 14,715,584 weights."""
    return _finish(VGGCifar(num_classes=num_classes), weights)


@register_model("resnet20_cifar", input_shape=CIFAR_SHAPE)
def resnet20_cifar(num_classes: int = 10, weights: WeightsPath = None) -> nn.Module:
    """ResNet-20 (n=3), option B shortcuts: 270,896 conv+linear weights (paper: 0.27M)."""
    return _finish(ResNetCifar(3, num_classes=num_classes), weights)


@register_model("resnet32_cifar", input_shape=CIFAR_SHAPE)
def resnet32_cifar(num_classes: int = 10, weights: WeightsPath = None) -> nn.Module:
    """ResNet-32 (n=5), option B shortcuts: 464,432 conv+linear weights (paper: 0.46M)."""
    return _finish(ResNetCifar(5, num_classes=num_classes), weights)


@register_model("resnet56_cifar", input_shape=CIFAR_SHAPE)
def resnet56_cifar(num_classes: int = 10, weights: WeightsPath = None) -> nn.Module:
    """ResNet-56 (n=9), option B shortcuts: 851,504 conv+linear weights (paper: 0.85M)."""
    return _finish(ResNetCifar(9, num_classes=num_classes), weights)


# -- ImageNet (torchvision architectures, never torchvision's downloads) --------------------


def _register_torchvision(name: str) -> None:
    def factory(num_classes: int = 1000, weights: WeightsPath = None) -> nn.Module:
        import torchvision.models  # on first use: importing it costs CLI start-up time

        # weights=None: torchvision must never fetch anything; ours come from a local file
        builder = getattr(torchvision.models, name)
        return _finish(builder(weights=None, num_classes=num_classes), weights)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"torchvision's ``{name}``, randomly initialised or from a local file."
    register_model(name, input_shape=IMAGENET_SHAPE)(factory)


for _name in ("resnet18", "resnet50", "alexnet", "mobilenet_v2", "vgg16"):
    _register_torchvision(_name)
del _name
