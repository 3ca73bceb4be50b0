"""The model registry: configs name an architecture, ``create_model`` builds it.

Adding a model is one new module in this folder that registers a factory: the registry
finds it on its first lookup. Every model takes ``weights=PATH``, a state dict loaded
strictly (``weights.py``), so a config can start from published or earlier-trained
weights without this tool ever downloading anything at run time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from ..registry import Registry
from .weights import load_weights_file

_MODELS: Registry[Callable[..., nn.Module]] = Registry("model", discover="admmcompress.models")
_INPUT_SHAPES: dict[str, tuple[int, int, int] | None] = {}

MNIST_SHAPE = (1, 28, 28)
CIFAR_SHAPE = (3, 32, 32)
IMAGENET_SHAPE = (3, 224, 224)


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


def create_model(
    name: str, *, weights: str | os.PathLike[str] | None = None, **kwargs: Any
) -> nn.Module:
    """Build a registered model, e.g. ``create_model("lenet5", num_classes=10)``; with
    ``weights``, load that state-dict file into it (strictly)."""
    model = _MODELS.get(name)(**kwargs)
    return model if weights is None else load_weights_file(model, weights)


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


def architecture_args(model_args: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments that shape a model: a ``weights`` file is left out, the saved tensors
    replace it (and a model file must never make its reader open another file)."""
    return {k: v for k, v in model_args.items() if k != "weights"}
