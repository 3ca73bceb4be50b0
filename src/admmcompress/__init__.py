"""admmcompress: compress neural networks with ADMM weight pruning and quantization.

The core (``ADMM``, the constraints, ``MaskEnforcer``) works inside any PyTorch training loop;
the ``admmcompress`` command runs whole recipes from YAML configs; ``load`` reads a compressed
model file (``.admmz`` or ``model.safetensors``) back as an ``nn.Module``.

The names below are imported on first use, so that ``admmcompress --help`` and other quick
commands do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

#: public name -> the module that defines it
_EXPORTS = {
    "ADMM": "core.admm",
    "ADMMConvergenceWarning": "core.admm",
    "Residual": "core.admm",
    "MaskEnforcer": "core.masking",
    "SelectionError": "core.selection",
    "compressible_layers": "core.selection",
    "compressible_parameters": "core.selection",
    "compressible_targets": "core.selection",
    "select_layers": "core.selection",
    "Binary": "constraints",
    "Channel": "constraints",
    "Column": "constraints",
    "Constraint": "constraints",
    "ConstraintError": "constraints",
    "Filter": "constraints",
    "Irregular": "constraints",
    "PrunedQuantized": "constraints",
    "Ternary": "constraints",
    "Uniform": "constraints",
    "available_constraints": "constraints",
    "make_constraint": "constraints",
    "register_constraint": "constraints",
    "load": "formats",
    "load_weights": "formats",
    "save": "formats",
    "available_models": "models",
    "create_model": "models",
    "register_model": "models",
    "recalibrate_batchnorm": "train.batchnorm",
}

__all__ = [
    "ADMM",
    "ADMMConvergenceWarning",
    "Binary",
    "Channel",
    "Column",
    "Constraint",
    "ConstraintError",
    "Filter",
    "Irregular",
    "MaskEnforcer",
    "PrunedQuantized",
    "Residual",
    "SelectionError",
    "Ternary",
    "Uniform",
    "__version__",
    "available_constraints",
    "available_models",
    "compressible_layers",
    "compressible_parameters",
    "compressible_targets",
    "create_model",
    "load",
    "load_weights",
    "make_constraint",
    "recalibrate_batchnorm",
    "register_constraint",
    "register_model",
    "save",
    "select_layers",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'admmcompress' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from .constraints import (
        Binary,
        Channel,
        Column,
        Constraint,
        ConstraintError,
        Filter,
        Irregular,
        PrunedQuantized,
        Ternary,
        Uniform,
        available_constraints,
        make_constraint,
        register_constraint,
    )
    from .core.admm import ADMM, ADMMConvergenceWarning, Residual
    from .core.masking import MaskEnforcer
    from .core.selection import (
        SelectionError,
        compressible_layers,
        compressible_parameters,
        compressible_targets,
        select_layers,
    )
    from .formats import load, load_weights, save
    from .models import available_models, create_model, register_model
    from .train.batchnorm import recalibrate_batchnorm
