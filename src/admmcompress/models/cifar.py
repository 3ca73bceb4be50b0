"""CIFAR-10 models: VGG-16 with BatchNorm and He et al.'s ResNets, for 32x32 images."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .registry import CIFAR_SHAPE, register_model

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
def vgg16_cifar(num_classes: int = 10) -> nn.Module:
    """VGG-16-BN, CIFAR variant: 14,710,464 conv + 5,120 linear = 14,715,584 weights."""
    return VGGCifar(num_classes=num_classes)


@register_model("resnet20_cifar", input_shape=CIFAR_SHAPE)
def resnet20_cifar(num_classes: int = 10) -> nn.Module:
    """ResNet-20 (n=3), option B shortcuts: 270,896 conv+linear weights (paper: 0.27M)."""
    return ResNetCifar(3, num_classes=num_classes)


@register_model("resnet32_cifar", input_shape=CIFAR_SHAPE)
def resnet32_cifar(num_classes: int = 10) -> nn.Module:
    """ResNet-32 (n=5), option B shortcuts: 464,432 conv+linear weights (paper: 0.46M)."""
    return ResNetCifar(5, num_classes=num_classes)


@register_model("resnet56_cifar", input_shape=CIFAR_SHAPE)
def resnet56_cifar(num_classes: int = 10) -> nn.Module:
    """ResNet-56 (n=9), option B shortcuts: 851,504 conv+linear weights (paper: 0.85M)."""
    return ResNetCifar(9, num_classes=num_classes)
