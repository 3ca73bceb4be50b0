"""Model registry: configs name an architecture, ``create_model`` builds it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .registry import Registry

_MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make a model factory available to configs under ``name``."""
    return _MODELS.register(name)


def available_models() -> list[str]:
    return _MODELS.names()


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model, e.g. ``create_model("lenet5", num_classes=10)``."""
    return _MODELS.get(name)(**kwargs)


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
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
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


@register_model("lenet5")
def lenet5(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return LeNet5(num_classes=num_classes, in_channels=in_channels)


@register_model("lenet300")
def lenet300(num_classes: int = 10, in_features: int = 784) -> nn.Module:
    return LeNet300(num_classes=num_classes, in_features=in_features)
