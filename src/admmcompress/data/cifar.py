"""CIFAR-10 from torchvision's pickles or a class-sorted npz copy, held in memory as
normalised tensors."""

from __future__ import annotations

import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from .files import (
    black_value,
    check_md5,
    download_with_torchvision,
    how_to_fix,
    labels_tensor,
    normalise,
    to_float_nchw,
)
from .registry import FileOptions, register_dataset
from .split import DataError, Dataset, Split

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
                check_md5(path, md5)
            x, y = _read_cifar_batch(path)
            xs.append(x)
            ys.append(labels_tensor(y, 10, path))
        x_all = to_float_nchw(np.concatenate(xs), channels_last=False)
        x_all = normalise(x_all, CIFAR10_MEAN, CIFAR10_STD)
        return Split(x_all, torch.cat(ys), black_value(CIFAR10_MEAN, CIFAR10_STD))

    return split(_CIFAR10_TRAIN_BATCHES), split(_CIFAR10_TEST_BATCHES)


def _cifar_from_npz(path: Path, verify: bool) -> tuple[Split, Split]:
    """Read the class-sorted npz copy (HWC RGB uint8); no pickles are allowed in it."""
    if verify:
        check_md5(path, _CIFAR10_NPZ_MD5)
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
        x_t = normalise(to_float_nchw(x, channels_last=True), CIFAR10_MEAN, CIFAR10_STD)
        return Split(x_t, labels_tensor(y, 10, path), black_value(CIFAR10_MEAN, CIFAR10_STD))

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
    lines.append(how_to_fix(f"'{CIFAR10_BATCH_DIR}/' or '{CIFAR10_NPZ}'"))
    return "\n".join(lines)


@register_dataset("cifar10", options=FileOptions)
def _load_cifar10(root: Path, options: FileOptions) -> Dataset:
    """CIFAR-10 from torchvision's pickles, else from ``CIFAR10/cifar10_uint8.npz``."""
    verify, download = options.verify, options.download
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
        download_with_torchvision("CIFAR10", root)
        if not have_batches():
            raise DataError(_cifar_missing_message(root, batch_dir, npz))
        train, test = _cifar_from_batches(batch_dir, verify)
    else:
        raise DataError(_cifar_missing_message(root, batch_dir, npz))
    return Dataset(name="cifar10", train=train, test=test, num_classes=10, input_shape=(3, 32, 32))
