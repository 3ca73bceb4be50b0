"""Resolve per-layer rules (exact name, glob pattern or ``type:ClassName``) to a model's layers."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import TypeVar

from torch import nn

T = TypeVar("T")

TYPE_PREFIX = "type:"


class SelectionError(ValueError):
    """A rule that matches no layer, or a layer that two rules claim."""


def compressible_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layers whose ``weight`` is a parameter with two or more dims (conv, linear, ...).

    BatchNorm and biases are left out, as the paper's counts leave them out.
    """
    layers: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.dim() >= 2:
            layers[name] = module
    return layers


def _matches(selector: str, name: str, module: nn.Module) -> bool:
    if selector.startswith(TYPE_PREFIX):
        wanted = selector[len(TYPE_PREFIX) :].strip()
        return any(cls.__name__ == wanted for cls in type(module).__mro__)
    if any(ch in selector for ch in "*?["):
        return fnmatch.fnmatchcase(name, selector)
    return selector == name


def select_layers(model: nn.Module, rules: Mapping[str, T]) -> dict[str, T]:
    """Map each selected layer name to its rule's value, in the model's layer order.

    Every rule must match at least one layer and no layer may be matched twice: silent
    precedence between overlapping patterns is how a user ends up pruning the wrong layer.
    """
    layers = compressible_layers(model)
    owner: dict[str, str] = {}
    for selector in rules:
        hits = [n for n, m in layers.items() if _matches(selector, n, m)]
        if not hits:
            raise SelectionError(
                f"rule {selector!r} matches no layer of the model; layers that can be "
                f"compressed: {', '.join(layers) or '(none)'}. Select by exact name, a glob "
                f"pattern such as 'fc*', or a type such as 'type:Conv2d'."
            )
        for name in hits:
            if name in owner:
                raise SelectionError(
                    f"layer {name!r} is matched by two rules, {owner[name]!r} and "
                    f"{selector!r}; make the patterns disjoint"
                )
            owner[name] = selector
    return {name: rules[owner[name]] for name in layers if name in owner}
