"""The ``export`` verb: read a model file, optionally compact it, write it in a format.

``admmcompress export`` and ``admmcompress inspect`` are thin wrappers around this module.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.selection import compressible_parameters
from ..structure.compact import compact_model
from .admmz import FileSummary
from .model_file import ModelFile, ModelFileError, checked_input_shape
from .registry import file_format, read_model_file, writable_formats


@dataclass
class ExportResult:
    out: Path
    format: str
    summary: FileSummary | None  # .admmz only
    compact: dict[str, Any] | None  # sizes and parameter counts when compacted
    report_storage_bytes: int | None  # the run report's estimate, to compare


def _input_shape(src: ModelFile, given: tuple[int, ...] | None, why: str) -> tuple[int, ...]:
    shape = checked_input_shape(given, "--input-shape") or src.input_shape
    if shape is None:
        raise ModelFileError(
            f"{why} needs the model's input shape, which {src.path} does not record: "
            "pass --input-shape, e.g. --input-shape 1,28,28"
        )
    return shape


def _does_not_take(src: ModelFile, shape: tuple[int, ...], e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    return (
        f"model {src.model_name!r} ({src.path}) does not take inputs of shape {(1, *shape)}: "
        f"{type(e).__name__}: {first}. Give the shape of one of its inputs with --input-shape"
    )


def export(
    source: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    fmt: str = "admmz",
    values: str = "float32",
    compact: bool = False,
    input_shape: tuple[int, ...] | None = None,
    allow_import: bool = False,
) -> ExportResult:
    """Write ``source``'s model as ``fmt``; see ``admmcompress export --help``."""
    if fmt not in writable_formats():
        raise ModelFileError(
            f"unknown format {fmt!r}: choose one of {', '.join(writable_formats())}"
        )
    writer = file_format(fmt)
    src = read_model_file(source, allow_import=allow_import)
    default_name = ("model_compact" if compact else "model") + writer.suffix
    out_path = Path(out) if out is not None else src.path.parent / default_name
    if out_path.resolve() == src.path.resolve():
        raise ModelFileError(f"{out_path} is the file being exported: choose another --out")
    compact_info = None
    if compact:
        model = src.model
        if src.original_weights is None:
            src.original_weights = sum(p.numel() for p in compressible_parameters(model).values())
        shape = _input_shape(src, input_shape, "--compact")
        example = torch.zeros(1, *shape)
        try:
            with torch.no_grad():  # a plain forward first: its error is the clearest
                model.eval()(example)
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            raise ModelFileError(_does_not_take(src, shape, e)) from None
        result = compact_model(model, example)
        src.model = result.model
        for name, sizes in result.sizes.items():
            src.resized.setdefault(name, {}).update(sizes)
        compact_info = {
            "sizes": src.resized,
            "params_before": result.params_before,
            "params_after": result.params_after,
        }
    if input_shape is not None:
        src.input_shape = checked_input_shape(input_shape, "--input-shape")
    try:
        summary = writer.write(src, out_path, values=values)
    except ModelFileError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        if fmt == "onnx" and src.input_shape is not None:
            raise ModelFileError(_does_not_take(src, tuple(src.input_shape), e)) from None
        raise
    comparable = fmt == "admmz" and src.report is not None and not compact
    comparable = comparable and values == "float32"
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
        pattern = r["encoding"]
        if r.get("pattern_n") is not None:
            pattern += f"({r['pattern_n']}:{r['pattern_param']})"
        elif r.get("pattern_param") is not None:
            pattern += f"({r['pattern_param']})"
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
