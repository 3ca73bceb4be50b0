"""Depthwise-separable CNNs (MobileNet-style): the kind of network pruning hurts most at
hardening, since every pointwise convolution feeds a BatchNorm."""

from __future__ import annotations

from torch import Tensor, nn

from .registry import CIFAR_SHAPE, register_model

#: (output channels, stride) of each depthwise-separable block after the stem
DSCNN_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
)  # fmt: skip


class DSConvNet(nn.Module):
    """A 3x3 conv stem, then blocks of depthwise 3x3 conv + BN + ReLU and pointwise 1x1 conv +
    BN + ReLU, global average pooling and one linear layer (MobileNetV1's pattern, sized for
    32x32 images): 1-D BatchNorm after every convolution."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 32,
        blocks: tuple[tuple[int, int], ...] = DSCNN_BLOCKS,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        ]
        channels = width
        for out, stride in blocks:
            layers += [
                nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
                nn.Conv2d(channels, out, 1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


@register_model("dscnn_cifar", input_shape=CIFAR_SHAPE)
def dscnn_cifar(num_classes: int = 10, width: int = 32) -> nn.Module:
    """Depthwise-separable CNN for CIFAR-10: 6 blocks, 32 to 512 channels (~0.2M weights)."""
    return DSConvNet(num_classes=num_classes, width=width)
