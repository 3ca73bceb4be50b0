"""The .admmz file: exact sizes, bit-exact reload, compact export, ONNX, and a hostile reader."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import admmcompress
from admmcompress.cli import main
from admmcompress.constraints import fit_binary, fit_ternary, fit_uniform
from admmcompress.formats import admmz
from admmcompress.formats.admmz import (
    ModelFormatError,
    pack_container,
    read_admmz,
    save_admmz,
    split_container,
)
from admmcompress.formats.encoding import (
    QuantSpec,
    decode_pattern,
    encode_pattern,
    pattern_sizes,
    plan_tensor,
    relative_entries,
)
from admmcompress.formats.export import export
from admmcompress.models import create_model, register_model
from helpers import DATA_DIR, REPO, with_admmz_header


def _bits(t: Tensor) -> Tensor:
    """A tensor's raw bits, so that equality is bit for bit (a float32 NaN, -0.0 included)."""
    return t.view(torch.int32) if t.dtype == torch.float32 else t


def assert_bit_exact(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape, k
        # the format stores no sign for a zero: -0.0 comes back as 0.0, all else bit for bit
        want = sa[k] + 0.0 if sa[k].is_floating_point() else sa[k]
        assert torch.equal(_bits(want), _bits(sb[k])), k


class _BNNet(nn.Module):
    """Conv-BN-ReLU twice and a classifier: BatchNorm buffers (incl. an int64) must travel."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 6 * 6, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.flatten(1))


register_model("test_bn_net")(lambda num_classes=4: _BNNet(num_classes))


def _pruned_quantized_lenet5(seed: int = 0) -> tuple[nn.Module, dict[str, QuantSpec]]:
    """LeNet-5 as a run hardens it: each layer pruned, three of them on different grids."""
    torch.manual_seed(seed)
    model = create_model("lenet5")
    specs = {
        "conv1": QuantSpec(3),
        "conv2": QuantSpec(2, per_channel=True),
        "fc1": QuantSpec(1, per_channel=True),
    }
    keep = {"conv1": 0.5, "conv2": 0.1, "fc1": 0.01, "fc2": 0.2}
    with torch.no_grad():
        for name, module in model.named_children():
            w = module.weight
            mask = torch.rand_like(w) < keep[name]
            spec = specs.get(name)
            if spec is None:
                w.mul_(mask)
            elif spec.binary:
                w.copy_(fit_binary(w, True, mask)[0])
            elif spec.bits == 2:
                w.copy_(fit_ternary(w, True, mask)[0])
            else:
                w.copy_(fit_uniform(w, spec.bits, False, mask)[0])
    return model, specs


# -- encodings ------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    numel=st.integers(1, 5000),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_every_pattern_encoding_round_trips_at_its_planned_size(
    numel: int, density: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    positions = np.flatnonzero(rng.random(numel) < density)
    for kind, param, nbytes in pattern_sizes(positions, numel):
        data = encode_pattern(positions, numel, kind, param)
        assert len(data) == nbytes
        if kind == "dense":
            continue
        entries = relative_entries(positions, param) if kind == "relative" else None
        got = decode_pattern(data, numel, positions.size, kind, param, entries)
        assert np.array_equal(got, positions), (kind, param)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bits=st.sampled_from([1, 2, 3, 4, 6, 8]),
    per_channel=st.booleans(),
    keep=st.floats(0.01, 1.0),
    scale=st.floats(1e-4, 10.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_quantizer_outputs_are_stored_as_exact_codes(
    bits: int, per_channel: bool, keep: float, scale: float, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 5, 3, 3, generator=g) * scale
    mask = torch.rand(w.shape, generator=g) < keep
    if bits == 1:
        q, s = fit_binary(w, per_channel, mask)
    elif bits == 2:
        q, s = fit_ternary(w, per_channel, mask)
    else:
        q, s = fit_uniform(w, bits, per_channel, mask)
    plan = plan_tensor(q, QuantSpec(bits, per_channel), s.numpy())
    assert plan.quantized is not None  # never a silent fall back to fp32 values
    assert plan.value_bytes == (plan.nnz * bits + 7) // 8
    # without the quantizer's scale (e.g. after compaction) the codes are found all the same
    assert plan_tensor(q[:, :2], QuantSpec(bits, per_channel)).quantized is not None


def test_values_off_the_grid_fall_back_to_raw_floats() -> None:
    w = torch.randn(4, 10)
    plan = plan_tensor(w, QuantSpec(3))
    assert plan.quantized is None and plan.value_encoding == "float32"


# -- round trips ----------------------------------------------------------------------------
def test_pruned_and_quantized_model_reloads_bit_exactly(tmp_path: Path) -> None:
    model, specs = _pruned_quantized_lenet5()
    path = tmp_path / "m.admmz"
    summary = save_admmz(path, model, model_name="lenet5", model_args={}, quant=specs)
    assert path.stat().st_size == summary.file_bytes
    loaded = admmcompress.load(path)
    assert isinstance(loaded, nn.Module) and not loaded.training
    assert_bit_exact(model, loaded)
    rows = {r["name"]: r for r in summary.rows}
    for name, spec in specs.items():
        assert rows[f"{name}.weight"]["values"] == f"{spec.bits}-bit codes"
    assert rows["fc2.weight"]["values"] == "float32"
    # the weights' bytes are the planned sizes; the file adds raw biases and the header
    planned = sum(
        plan_tensor(m.weight, specs.get(n), None).bytes for n, m in model.named_children()
    )
    assert summary.weight_bytes == planned
    raw = sum(m.bias.numel() * 4 for m in model.children())
    assert summary.other_bytes == raw
    assert summary.file_bytes == summary.weight_bytes + raw + summary.header_bytes
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(model.eval()(x), loaded(x))


def test_batchnorm_buffers_and_dense_layers_round_trip(tmp_path: Path) -> None:
    model = create_model("test_bn_net", num_classes=3)
    model.train()
    model(torch.randn(8, 1, 8, 8))  # running stats and num_batches_tracked move
    path = tmp_path / "bn.admmz"
    save_admmz(path, model, model_name="test_bn_net", model_args={"num_classes": 3})
    loaded = admmcompress.load(path)
    assert_bit_exact(model, loaded)
    assert loaded.bn1.num_batches_tracked.dtype == torch.int64
    assert int(loaded.bn1.num_batches_tracked) == 1


def test_float16_values_halve_the_weights_and_round_them(tmp_path: Path) -> None:
    model, _ = _pruned_quantized_lenet5()
    s32 = save_admmz(tmp_path / "a.admmz", model, model_name="lenet5", model_args={})
    s16 = save_admmz(
        tmp_path / "b.admmz", model, model_name="lenet5", model_args={}, values="float16"
    )
    assert s16.weight_bytes < s32.weight_bytes
    loaded = admmcompress.load(tmp_path / "b.admmz")
    for name, m in model.named_children():
        assert torch.equal(getattr(loaded, name).weight, m.weight.half().float())


# -- the run -> export -> load path -----------------------------------------------------------
@pytest.fixture(scope="module")
def quant_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real run: pruning everywhere, three quantized grids."""
    tmp = tmp_path_factory.mktemp("run")
    cfg = yaml.safe_load((REPO / "configs/tiny_test.yaml").read_text())
    cfg["rules"] = {
        "conv1": {"prune": "irregular", "keep": 0.5, "quantize": {"kind": "uniform", "bits": 3}},
        "conv2": {"prune": "irregular", "keep": 0.1, "quantize": "ternary"},
        "fc1": {"prune": "irregular", "keep": 0.05},
        "fc2": {"prune": "channel", "keep": 0.5},
    }
    cfg["runtime"] = {"progress": False}
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp / "run"
    args = ["run", str(tmp / "cfg.yaml"), "--out", str(out), "--data-dir", str(DATA_DIR)]
    assert main(args) == 0
    return out


def test_export_matches_the_report_and_reloads_the_hardened_model(
    quant_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.admmz"
    assert main(["export", str(quant_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "the file matches" in printed and "3-bit codes" in printed
    report = json.loads((quant_run / "report.json").read_text())
    loaded = read_admmz(out)
    assert loaded.summary.weight_bytes == report["storage_bytes"]
    by_name = {r["name"]: r for r in report["layers"]}
    for r in loaded.summary.rows:
        if r["weight"]:
            assert r["bytes"] == by_name[r["name"].removesuffix(".weight")]["storage"]["bytes"]
    hardened = admmcompress.load(quant_run / "model.safetensors")
    assert_bit_exact(hardened, loaded.model)
    assert main(["inspect", str(out)]) == 0
    table = capsys.readouterr().out
    assert "checksum and every section verified" in table and "conv2.weight" in table
    assert main(["inspect", str(out), "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)["totals"]
    assert totals["file_bytes"] == out.stat().st_size


def test_compact_export_is_smaller_and_gives_equal_outputs(quant_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "small.admmz"
    result = export(quant_run, out, compact=True)
    assert result.compact is not None and result.summary is not None
    assert result.compact["params_after"] < result.compact["params_before"]
    assert result.compact["sizes"]["fc2"]["in_features"] <= 250  # fc2's pruned inputs went
    full = admmcompress.load(quant_run / "model.safetensors")
    small = admmcompress.load(out)
    assert small.fc1.out_features < 500
    x = torch.randn(16, 1, 28, 28)
    torch.testing.assert_close(small(x), full(x), atol=1e-5, rtol=1e-5)
    # the rates still compare with the original model's dense weights
    assert result.summary.dense_weight_bytes == 430500 * 4


def test_a_compact_file_exports_again(quant_run: Path, tmp_path: Path) -> None:
    """Re-exporting (or compacting again) an already compact .admmz keeps its layer sizes."""
    first = tmp_path / "small.admmz"
    export(quant_run, first, compact=True)
    x = torch.randn(4, 1, 28, 28)
    want = admmcompress.load(first)(x)
    for kw in ({}, {"compact": True}, {"values": "float32"}):
        out = tmp_path / f"again{len(kw)}{'c' if kw.get('compact') else ''}.admmz"
        result = export(first, out, **kw)
        assert result.summary is not None
        assert result.summary.dense_weight_bytes == 430500 * 4  # the original's, still
        torch.testing.assert_close(admmcompress.load(out)(x), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="is the file being exported"):
        export(first, first)


def test_eval_reads_admmz_files(
    quant_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "small.admmz"
    export(quant_run, out, compact=True)
    capsys.readouterr()
    assert main(["eval", str(quant_run), "--data-dir", str(DATA_DIR)]) == 0
    full = capsys.readouterr().out
    assert main(["eval", str(out), "--data-dir", str(DATA_DIR)]) == 0
    small = capsys.readouterr().out
    accuracy = [line for line in full.splitlines() if "test accuracy" in line]
    assert accuracy == [line for line in small.splitlines() if "test accuracy" in line]
    rate = float(small.split("rate")[1].split("x")[0])  # counted against the original 430,500
    assert rate >= float(full.split("rate")[1].split("x")[0])


@pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None
    or importlib.util.find_spec("onnxscript") is None,
    reason="ONNX extra not installed (pip install 'admmcompress[onnx]')",
)
@pytest.mark.parametrize("compact", [False, True])
def test_onnx_export_matches_pytorch(quant_run: Path, tmp_path: Path, compact: bool) -> None:
    import onnxruntime as ort

    out = tmp_path / "m.onnx"
    assert (
        main(
            ["export", str(quant_run), "--format", "onnx", "--out", str(out)]
            + (["--compact"] if compact else [])
        )
        == 0
    )
    model = admmcompress.load(quant_run / "model.safetensors")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 7):  # the batch dimension is dynamic
        x = torch.randn(batch, 1, 28, 28)
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        torch.testing.assert_close(torch.from_numpy(got), model(x), atol=1e-4, rtol=1e-4)


def test_export_errors_name_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path)]) == 2
    assert "holds no model.safetensors" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "none.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "none.admmz")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path), "--input-shape", "1,x,28"])


# -- a hostile reader ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_file(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    model, specs = _pruned_quantized_lenet5(seed=1)
    path = tmp_path_factory.mktemp("good") / "m.admmz"
    save_admmz(path, model, model_name="lenet5", model_args={}, quant=specs)
    return path.read_bytes()


def _write(tmp_path: Path, blob: bytes) -> Path:
    path = tmp_path / "x.admmz"
    path.write_bytes(blob)
    return path


def _reseal(body: bytes) -> bytes:
    """A body with a fresh checksum: lets a test reach the checks behind the checksum."""
    return body + struct.pack("<I", zlib.crc32(body))


def _refused(tmp_path: Path, blob: bytes, words: str) -> None:
    with pytest.raises(ModelFormatError) as info:
        read_admmz(_write(tmp_path, blob))
    assert words in str(info.value), str(info.value)


def test_truncated_files_are_refused_at_every_length(tmp_path: Path, good_file: bytes) -> None:
    for n in [0, 1, 8, 15, 16, 40, len(good_file) // 2, len(good_file) - 5, len(good_file) - 1]:
        with pytest.raises(ModelFormatError, match=r"truncated|too short|checksum"):
            read_admmz(_write(tmp_path, good_file[:n]))


def test_wrong_magic_version_and_checksum(tmp_path: Path, good_file: bytes) -> None:
    _refused(tmp_path, b"PK\x03\x04" + good_file[4:], "not an .admmz file")
    newer = good_file[:8] + struct.pack("<I", 2) + good_file[12:]
    _refused(tmp_path, newer, "format version 2")
    flipped = bytearray(good_file)
    flipped[len(flipped) // 2] ^= 0x10
    _refused(tmp_path, bytes(flipped), "checksum mismatch")


def test_absurd_declared_sizes_are_refused_without_allocating(
    tmp_path: Path, good_file: bytes
) -> None:
    def huge_model(h: dict) -> None:
        h["model_args"] = {"num_classes": 10**12}

    _refused(tmp_path, with_admmz_header(good_file, huge_model), "over the limit")

    def huge_shape(h: dict) -> None:
        h["tensors"][0]["shape"] = [2**40, 2**40]

    _refused(tmp_path, with_admmz_header(good_file, huge_shape), "conv1.weight declared")

    def far_section(h: dict) -> None:
        h["tensors"][0]["values"]["section"]["offset"] = 2**62

    _refused(tmp_path, with_admmz_header(good_file, far_section), "outside the payload")

    def too_many(h: dict) -> None:
        h["tensors"][6]["pattern"]["nnz"] = 10**9

    _refused(tmp_path, with_admmz_header(good_file, too_many), "non-zeros declared")

    def header_lies(h: dict) -> None:
        h["payload_bytes"] += 1

    _refused(tmp_path, with_admmz_header(good_file, header_lies), "payload bytes")

    def bad_kind(h: dict) -> None:
        h["tensors"][0]["pattern"]["kind"] = "zip"

    _refused(
        tmp_path, with_admmz_header(good_file, bad_kind), "invalid header at tensors.0.pattern"
    )

    def unknown_model(h: dict) -> None:
        h["model"] = "resnet9000"

    _refused(tmp_path, with_admmz_header(good_file, unknown_model), "cannot build model")

    def enormous_number(h: dict) -> None:
        h["payload_bytes"] = 0

    version, text, payload = split_container(with_admmz_header(good_file, enormous_number))
    text = text.replace(b'"payload_bytes": 0', b'"payload_bytes": ' + b"9" * 5000)
    assert b"9" * 5000 in text
    huge = pack_container(text, payload, version)
    _refused(tmp_path, huge, "header cannot be decoded")

    def bad_input_shape(h: dict) -> None:
        h["input_shape"] = [-1, 28, 28]

    _refused(
        tmp_path, with_admmz_header(good_file, bad_input_shape), "invalid header at input_shape"
    )

    hlen = struct.unpack_from("<I", good_file, 12)[0]
    claims_more = good_file[:12] + struct.pack("<I", 2**31) + good_file[16:]
    _refused(tmp_path, claims_more, "truncated")
    assert hlen < len(good_file)


def test_a_header_that_inflates_without_end_is_refused(
    tmp_path: Path, good_file: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(admmz, "MAX_HEADER_BYTES", 1 << 16)
    blob = pack_container(b" " * (1 << 20), b"", 1)  # inflates 1 MB from a few KB
    _refused(tmp_path, blob, "larger than the limit")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_files_are_refused_cleanly(
    tmp_path_factory: pytest.TempPathFactory, good_file: bytes, data: st.DataObject
) -> None:
    """Random byte edits, with and without a fixed-up checksum: a clean error or a model."""
    blob = bytearray(good_file)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = bytearray(_reseal(bytes(blob[:-4])))  # reach the parser and the decoders
    path = tmp_path_factory.mktemp("fuzz") / "f.admmz"
    path.write_bytes(bytes(blob))
    try:
        model = read_admmz(path).model
    except ModelFormatError:
        return
    assert isinstance(model, nn.Module)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_headers_are_refused_cleanly(
    tmp_path_factory: pytest.TempPathFactory, good_file: bytes, data: st.DataObject
) -> None:
    """Valid JSON, valid checksum, hostile numbers: every field of the header is a target."""
    junk = st.one_of(
        st.integers(-(2**70), 2**70),
        st.none(),
        st.text(max_size=5),
        st.booleans(),
        st.lists(st.integers(-5, 2**40), max_size=4),
    )

    def edit(h: dict) -> None:
        t = h["tensors"][data.draw(st.integers(0, len(h["tensors"]) - 1))]
        part = data.draw(st.sampled_from(["shape", "pattern", "values", "top"]))
        if part == "shape":
            t["shape"] = data.draw(junk)
        elif part == "top":
            h[data.draw(st.sampled_from(["model_args", "payload_bytes", "resized"]))] = data.draw(
                st.one_of(junk, st.dictionaries(st.text(max_size=4), junk, max_size=2))
            )
        else:
            key = data.draw(st.sampled_from(sorted(t[part])))
            t[part][key] = data.draw(junk)

    blob = with_admmz_header(good_file, edit)
    path = tmp_path_factory.mktemp("fuzzh") / "f.admmz"
    path.write_bytes(blob)
    with contextlib.suppress(ModelFormatError):
        read_admmz(path)
