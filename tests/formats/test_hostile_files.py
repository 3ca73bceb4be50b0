"""Crafted files: a reader never allocates more than the file's size justifies, never trusts
declared sizes before checking them on the meta device, and refuses with one message."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from admmcompress import create_model
from admmcompress.formats import ModelFileError, read_model_file
from admmcompress.formats.admmz import (
    MIN_VALUES,
    VALUES_PER_BYTE,
    ModelFormatError,
    read_admmz,
    save_admmz,
    value_limit,
    verify_admmz,
)
from admmcompress.formats.safetensors_model import MODEL_FORMAT, save_model
from admmcompress.models import registry as model_registry
from helpers import with_admmz_header


def _lenet300_file(tmp_path: Path, empty: bool = False) -> bytes:
    """LeNet-300-100 as an .admmz file; ``empty``: every weight zero (a file of 2 KB)."""
    torch.manual_seed(0)
    model = create_model("lenet300")
    if empty:
        with torch.no_grad():
            for layer in (model.fc1, model.fc2, model.fc3):
                layer.weight.zero_()
    path = tmp_path / "m.admmz"
    save_admmz(path, model, model_name="lenet300", model_args={})
    return path.read_bytes()


def _peak_rss_mb(code: str) -> float:
    """Peak resident memory (MB) of a fresh interpreter running ``code``, minus one that only
    imports the reader: what the read itself made the process hold."""
    prefix = "import admmcompress.formats, admmcompress.formats.admmz\n"
    # VmHWM, the process's own peak: ru_maxrss keeps the forking parent's peak across exec
    probe = (
        "\nprint([int(line.split()[1]) / 1024 for line in open('/proc/self/status')"
        " if line.startswith('VmHWM:')][0])"
    )
    runs = []
    for body in ("", code):
        out = subprocess.run(
            [sys.executable, "-c", prefix + textwrap.dedent(body) + probe],
            capture_output=True,
            text=True,
            check=False,
        )
        runs.append(float(out.stdout.strip().splitlines()[-1]))
    return runs[1] - runs[0]


def test_the_allocation_rule() -> None:
    assert value_limit(100) == MIN_VALUES  # small files: a floor
    assert value_limit(10_000) == VALUES_PER_BYTE * 10_000
    assert value_limit(10, max_params=5) == 5  # the caller's word wins


def test_a_tiny_file_declaring_a_large_empty_model_is_refused_cheaply(tmp_path: Path) -> None:
    """Every weight empty, a model of 1000x1000 layers declared by a file of a few KB."""

    def inflate(h: dict) -> None:
        h["model_args"] = {"in_features": 60_000, "num_classes": 10}
        for t in h["tensors"]:
            if t["name"] == "fc1.weight":
                t["shape"] = [300, 60_000]  # 18M weights, none stored

    blob = with_admmz_header(_lenet300_file(tmp_path, empty=True), inflate)
    assert len(blob) < 4000
    path = tmp_path / "bomb.admmz"
    path.write_bytes(blob)
    with pytest.raises(ModelFormatError, match="over the limit of") as e:
        read_admmz(path)
    assert f"{len(blob) * VALUES_PER_BYTE:,}" in str(e.value) or f"{MIN_VALUES:,}" in str(e.value)
    extra = _peak_rss_mb(
        f"""
        try:
            admmcompress.formats.admmz.verify_admmz({str(path)!r})
        except ValueError:
            pass
        """
    )
    assert extra < 200, f"refusing the file took {extra:.0f} MB"


def test_inspect_decodes_tensor_by_tensor_without_building_the_model(tmp_path: Path) -> None:
    path = tmp_path / "ok.admmz"
    path.write_bytes(_lenet300_file(tmp_path))
    summary = verify_admmz(path)
    assert summary.totals()["weights_total"] == 266_200


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda h: h.update(input_shape=[65536, 65536, 65536]), "more than the 4,194,304"),
        (lambda h: h.update(input_shape=[1, 4096, 4096]), "more than the 4,194,304"),
        (lambda h: h.update(original_weights=0), "cannot be smaller than the stored"),
        (lambda h: h.update(original_weights=10**18), "larger than the limit"),
    ],
)
def test_absurd_declarations_are_refused(tmp_path: Path, edit, words: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "x.admmz"
    path.write_bytes(with_admmz_header(_lenet300_file(tmp_path), edit))
    with pytest.raises(ModelFormatError, match=words):
        read_admmz(path)


def _hostile_safetensors(
    tmp_path: Path, args: dict, state: dict | None = None, **more: str
) -> Path:
    state = state if state is not None else create_model("lenet300").state_dict()
    metadata = {"format": MODEL_FORMAT, "model": "lenet300", "model_args": json.dumps(args)}
    metadata.update(more)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


def test_safetensors_metadata_that_does_not_build_is_refused(tmp_path: Path) -> None:
    path = _hostile_safetensors(tmp_path, {"num_classes": -1})
    with pytest.raises(ModelFileError, match="cannot rebuild the model from its metadata"):
        read_model_file(path)


def test_safetensors_metadata_is_checked_on_meta_before_anything_is_allocated(
    tmp_path: Path,
) -> None:
    path = _hostile_safetensors(tmp_path, {"in_features": 1_000_000})  # 1.2 GB if built
    with pytest.raises(ModelFileError, match="do not match the model its metadata names"):
        read_model_file(path)
    extra = _peak_rss_mb(
        f"""
        try:
            admmcompress.formats.read_model_file({str(path)!r})
        except ValueError:
            pass
        """
    )
    assert extra < 200, f"refusing the file took {extra:.0f} MB"


def test_a_model_file_that_names_a_registered_model_still_rebuilds(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("lenet300")
    save_model(tmp_path / "m.safetensors", model, {}, model_name="lenet300", model_args={})
    back = read_model_file(tmp_path / "m.safetensors").model
    assert all(
        torch.equal(a, b)
        for a, b in zip(back.state_dict().values(), model.state_dict().values(), strict=True)
    )
    assert "lenet300" in model_registry.available_models()


@pytest.mark.parametrize(
    ("metadata", "words"),
    [
        ({"input_shape": json.dumps([[1], [2]])}, "input shape"),
        ({"input_shape": json.dumps([65536, 65536, 65536])}, "more than the"),
        ({"quantization": json.dumps({"fc1": {"bits": 99}})}, "quantization"),
        ({"quantization": json.dumps({"nowhere": {"bits": 4}})}, "nowhere"),
        ({"quantization": json.dumps([1, 2])}, "quantization"),
    ],
)
def test_safetensors_declarations_are_checked(tmp_path: Path, metadata: dict, words: str) -> None:
    """Found by benchmarks/fuzz_files.py: these metadata reached export as tracebacks."""
    path = _hostile_safetensors(tmp_path, {}, **metadata)
    with pytest.raises(ModelFileError, match=words):
        read_model_file(path)


def _deflated(src: Path, dst: Path) -> None:
    """The same torch file with its entries compressed: torch.load inflates them."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))


def test_a_compressed_torch_file_cannot_inflate_in_memory(tmp_path: Path) -> None:
    """Found writing benchmarks/reader_memory.py: 195 KB of deflated zip held a 200 MB tensor
    that torch.load(weights_only=True) inflated (912 MB peak) before any check."""
    from admmcompress.models.weights import read_state_dict
    from admmcompress.run.checkpoint import CheckpointError, load_checkpoint

    torch.save({"fc.weight": torch.zeros(2_000_000)}, tmp_path / "big.pt")
    _deflated(tmp_path / "big.pt", tmp_path / "bomb.pt")
    assert (tmp_path / "bomb.pt").stat().st_size < 50_000
    with pytest.raises(ValueError, match="compressed entry"):
        read_state_dict(tmp_path / "bomb.pt")
    with pytest.raises(CheckpointError, match="compressed entry"):
        load_checkpoint(tmp_path / "bomb.pt")
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(3)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match=r"zip archive torch\.save writes"):
        read_state_dict(legacy)
    assert torch.equal(read_state_dict(tmp_path / "big.pt")["fc.weight"], torch.zeros(2_000_000))
