"""Atomic, safely loadable checkpoints: a kill at any moment leaves the last good one intact."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..formats.atomic import atomic_write

CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, corrupt or from an incompatible run."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) atomically."""
    state = {"format": CHECKPOINT_FORMAT, **state}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load with ``weights_only=True``: a checkpoint file can never run code."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated/corrupt files
        # torch's own text (e.g. advice to disable weights_only) does not help here.
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}): it is truncated, corrupt "
            "or not a checkpoint of this tool. Start the run again in a new --out folder"
        ) from None
    found = state.get("format") if isinstance(state, dict) else None
    if found != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {found!r}, this version reads format {CHECKPOINT_FORMAT}"
        )
    return state
