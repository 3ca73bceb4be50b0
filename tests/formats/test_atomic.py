"""Atomic writes: the files they leave behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from admmcompress.formats.atomic import atomic_write_text


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
