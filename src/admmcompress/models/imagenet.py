"""torchvision's ImageNet architectures, always built without torchvision's downloads."""

from __future__ import annotations

from torch import nn

from .registry import IMAGENET_SHAPE, register_model


def _register_torchvision(name: str) -> None:
    def factory(num_classes: int = 1000) -> nn.Module:
        import torchvision.models  # on first use: importing it costs CLI start-up time

        # weights=None: torchvision must never fetch anything; ours come from a local file
        builder = getattr(torchvision.models, name)
        return builder(weights=None, num_classes=num_classes)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = (
        f"torchvision's ``{name}``, randomly initialised (``weights=`` loads a local file)."
    )
    register_model(name, input_shape=IMAGENET_SHAPE)(factory)


for _name in ("resnet18", "resnet50", "alexnet", "mobilenet_v2", "vgg16"):
    _register_torchvision(_name)
del _name
