"""Turn a run's model into files to ship: ``.admmz`` (small, exact) or ONNX, optionally compact.

``admmcompress export`` and ``admmcompress inspect`` are thin wrappers around this module.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.selection import compressible_layers
from ..structure.compact import compact_model
from .admmz import FileSummary, is_admmz, read_admmz, save_admmz
from .encoding import QuantSpec
from .safetensors_model import ModelFileError, load_model

FORMATS = ("admmz", "onnx")
ONNX_HINT = "ONNX export needs the optional packages: pip install 'admmcompress[onnx]'"


@dataclass
class Source:
    """A trained model and what is known about it, from a run folder or a model file."""

    path: Path
    model: nn.Module
    model_name: str
    model_args: dict[str, Any]
    quant: dict[str, QuantSpec]
    input_shape: tuple[int, ...] | None
    metadata: dict[str, str]
    report: dict[str, Any] | None  # the run's report.json, when beside the model
    resized: dict[str, dict[str, int]] = field(default_factory=dict)  # already compact
    original_weights: int | None = None  # conv/linear weights before any compaction


def _json_meta(metadata: dict[str, str], key: str) -> Any:
    raw = metadata.get(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _legacy_quant(report: dict[str, Any] | None) -> dict[str, QuantSpec]:
    """Quantized layers of a run saved before model files recorded them: from report.json."""
    if report is None:
        return {}
    return {
        r["name"]: QuantSpec(r["bits"], r.get("distinct_values_per_channel") is not None)
        for r in report.get("layers", [])
        if r.get("quantized")
    }


def open_source(path: str | os.PathLike) -> Source:
    """A run folder, its ``model.safetensors``, or an ``.admmz`` file."""
    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        where = f"{path} holds no model.safetensors" if path.is_dir() else f"{path} does not exist"
        raise ModelFileError(f"{where}: give a run folder, a model.safetensors or an .admmz file")
    if is_admmz(file):
        loaded = read_admmz(file)
        h = loaded.header
        quant = {
            t.name.removesuffix(".weight"): QuantSpec(t.values.bits, t.values.per_channel)
            for t in h.tensors
            if t.values.kind == "codes" and t.values.bits is not None
        }
        shape = tuple(h.input_shape) if h.input_shape else None
        return Source(
            file,
            loaded.model,
            h.model,
            h.model_args,
            quant,
            shape,
            h.metadata,
            None,
            {k: dict(v) for k, v in h.resized.items()},
            h.original_weights,
        )
    saved = load_model(file)
    report_file = file.parent / "report.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else None
    raw_quant = _json_meta(saved.metadata, "quantization")
    if isinstance(raw_quant, dict):
        quant = {k: QuantSpec(int(v["bits"]), bool(v["per_channel"])) for k, v in raw_quant.items()}
    else:
        quant = _legacy_quant(report)
    shape = _json_meta(saved.metadata, "input_shape")
    return Source(
        file,
        saved.model.eval(),
        saved.model_name,
        saved.model_args,
        quant,
        tuple(shape) if isinstance(shape, list) else None,
        saved.metadata,
        report,
    )


@dataclass
class ExportResult:
    out: Path
    format: str
    summary: FileSummary | None  # .admmz only
    compact: dict[str, Any] | None  # sizes and parameter counts when compacted
    report_storage_bytes: int | None  # the run report's estimate, to compare


def _input_shape(src: Source, given: tuple[int, ...] | None, why: str) -> tuple[int, ...]:
    shape = given or src.input_shape
    if shape is None:
        raise ValueError(
            f"{why} needs the model's input shape, which {src.path} does not record: "
            "pass --input-shape, e.g. --input-shape 1,28,28"
        )
    return tuple(shape)


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], out: Path) -> None:
    """The dense-equivalent model as ONNX (opset from torch's exporter), batch size dynamic."""
    try:
        import onnxscript  # noqa: F401  (torch's exporter needs it; fail with a clear hint)
    except ImportError:
        raise ValueError(ONNX_HINT) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, *input_shape)
    torch.onnx.export(
        model.eval(),
        (example,),
        str(out),
        input_names=["input"],
        output_names=["output"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
        dynamo=True,
        verbose=False,
        external_data=False,
    )


def export(
    source: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    fmt: str = "admmz",
    values: str = "float32",
    compact: bool = False,
    input_shape: tuple[int, ...] | None = None,
) -> ExportResult:
    """Write ``source``'s model as ``fmt``; see ``admmcompress export --help``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    src = open_source(source)
    default_name = ("model_compact" if compact else "model") + (
        ".admmz" if fmt == "admmz" else ".onnx"
    )
    out_path = Path(out) if out is not None else src.path.parent / default_name
    if out_path.resolve() == src.path.resolve():
        raise ValueError(f"{out_path} is the file being exported: choose another --out")
    model = src.model
    resized = {k: dict(v) for k, v in src.resized.items()}  # an already compact source
    compact_info = None
    original = src.original_weights
    if compact:
        if original is None:
            original = sum(m.weight.numel() for m in compressible_layers(model).values())
        shape = _input_shape(src, input_shape, "--compact")
        result = compact_model(model, torch.zeros(1, *shape))
        model = result.model
        for name, sizes in result.sizes.items():
            resized.setdefault(name, {}).update(sizes)
        compact_info = {
            "sizes": resized,
            "params_before": result.params_before,
            "params_after": result.params_after,
        }
    if fmt == "onnx":
        export_onnx(model, _input_shape(src, input_shape, "ONNX export"), out_path)
        return ExportResult(out_path, fmt, None, compact_info, None)
    shape = input_shape or src.input_shape
    summary = save_admmz(
        out_path,
        model,
        model_name=src.model_name,
        model_args=src.model_args,
        quant=src.quant,
        values=values,
        resized=resized,
        original_weights=original,
        input_shape=shape,
        # in a fixed order: safetensors hands its metadata back in a random one
        metadata={k: src.metadata[k] for k in ("dataset", "rules") if k in src.metadata},
    )
    comparable = src.report is not None and not compact and values == "float32"
    estimate = src.report.get("storage_bytes") if comparable and src.report else None
    return ExportResult(out_path, fmt, summary, compact_info, estimate)


def _fmt_rate(x: float) -> str:
    return f"{x:,.1f}x"


def summary_table(summary: FileSummary) -> str:
    """A per-tensor table and the totals, for people."""
    h = summary.header
    lines = [
        f"model: {h.model} {json.dumps(h.model_args)}"
        + (f"  (compact: {len(h.resized)} layers resized)" if h.resized else ""),
        "",
        f"{'tensor':<22} {'shape':<16} {'non-zero':>14} {'pattern':<12} {'values':<14} "
        f"{'index':>8} {'values':>8} {'scales':>7} {'bytes':>9}",
    ]
    for r in summary.rows:
        shape = "x".join(str(s) for s in next(t.shape for t in h.tensors if t.name == r["name"]))
        pattern = r["encoding"] + (
            f"({r['pattern_param']})" if r.get("pattern_param") is not None else ""
        )
        nnz = f"{r['nnz']:,}/{r['numel']:,}"
        lines.append(
            f"{r['name']:<22} {shape or 'scalar':<16} {nnz:>14} {pattern:<12} {r['values']:<14} "
            f"{r['index_bytes']:>8,} {r['value_bytes']:>8,} {r['scale_bytes']:>7,} {r['bytes']:>9,}"
        )
    t = summary.totals()
    lines += [
        "",
        f"weights (conv/linear): {t['nonzero_total']:,} of {t['weights_total']:,} non-zero"
        + (f" ({t['weights_stored']:,} left after compaction)" if h.resized else "")
        + ", "
        f"{t['weight_bytes']:,} bytes; dense fp32 {t['dense_weight_bytes']:,} bytes "
        f"-> storage {_fmt_rate(t['storage_rate'])}",
        f"other tensors (biases, BatchNorm): {t['other_bytes']:,} bytes; "
        f"header and checksum: {t['header_bytes']:,} bytes",
        f"file: {t['file_bytes']:,} bytes -> {_fmt_rate(t['file_rate'])} smaller than the "
        "dense fp32 weights",
    ]
    return "\n".join(lines)
