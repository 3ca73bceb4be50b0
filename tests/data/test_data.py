"""Tests for admmcompress.data: loaders on tiny synthetic files, plus the shipped MNIST."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from admmcompress.data import (
    DataError,
    Dataset,
    Split,
    available_datasets,
    iterate_batches,
    load_dataset,
    num_batches,
    register_dataset,
    resolve_data_root,
)
from admmcompress.data import registry as data_registry
from admmcompress.data.mnist import read_idx
from helpers import DATA_DIR as REPO_DATA

STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
CIFAR_STD = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)


# --------------------------------------------------------------------------- helpers


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = struct.pack(">I", 0x00000800 | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.tobytes()


def write_file(path: Path, payload: bytes, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def make_idx_root(
    root: Path, folder: str = "MNIST", *, gz: bool = True, n_train: int = 12, n_test: int = 6
) -> dict[str, np.ndarray]:
    """Write a tiny valid MNIST-style dataset; return the arrays written."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, arr in arrays.items():
        write_file(root / folder / "raw" / stem, idx_bytes(arr), gz)
    return arrays


def cifar_batch(n: int, seed: int) -> dict[bytes, object]:
    rng = np.random.default_rng(seed)
    return {
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
    }


def make_cifar_batches(root: Path, n: int = 10) -> dict[str, dict[bytes, object]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = {name: cifar_batch(n, seed) for seed, name in enumerate(names)}
    for name, batch in batches.items():
        with (folder / name).open("wb") as f:
            pickle.dump(batch, f)
    return batches


def make_cifar_npz(root: Path, n_train: int = 8, n_test: int = 4, **override) -> Path:
    rng = np.random.default_rng(1)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train).astype(np.int64),
        "x_test": rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test).astype(np.int64),
    }
    arrays.update(override)
    path = root / "CIFAR10" / "cifar10_uint8.npz"
    path.parent.mkdir(parents=True)
    np.savez(path, **arrays)
    return path


def toy_split(n: int = 23) -> Split:
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)
    return Split(x, torch.arange(n, dtype=torch.int64))


# --------------------------------------------------------------------------- MNIST family


