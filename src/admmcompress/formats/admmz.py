"""The ``.admmz`` file: a compressed model that is small on disk and reloads bit for bit.

Layout (all integers little-endian)::

    magic    8 bytes   b"ADMMZ\\0\\r\\n" (the CR LF catches text-mode copies)
    version  uint32    FORMAT_VERSION
    hlen     uint32    length of the header
    header   hlen      zlib-compressed JSON: model name and arguments, and per tensor its
                       shape, dtype and the offset and length of each of its sections
    payload            the sections, back to back (see ``storage`` for their encodings)
    crc32    uint32    of everything before it

Conv and linear weights are stored as a sparsity pattern plus values (``storage``); every
other tensor (biases, BatchNorm statistics) is stored raw. The reader trusts nothing: it
checks the size, magic, version and checksum before parsing, validates the header against a
schema, builds the model on the meta device to check every declared shape against the
architecture, and bounds every allocation by the file's own size or ``max_params``.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from collections.abc import Mapping
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from torch import Tensor, nn

from ..constraints import fit_binary, fit_ternary, fit_uniform
from ..core.selection import compressible_targets
from ..models import ModelSourceError, architecture_args, create_model
from ..models.weights import load_state_exact
from ..structure.compact import resize_modules
from .atomic import atomic_write
from .encoding import (
    MAX_WIDTH,
    VALUE_DTYPES,
    QuantSpec,
    StorageError,
    TensorPlan,
    decode_codes,
    decode_pattern,
    encode_pattern,
    encode_values,
    from_value_bytes,
    plan_tensor,
    signed_codes,
    unpack_uint,
)
from .model_file import MAX_INPUT_VALUES, ModelFile, ModelFileError, ReadOptions
from .registry import FileFormat, register_format

MAGIC = b"ADMMZ\x00\r\n"
FORMAT_VERSION = 1
SUFFIX = ".admmz"
_FIXED = struct.Struct("<8sII")
_CRC = struct.Struct("<I")
MAX_HEADER_BYTES = 16 << 20  # decompressed: far above any real model's header
HEADER_INFLATION = 64  # and at most this many times its compressed size (real ones: ~8x)
MAX_TENSORS = 100_000
DEFAULT_MAX_PARAMS = 1 << 30  # 4 GiB of fp32; raise it for bigger models
#: A reader allocates at most this many values per byte of the file (or MIN_VALUES, if more)
#: unless the caller passes max_params: a file must justify what it makes its reader hold.
#: Real files need far less: LeNet-5 pruned 300x holds 53 values per byte, binary weights 8.
VALUES_PER_BYTE = 4096
MIN_VALUES = 1 << 22
#: model.safetensors metadata an .admmz header holds in fields of its own
DERIVED_METADATA = frozenset({"format", "model", "model_args", "input_shape", "quantization"})

RAW_DTYPES: dict[str, tuple[torch.dtype, np.dtype]] = {
    "float32": (torch.float32, np.dtype("<f4")),
    "float64": (torch.float64, np.dtype("<f8")),
    "float16": (torch.float16, np.dtype("<f2")),
    "bfloat16": (torch.bfloat16, np.dtype("<i2")),  # its 16 bits
    "int64": (torch.int64, np.dtype("<i8")),
    "int32": (torch.int32, np.dtype("<i4")),
    "uint8": (torch.uint8, np.dtype("u1")),
    "bool": (torch.bool, np.dtype("?")),
}


class ModelFormatError(ModelFileError):
    """A file that is not a readable ``.admmz`` model: the message says what is wrong."""


# -- header schema --------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Section(_Strict):
    offset: int = Field(ge=0)
    length: int = Field(ge=0)


class PatternHeader(_Strict):
    kind: Literal["dense", "bitmask", "relative", "rice", "nm"]
    nnz: int = Field(ge=0)
    param: int | None = Field(None, ge=0, le=MAX_WIDTH)  # nm: m
    entries: int | None = Field(None, ge=0)
    section: Section
    n: int | None = Field(None, ge=1, le=MAX_WIDTH)  # nm: n


class ValuesHeader(_Strict):
    kind: Literal["raw", "codes"]
    dtype: Literal["float32", "float64", "float16", "bfloat16", "int64", "int32", "uint8", "bool"]
    bits: int | None = Field(None, ge=1, le=16)
    per_channel: bool = False
    scale_dtype: Literal["float32", "float64"] | None = None
    section: Section
    scales: Section | None = None


class TensorHeader(_Strict):
    name: str
    shape: list[Annotated[int, Field(ge=0)]] = Field(max_length=8)
    weight: bool  # a conv/linear weight (counted in the storage figures)
    stored_as: Literal["float32", "float16", "bfloat16", "codes", "raw"]
    pattern: PatternHeader
    values: ValuesHeader
    dtype: Literal["float16", "bfloat16", "float64"] | None = None  # a weight's own, if not fp32


class FileHeader(_Strict):
    format: Literal["admmz"]
    model: str
    model_args: dict[str, Any]
    resized: dict[str, dict[str, int]] = {}
    original_weights: int | None = Field(None, ge=0)  # conv/linear weights before compaction
    input_shape: list[Annotated[int, Field(ge=1, le=1 << 16)]] | None = Field(
        None, min_length=1, max_length=4
    )
    metadata: dict[str, str] = {}
    tensors: list[TensorHeader] = Field(max_length=MAX_TENSORS)
    payload_bytes: int = Field(ge=0)

    @field_validator("input_shape")
    @classmethod
    def _bounded_input(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and math.prod(v) > MAX_INPUT_VALUES:
            raise ValueError(
                f"an input of shape {v} has {math.prod(v):,} values, more than the "
                f"{MAX_INPUT_VALUES:,} an input may have"
            )
        return v


# -- writing --------------------------------------------------------------------------------
@dataclass
class FileSummary:
    """Sizes of an ``.admmz`` file, per tensor and in total, against dense fp32 weights."""

    header: FileHeader
    file_bytes: int
    header_bytes: int  # magic, version, header, checksum

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One row per tensor, read from the header's sections (what the file really holds)."""
        return [_row(t) for t in self.header.tensors]

    @property
    def weight_bytes(self) -> int:
        return sum(r["bytes"] for r in self.rows if r["weight"])

    @property
    def other_bytes(self) -> int:
        return sum(r["bytes"] for r in self.rows if not r["weight"])

    @property
    def dense_weight_bytes(self) -> int:
        """fp32 bytes of the original model's conv/linear weights (before any compaction)."""
        original = self.header.original_weights
        if original is not None:
            return 4 * original
        return sum(4 * r["numel"] for r in self.rows if r["weight"])

    def totals(self) -> dict[str, Any]:
        dense = self.dense_weight_bytes
        return {
            "file_bytes": self.file_bytes,
            "weight_bytes": self.weight_bytes,
            "other_bytes": self.other_bytes,
            "header_bytes": self.header_bytes,
            "dense_weight_bytes": dense,
            "weights_total": dense // 4,
            "weights_stored": sum(r["numel"] for r in self.rows if r["weight"]),
            "nonzero_total": sum(r["nnz"] for r in self.rows if r["weight"]),
            "storage_rate": dense / max(1, self.weight_bytes),
            "file_rate": dense / max(1, self.file_bytes),
        }


