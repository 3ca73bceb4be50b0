"""In-memory datasets: MNIST, Fashion-MNIST and CIFAR-10.

Each dataset is read once from disk, checked (md5 and structure) and normalised
into float32 NCHW tensors. Training then slices these tensors directly with
:func:`iterate_batches`. The data sets are small, so this beats a per-sample
``DataLoader`` by a wide margin on CPU and keeps batch order reproducible.

New datasets are added by name with :func:`register_dataset`.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch import Tensor

from ..registry import Registry
from .augment import augment_batch

if TYPE_CHECKING:
    from ..recipe.schema import AugmentConfig

__all__ = [
    "DEFAULT_DATA_DIR",
    "ENV_VAR",
    "DataError",
    "Dataset",
    "Split",
    "available_datasets",
    "iterate_batches",
    "load_dataset",
    "num_batches",
    "read_idx",
    "register_dataset",
    "resolve_data_root",
]

DEFAULT_DATA_DIR = "data"
ENV_VAR = "ADMMCOMPRESS_DATA"

IDX_LABELS_MAGIC = 0x00000801
IDX_IMAGES_MAGIC = 0x00000803

_HASH_CHUNK = 1 << 20


class DataError(ValueError):
    """A data problem the user can fix: missing, corrupt or mismatched files."""


# --------------------------------------------------------------------------- root


def _nonempty(value: str | os.PathLike | None) -> bool:
    return value is not None and os.fspath(value) != ""


def resolve_data_root(
    cli_dir: str | os.PathLike | None = None,
    config_root: str | os.PathLike | None = None,
) -> Path:
    """Pick the data folder.

    Precedence: ``--data-dir`` (``cli_dir``) > ``$ADMMCOMPRESS_DATA`` > the config's
    ``data.root`` > ``./data``. The most specific choice wins, so a one-off run can
    override a shared config without editing it. The path need not exist.
    """
    env = os.environ.get(ENV_VAR)
    for candidate in (cli_dir, env, config_root):
        if _nonempty(candidate):
            return Path(os.fspath(candidate)).expanduser()  # type: ignore[arg-type]
    return Path(DEFAULT_DATA_DIR)


def _how_to_fix(layout: str) -> str:
    return (
        f"To fix this, point admmcompress at the folder that contains {layout}:\n"
        "  - the --data-dir PATH command-line option, or\n"
        f"  - the {ENV_VAR} environment variable, or\n"
        "  - `data.root` in the config file;\n"
        "or, if this machine is online, set `data.download: true` in the config "
        "to fetch the files."
    )


# --------------------------------------------------------------------------- containers


@dataclass(frozen=True, eq=False)
class Split:
    """One split (train or test) held entirely in memory.

    ``x`` is float32 NCHW, already normalised; ``y`` holds int64 class indices. ``black``
    is the normalised value of a black pixel per channel (what ``augment.pad: black``
    brings in at the border); 0 when unknown.
    """

    x: Tensor
    y: Tensor
    black: tuple[float, ...] = (0.0,)

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(
                f"Split has {self.x.shape[0]} inputs but {self.y.shape[0]} labels; they must match."
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, n: int, seed: int) -> Split:
        """Return ``n`` samples drawn without replacement, reproducibly from ``seed``.

        Used for quick runs and smoke tests; ``n >= len(self)`` returns ``self``.
        """
        if n < 1:
            raise DataError(f"Subset size must be at least 1, got {n}.")
        if n >= len(self):
            return self
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=gen)[:n].to(self.x.device)
        return replace(self, x=self.x[idx], y=self.y[idx])

    def to(self, device: torch.device | str) -> Split:
        """The same split on ``device`` (once, so batches never cross the bus)."""
        return replace(self, x=self.x.to(device), y=self.y.to(device))

    @property
    def device(self) -> torch.device:
        return self.x.device

    def as_channels_last(self) -> Split:
        """Images stored NHWC once, so that every batch reaches the convolutions that way."""
        if self.x.dim() != 4:
            return self
        return replace(self, x=self.x.contiguous(memory_format=torch.channels_last))

    def train_batches(
        self,
        batch_size: int,
        generator: torch.Generator,
        rows: Callable[[int], slice] | None = None,
        augment: AugmentConfig | None = None,
    ) -> Iterator[tuple[Tensor, Tensor, int]]:
        """Shuffled, augmented ``(x, y, global batch size)``; ``rows(n)``: this rank's slice.

        Every rank draws (and augments) the same global batch and keeps its slice, so the
        generator advances alike everywhere and N processes see what one would.
        """
        for x, y in iterate_batches(self, batch_size, shuffle=True, generator=generator):
            if augment is not None and (augment.shift or augment.hflip):
                fill = self.black if augment.pad == "black" else None
                x = augment_batch(x, augment.shift, augment.hflip, generator, fill)
            n = y.numel()
            if rows is not None:
                r = rows(n)
                x, y = x[r], y[r]
            yield x, y, n

    def eval_batches(
        self, batch_size: int, rows: slice | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Every sample once, in order; ``rows``: only this slice of the split."""
        split = self if rows is None else replace(self, x=self.x[rows], y=self.y[rows])
        return iterate_batches(split, batch_size, shuffle=False)


