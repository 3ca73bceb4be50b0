"""The model registry: configs name an architecture, ``create_model`` builds it.

Adding a model is one new module in this folder that registers a factory: the registry
finds it on its first lookup. Every model takes ``weights=PATH``, a state dict loaded
strictly (``weights.py``), so a config can start from published or earlier-trained
weights without this tool ever downloading anything at run time.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from ..registry import Registry
from .sources import ModelSourceError, build, kind_of, runs_code
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


ENTRY_POINTS = "admmcompress.models"  # group under which packages declare their models
_entry_points_loaded = False


def _load_entry_points() -> None:
    """Register the models that installed packages declare (once per process).

    An entry point names a module (importing it runs its ``register_model`` calls) or a
    factory (registered under the entry point's name).
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINTS):
        if ep.name in _MODELS:
            continue
        try:
            obj = ep.load()
        except Exception as e:  # a broken plug-in must not break every other model
            raise ModelSourceError(
                f"the model {ep.name!r} declared by an installed package ({ep.value}) cannot "
                f"be loaded: {type(e).__name__}: {e}"
            ) from None
        if callable(obj) and not isinstance(obj, type(importlib)) and ep.name not in _MODELS:
            register_model(ep.name)(obj)


def _registered(name: str) -> Callable[..., nn.Module]:
    if name not in _MODELS:
        _load_entry_points()
    try:
        return _MODELS.get(name)
    except ValueError as e:
        raise ModelSourceError(
            f"{e}; or name a model as timm:NAME, torchvision:NAME, hf:FOLDER or "
            "package.module:factory"
        ) from None


def available_models() -> list[str]:
    """Registered names (built in, registered in this process, or declared by packages)."""
    _load_entry_points()
    return _MODELS.names()


def is_known_model(name: str) -> bool:
    """Whether ``name`` can name a model: registered, or one of the prefixed forms."""
    if kind_of(name) != "registered":
        return True
    if name not in _MODELS:
        _load_entry_points()
    return name in _MODELS


def create_model(
    name: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    allow_import: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Build a model by name, e.g. ``create_model("lenet5", num_classes=10)``,
    ``create_model("timm:resnet18")`` or ``create_model("mypkg.models:build", width=2)``;
    with ``weights``, load that state-dict file into it (strictly).

    ``allow_import=False`` refuses an import path (readers of model files pass it, so that a
    file never makes its reader import code it names).
    """
    if runs_code(name) and not allow_import:
        raise ModelSourceError(
            f"the model is named by the import path {name!r}: rebuilding it would import and "
            "run that code, which a model file must not do on its own. Pass the model "
            "yourself (admmcompress.load(path, model=...)), or allow the import "
            "(load(path, allow_import=True), --allow-import on the command line)"
        )
    model = build(name, kwargs, _registered)
    return model if weights is None else load_weights_file(model, weights)


def model_input_shape(name: str) -> tuple[int, int, int]:
    """The (C, H, W) input a registered model expects, e.g. ``(3, 32, 32)`` for CIFAR models."""
    _registered(name)  # an unknown name gets the registry's error listing the known ones
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
    return {k: v for k, v in model_args.items() if k not in ("weights", "pretrained")}
