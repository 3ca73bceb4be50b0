"""Model files: how a compressed model is written, recognised and read back.

One module per format (``safetensors_model``: a run's ``model.safetensors``; ``admmz``: the
small exact file to ship; ``onnx``: for other runtimes), each registering itself with
``registry``, which holds the one sniffer and the one reader every command uses.
``encoding`` holds the byte-exact encodings of a weight (sparsity patterns, codes and
scales), ``export`` the ``export`` verb, ``atomic`` the crash-safe writes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .model_file import ModelFile, ModelFileError, ReadOptions
from .registry import (
    FileFormat,
    available_formats,
    file_format,
    load_weights,
    read_model_file,
    register_format,
    sniff,
    writable_formats,
)
from .save import save


def load(
    path: str | Path,
    device: str | torch.device = "cpu",
    max_params: int | None = None,
    *,
    model: nn.Module | None = None,
    allow_import: bool = False,
) -> nn.Module:
    """The model in an ``.admmz`` or admmcompress ``.safetensors`` file (or a run folder),
    in eval mode, bit for bit as it was saved.

    The format is told by the file's first bytes, not its name. ``max_params`` raises the
    ``.admmz`` reader's limit on the values a file may declare (default 2^30). A file whose
    model is named by an import path (``mypkg.models:build``) is rebuilt only with
    ``allow_import=True`` (that imports the module); or pass ``model``, your own instance of
    the architecture, and the file's weights are loaded into it.
    """
    return read_model_file(path, device, max_params, model=model, allow_import=allow_import).model


__all__ = [
    "FileFormat",
    "ModelFile",
    "ModelFileError",
    "ReadOptions",
    "available_formats",
    "file_format",
    "load",
    "load_weights",
    "read_model_file",
    "register_format",
    "save",
    "sniff",
    "writable_formats",
]