class BatchSource(Protocol):
    """What training and evaluation need of a split: in memory (``Split``) or streamed
    from disk (``image_folder.FolderSplit``)."""

    def __len__(self) -> int: ...
    @property
    def device(self) -> torch.device: ...
    def subset(self, n: int, seed: int) -> BatchSource: ...
    def to(self, device: torch.device | str) -> BatchSource: ...
    def as_channels_last(self) -> BatchSource: ...
    def train_batches(
        self,
        batch_size: int,
        generator: torch.Generator,
        rows: Callable[[int], slice] | None = None,
        augment: AugmentConfig | None = None,
    ) -> Iterator[tuple[Tensor, Tensor, int]]: ...
    def eval_batches(
        self, batch_size: int, rows: slice | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]: ...


@dataclass(frozen=True, eq=False)
class Dataset:
    """A named dataset with its train and test splits."""

    name: str
    train: BatchSource
    test: BatchSource
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)


# --------------------------------------------------------------------------- batching


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """Number of batches :func:`iterate_batches` yields for ``n`` samples."""
    if batch_size < 1:
        raise DataError(f"Batch size must be at least 1, got {batch_size}.")
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def iterate_batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(x, y)`` batches covering every sample once per pass.

    With ``shuffle`` the order comes from ``torch.randperm(len, generator=generator)``,
    so the same generator state gives the same batches. Shuffling matters: some
    stored copies (the CIFAR-10 npz) are sorted by class.
    """
    n = len(split)
    if batch_size < 1:
        raise DataError(f"Batch size must be at least 1, got {batch_size}.")
    stop = (n // batch_size) * batch_size if drop_last else n
    if shuffle:
        perm = torch.randperm(n, generator=generator).to(split.x.device)
        for start in range(0, stop, batch_size):
            idx = perm[start : start + batch_size]
            yield _one_channel_nhwc(split.x[idx]), split.y[idx]
    else:
        for start in range(0, stop, batch_size):
            end = start + batch_size
            yield _one_channel_nhwc(split.x[start:end]), split.y[start:end]


def _one_channel_nhwc(x: Tensor) -> Tensor:
    """Single-channel image batches as NHWC strides: the same memory, no copy.

    With one channel, NCHW and NHWC hold the bytes in the same order, but the convolution
    picks its kernels by the strides: on a CPU, oneDNN's NHWC path runs LeNet-5 about 1.4x
    faster. Shifted batches (``augment``) already come out this way; this makes unshifted
    training batches and evaluation batches match.
    """
    if x.dim() == 4 and x.shape[1] == 1 and x.is_contiguous():
        return x.as_strided(x.shape, (x.stride(0), 1, x.shape[3], 1))
    return x


# --------------------------------------------------------------------------- registry

Loader = Callable[[Path, bool, bool], Dataset]
_REGISTRY: Registry[Loader] = Registry("dataset", error=DataError)


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Register ``loader(root, verify, download) -> Dataset`` under ``name``."""
    return _REGISTRY.register(name)


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    _register_folders()
    return _REGISTRY.names()


