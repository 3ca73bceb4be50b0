"""Plain state-dict files (``.safetensors`` or a torch file): how ``create_model(name,
weights=PATH)`` and ``init:`` load weights trained elsewhere.

A weights file can never run code (torch files load with ``weights_only=True``), and a file
that does not fit is refused with the first offending keys, not torch's wall of text.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

# where training scripts nest the state dict: Lightning and most scripts, our checkpoint.pt,
# kuangliu/pytorch-cifar (whose VGG layout vgg16_cifar shares)
_WRAPPER_KEYS = ("state_dict", "model", "net")
#: how an admmcompress model.safetensors stores its masks beside the weights
MASK_PREFIX = "__mask__."
_SHOWN = 5  # keys named per kind of mismatch in an error message


def _is_safetensors(path: Path) -> bool:
    """Told by the first bytes (a header length, then its JSON), not by the file's name."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def check_torch_file(path: Path, what: str = "torch file") -> None:
    """Raise ``ValueError`` unless ``path`` is a zip archive of stored entries no larger in
    all than the file, as ``torch.save`` writes them (since PyTorch 1.6): then loading it
    can allocate no more than its size. ``torch.load`` also inflates compressed entries,
    so a 195 KB file can hold a 200 MB tensor, and the legacy format declares its sizes."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ValueError(
            f"{what} {path} cannot be read: it is not the zip archive torch.save writes "
            f"(PyTorch 1.6 and later): {e}. Re-save it with a current torch.save"
        ) from None
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED:
            raise ValueError(
                f"{what} {path} has a compressed entry ({entry.filename[:80]!r}); torch.save "
                "never compresses, and inflating could take far more memory than the file"
            )
    declared = sum(entry.file_size for entry in entries)
    if declared > path.stat().st_size:
        raise ValueError(
            f"{what} {path} declares {declared:,} bytes of contents in a file of "
            f"{path.stat().st_size:,}: it is damaged or crafted"
        )


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The name -> tensor mapping a safetensors or torch file holds (masks left out)."""
    if path.suffix == ".safetensors" or _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(
                f"weights file {path} is not a readable safetensors file: {e}"
            ) from None
        # an admmcompress model.safetensors also holds its masks; its weights are already zero
        obj = {k: v for k, v in obj.items() if not k.startswith(MASK_PREFIX)}
    else:
        check_torch_file(path, "weights file")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for corrupt or pickled-code files
            raise ValueError(
                f"weights file {path} cannot be read as a torch state dict "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            ) from None
        if isinstance(obj, Mapping):
            for key in _WRAPPER_KEYS:
                if isinstance(obj.get(key), Mapping):
                    obj = obj[key]
                    break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        if isinstance(obj, Mapping):
            what = "keys " + ", ".join(map(str, list(obj)[:_SHOWN]))
        else:
            what = type(obj).__name__
        raise ValueError(
            f"weights file {path} holds no state dict (name -> tensor), found {what}; expected "
            f"a bare state dict or one under {' or '.join(map(repr, _WRAPPER_KEYS))}"
        )
    return dict(obj)


def load_weights_file(model: nn.Module, weights: str | os.PathLike[str]) -> nn.Module:
    """Load a state dict file into ``model`` strictly and return the model.

    Reads ``.safetensors`` or a torch file (``weights_only=True``: a weights file can never run
    code), bare or under a ``state_dict`` / ``model`` / ``net`` key, and drops the ``module.``
    prefix that DataParallel / DDP checkpoints carry. A file that does not fit raises a ValueError
    naming the file and the first offending keys, not torch's wall of text.
    """
    path = Path(weights)
    if not path.is_file():
        why = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"weights file {path} {why}")
    load_state(model, read_state_dict(path), path)
    return model


def load_state(model: nn.Module, state: Mapping[str, Tensor], source: str | os.PathLike) -> None:
    """``model.load_state_dict(state)``, strictly, with a message naming ``source`` and the
    first missing, unexpected and mis-shaped keys when the state does not fit."""
    own = model.state_dict()
    prefix = "module."
    if (
        state
        and all(k.startswith(prefix) for k in state)
        and not any(k.startswith(prefix) for k in own)
    ):
        state = {k[len(prefix) :]: v for k, v in state.items()}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [  # in the model's order, which a reader knows; a file's may be sorted
        f"{k} (file {tuple(state[k].shape)}, model {tuple(v.shape)})"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{label} {len(keys)}: {', '.join(keys[:_SHOWN])}{', ...' if len(keys) > _SHOWN else ''}"
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", wrong),
        )
        if keys
    ]
    if problems:
        raise ValueError(
            f"weights in {source} do not fit model {type(model).__name__}: " + "; ".join(problems)
        )
    model.load_state_dict(state, strict=True)


def load_state_exact(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """``load_state_dict`` that keeps each saved tensor's dtype (a bfloat16 model comes
    back in bfloat16, not cast to the float32 a freshly built module has)."""
    own = model.state_dict()
    same = all(k in own and own[k].dtype == v.dtype for k, v in state.items())
    model.load_state_dict(state, strict=True, assign=not same)
