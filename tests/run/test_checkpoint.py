"""Atomic checkpoint writes and safe loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from admmcompress import ADMM, Irregular, create_model
from admmcompress.formats.atomic import atomic_write
from admmcompress.run.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"epoch": 1})

    def broken(tmp: Path) -> None:
        tmp.write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind


def test_checkpoint_round_trip_with_weights_only(tmp_path: Path) -> None:
    model = create_model("lenet5")
    admm = ADMM(model, {"fc1": Irregular(keep=0.1)})
    admm.update()
    state = {"model": model.state_dict(), "admm": admm.state_dict(), "rng": torch.get_rng_state()}
    save_checkpoint(tmp_path / "c.pt", state)
    back = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(back["admm"]["layers"]["fc1"]["z"], admm.layers["fc1"].z)
    assert back["format"] == 1


def test_truncated_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"model": create_model("lenet5").state_dict()})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_checkpoint(path)


def test_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "payload": Path("/")}, path)  # an arbitrary class, not a tensor
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