def _register_folders() -> None:
    from . import image_folder  # noqa: F401  (registers the streamed folder data sets)


def load_dataset(
    name: str,
    root: str | os.PathLike,
    *,
    verify: bool = True,
    download: bool = False,
) -> Dataset:
    """Load dataset ``name`` from ``root`` (in memory, or streamed for image folders).

    ``verify`` checks md5 sums of the files as found; ``download`` lets torchvision
    fetch missing files into ``root`` (needs network access).
    """
    _register_folders()
    loader = _REGISTRY.get(name.strip().lower().replace("-", "_"))
    return loader(Path(os.fspath(root)).expanduser(), verify, download)


# --------------------------------------------------------------------------- helpers


def _md5(path: Path) -> str:
    """md5 of a file, read in chunks so large files do not sit in memory twice."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with path.open("rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise DataError(f"Cannot read {path}: {exc}") from exc
    return digest.hexdigest()


def _check_md5(path: Path, expected: str) -> None:
    actual = _md5(path)
    if actual != expected:
        raise DataError(
            f"Checksum mismatch for {path}: expected md5 {expected}, got {actual}.\n"
            "The file is probably truncated or corrupted: delete it and fetch it again. "
            "If you trust a modified copy, skip this check with `data.verify: false` "
            "in the config."
        )


def _normalise(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """``(x / 255 - mean) / std`` per channel, in place on a float32 NCHW tensor."""
    channels = x.shape[1]
    m = torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1)
    return x.div_(255.0).sub_(m).div_(s)


def _black(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[float, ...]:
    """The normalised value of a black pixel (0 before normalising), per channel."""
    return tuple(-m / s for m, s in zip(mean, std, strict=True))


def _to_float_nchw(images: np.ndarray, *, channels_last: bool) -> Tensor:
    """Convert uint8 images to a contiguous float32 NCHW tensor with one copy."""
    with warnings.catch_warnings():
        # IDX arrays view immutable bytes; torch warns, but ``src`` is only read.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        src = torch.from_numpy(np.ascontiguousarray(images))
    if channels_last:  # NHWC -> NCHW view; copy_ below makes it contiguous.
        src = src.permute(0, 3, 1, 2)
    elif src.dim() == 3:  # NHW -> N1HW
        src = src.unsqueeze(1)
    out = torch.empty(tuple(src.shape), dtype=torch.float32)
    out.copy_(src)
    return out


def _labels(y: np.ndarray, num_classes: int, source: Path) -> Tensor:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"{source}: labels must be a 1-D integer array, got shape {y.shape} dtype {y.dtype}."
        )
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(
            f"{source}: labels must lie in [0, {num_classes - 1}], "
            f"found values from {y.min()} to {y.max()}."
        )
    return torch.from_numpy(y.astype(np.int64))


# --------------------------------------------------------------------------- IDX (MNIST)


def _read_bytes(path: Path) -> bytes:
    """Read a file, gunzipping ``.gz``; any I/O or gzip failure becomes DataError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        # BadGzipFile is an OSError; a truncated .gz raises EOFError.
        raise DataError(
            f"Cannot read {path}: {exc}. The file looks truncated or corrupt: "
            "delete it and fetch it again."
        ) from exc


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (``.gz`` or not) into a uint8 array.

    The format is a big-endian header: magic ``0x000008NN`` (``NN`` = number of
    dims), then one uint32 per dim, then the data. Everything is checked so that
    a damaged download fails here with a clear message instead of later.
    """
    path = Path(path)
    raw = _read_bytes(path)
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
    lines.append(_how_to_fix(f"'{spec.folder}/raw/'"))
    return "\n".join(lines)


def _download_torchvision(kind: str, root: Path) -> None:
    """Fetch a dataset with torchvision into its usual layout under ``root``."""
    try:
        import torchvision.datasets as tvd

        cls = getattr(tvd, kind)
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as exc:  # network, disk and archive errors all land here
        raise DataError(
            f"Downloading {kind} into {root} failed: {exc}\n"
            "Check the network connection, or fetch the files by hand and point "
            f"--data-dir / {ENV_VAR} / `data.root` at them."
        ) from exc


def _load_idx_dataset(spec: _IdxSpec, root: Path, verify: bool, download: bool) -> Dataset:
    raw_dir = root / spec.folder / "raw"
    found = _find_idx_files(raw_dir)
    if any(p is None for p in found.values()):
        if not download:
            raise DataError(_missing_idx_message(spec, root, found))
        _download_torchvision(spec.folder, root)
        found = _find_idx_files(raw_dir)
        if any(p is None for p in found.values()):
            raise DataError(_missing_idx_message(spec, root, found))

    paths: dict[str, Path] = {k: v for k, v in found.items() if v is not None}
    if verify:
        for stem, path in paths.items():
            table = spec.md5_gz if path.suffix == ".gz" else spec.md5_raw
            _check_md5(path, table[stem])

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
        x = _normalise(_to_float_nchw(images, channels_last=False), (spec.mean,), (spec.std,))
        return Split(x, _labels(labels, 10, lbl_path), _black((spec.mean,), (spec.std,)))

    return Dataset(
        name=spec.name,
        train=split("train"),
        test=split("t10k"),
        num_classes=10,
        input_shape=(1, 28, 28),
    )


@register_dataset("mnist")
def _load_mnist(root: Path, verify: bool, download: bool) -> Dataset:
    """MNIST from ``<root>/MNIST/raw/`` (torchvision's layout)."""
    return _load_idx_dataset(_MNIST, root, verify, download)


@register_dataset("fashion_mnist")
def _load_fashion_mnist(root: Path, verify: bool, download: bool) -> Dataset:
    """Fashion-MNIST from ``<root>/FashionMNIST/raw/`` (torchvision's layout)."""
    return _load_idx_dataset(_FASHION_MNIST, root, verify, download)


# --------------------------------------------------------------------------- CIFAR-10

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_BATCH_DIR = "cifar-10-batches-py"
CIFAR10_NPZ = Path("CIFAR10") / "cifar10_uint8.npz"
_CIFAR10_NPZ_MD5 = "921814245548faf4fe7d8018c9761cea"
_CIFAR10_TRAIN_BATCHES = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
}
_CIFAR10_TEST_BATCHES = {"test_batch": "40351d587109b95175f43aff81a1287e"}


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Unpickle one CIFAR-10 batch into ``(uint8 N×3×32×32, int64 N)``.

    SECURITY: these are Python pickles, and unpickling can run arbitrary code.
    They are only read from ``<root>/cifar-10-batches-py/`` under their fixed
    names, and with ``verify=True`` only after the md5 matches the official file.
    Only use ``verify=False`` with copies you trust.
    """
    try:
        with path.open("rb") as f:
            entry = pickle.load(f, encoding="bytes")
        data = entry[b"data"]
        labels = np.asarray(entry[b"labels"])
    except Exception as exc:  # unpickling fails in many ways on damaged files
        raise DataError(
            f"Cannot read CIFAR-10 batch {path}: {type(exc).__name__}: {exc}. "
            "The file looks corrupt: delete it and fetch it again."
        ) from exc
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"{path}: b'data' must be a 2-D uint8 array.")
    if data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: each row must hold 3072 bytes, got {data.shape[1]}.")
    if labels.shape != (data.shape[0],):
        raise DataError(
            f"{path}: {data.shape[0]} images but {labels.shape[0] if labels.ndim else 0} labels."
        )
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_from_batches(folder: Path, verify: bool) -> tuple[Split, Split]:
    def split(names: dict[str, str]) -> Split:
        xs, ys = [], []
        for name, md5 in names.items():
            path = folder / name
            if verify:
                _check_md5(path, md5)
            x, y = _read_cifar_batch(path)
            xs.append(x)
            ys.append(_labels(y, 10, path))
        x_all = _to_float_nchw(np.concatenate(xs), channels_last=False)
        x_all = _normalise(x_all, CIFAR10_MEAN, CIFAR10_STD)
        return Split(x_all, torch.cat(ys), _black(CIFAR10_MEAN, CIFAR10_STD))

    return split(_CIFAR10_TRAIN_BATCHES), split(_CIFAR10_TEST_BATCHES)


def _cifar_from_npz(path: Path, verify: bool) -> tuple[Split, Split]:
    """Read the class-sorted npz copy (HWC RGB uint8); no pickles are allowed in it."""
    if verify:
        _check_md5(path, _CIFAR10_NPZ_MD5)
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(npz.files)
            if missing:
                raise DataError(f"{path}: missing arrays {sorted(missing)}.")
            arrays = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(
            f"Cannot read {path}: {exc}. The file looks corrupt: delete it and fetch it again."
        ) from exc

    def split(x: np.ndarray, y: np.ndarray, what: str) -> Split:
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
            raise DataError(
                f"{path}: x_{what} must be uint8 of shape (N, 32, 32, 3), got {x.dtype} {x.shape}."
            )
        if y.shape != (x.shape[0],):
            raise DataError(f"{path}: y_{what} must have shape ({x.shape[0]},), got {y.shape}.")
        x_t = _normalise(_to_float_nchw(x, channels_last=True), CIFAR10_MEAN, CIFAR10_STD)
        return Split(x_t, _labels(y, 10, path), _black(CIFAR10_MEAN, CIFAR10_STD))

    return (
        split(arrays["x_train"], arrays["y_train"], "train"),
        split(arrays["x_test"], arrays["y_test"], "test"),
    )


def _cifar_missing_message(root: Path, batch_dir: Path, npz: Path) -> str:
    names = [*_CIFAR10_TRAIN_BATCHES, *_CIFAR10_TEST_BATCHES]
    where = (
        f"the data root {root.absolute()} does not exist"
        if not root.is_dir()
        else f"nothing usable under the data root {root.absolute()}"
    )
    lines = [
        f"CIFAR-10 data not found: {where}.",
        "Expected one of these layouts:",
        f"  1. {batch_dir.absolute()}/ holding {', '.join(names)} (torchvision's pickles)",
        f"  2. {npz.absolute()}",
    ]
    if batch_dir.is_dir():
        missing = [n for n in names if not (batch_dir / n).is_file()]
        lines.append(f"{batch_dir} exists but lacks: {', '.join(missing)}.")
    lines.append(_how_to_fix(f"'{CIFAR10_BATCH_DIR}/' or '{CIFAR10_NPZ}'"))
    return "\n".join(lines)


@register_dataset("cifar10")
def _load_cifar10(root: Path, verify: bool, download: bool) -> Dataset:
    """CIFAR-10 from torchvision's pickles, else from ``CIFAR10/cifar10_uint8.npz``."""
    batch_dir = root / CIFAR10_BATCH_DIR
    npz = root / CIFAR10_NPZ

    def have_batches() -> bool:
        names = [*_CIFAR10_TRAIN_BATCHES, *_CIFAR10_TEST_BATCHES]
        return all((batch_dir / n).is_file() for n in names)

    if have_batches():
        train, test = _cifar_from_batches(batch_dir, verify)
    elif npz.is_file():
        train, test = _cifar_from_npz(npz, verify)
    elif download:
        _download_torchvision("CIFAR10", root)
        if not have_batches():
            raise DataError(_cifar_missing_message(root, batch_dir, npz))
        train, test = _cifar_from_batches(batch_dir, verify)
    else:
        raise DataError(_cifar_missing_message(root, batch_dir, npz))
    return Dataset(name="cifar10", train=train, test=test, num_classes=10, input_shape=(3, 32, 32))
