"""Where data files are and how they are read: the data root, checksums, safe reads, and
the conversion of uint8 images into normalised tensors."""

from __future__ import annotations

import gzip
import hashlib
import os
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .split import DataError

DEFAULT_DATA_DIR = "data"
ENV_VAR = "ADMMCOMPRESS_DATA"
_HASH_CHUNK = 1 << 20


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


def how_to_fix(layout: str) -> str:
    return (
        f"To fix this, point admmcompress at the folder that contains {layout}:\n"
        "  - the --data-dir PATH command-line option, or\n"
        f"  - the {ENV_VAR} environment variable, or\n"
        "  - `data.root` in the config file;\n"
        "or, if this machine is online, set `data.download: true` in the config "
        "to fetch the files."
    )


# --------------------------------------------------------------------------- containers


def md5(path: Path) -> str:
    """md5 of a file, read in chunks so large files do not sit in memory twice."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with path.open("rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise DataError(f"Cannot read {path}: {exc}") from exc
    return digest.hexdigest()


def check_md5(path: Path, expected: str) -> None:
    actual = md5(path)
    if actual != expected:
        raise DataError(
            f"Checksum mismatch for {path}: expected md5 {expected}, got {actual}.\n"
            "The file is probably truncated or corrupted: delete it and fetch it again. "
            "If you trust a modified copy, skip this check with `data.verify: false` "
            "in the config."
        )


def normalise(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """``(x / 255 - mean) / std`` per channel, in place on a float32 NCHW tensor."""
    channels = x.shape[1]
    m = torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1)
    return x.div_(255.0).sub_(m).div_(s)


def black_value(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[float, ...]:
    """The normalised value of a black pixel (0 before normalising), per channel."""
    return tuple(-m / s for m, s in zip(mean, std, strict=True))


def to_float_nchw(images: np.ndarray, *, channels_last: bool) -> Tensor:
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


def labels_tensor(y: np.ndarray, num_classes: int, source: Path) -> Tensor:
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


#: the most a gzipped data file may decompress to (the largest, MNIST's and FashionMNIST's
#: training images, holds 47 MB), so that a gzip bomb is refused before it fills the memory
MAX_DECOMPRESSED = 64 << 20


def read_bytes(path: Path, limit: int = MAX_DECOMPRESSED) -> bytes:
    """Read a file, gunzipping ``.gz`` up to ``limit`` bytes; any I/O or gzip failure, and a
    file that decompresses to more, becomes DataError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read(limit + 1)
            if len(data) > limit:
                raise DataError(
                    f"{path} decompresses to more than {limit >> 20} MB, far more than a data "
                    "file of this kind holds: it is not the file it should be (a gzip bomb?)"
                )
            return data
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        # BadGzipFile is an OSError; a truncated .gz raises EOFError.
        raise DataError(
            f"Cannot read {path}: {exc}. The file looks truncated or corrupt: "
            "delete it and fetch it again."
        ) from exc


def download_with_torchvision(kind: str, root: Path) -> None:
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
