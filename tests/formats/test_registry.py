"""One sniffer, one reader, one weight loader for every model file the tool reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from admmcompress import ADMM, Irregular, create_model
from admmcompress.formats import (
    ModelFileError,
    available_formats,
    load,
    load_weights,
    read_model_file,
    sniff,
    writable_formats,
)
from admmcompress.formats.admmz import save_admmz
from admmcompress.formats.safetensors_model import save_model


@pytest.fixture
def pruned(tmp_path: Path) -> tuple[torch.nn.Module, dict[str, torch.Tensor], Path]:
    torch.manual_seed(0)
    model = create_model("lenet300")
    masks = ADMM(model, {"fc1": Irregular(keep=0.1)}).harden()
    folder = tmp_path / "run"
    folder.mkdir()
    save_model(folder / "model.safetensors", model, masks, model_name="lenet300", model_args={})
    return model, masks, folder


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_every_format_is_registered() -> None:
    assert {"admmz", "onnx", "safetensors", "torch"} <= set(available_formats())
    assert writable_formats() == ["admmz", "onnx"]


def test_the_bytes_decide_not_the_name(pruned: tuple, tmp_path: Path) -> None:
    model, _, folder = pruned
    admmz = tmp_path / "model.bin"  # an .admmz under another name
    save_admmz(admmz, model, model_name="lenet300", model_args={})
    torch_file = tmp_path / "weights.safetensors"  # a torch file under a misleading name
    torch.save(model.state_dict(), torch_file)
    assert sniff(folder).name == "safetensors"
    assert sniff(admmz).name == "admmz"
    assert sniff(torch_file).name == "torch"
    assert _same(load(admmz), model)


def test_read_model_file_rebuilds_each_format(pruned: tuple, tmp_path: Path) -> None:
    model, masks, folder = pruned
    save_admmz(tmp_path / "m.admmz", model, model_name="lenet300", model_args={})
    a = read_model_file(folder)
    b = read_model_file(tmp_path / "m.admmz")
    assert (a.format, b.format) == ("safetensors", "admmz")
    assert _same(a.model, model) and _same(b.model, model)
    assert a.masks.keys() == masks.keys() and b.masks == {}
    assert not a.model.training and not b.model.training


def test_load_weights_reads_every_kind_into_a_built_model(pruned: tuple, tmp_path: Path) -> None:
    model, masks, folder = pruned
    save_admmz(tmp_path / "m.admmz", model, model_name="lenet300", model_args={})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "p.st"))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "lightning.ckpt")
    for source, with_masks in (
        (folder, True),
        (tmp_path / "m.admmz", True),  # the stored sparsity pattern is the mask
        (tmp_path / "p.st", False),
        (tmp_path / "lightning.ckpt", False),
    ):
        fresh = create_model("lenet300")
        got = load_weights(fresh, source)
        assert _same(fresh, model), source
        assert (set(got) == set(masks)) if with_masks else got == {}
        for name, m in got.items():
            assert torch.equal(m.bool(), masks[name].bool())


def test_files_that_cannot_be_read_back_say_why(pruned: tuple, tmp_path: Path) -> None:
    model, _, _ = pruned
    torch.save(model.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ModelFileError, match="holds weights but not the architecture"):
        read_model_file(tmp_path / "w.pt")
    (tmp_path / "junk.admmz").write_bytes(b"not a model at all")
    with pytest.raises(ModelFileError, match=r"not a readable \.admmz model file"):
        sniff(tmp_path / "junk.admmz")
    (tmp_path / "junk").write_bytes(b"\x00\x01\x02")
    with pytest.raises(ModelFileError, match="its first bytes match none of"):
        sniff(tmp_path / "junk")
    with pytest.raises(ModelFileError, match="does not exist"):
        sniff(tmp_path / "absent.admmz")
    with pytest.raises(ValueError, match="do not fit model LeNet5"):
        load_weights(create_model("lenet5"), tmp_path / "w.pt")
