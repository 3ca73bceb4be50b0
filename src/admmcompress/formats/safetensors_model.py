"""``model.safetensors``: a run's model, hardened weights and masks, described by metadata.

The metadata records how to rebuild the architecture (``model``, ``model_args``), the
quantized layers' grids, the input shape and the data set, so the file alone can be
evaluated, exported or used as a teacher. Plain safetensors state dicts are read here too
(``read_state``), for ``init:``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..core.selection import compressible_targets
from ..models import MASK_PREFIX, ModelSourceError, architecture_args, create_model
from ..models.weights import load_state_exact
from .atomic import atomic_write
from .encoding import QuantSpec
from .model_file import ModelFile, ModelFileError, ReadOptions, checked_input_shape
from .registry import FileFormat, register_format

MODEL_FORMAT = "admmcompress.model/1"


def save_model(
    path: str | os.PathLike,
    model: nn.Module,
    masks: Mapping[str, Tensor],
    *,
    model_name: str,
    model_args: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write ``model.safetensors``: the state dict plus one boolean mask per pruned layer."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for name, mask in masks.items():
        tensors[MASK_PREFIX + name] = mask.detach().cpu().to(torch.bool).contiguous()
    metadata = {
        "format": MODEL_FORMAT,
        "model": model_name,
        "model_args": json.dumps(architecture_args(model_args), sort_keys=True),
    }
    for k, v in (extra or {}).items():
        metadata[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _read(
    path: Path, device: str | torch.device = "cpu"
) -> tuple[dict[str, Tensor], dict[str, str]]:
    try:
        tensors = load_file(str(path), device=str(device))
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{path} is not a readable safetensors file: {e}") from None
    return tensors, metadata


def _split_masks(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    masks = {k[len(MASK_PREFIX) :]: v for k, v in tensors.items() if k.startswith(MASK_PREFIX)}
    state = {k: v for k, v in tensors.items() if not k.startswith(MASK_PREFIX)}
    return state, masks


def read_state(path: Path, model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The weights and masks of any safetensors file (a plain one has no masks)."""
    state, masks = _split_masks(_read(path)[0])
    return state, masks


def _legacy_quant(report: dict[str, Any] | None) -> dict[str, QuantSpec]:
    """Quantized layers of a run saved before model files recorded them: from report.json."""
    if report is None:
        return {}
    return {
        r["name"]: QuantSpec(r["bits"], r.get("distinct_values_per_channel") is not None)
        for r in report.get("layers", [])
        if r.get("quantized")
    }


def _short(e: object, limit: int = 600) -> str:
    text = str(e)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_shapes(path: Path, expected: dict[str, Tensor], found: dict[str, Tensor]) -> None:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = [
        k for k in expected if k in found and tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    if missing or extra or wrong:
        raise ModelFileError(
            f"{path}: its tensors do not match the model its metadata names: missing "
            f"{missing[:5]}, unexpected {extra[:5]}, shapes differ for {wrong[:5]}"
        )


def read_model(path: Path, opts: ReadOptions | None = None) -> ModelFile:
    """Rebuild the model named in the file's metadata and load its weights exactly."""
    opts = opts or ReadOptions()
    device = opts.device
    tensors, metadata = _read(path, device)
    if metadata.get("format") != MODEL_FORMAT:
        raise ModelFileError(
            f"{path} was not written by admmcompress (format {metadata.get('format')!r}, "
            f"expected {MODEL_FORMAT!r}); a plain state dict can start a run as 'init:'"
        )
    state, masks = _split_masks(tensors)
    try:
        model_args = json.loads(metadata["model_args"])
        if not isinstance(model_args, dict):
            raise ValueError("its model arguments are not a mapping")
        if "weights" in model_args:
            raise ValueError("its model arguments name a weights file, which is not allowed")
        if opts.model is not None:
            model = opts.model
        else:
            name = str(metadata["model"])
            # First on the meta device: shapes, no memory. The metadata is not trusted to
            # size anything until its architecture matches the tensors the file holds.
            with torch.device("meta"):
                probe = create_model(name, allow_import=opts.allow_import, **model_args)
            _check_shapes(path, probe.state_dict(), state)
            model = create_model(name, allow_import=opts.allow_import, **model_args)
    except ModelFileError:
        raise
    except ModelSourceError as e:
        raise ModelFileError(f"{path}: {_short(e)}") from None
    except Exception as e:  # any constructor error: the arguments do not describe a model
        raise ModelFileError(
            f"{path}: cannot rebuild the model from its metadata: {type(e).__name__}: {_short(e)}"
        ) from None
    try:
        load_state_exact(model, state)
    except RuntimeError as e:
        raise ModelFileError(
            f"{path}: weights do not fit model {metadata['model']!r}: {_short(e)}"
        ) from None
    model.to(device)
    report = _report_beside(path)
    mf = ModelFile(path, "safetensors", model, metadata["model"], model_args, masks)
    mf.metadata, mf.report = metadata, report
    raw_quant = mf.meta("quantization")
    try:
        if raw_quant is not None:
            mf.quant = {k: _QuantEntry.model_validate(v).spec() for k, v in raw_quant.items()}
        else:
            mf.quant = _legacy_quant(report)
    except (ValidationError, AttributeError, TypeError, KeyError) as e:
        raise ModelFileError(
            f"{path}: its 'quantization' metadata is not a mapping of layer names to grids "
            f"({{'bits': 1-16, 'per_channel': true|false}}): {_short(e, 200)}"
        ) from None
    unknown = sorted(set(mf.quant) - set(compressible_targets(model)))
    if unknown:
        raise ModelFileError(
            f"{path}: its 'quantization' metadata names unknown layers {unknown[:5]}"
        )
    mf.input_shape = checked_input_shape(mf.meta("input_shape"), str(path))
    return mf


class _QuantEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    bits: int = Field(ge=1, le=16)
    per_channel: bool = False

    def spec(self) -> QuantSpec:
        return QuantSpec(self.bits, self.per_channel)


def _report_beside(path: Path) -> dict[str, Any] | None:
    """The run's report.json next to the file, if any; damaged ones are refused, since the
    quantized layers of older files are read from it."""
    report_file = path.parent / "report.json"
    if not report_file.is_file():
        return None
    try:
        report = json.loads(report_file.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{report_file} beside the model is not valid JSON: {e}") from None
    if not isinstance(report, dict):
        raise ModelFileError(f"{report_file} beside the model is not a report")
    return report


def is_safetensors(head: bytes) -> bool:
    """A little-endian header length, then the header's JSON object."""
    return len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1


register_format(
    FileFormat(
        "safetensors",
        ".safetensors",
        "safetensors file",
        sniff=is_safetensors,
        read=read_model,
        read_state=read_state,
    )
)
