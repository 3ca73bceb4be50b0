"""MNIST models: the Caffe LeNet-5 and LeNet-300-100 of the pruning papers."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .registry import MNIST_SHAPE, register_model


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
def lenet5(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return LeNet5(num_classes=num_classes, in_channels=in_channels)


@register_model("lenet300", input_shape=MNIST_SHAPE)
def lenet300(num_classes: int = 10, in_features: int = 784) -> nn.Module:
    return LeNet300(num_classes=num_classes, in_features=in_features)
