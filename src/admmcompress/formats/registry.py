"""File formats by name, and the one place that decides what a file is and how to read it.

Every format registers here: how to recognise it from its first bytes (``sniff``; the
file's name never decides), how to read it back as a model (``read``: formats that record
their architecture), how to read its weights into a model the caller built
(``read_state``), and how to write one (``write``). ``load``, ``export``, ``eval``,
``inspect``, ``init:`` and the distillation teacher all go through ``read_model_file`` or
``load_weights`` below. Adding a format is one new module in this folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..models.weights import load_state
from ..registry import Registry
from .model_file import ModelFile, ModelFileError, ReadOptions

#: bytes read from the start of a file to tell its format
SNIFF_BYTES = 64
#: the model file inside a run folder
RUN_MODEL_FILE = "model.safetensors"

Reader = Callable[[Path, ReadOptions], ModelFile]
StateReader = Callable[[Path, nn.Module], "tuple[dict[str, Tensor], dict[str, Tensor]]"]
Writer = Callable[..., Any]


@dataclass(frozen=True)
class FileFormat:
    """A registered file format and what it can do (None: it cannot)."""

    name: str
    suffix: str
    description: str
    sniff: Callable[[bytes], bool] | None = None
    read: Reader | None = None
    read_state: StateReader | None = None
    write: Writer | None = None


_FORMATS: Registry[FileFormat] = Registry(
    "file format", error=ModelFileError, discover="admmcompress.formats"
)


def register_format(fmt: FileFormat) -> FileFormat:
    return _FORMATS.register(fmt.name)(fmt)


def file_format(name: str) -> FileFormat:
    return _FORMATS.get(name)


def available_formats() -> list[str]:
    return _FORMATS.names()


def writable_formats() -> list[str]:
    """Formats ``export`` can write (the CLI's ``--format`` choices)."""
    return [n for n, f in _FORMATS.items() if f.write is not None]


def resolve(path: str | os.PathLike) -> Path:
    """A run folder stands for its model file; anything else must be an existing file."""
    path = Path(path)
    file = path / RUN_MODEL_FILE if path.is_dir() else path
    if not file.is_file():
        if path.is_dir():
            where = f"{path} holds no {RUN_MODEL_FILE} ({file} does not exist)"
        else:
            where = f"{path} does not exist (no such file or folder)"
        raise ModelFileError(
            f"{where}: give a run folder, a model.safetensors, an .admmz or a state-dict file"
        )
    return file


def sniff(path: str | os.PathLike) -> FileFormat:
    """The format of the file at ``path`` (a run folder: its model), from its first bytes."""
    file = resolve(path)
    try:
        with open(file, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as e:
        raise ModelFileError(f"cannot read {file}: {e.strerror}") from None
    for _, fmt in _FORMATS.items():
        if fmt.sniff is not None and fmt.sniff(head):
            return fmt
    named = [f for _, f in _FORMATS.items() if f.suffix == file.suffix]
    if named:  # its name promises a format its bytes do not have
        raise ModelFileError(
            f"{file} is not a readable {named[0].description}: its first bytes are not those "
            "of one (the file is truncated, corrupt or of another kind)"
        )
    readable = [n for n, f in _FORMATS.items() if f.read or f.read_state]
    raise ModelFileError(
        f"{file} is not a file this tool reads (its first bytes match none of: "
        f"{', '.join(readable)})"
    )


def read_model_file(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    max_params: int | None = None,
    *,
    model: nn.Module | None = None,
    allow_import: bool = False,
) -> ModelFile:
    """The model in a file that records its architecture (``.admmz``, our
    ``model.safetensors``), rebuilt and loaded bit for bit, in eval mode.

    ``max_params`` raises the limit on how many values a file may declare (``.admmz``);
    ``model`` and ``allow_import``: see ``ReadOptions``.
    """
    file = resolve(path)
    fmt = sniff(file)
    if fmt.read is None:
        raise ModelFileError(
            f"{file} is a {fmt.description}: it holds weights but not the architecture they "
            "belong to. Use it as 'init:' or 'weights=' of a model, or give a model file "
            "written by admmcompress"
        )
    mf = fmt.read(file, ReadOptions(device, max_params, model, allow_import))
    mf.model.eval()
    return mf


def load_weights(model: nn.Module, path: str | os.PathLike) -> dict[str, Tensor]:
    """Load the weights of any readable file (a run folder, a model file, a plain state
    dict) into ``model``, strictly; return the pruning masks the file carries ({} if none)."""
    file = resolve(path)
    fmt = sniff(file)
    if fmt.read_state is None:
        raise ModelFileError(f"{file} is a {fmt.description}; it cannot be read back")
    state, masks = fmt.read_state(file, model)
    load_state(model, state, file)
    return masks