def _row(t: TensorHeader) -> dict[str, Any]:
    p, v = t.pattern, t.values
    scale_bytes = v.scales.length if v.scales is not None else 0
    return {
        "name": t.name,
        "weight": t.weight,
        "numel": int(np.prod(t.shape, dtype=np.int64)) if t.shape else 1,
        "nnz": p.nnz,
        "encoding": p.kind,
        "pattern_param": p.param,
        **({"pattern_n": p.n} if p.n is not None else {}),
        "values": f"{v.bits}-bit codes" if v.kind == "codes" else v.dtype,
        "scale_dtype": v.scale_dtype,
        "index_bytes": p.section.length,
        "value_bytes": v.section.length,
        "scale_bytes": scale_bytes,
        "bytes": p.section.length + v.section.length + scale_bytes,
    }


def scale_hint(w: Tensor, spec: QuantSpec) -> Tensor:
    """The quantizer's own scale(s) for ``w``: it fixes the codes, ``storage`` then makes the
    scale exact. The mask keeps pruned zeros out of the fit."""
    mask = w != 0
    if spec.binary:
        return fit_binary(w, spec.per_channel, mask)[1]
    if spec.bits == 2:
        return fit_ternary(w, spec.per_channel, mask)[1]
    return fit_uniform(w, spec.bits, spec.per_channel, mask)[1]


