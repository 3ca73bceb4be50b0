"""The final model file: hardened weights and masks in safetensors, described by metadata."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..models import create_model
from ..run.checkpoint import atomic_write

MODEL_FORMAT = "admmcompress.model/1"
MASK_PREFIX = "__mask__."


class ModelFileError(ValueError):
    """A model file that is missing, corrupt, or not written by this tool."""


@dataclass
class SavedModel:
    model: nn.Module
    masks: dict[str, Tensor]
    model_name: str
    model_args: dict[str, Any]
    metadata: dict[str, str]


def architecture_args(model_args: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments that shape a model: a ``weights`` file is left out, the saved tensors
    replace it (and a model file must never make its reader open another file)."""
    return {k: v for k, v in model_args.items() if k != "weights"}


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


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> SavedModel:
    """Rebuild the model named in the file's metadata and load its weights exactly."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    try:
        tensors = load_file(str(path), device=str(device))
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{path} is not a readable safetensors file: {e}") from None
    if metadata.get("format") != MODEL_FORMAT:
        raise ModelFileError(
            f"{path} was not written by admmcompress (format {metadata.get('format')!r}, "
            f"expected {MODEL_FORMAT!r})"
        )
    try:
        model_args = json.loads(metadata["model_args"])
        if "weights" in model_args:
            raise ValueError("its model arguments name a weights file, which is not allowed")
        model = create_model(metadata["model"], **model_args)
    except (KeyError, ValueError, TypeError) as e:
        raise ModelFileError(f"{path}: cannot rebuild the model from its metadata: {e}") from None
    masks = {k[len(MASK_PREFIX) :]: v for k, v in tensors.items() if k.startswith(MASK_PREFIX)}
    state = {k: v for k, v in tensors.items() if not k.startswith(MASK_PREFIX)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelFileError(
            f"{path}: weights do not fit model {metadata['model']!r}: {e}"
        ) from None
    model.to(device)
    return SavedModel(model, masks, metadata["model"], model_args, metadata)


def load(
    path: str | os.PathLike, device: str | torch.device = "cpu", max_params: int | None = None
) -> nn.Module:
    """The model in an ``.admmz`` or admmcompress ``.safetensors`` file, in eval mode.

    The format is told by the file's first bytes, not its name. ``max_params`` raises the
    ``.admmz`` reader's limit on the values a file may declare (default 2^30).
    """
    from .admmz import DEFAULT_MAX_PARAMS, is_admmz, read_admmz

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    if is_admmz(path):
        return read_admmz(path, device, max_params or DEFAULT_MAX_PARAMS).model
    return load_model(path, device).model.eval()
