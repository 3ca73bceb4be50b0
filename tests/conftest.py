"""Shared fixtures: the repo's shipped MNIST and a tiny run config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO / "data"


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    """configs/tiny_test.yaml with progress bars off, written to a temp folder."""
    cfg = yaml.safe_load((REPO / "configs" / "tiny_test.yaml").read_text())
    cfg.setdefault("runtime", {})["progress"] = False
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is as fast, and far faster when the other core is
    busy (OpenMP threads spin-wait on each other)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
    torch.set_flush_denormal(False)  # a run sets it; hypothesis needs subnormals