def plan_model(
    model: nn.Module,
    quant: Mapping[str, QuantSpec] | None = None,
    values: str = "float32",
) -> dict[str, TensorPlan | Tensor]:
    """Per state-dict entry: a ``TensorPlan`` for conv/linear weights, the tensor otherwise."""
    quant = dict(quant or {})
    weights = {t.param_name: name for name, t in compressible_targets(model).items()}
    unknown = sorted(set(quant) - set(weights.values()))
    if unknown:
        raise ValueError(f"quantization given for unknown layers: {', '.join(unknown)}")
    out: dict[str, TensorPlan | Tensor] = {}
    for key, t in model.state_dict().items():
        t = t.detach().cpu()
        layer = weights.get(key)
        if layer is not None and t.is_floating_point():
            spec = quant.get(layer)
            hint = scale_hint(t.float(), spec).numpy() if spec is not None else None
            out[key] = plan_tensor(t, spec, hint, values)
        else:
            out[key] = t
    return out


def _count(model: nn.Module) -> int:
    return sum(t.numel() for t in model.state_dict().values())


def _own_dtype(t: Tensor) -> dict[str, str]:
    """A weight's dtype for its header entry, when it is not float32 (the usual case)."""
    return {} if t.dtype == torch.float32 else {"dtype": _raw_name(t)}


def _raw_name(t: Tensor) -> str:
    for name, (dtype, _) in RAW_DTYPES.items():
        if t.dtype == dtype:
            return name
    raise ValueError(f"cannot store a tensor of dtype {t.dtype}")


def save_admmz(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    model_name: str,
    model_args: Mapping[str, Any],
    quant: Mapping[str, QuantSpec] | None = None,
    values: str = "float32",
    resized: Mapping[str, Mapping[str, int]] | None = None,
    original_weights: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> FileSummary:
    """Write ``model`` (hardened) to ``path`` atomically and return the file's sizes.

    ``quant`` names the quantized layers and their grid; ``values="float16"`` stores the
    other weights in half precision (lossy: the only setting that is not bit-exact).
    ``resized`` records a compact model's layer sizes (``compact.compact_model``) and
    ``original_weights`` the weight count it had before, so rates compare with the original.
    """
    plans = plan_model(model, quant, values)
    weights = model.state_dict()
    payload = bytearray()
    tensors: list[dict[str, Any]] = []

    def add(data: bytes) -> dict[str, int]:
        sec = {"offset": len(payload), "length": len(data)}
        payload.extend(data)
        return sec

    for key, plan in plans.items():
        if isinstance(plan, TensorPlan):
            pattern = encode_pattern(
                plan.positions if plan.positions is not None else np.empty(0, np.int64),
                plan.numel,
                plan.pattern,
                plan.pattern_param,
                plan.shape,
                plan.pattern_n,
            )
            vals, scales = encode_values(plan)
            assert len(pattern) == plan.pattern_bytes and len(vals) == plan.value_bytes
            entry = {
                "name": key,
                "shape": list(plan.shape),
                "weight": True,
                **(
                    {"dtype": _raw_name(weights[key])}
                    if weights[key].dtype != torch.float32
                    else {}
                ),
                "stored_as": plan.value_encoding,
                "pattern": {
                    "kind": plan.pattern,
                    "nnz": plan.nnz,
                    "param": plan.pattern_param,
                    "entries": plan.pattern_entries,
                    "section": add(pattern),
                    **({"n": plan.pattern_n} if plan.pattern_n is not None else {}),
                },
                "values": {
                    "kind": "codes" if plan.quantized is not None else "raw",
                    "dtype": "float32" if plan.quantized is not None else plan.value_encoding,
                    "bits": plan.quant.bits if plan.quant is not None else None,
                    "per_channel": plan.quant.per_channel if plan.quant is not None else False,
                    "scale_dtype": str(plan.quantized.scales.dtype)
                    if plan.quantized is not None
                    else None,
                    "section": add(vals),
                    "scales": add(scales) if plan.quantized is not None else None,
                },
            }
        else:
            dtype = _raw_name(plan)
            raw = plan.contiguous()
            if raw.dtype == torch.bfloat16:  # numpy has no bfloat16: store its bits
                raw = raw.view(torch.int16)
            data = raw.numpy().astype(RAW_DTYPES[dtype][1], copy=False).tobytes()
            entry = {
                "name": key,
                "shape": list(plan.shape),
                "weight": False,
                "stored_as": "raw",
                "pattern": {
                    "kind": "dense",
                    "nnz": plan.numel(),
                    "section": {"offset": len(payload), "length": 0},
                },
                "values": {"kind": "raw", "dtype": dtype, "section": add(data)},
            }
        tensors.append(entry)

    header = FileHeader.model_validate(
        {
            "format": "admmz",
            "model": model_name,
            "model_args": architecture_args(model_args),
            "resized": {k: dict(v) for k, v in (resized or {}).items()},
            "original_weights": original_weights,
            "input_shape": list(input_shape) if input_shape is not None else None,
            "metadata": dict(metadata or {}),
            "tensors": tensors,
            "payload_bytes": len(payload),
        }
    )
    # the writer checks the file can be rebuilt; it has imported the model's code already
    limit = max(DEFAULT_MAX_PARAMS, _count(model))
    _check_architecture(Path(path), header, limit, ReadOptions(allow_import=True))
    dumped = header.model_dump()
    for t in dumped["tensors"]:  # fields most tensors leave unset stay out of the bytes
        if t["pattern"]["n"] is None:
            del t["pattern"]["n"]
        if t["dtype"] is None:
            del t["dtype"]
    blob = pack_container(json.dumps(dumped, separators=(",", ":")).encode(), bytes(payload))
    atomic_write(path, lambda tmp: tmp.write_bytes(blob))
    return FileSummary(header, len(blob), len(blob) - len(payload))


# -- the container: magic, version, compressed header, payload, checksum ----------------------
def pack_container(header_json: bytes, payload: bytes, version: int = FORMAT_VERSION) -> bytes:
    """A file's bytes: magic, version and header length, the zlib-compressed header JSON,
    the payload, and the CRC-32 of everything before it."""
    packed = zlib.compress(header_json, 9)
    body = _FIXED.pack(MAGIC, version, len(packed)) + packed + payload
    return body + _CRC.pack(zlib.crc32(body))


def split_container(blob: bytes) -> tuple[int, bytes, bytes]:
    """(version, header JSON, payload) of a file's bytes, unchecked: for tools that rewrite
    files they made (tests, fuzzers). Untrusted files go through ``read_header``, which
    bounds the header's inflation and checks everything."""
    _, version, hlen = _FIXED.unpack_from(blob)
    header = zlib.decompress(blob[_FIXED.size : _FIXED.size + hlen])
    return version, header, blob[_FIXED.size + hlen : -_CRC.size]


# -- reading --------------------------------------------------------------------------------
def is_admmz(path: str | os.PathLike) -> bool:
    """Whether the file starts with the ``.admmz`` magic bytes (its name does not matter)."""
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def _sniff(head: bytes) -> bool:
    return head.startswith(MAGIC)


def _fail(path: Path, why: str) -> ModelFormatError:
    return ModelFormatError(f"{path}: {why}")


def _short(value: object, limit: int = 200) -> str:
    """A hostile file must not make its error message huge."""
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def read_header(path: str | os.PathLike) -> tuple[FileHeader, bytes, int]:
    """Check size, magic, version and checksum; return the header, payload and file size."""
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such file")
    blob = path.read_bytes()
    if len(blob) < _FIXED.size + _CRC.size:
        raise _fail(path, f"only {len(blob)} bytes: too short to be an .admmz file (truncated?)")
    magic, version, hlen = _FIXED.unpack_from(blob)
    if magic != MAGIC:
        raise _fail(path, "not an .admmz file (wrong magic bytes)")
    if version != FORMAT_VERSION:
        raise _fail(
            path,
            f"format version {version}, this admmcompress reads version {FORMAT_VERSION}: "
            "export the model again with this version",
        )
    if _FIXED.size + hlen + _CRC.size > len(blob):
        raise _fail(path, f"header of {hlen} bytes declared but the file is shorter (truncated)")
    (crc,) = _CRC.unpack_from(blob, len(blob) - _CRC.size)
    if zlib.crc32(blob[: -_CRC.size]) != crc:
        raise _fail(path, "checksum mismatch: the file is corrupt or truncated")
    try:
        inflater = zlib.decompressobj()
        limit = min(MAX_HEADER_BYTES, HEADER_INFLATION * hlen + 4096)
        raw = inflater.decompress(blob[_FIXED.size : _FIXED.size + hlen], limit)
        if inflater.unconsumed_tail or not inflater.eof:
            raise _fail(path, "header is larger than the limit or incomplete")
        header = FileHeader.model_validate(json.loads(raw))
    except ModelFormatError:
        raise
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise _fail(path, f"invalid header at {_short(where) or 'top'}: {first['msg']}") from None
    except (zlib.error, ValueError, RecursionError) as e:  # ValueError: JSON, huge ints
        raise _fail(path, f"header cannot be decoded ({_short(e)})") from None
    payload = blob[_FIXED.size + hlen : -_CRC.size]
    if header.payload_bytes != len(payload):
        raise _fail(
            path, f"header declares {header.payload_bytes} payload bytes, found {len(payload)}"
        )
    return header, payload, len(blob)


def _build(
    header: FileHeader, device: str | torch.device, opts: ReadOptions, copy: bool = False
) -> nn.Module:
    """The architecture the header names (or the caller's ``opts.model``), resized."""
    if opts.model is not None:
        model = deepcopy(opts.model) if copy else opts.model
    else:
        model = create_model(header.model, allow_import=opts.allow_import, **header.model_args)
    if header.resized:
        resize_modules(model, header.resized)
    return model.to(device)


def value_limit(file_bytes: int, max_params: int | None = None) -> int:
    """How many values a reader may allocate for a file of ``file_bytes``: ``max_params``
    when the caller gives it, else ``VALUES_PER_BYTE`` per byte (at least ``MIN_VALUES``),
    never above ``DEFAULT_MAX_PARAMS``."""
    if max_params is not None:
        return max_params
    return min(DEFAULT_MAX_PARAMS, max(MIN_VALUES, VALUES_PER_BYTE * file_bytes))


def _check_architecture(
    path: Path, header: FileHeader, max_params: int, opts: ReadOptions | None = None
) -> None:
    """Build the model on the meta device (no memory) and match every declared tensor;
    ``max_params`` bounds the values it may declare."""
    opts = opts or ReadOptions()
    if "weights" in header.model_args:
        raise _fail(path, "its model arguments name a weights file, which is not allowed")
    try:
        with torch.device("meta"):
            model = _build(header, "meta", opts, copy=True)
    except ModelSourceError as e:  # an unknown name, or an import path not allowed
        raise _fail(
            path, f"cannot build model {_short(header.model)!r}: {_short(e, 600)}"
        ) from None
    except Exception as e:  # any constructor error: the arguments do not fit the model
        raise _fail(
            path,
            f"cannot build model {_short(header.model)!r} from {_short(header.model_args)}: "
            f"{_short(e)}",
        ) from None
    state = model.state_dict()
    total = sum(t.numel() for t in state.values())
    if total > max_params:
        raise _fail(
            path,
            f"model declares {total:,} values, over the limit of {max_params:,} for this file "
            f"(at most {VALUES_PER_BYTE:,} values per byte of the file, at least "
            f"{MIN_VALUES:,}); if you trust it, pass max_params to load it",
        )
    stored = sum(
        int(np.prod(t.shape, dtype=np.int64)) if t.shape else 1 for t in header.tensors if t.weight
    )
    original = header.original_weights
    if original is not None and not stored <= original <= max(max_params, stored):
        raise _fail(
            path,
            f"declares {original:,} weights before compaction for {stored:,} stored: an "
            "original model cannot be smaller than the stored one, or larger than the limit",
        )
    declared = {t.name: t for t in header.tensors}
    missing = sorted(set(state) - set(declared))
    extra = sorted(set(declared) - set(state))
    if missing or extra or len(declared) != len(header.tensors):
        raise _fail(
            path,
            f"tensors do not match model {_short(header.model)!r}: missing "
            f"{_short(missing[:5])}, unexpected {_short(extra[:5])}",
        )
    for name, t in state.items():
        if list(t.shape) != declared[name].shape:
            raise _fail(
                path, f"{name} declared {_short(declared[name].shape)}, model has {list(t.shape)}"
            )


def _section(payload: bytes, sec: Section, what: str) -> bytes:
    if sec.offset + sec.length > len(payload):
        raise StorageError(f"{what} section lies outside the payload")
    return payload[sec.offset : sec.offset + sec.length]


def _decode_tensor(t: TensorHeader, payload: bytes) -> Tensor:
    numel = int(np.prod(t.shape, dtype=np.int64)) if t.shape else 1
    positions = decode_pattern(
        _section(payload, t.pattern.section, "pattern"),
        numel,
        t.pattern.nnz,
        t.pattern.kind,
        t.pattern.param,
        t.pattern.entries,
        tuple(t.shape),
        t.pattern.n,
    )
    count = numel if positions is None else positions.size
    v = t.values
    data = _section(payload, v.section, "values")
    weight_dtype = RAW_DTYPES[t.dtype or "float32"][0]
    if v.kind == "raw":
        torch_dtype, np_dtype = RAW_DTYPES[v.dtype]
        if len(data) != count * np_dtype.itemsize:
            raise StorageError(f"{count} {v.dtype} values need {count * np_dtype.itemsize} bytes")
        if t.weight:
            if v.dtype not in VALUE_DTYPES:
                raise StorageError(f"weights are stored as {', '.join(VALUE_DTYPES)}")
            values = from_value_bytes(data, v.dtype)
            out_dtype = weight_dtype
        elif v.dtype == "bfloat16":
            bits = torch.from_numpy(np.frombuffer(data, np_dtype).copy())
            return bits.view(torch.bfloat16).reshape(t.shape)
        else:
            values = np.frombuffer(data, np_dtype)
            out_dtype = torch_dtype
    else:
        if v.bits is None or v.scales is None or v.scale_dtype is None:
            raise StorageError("quantized values need bits, scales and a scale dtype")
        spec = QuantSpec(v.bits, v.per_channel)
        nrows = t.shape[0] if spec.per_channel and t.shape else 1
        scale_dtype = np.dtype("<f4") if v.scale_dtype == "float32" else np.dtype("<f8")
        raw_scales = _section(payload, v.scales, "scales")
        if len(raw_scales) != nrows * scale_dtype.itemsize:
            raise StorageError(f"expected {nrows} scales")
        scales = np.frombuffer(raw_scales, scale_dtype)
        codes = signed_codes(unpack_uint(data, count, v.bits), spec)
        flat_pos = np.arange(numel) if positions is None else positions
        rows = flat_pos // max(1, numel // max(1, nrows))
        values = decode_codes(codes, rows, scales)
        out_dtype = weight_dtype
    if t.pattern.kind == "nm" and int(np.count_nonzero(values)) != t.pattern.nnz:
        raise StorageError(
            f"nm pattern declares {t.pattern.nnz} non-zeros, its values hold "
            f"{int(np.count_nonzero(values))}"
        )
    if positions is None:
        flat = torch.from_numpy(values.copy())
    else:
        flat = torch.zeros(numel, dtype=torch.from_numpy(values[:0].copy()).dtype)
        flat[torch.from_numpy(positions)] = torch.from_numpy(values.copy())
    return flat.to(out_dtype).reshape(t.shape)


@dataclass
class LoadedFile:
    model: nn.Module
    header: FileHeader
    summary: FileSummary


def read_admmz(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    max_params: int | None = None,
    opts: ReadOptions | None = None,
) -> LoadedFile:
    """Validate and decode an ``.admmz`` file into its model (in eval mode) and sizes.

    The model may declare at most ``value_limit(file size, max_params)`` values."""
    path = Path(path)
    opts = opts or ReadOptions()
    header, payload, size = read_header(path)
    _check_architecture(path, header, value_limit(size, max_params), opts)
    state: dict[str, Tensor] = {}
    for t in header.tensors:
        try:
            state[t.name] = _decode_tensor(t, payload)
        except StorageError as e:
            raise _fail(path, f"tensor {t.name}: {e}") from None
    model = _build(header, "cpu", opts)
    load_state_exact(model, state)
    model.to(device).eval()
    return LoadedFile(model, header, FileSummary(header, size, size - len(payload)))


def _target_names(model: nn.Module) -> dict[str, str]:
    """State-dict key -> the name a compressible parameter goes by (``fc1.weight`` -> fc1)."""
    return {t.param_name: name for name, t in compressible_targets(model).items()}


def _model_file(path: Path, loaded: LoadedFile) -> ModelFile:
    h = loaded.header
    names = _target_names(loaded.model)
    quant = {
        names.get(t.name, t.name): QuantSpec(t.values.bits, t.values.per_channel)
        for t in h.tensors
        if t.values.kind == "codes" and t.values.bits is not None
    }
    return ModelFile(
        path,
        "admmz",
        loaded.model,
        h.model,
        dict(h.model_args),
        {},
        quant,
        tuple(h.input_shape) if h.input_shape else None,
        dict(h.metadata),
        {k: dict(v) for k, v in h.resized.items()},
        h.original_weights,
        loaded.summary,
    )


def _read_model(path: Path, opts: ReadOptions) -> ModelFile:
    return _model_file(path, read_admmz(path, opts.device, opts.max_params, opts))


def verify_admmz(
    path: str | os.PathLike, max_params: int | None = None, opts: ReadOptions | None = None
) -> FileSummary:
    """Every check ``read_admmz`` makes, decoding each tensor and dropping it, without
    building the model: what ``inspect`` needs, in the memory of the largest tensor."""
    path = Path(path)
    opts = opts or ReadOptions()
    header, payload, size = read_header(path)
    _check_architecture(path, header, value_limit(size, max_params), opts)
    for t in header.tensors:
        try:
            _decode_tensor(t, payload)
        except StorageError as e:
            raise _fail(path, f"tensor {t.name}: {e}") from None
    return FileSummary(header, size, size - len(payload))


def _read_state(path: Path, model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The decoded weights, and as masks the patterns of the weights stored sparse; decoded
    into a copy of the caller's ``model``, so the file's model name is never built."""
    loaded = read_admmz(path, opts=ReadOptions(model=deepcopy(model)))
    state = loaded.model.state_dict()
    names = _target_names(loaded.model)
    masks = {
        names.get(t.name, t.name): state[t.name] != 0
        for t in loaded.header.tensors
        if t.weight and t.pattern.kind != "dense"
    }
    return state, masks


def _write(mf: ModelFile, out: Path, *, values: str = "float32") -> FileSummary:
    return save_admmz(
        out,
        mf.model,
        model_name=mf.model_name,
        model_args=mf.model_args,
        quant=mf.quant,
        values=values,
        resized=mf.resized,
        original_weights=mf.original_weights,
        input_shape=mf.input_shape,
        # what eval needs besides the header (the data set and how it was read), in a fixed
        # order: safetensors hands its metadata back in a random one
        metadata={k: mf.metadata[k] for k in sorted(mf.metadata) if k not in DERIVED_METADATA},
    )


register_format(
    FileFormat(
        "admmz",
        SUFFIX,
        ".admmz model file",
        sniff=_sniff,
        read=_read_model,
        read_state=_read_state,
        write=_write,
    )
)
