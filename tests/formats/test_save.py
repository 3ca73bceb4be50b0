"""``admmcompress.save``: a model compressed in your own loop, shipped with what ADMM knows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import admmcompress
from admmcompress import ADMM, Irregular, MaskEnforcer, Uniform
from admmcompress.constraints import PrunedQuantized
from admmcompress.formats import ModelFileError, read_model_file
from admmcompress.formats.export import export


class SmallCNN(nn.Module):
    """A user's own module, unknown to every registry."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.fc = nn.Linear(8 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _compressed(dtype: torch.dtype = torch.float32) -> tuple[SmallCNN, ADMM]:
    torch.manual_seed(0)
    model = SmallCNN()
    rules = {"conv": PrunedQuantized(Irregular(keep=0.5), Uniform(bits=4)), "fc": Irregular(0.1)}
    admm = ADMM(model, rules, rho=0.01)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(2):
        loss = nn.functional.cross_entropy(model(x), y) + admm.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        admm.update()
    MaskEnforcer.for_layers(model, admm.harden()).attach(opt)
    return model.to(dtype), admm


def _same(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(sa[k], sb[k]), k


def test_admmz_from_an_admm_object_stores_codes_and_the_input_shape(tmp_path: Path) -> None:
    model, admm = _compressed()
    assert admm.input_shape == (1, 8, 8)  # seen at the first forward
    summary = admmcompress.save(model, tmp_path / "m.admmz", admm=admm)
    rows = {r["name"]: r for r in summary.rows}
    assert rows["conv.weight"]["values"] == "4-bit codes"
    assert summary.header.input_shape == [1, 8, 8]
    _same(admmcompress.load(tmp_path / "m.admmz", model=SmallCNN()), model)
    # compact export and ONNX need no --input-shape: the file knows it
    out = export(tmp_path / "m.admmz", tmp_path / "c.admmz", compact=True, allow_import=True)
    assert out.compact is not None
    x = torch.randn(3, 1, 8, 8)
    back = admmcompress.load(tmp_path / "c.admmz", allow_import=True)
    assert torch.allclose(back(x), model.eval()(x), atol=1e-5)


def test_a_file_that_names_an_import_path_is_not_rebuilt_silently(tmp_path: Path) -> None:
    model, admm = _compressed()
    admmcompress.save(model, tmp_path / "m.admmz", admm=admm)
    with pytest.raises(ModelFileError, match=r"import path '[\w.]*test_save:SmallCNN'"):
        admmcompress.load(tmp_path / "m.admmz")
    _same(admmcompress.load(tmp_path / "m.admmz", allow_import=True), model)


def test_safetensors_keeps_masks_quantization_and_shape(tmp_path: Path) -> None:
    model, admm = _compressed()
    admmcompress.save(model, tmp_path / "model.safetensors", admm=admm)
    mf = read_model_file(tmp_path / "model.safetensors", model=SmallCNN())
    assert set(mf.masks) == {"conv", "fc"} and mf.input_shape == (1, 8, 8)
    assert mf.quant["conv"].bits == 4
    _same(mf.model, model)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("suffix", [".admmz", ".safetensors"])
def test_half_precision_comes_back_in_its_own_dtype_bit_for_bit(
    tmp_path: Path, dtype: torch.dtype, suffix: str
) -> None:
    model, admm = _compressed(dtype)
    admmcompress.save(model, tmp_path / f"m{suffix}", admm=admm)
    _same(admmcompress.load(tmp_path / f"m{suffix}", model=SmallCNN()), model)
    if suffix == ".admmz":  # raw values keep their 16 bits: half the bytes of float32
        rows = {r["name"]: r for r in admmcompress.save(model, tmp_path / "n.admmz").rows}
        assert rows["fc.weight"]["value_bytes"] == 2 * int((model.fc.weight != 0).sum())
