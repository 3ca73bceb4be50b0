"""Resolve per-parameter rules to a model's parameters.

The unit of compression is a parameter of two or more dimensions: a layer's ``weight``
(named by the layer, ``"fc1"``, as reports and masks have always named it) or any other
such parameter, named in full (``"encoder.layers.0.self_attn.in_proj_weight"``: attention
keeps its fused QKV weight as a bare parameter, not in a layer). A rule selects by exact
name, glob pattern, the name of a module (its own parameters), or ``type:ClassName``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from torch import nn

from ..constraints import Constraint, Transposed

T = TypeVar("T")

TYPE_PREFIX = "type:"
#: layer types whose weight is stored transposed, ``[in, out]`` (Hugging Face GPT-2's Conv1D)
TRANSPOSED_TYPES = frozenset({"Conv1D"})


class SelectionError(ValueError):
    """A rule that matches no parameter, or a parameter that two rules claim."""


@dataclass(frozen=True)
class Target:
    """One compressible parameter and where it lives."""

    name: str  # "fc1" for a layer's weight, the full parameter name otherwise
    param_name: str  # "fc1.weight", "encoder.layers.0.self_attn.in_proj_weight"
    module_name: str  # the module that owns the parameter
    module: nn.Module
    transposed: bool  # stored [in, out]: structured kinds act on its transpose

    @property
    def param(self) -> nn.Parameter:
        return getattr(self.module, self.param_name.rsplit(".", 1)[-1])


def _transposed(module: nn.Module) -> bool:
    return type(module).__name__ in TRANSPOSED_TYPES


def compressible_targets(model: nn.Module) -> dict[str, Target]:
    """Every parameter of two or more dimensions, in the model's order.

    A module's ``weight`` is named by the module, so that every conv/linear layer keeps the
    name it has always had; any other such parameter by its full name. Biases and norms
    (one dimension) are left out, as the papers' counts leave them out.
    """
    out: dict[str, Target] = {}
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if not isinstance(p, nn.Parameter) or p.dim() < 2:
                continue
            full = f"{mname}.{pname}" if mname else pname
            name = mname if pname == "weight" and mname else full
            if name in out:  # a parameter shared by two modules: the first owner keeps it
                continue
            out[name] = Target(name, full, mname, module, pname == "weight" and _transposed(module))
    return out


def compressible_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Modules whose ``weight`` is a parameter with two or more dims (conv, linear, ...)."""
    return {n: t.module for n, t in compressible_targets(model).items() if t.name == t.module_name}


def compressible_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every compressible parameter by its target name (``compressible_targets``)."""
    return {n: t.param for n, t in compressible_targets(model).items()}


def parameter(model: nn.Module, name: str) -> nn.Parameter:
    """The parameter a target name stands for: ``"fc1"`` -> ``fc1.weight``."""
    targets = compressible_targets(model)
    if name not in targets:
        raise KeyError(f"model has no compressible parameter named {name!r}")
    return targets[name].param


def _matches(selector: str, t: Target) -> bool:
    if selector.startswith(TYPE_PREFIX):
        wanted = selector[len(TYPE_PREFIX) :].strip()
        return any(cls.__name__ == wanted for cls in type(t.module).__mro__)
    names = (t.name, t.param_name)
    if any(ch in selector for ch in "*?["):
        return any(fnmatch.fnmatchcase(n, selector) for n in names)
    return selector in names or selector == t.module_name


def select_targets(model: nn.Module, rules: Mapping[str, T]) -> dict[str, tuple[Target, T]]:
    """Map each selected parameter to its target and its rule's value, in model order.

    Every rule must match at least one parameter and no parameter may be matched twice:
    silent precedence between overlapping patterns is how a user ends up pruning the wrong
    layer.
    """
    targets = compressible_targets(model)
    owner: dict[str, str] = {}
    for selector in rules:
        hits = [n for n, t in targets.items() if _matches(selector, t)]
        if not hits:
            raise SelectionError(
                f"rule {selector!r} matches no parameter of the model; parameters that can be "
                f"compressed: {', '.join(targets) or '(none)'}. Select by exact name, a glob "
                f"pattern such as 'fc*' or '*.in_proj_weight', a module's name, or a type such "
                f"as 'type:Conv2d'."
            )
        for name in hits:
            if name in owner:
                raise SelectionError(
                    f"parameter {name!r} is matched by two rules, {owner[name]!r} and "
                    f"{selector!r}; make the patterns disjoint"
                )
            owner[name] = selector
    return {n: (targets[n], rules[owner[n]]) for n in targets if n in owner}


def select_layers(model: nn.Module, rules: Mapping[str, T]) -> dict[str, T]:
    """Map each selected parameter's name to its rule's value, in the model's order."""
    return {n: value for n, (_, value) in select_targets(model, rules).items()}


def bind(target: Target, constraint: Constraint) -> Constraint:
    """The set as it applies to this parameter: on its transpose where it is stored so."""
    if target.transposed and not isinstance(constraint, Transposed):
        return Transposed(constraint)
    return constraint


def coverage(model: nn.Module, selected: Iterable[str]) -> tuple[list[str], list[str]]:
    """(covered, left out): the compressible parameters the rules select, and the others."""
    chosen = set(selected)
    names = list(compressible_targets(model))
    return [n for n in names if n in chosen], [n for n in names if n not in chosen]
