"""model.safetensors: bit-exact round trips, and files that are not ours refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from admmcompress import ADMM, Irregular, create_model
from admmcompress.formats import ModelFileError, read_model_file
from admmcompress.formats.safetensors_model import save_model


def test_model_file_round_trip_is_bit_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("lenet300")
    admm = ADMM(model, {"fc*": Irregular(keep=0.1)})
    masks = admm.harden()
    save_model(tmp_path / "m.safetensors", model, masks, model_name="lenet300", model_args={})
    saved = read_model_file(tmp_path / "m.safetensors")
    assert saved.model_name == "lenet300"
    for key, value in model.state_dict().items():
        assert torch.equal(saved.model.state_dict()[key], value), key
    for name, mask in masks.items():
        assert torch.equal(saved.masks[name], mask)


def test_foreign_safetensors_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ModelFileError, match="not written by admmcompress"):
        read_model_file(path)


def test_garbage_model_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\x00" * 7)
    with pytest.raises(ModelFileError, match="not a readable safetensors file"):
        read_model_file(path)
