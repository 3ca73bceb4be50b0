"""What any model file gives back once read: the model, its masks and what it records."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .encoding import QuantSpec


class ModelFileError(ValueError):
    """A model file that is missing, corrupt, or not one this tool can read."""


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
