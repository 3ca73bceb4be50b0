"""Atomic writes: the files they leave behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from torch import nn

from admmcompress.formats.atomic import _umask, atomic_write_text
from admmcompress.formats.safetensors_model import save_model


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_a_written_file_gets_the_users_usual_mode_not_a_private_one(
    tmp_path: Path, umask: int
) -> None:
    """A model or report written for sharing must not come out 0600 (mkstemp's mode)."""
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "report.md", "hello")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "report.md").stat().st_mode)
    assert mode == 0o666 & ~umask
    assert (tmp_path / "report.md").read_text() == "hello"


def test_an_overwritten_file_keeps_the_mode_its_owner_gave_it(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    atomic_write_text(path, "first")
    path.chmod(0o600)  # the user made it private
    atomic_write_text(path, "second")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "second"


def test_a_writer_that_replaces_its_file_does_not_make_it_private(tmp_path: Path) -> None:
    """safetensors' save_file creates its file anew, with mode 0600."""
    save_model(tmp_path / "m.safetensors", nn.Linear(2, 2), {}, model_name="x", model_args={})
    assert stat.S_IMODE((tmp_path / "m.safetensors").stat().st_mode) == 0o666 & ~_umask()
