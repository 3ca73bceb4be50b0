"""A torch state-dict file (``torch.save``; bare or under a ``state_dict``/``model`` key):
weights trained elsewhere, read safely for ``init:`` (``weights_only=True``)."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from ..models.weights import read_state_dict
from .registry import FileFormat, register_format

_ZIP = b"PK\x03\x04"  # torch.save's default container
_PICKLE = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")  # the legacy format


def _sniff(head: bytes) -> bool:
    return head.startswith(_ZIP) or head[:2] in _PICKLE


def _read_state(path: Path, model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    return read_state_dict(path), {}


register_format(
    FileFormat("torch", ".pt", "torch state-dict file", sniff=_sniff, read_state=_read_state)
)
