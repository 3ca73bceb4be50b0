"""What any model file gives back once read: the model, its masks and what it records."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .encoding import QuantSpec

#: the most values one input (C*H*W) may have: 16 MB of fp32, far above any image model's
MAX_INPUT_VALUES = 1 << 22


class ModelFileError(ValueError):
    """A model file that is missing, corrupt, or not one this tool can read."""


def checked_input_shape(value: Any, where: str) -> tuple[int, ...] | None:
    """A recorded input shape as a tuple, refusing anything but 1-4 positive whole numbers
    whose product is at most ``MAX_INPUT_VALUES``: a declared shape decides allocations."""
    if value is None:
        return None
    if (
        not isinstance(value, list | tuple)
        or not 1 <= len(value) <= 4
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        text = repr(value)
        text = text if len(text) <= 80 else text[:80] + "..."
        raise ModelFileError(
            f"{where}: its input shape {text} is not 1 to 4 positive whole numbers"
        )
    if math.prod(value) > MAX_INPUT_VALUES:
        raise ModelFileError(
            f"{where}: an input of shape {tuple(value)} has {math.prod(value):,} values, more "
            f"than the {MAX_INPUT_VALUES:,} an input may have"
        )
    return tuple(value)


@dataclass(frozen=True)
class ReadOptions:
    """How a reader rebuilds the model a file holds.

    ``model``: load into this module instead of rebuilding the architecture the file names
    (resized in place first if the file holds a compact model); ``allow_import``: rebuild
    a model named by an import path (which runs that module's code); ``max_params``: the
    most values a file may declare.
    """

    device: str | torch.device = "cpu"
    max_params: int | None = None
    model: nn.Module | None = None
    allow_import: bool = False


@dataclass
class ModelFile:
    """A model read from a file, with everything the file says about it.

    ``masks`` are the pruning masks a ``model.safetensors`` stores (an ``.admmz`` has none:
    its zeros are the pattern itself); ``quant`` names the quantized layers and their
    grids; ``resized`` and ``original_weights`` describe a compact model; ``summary`` holds
    an ``.admmz`` file's sizes.
    """

    path: Path
    format: str
    model: nn.Module
    model_name: str
    model_args: dict[str, Any]
    masks: dict[str, Tensor] = field(default_factory=dict)
    quant: dict[str, QuantSpec] = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    resized: dict[str, dict[str, int]] = field(default_factory=dict)
    original_weights: int | None = None  # conv/linear weights before any compaction
    summary: Any = None  # .admmz: its FileSummary
    report: dict[str, Any] | None = None  # the run's report.json, when beside the file

    def meta(self, key: str) -> Any:
        """A metadata entry decoded from JSON (None when absent; the text when not JSON)."""
        raw = self.metadata.get(key)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw
