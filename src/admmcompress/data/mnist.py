"""MNIST and Fashion-MNIST from torchvision's layout: the four original IDX files, held in
memory as normalised tensors."""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import (
    black_value,
    check_md5,
    download_with_torchvision,
    how_to_fix,
    labels_tensor,
    normalise,
    read_bytes,
    to_float_nchw,
)
from .registry import FileOptions, register_dataset
from .split import DataError, Dataset, Split

IDX_LABELS_MAGIC = 0x00000801
IDX_IMAGES_MAGIC = 0x00000803


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (``.gz`` or not) into a uint8 array.

    The format is a big-endian header: magic ``0x000008NN`` (``NN`` = number of
    dims), then one uint32 per dim, then the data. Everything is checked so that
    a damaged download fails here with a clear message instead of later.
    """
    path = Path(path)
    raw = read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: only {len(raw)} bytes, too short to be an IDX file.")
    (magic,) = struct.unpack(">I", raw[:4])
    if expected_magic is not None and magic != expected_magic:
        raise DataError(
            f"{path}: wrong magic number 0x{magic:08x}, expected 0x{expected_magic:08x}. "
            "This is not the IDX file it should be (wrong file, or corrupt)."
        )
    if magic >> 8 != 0x08 or not 1 <= (magic & 0xFF) <= 4:
        raise DataError(
            f"{path}: magic number 0x{magic:08x} is not an unsigned-byte IDX file "
            "with 1 to 4 dimensions."
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: file ends inside its header ({len(raw)} bytes); truncated.")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected_len = header + math.prod(dims)
    if len(raw) != expected_len:
        what = "truncated" if len(raw) < expected_len else "has trailing bytes"
        raise DataError(
            f"{path}: header says shape {tuple(dims)}, i.e. {expected_len} bytes, "
            f"but the file holds {len(raw)} bytes ({what})."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


@dataclass(frozen=True)
class _IdxSpec:
    name: str
    folder: str  # torchvision's class name, which is also its folder name
    mean: float
    std: float
    md5_gz: dict[str, str]
    md5_raw: dict[str, str]


_IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

_MNIST = _IdxSpec(
    name="mnist",
    folder="MNIST",
    mean=0.1307,
    std=0.3081,
    md5_gz=dict(
        zip(
            _IDX_STEMS,
            (
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "d53e105ee54ea40749a09fcbcd1e9432",
                "9fb629c4189551a2d022fa330f9573f3",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ),
            strict=True,
        )
    ),
    md5_raw=dict(
        zip(
            _IDX_STEMS,
            (
                "6bbc9ace898e44ae57da46a324031adb",
                "a25bea736e30d166cdddb491f175f624",
                "2646ac647ad5339dbf082846283269ea",
                "27ae3e4e09519cfbb04c329615203637",
            ),
            strict=True,
        )
    ),
)

_FASHION_MNIST = _IdxSpec(
    name="fashion_mnist",
    folder="FashionMNIST",
    mean=0.2860,
    std=0.3530,
    md5_gz=dict(
        zip(
            _IDX_STEMS,
            (
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79",
                "bb300cfdad3c16e7a12a480ee83cd310",
            ),
            strict=True,
        )
    ),
    md5_raw=dict(
        zip(
            _IDX_STEMS,
            (
                "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                "9018921c3c673c538a1fc5bad174d6f9",
                "8181f5470baa50b63fa0f6fddb340f0a",
                "15d484375f8d13e6eb1aabb0c3f46965",
            ),
            strict=True,
        )
    ),
)


def _find_idx_files(raw_dir: Path) -> dict[str, Path | None]:
    """For each stem, the ``.gz`` if present, else the uncompressed file, else None."""
    found: dict[str, Path | None] = {}
    for stem in _IDX_STEMS:
        found[stem] = next(
            (p for p in (raw_dir / f"{stem}.gz", raw_dir / stem) if p.is_file()), None
        )
    return found


def _missing_idx_message(spec: _IdxSpec, root: Path, found: dict[str, Path | None]) -> str:
    raw_dir = root.absolute() / spec.folder / "raw"
    if not root.is_dir():
        head = f"{spec.folder} data not found: the data root {root.absolute()} does not exist."
    else:
        head = f"{spec.folder} data not found under the data root {root.absolute()}."
    lines = [
        head,
        "Expected these four files (each either gzipped or uncompressed):",
    ]
    for stem, path in found.items():
        status = "found" if path is not None else "MISSING"
        lines.append(f"  [{status}] {raw_dir / (stem + '.gz')}  or  {raw_dir / stem}")
    if root.name in {"raw", spec.folder}:
        lines.append(
            f"Note: give the folder that contains '{spec.folder}/raw/', not '{root.name}' itself."
        )
    lines.append(how_to_fix(f"'{spec.folder}/raw/'"))
    return "\n".join(lines)


def _load_idx_dataset(spec: _IdxSpec, root: Path, verify: bool, download: bool) -> Dataset:
    raw_dir = root / spec.folder / "raw"
    found = _find_idx_files(raw_dir)
    if any(p is None for p in found.values()):
        if not download:
            raise DataError(_missing_idx_message(spec, root, found))
        download_with_torchvision(spec.folder, root)
        found = _find_idx_files(raw_dir)
        if any(p is None for p in found.values()):
            raise DataError(_missing_idx_message(spec, root, found))

    paths: dict[str, Path] = {k: v for k, v in found.items() if v is not None}
    if verify:
        for stem, path in paths.items():
            table = spec.md5_gz if path.suffix == ".gz" else spec.md5_raw
            check_md5(path, table[stem])

    def split(prefix: str) -> Split:
        img_path = paths[f"{prefix}-images-idx3-ubyte"]
        lbl_path = paths[f"{prefix}-labels-idx1-ubyte"]
        images = read_idx(img_path, IDX_IMAGES_MAGIC)
        labels = read_idx(lbl_path, IDX_LABELS_MAGIC)
        if images.shape[1:] != (28, 28):
            raise DataError(f"{img_path}: images must be 28x28, got {images.shape[1:]}.")
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{img_path} holds {images.shape[0]} images but {lbl_path} holds "
                f"{labels.shape[0]} labels; the files do not belong together."
            )
        x = normalise(to_float_nchw(images, channels_last=False), (spec.mean,), (spec.std,))
        return Split(x, labels_tensor(labels, 10, lbl_path), black_value((spec.mean,), (spec.std,)))

    return Dataset(
        name=spec.name,
        train=split("train"),
        test=split("t10k"),
        num_classes=10,
        input_shape=(1, 28, 28),
    )


@register_dataset("mnist", options=FileOptions)
def _load_mnist(root: Path, options: FileOptions) -> Dataset:
    """MNIST from ``<root>/MNIST/raw/`` (torchvision's layout)."""
    return _load_idx_dataset(_MNIST, root, options.verify, options.download)


@register_dataset("fashion_mnist", options=FileOptions)
def _load_fashion_mnist(root: Path, options: FileOptions) -> Dataset:
    """Fashion-MNIST from ``<root>/FashionMNIST/raw/`` (torchvision's layout)."""
    return _load_idx_dataset(_FASHION_MNIST, root, options.verify, options.download)
