"""``save``: ship a model compressed in your own training loop.

The ADMM object knows what the file needs: which parameters are quantized and on which grid
(so they are stored as codes, not as float32), the masks of its hardening, the rules, and
the shape of one input (seen at the model's first forward), so that ``export --compact``
and ONNX need no extra flags later. Weights keep their dtype: a float16 or bfloat16 model
comes back in its own dtype, bit for bit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..constraints import quantizer_of
from ..core.admm import ADMM
from .admmz import SUFFIX, FileSummary, save_admmz
from .encoding import QuantSpec
from .model_file import ModelFileError
from .safetensors_model import save_model


def _class_path(model: nn.Module) -> str:
    """``package.module:Class`` of a module that was not built from a registered name."""
    cls = type(model)
    return f"{cls.__module__}:{cls.__qualname__}"


def save(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    admm: ADMM | None = None,
    masks: Mapping[str, Tensor] | None = None,
    quant: Mapping[str, QuantSpec] | None = None,
    input_shape: tuple[int, ...] | None = None,
    model_name: str | None = None,
    model_args: Mapping[str, Any] | None = None,
    values: str = "float32",
    metadata: Mapping[str, Any] | None = None,
) -> FileSummary | None:
    """Write ``model`` to ``path``: an ``.admmz`` file (by its suffix), else a
    ``model.safetensors`` with masks; returns the ``.admmz`` sizes.

    With ``admm``, its quantized parameters, masks (after ``harden()``), rules and input
    shape are used; the keyword arguments override them. ``model_name`` and ``model_args``
    say how to rebuild the architecture (a registered name, ``timm:...``, an import path);
    by default the model's class is recorded by its import path, so ``load`` needs
    ``model=`` (your instance) or ``allow_import=True`` to rebuild it.
    """
    path = Path(path)
    found_quant: dict[str, QuantSpec] = {}
    rules: dict[str, str] = {}
    if admm is not None:
        for name, layer in admm.layers.items():
            rules[name] = layer.constraint.describe()
            q = quantizer_of(layer.constraint)
            if q is not None:
                found_quant[name] = QuantSpec(q.bits, q.per_channel)
    quant = dict(found_quant if quant is None else quant)
    masks = dict(admm.masks if masks is None and admm is not None else masks or {})
    if input_shape is None and admm is not None:
        input_shape = admm.input_shape
    name = model_name or _class_path(model)
    args = dict(model_args or {})
    extra: dict[str, Any] = {**(metadata or {})}
    if rules:
        extra["rules"] = rules
    if path.suffix == SUFFIX:
        return save_admmz(
            path,
            model,
            model_name=name,
            model_args=args,
            quant=quant,
            values=values,
            input_shape=tuple(input_shape) if input_shape is not None else None,
            metadata={
                k: v if isinstance(v, str) else json.dumps(v, sort_keys=True)
                for k, v in sorted(extra.items())
            },
        )
    if values != "float32":
        raise ModelFileError(f"values={values!r} applies to .admmz files only")
    if input_shape is not None:
        extra["input_shape"] = list(input_shape)
    extra["quantization"] = {n: q.as_dict() for n, q in quant.items()}
    save_model(path, model, masks, model_name=name, model_args=args, extra=extra)
    return None