@pytest.mark.parametrize("gz", [True, False])
def test_load_synthetic_mnist(tmp_path: Path, gz: bool) -> None:
    arrays = make_idx_root(tmp_path, gz=gz)
    ds = load_dataset("mnist", tmp_path, verify=False)
    assert isinstance(ds, Dataset)
    assert ds.name == "mnist" and ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
    assert ds.train.x.shape == (12, 1, 28, 28) and ds.test.x.shape == (6, 1, 28, 28)
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    expected = (torch.from_numpy(arrays["train-images-idx3-ubyte"]).float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(ds.train.x[:, 0], expected)
    assert ds.test.y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_fashion_mnist_layout_and_normalisation(tmp_path: Path) -> None:
    arrays = make_idx_root(tmp_path, "FashionMNIST")
    ds = load_dataset("fashion_mnist", tmp_path, verify=False)
    expected = (torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float() / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(ds.test.x[:, 0], expected)
    assert ds.name == "fashion_mnist"


def test_gz_preferred_over_uncompressed(tmp_path: Path) -> None:
    arrays = make_idx_root(tmp_path, gz=True)
    raw = tmp_path / "MNIST" / "raw"
    other = (arrays["train-labels-idx1-ubyte"] + 1) % 10
    write_file(raw / "train-labels-idx1-ubyte", idx_bytes(other), gz=False)
    ds = load_dataset("mnist", tmp_path, verify=False)
    assert ds.train.y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()


def test_verify_reports_md5_and_path(tmp_path: Path) -> None:
    make_idx_root(tmp_path, gz=True)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    actual = hashlib.md5(path.read_bytes()).hexdigest()
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path, verify=True)
    msg = str(err.value)
    assert str(path) in msg
    assert "f68b3c2dcbeaaa9fbdd348bbdeb94873" in msg and actual in msg
    assert "data.verify: false" in msg


def test_verify_uses_uncompressed_md5_for_uncompressed_files(tmp_path: Path) -> None:
    make_idx_root(tmp_path, gz=False)
    with pytest.raises(DataError, match="6bbc9ace898e44ae57da46a324031adb"):
        load_dataset("mnist", tmp_path, verify=True)


def test_missing_files_lists_expected_paths(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path)
    msg = str(err.value)
    raw = tmp_path / "MNIST" / "raw"
    for stem in STEMS:
        assert str(raw / stem) in msg and str(raw / f"{stem}.gz") in msg
    assert str(tmp_path) in msg
    for hint in ("--data-dir", "ADMMCOMPRESS_DATA", "data.root", "download: true"):
        assert hint in msg


def test_partially_missing_files_named(tmp_path: Path) -> None:
    make_idx_root(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"MISSING\].*t10k-labels-idx1-ubyte"):
        load_dataset("mnist", tmp_path, verify=False)


def test_missing_message_shows_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as err:
        load_dataset("mnist", "data")
    assert str(tmp_path / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte.gz") in str(err.value)


def test_missing_root_folder(tmp_path: Path) -> None:
    root = tmp_path / "nope"
    with pytest.raises(DataError) as err:
        load_dataset("fashion_mnist", root)
    msg = str(err.value)
    assert "does not exist" in msg and str(root) in msg
    assert str(root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz") in msg
    assert "--data-dir" in msg and "ADMMCOMPRESS_DATA" in msg


def test_truncated_gz(tmp_path: Path) -> None:
    make_idx_root(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path, verify=False)
    assert str(path) in str(err.value)


def test_not_gzip_at_all(tmp_path: Path) -> None:
    make_idx_root(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    path.write_bytes(b"this is not gzip data")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz"):
        load_dataset("mnist", tmp_path, verify=False)


def test_truncated_uncompressed_idx(tmp_path: Path) -> None:
    make_idx_root(tmp_path, gz=False)
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated") as err:
        load_dataset("mnist", tmp_path, verify=False)
    assert str(path) in str(err.value)


def test_wrong_magic(tmp_path: Path) -> None:
    make_idx_root(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    # A labels file where an images file belongs: magic 0x801 instead of 0x803.
    write_file(raw / "train-images-idx3-ubyte", idx_bytes(np.zeros(12, np.uint8)), gz=True)
    with pytest.raises(DataError, match="magic") as err:
        load_dataset("mnist", tmp_path, verify=False)
    assert "train-images-idx3-ubyte.gz" in str(err.value)


def test_read_idx_rejects_garbage_header(tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(b"\x12\x34\x56\x78" + bytes(8))
    with pytest.raises(DataError, match="magic"):
        read_idx(path)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="too short"):
        read_idx(path)


def test_image_label_count_mismatch(tmp_path: Path) -> None:
    make_idx_root(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    write_file(raw / "train-labels-idx1-ubyte", idx_bytes(np.zeros(5, np.uint8)), gz=True)
    with pytest.raises(DataError, match="do not belong together"):
        load_dataset("mnist", tmp_path, verify=False)


def test_real_shipped_mnist() -> None:
    ds = load_dataset("mnist", REPO_DATA, verify=True)
    assert len(ds.train) == 60000 and len(ds.test) == 10000
    assert ds.train.x.shape == (60000, 1, 28, 28) and ds.test.x.shape == (10000, 1, 28, 28)
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    counts = torch.bincount(ds.train.y, minlength=10).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert abs(ds.train.x.mean().item()) < 0.01
    assert abs(ds.train.x.std().item() - 1.0) < 0.02


# --------------------------------------------------------------------------- CIFAR-10


def test_cifar_pickle_layout(tmp_path: Path) -> None:
    batches = make_cifar_batches(tmp_path)
    ds = load_dataset("cifar10", tmp_path, verify=False)
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert ds.train.x.shape == (50, 3, 32, 32) and ds.test.x.shape == (10, 3, 32, 32)
    assert ds.train.x.is_contiguous() and ds.train.x.dtype == torch.float32
    labels = [v for i in range(1, 6) for v in batches[f"data_batch_{i}"][b"labels"]]
    assert ds.train.y.tolist() == labels
    raw = torch.from_numpy(batches["test_batch"][b"data"]).view(-1, 3, 32, 32).float()
    torch.testing.assert_close(ds.test.x, (raw / 255 - CIFAR_MEAN) / CIFAR_STD)


def test_cifar_pickle_verify_mismatch(tmp_path: Path) -> None:
    make_cifar_batches(tmp_path)
    with pytest.raises(DataError, match="c99cafc152244af753f735de768cd75f") as err:
        load_dataset("cifar10", tmp_path, verify=True)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in str(err.value)


def test_cifar_corrupt_pickle(tmp_path: Path) -> None:
    make_cifar_batches(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path, verify=False)


def test_cifar_npz_layout_transposes_hwc(tmp_path: Path) -> None:
    path = make_cifar_npz(tmp_path)
    with np.load(path) as npz:
        x_train, y_test = npz["x_train"], npz["y_test"]
    ds = load_dataset("cifar10", tmp_path, verify=False)
    assert ds.train.x.shape == (8, 3, 32, 32) and ds.test.x.shape == (4, 3, 32, 32)
    assert ds.train.x.is_contiguous()
    chw = torch.from_numpy(x_train).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(ds.train.x, (chw / 255 - CIFAR_MEAN) / CIFAR_STD)
    assert ds.test.y.tolist() == y_test.tolist() and ds.test.y.dtype == torch.int64


def test_cifar_prefers_pickles_over_npz(tmp_path: Path) -> None:
    make_cifar_batches(tmp_path)
    make_cifar_npz(tmp_path)
    assert len(load_dataset("cifar10", tmp_path, verify=False).train) == 50


def test_cifar_npz_verify_and_bad_shape(tmp_path: Path) -> None:
    make_cifar_npz(tmp_path, x_test=np.zeros((4, 3, 32, 32), np.uint8))
    with pytest.raises(DataError, match="921814245548faf4fe7d8018c9761cea"):
        load_dataset("cifar10", tmp_path, verify=True)
    with pytest.raises(DataError, match="x_test"):
        load_dataset("cifar10", tmp_path, verify=False)


def test_cifar_missing_lists_both_layouts(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg
    assert str(tmp_path / "CIFAR10" / "cifar10_uint8.npz") in msg
    assert "--data-dir" in msg


# --------------------------------------------------------------------------- root + registry


def test_resolve_data_root_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ADMMCOMPRESS_DATA", raising=False)
    assert resolve_data_root() == Path("data")
    assert resolve_data_root(config_root="cfg") == Path("cfg")
    monkeypatch.setenv("ADMMCOMPRESS_DATA", "env")
    assert resolve_data_root(config_root="cfg") == Path("env")
    assert resolve_data_root("cli", "cfg") == Path("cli")
    assert isinstance(resolve_data_root(Path("cli")), Path)
    monkeypatch.setenv("ADMMCOMPRESS_DATA", "")
    assert resolve_data_root(config_root="cfg") == Path("cfg")


def test_unknown_dataset_lists_names(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("svhn", tmp_path)
    for name in ("cifar10", "fashion_mnist", "image_folder", "imagenet", "mnist"):
        assert name in str(err.value)
    assert isinstance(err.value, ValueError)


def test_available_and_register(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert available_datasets() == ["cifar10", "fashion_mnist", "image_folder", "imagenet", "mnist"]
    registry = data_registry._REGISTRY
    monkeypatch.setattr(registry, "_items", dict(registry._items))

    @register_dataset("toy")
    def _toy(root: Path, options: object) -> Dataset:
        s = toy_split(4)
        return Dataset("toy", s, s, 4, (1, 1, 1))

    assert "toy" in available_datasets()
    assert load_dataset("toy", tmp_path).name == "toy"


# --------------------------------------------------------------------------- batching


@pytest.mark.parametrize("drop_last", [False, True])
def test_iterate_batches_covers_each_sample_once(drop_last: bool) -> None:
    split = toy_split(23)
    gen = torch.Generator().manual_seed(0)
    batches = list(iterate_batches(split, 5, shuffle=True, generator=gen, drop_last=drop_last))
    assert len(batches) == num_batches(23, 5, drop_last)
    seen = torch.cat([y for _, y in batches])
    for x, y in batches:
        assert torch.equal(x.view(-1).long(), y)  # x and y stay paired
    if drop_last:
        assert len(seen) == 20 and len(set(seen.tolist())) == 20
    else:
        assert sorted(seen.tolist()) == list(range(23))
        assert seen.tolist() != list(range(23))  # actually shuffled


def test_iterate_batches_deterministic() -> None:
    split = toy_split(23)

    def order(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        return torch.cat(
            [y for _, y in iterate_batches(split, 4, shuffle=True, generator=gen)]
        ).tolist()

    assert order(3) == order(3)
    assert order(3) != order(4)


def test_iterate_batches_no_shuffle_keeps_order() -> None:
    batches = list(iterate_batches(toy_split(7), 3, shuffle=False))
    assert [y.tolist() for _, y in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    assert num_batches(7, 3) == 3 and num_batches(7, 3, drop_last=True) == 2
    with pytest.raises(DataError):
        num_batches(7, 0)


@pytest.mark.parametrize("shuffle", [True, False])
def test_one_channel_batches_come_with_nhwc_strides(shuffle: bool) -> None:
    """Single-channel batches get NHWC strides over the same bytes (oneDNN's faster
    kernels pick by strides); images with several channels are left as they are."""
    gen = torch.Generator().manual_seed(0)
    gray = Split(torch.arange(6 * 4 * 5.0).view(6, 1, 4, 5), torch.arange(6))
    for x, y in iterate_batches(gray, 4, shuffle=shuffle, generator=gen):
        assert x.stride() == (20, 1, 5, 1)
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(x, gray.x[y])
        assert torch.equal(x.flatten(1), gray.x[y].flatten(1))  # views still work
    rgb = Split(torch.zeros(6, 3, 4, 5), torch.arange(6))
    for x, _ in iterate_batches(rgb, 4, shuffle=shuffle, generator=gen):
        assert x.is_contiguous()


def test_subset_deterministic() -> None:
    split = toy_split(50)
    a, b, c = split.subset(10, seed=1), split.subset(10, seed=1), split.subset(10, seed=2)
    assert len(a) == 10 and torch.equal(a.y, b.y) and not torch.equal(a.y, c.y)
    assert len(set(a.y.tolist())) == 10
    assert torch.equal(a.x.view(-1).long(), a.y)
    assert split.subset(50, seed=0) is split and split.subset(99, seed=0) is split
