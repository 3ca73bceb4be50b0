"""admmcompress: compress neural networks with ADMM weight pruning and quantization.

The core (``ADMM``, the constraints, ``MaskEnforcer``) works inside any PyTorch training loop;
the ``admmcompress`` command runs whole recipes from YAML configs; ``load`` reads a compressed
model file (``.admmz`` or ``model.safetensors``) back as an ``nn.Module``.
"""

from ._version import __version__
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
from .core.admm import ADMM, Residual
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

__all__ = [
    "ADMM",
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
