"""Image folders streamed from disk: layout checks, reproducible batches, rank slices, and
the ResNet-50 / ImageNet recipe run for a few batches on a small fake folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from admmcompress.cli import main
from admmcompress.data import DataError, load_dataset
from admmcompress.data.image_folder import FolderOptions, load_image_folder
from admmcompress.recipe.schema import AugmentConfig, ConfigError, validate_config
from helpers import REPO

CLASSES = ("n01", "n02", "n03")


def _write_folder(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for c, name in enumerate(CLASSES):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = int(rng.integers(20, 48)), int(rng.integers(20, 48))
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                pixels[..., c] = 255  # a class you can see: one channel saturated
                ext = ".png" if i % 2 else ".JPEG"
                Image.fromarray(pixels).save(d / f"img{i}{ext}")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_folder(tmp_path_factory.mktemp("imgs"), {"train": 5, "val": 2})


OPTS = FolderOptions(image_size=16, eval_resize=20, workers=0)
FLIP = AugmentConfig(hflip=True)


def test_layout_classes_and_shapes(folder: Path) -> None:
    data = load_image_folder("imagenet", folder, OPTS)
    assert (data.num_classes, data.input_shape) == (3, (3, 16, 16))
    assert (len(data.train), len(data.test)) == (15, 6)
    x, y = next(data.test.eval_batches(4))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
    assert y.tolist() == [0, 0, 1, 1]  # in folder order
    # registered by name too, with the default options (admmcompress eval)
    assert load_dataset("image_folder", folder).input_shape == (3, 224, 224)


def _epoch(split, seed: int, rows=None) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    gen = torch.Generator().manual_seed(seed)
    return list(split.train_batches(4, gen, rows, FLIP))


def test_batches_repeat_with_the_generator_whatever_the_workers(folder: Path) -> None:
    train = load_image_folder("imagenet", folder, OPTS).train
    a, b = _epoch(train, 7), _epoch(train, 7)
    two = load_image_folder("imagenet", folder, FolderOptions(16, 20, workers=2)).train
    c = _epoch(two, 7)
    assert [n for *_, n in a] == [4, 4, 4, 3]
    for (xa, ya, _), (xb, yb, _), (xc, yc, _) in zip(a, b, c, strict=True):
        assert torch.equal(xa, xb) and torch.equal(xa, xc)
        assert torch.equal(ya, yb) and torch.equal(ya, yc)
    other = _epoch(train, 8)
    assert not all(torch.equal(x, o) for (x, *_), (o, *_) in zip(a, other, strict=True))


def test_rank_slices_make_up_the_global_batch(folder: Path) -> None:
    train = load_image_folder("imagenet", folder, OPTS).train
    full = _epoch(train, 3)
    halves = [_epoch(train, 3, lambda n, r=r: slice(n * r // 2, n * (r + 1) // 2)) for r in (0, 1)]
    for (x, y, n), (x0, y0, n0), (x1, y1, n1) in zip(full, *halves, strict=True):
        assert n == n0 == n1
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    # more ranks than images in a batch: some slices are empty, every rank still gets through
    for r in range(5):
        got = _epoch(train, 3, lambda n, r=r: slice(n * r // 5, n * (r + 1) // 5))
        assert [n for *_, n in got] == [n for *_, n in full]
    test = load_image_folder("imagenet", folder, OPTS).test
    whole = torch.cat([x for x, _ in test.eval_batches(4)])
    parts = [torch.cat([x for x, _ in test.eval_batches(4, s)]) for s in (slice(0, 3), slice(3, 6))]
    assert torch.equal(torch.cat(parts), whole)


def test_subset_and_channels_last(folder: Path) -> None:
    train = load_image_folder("imagenet", folder, OPTS).train
    sub = train.subset(5, seed=1)
    assert len(sub) == 5 and sub.samples == train.subset(5, seed=1).samples
    x, *_ = next(train.as_channels_last().train_batches(4, torch.Generator()))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_layout_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="train/<class>"):
        load_image_folder("imagenet", tmp_path, OPTS)
    root = _write_folder(tmp_path / "a", {"train": 1, "val": 1})
    (root / "val" / "n03" / "img0.JPEG").rename(root / "val" / "n03.JPEG")
    (root / "val" / "n03").rmdir()
    with pytest.raises(DataError, match="different classes"):
        load_image_folder("imagenet", root, OPTS)
    with pytest.raises(DataError, match="eval_resize"):
        load_image_folder("imagenet", folder_ok(tmp_path), FolderOptions(32, 16))


def folder_ok(tmp_path: Path) -> Path:
    return _write_folder(tmp_path / "ok", {"train": 1, "val": 1})


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    root = _write_folder(tmp_path, {"train": 1, "val": 1})
    bad = root / "val" / "n02" / "img0.JPEG"
    bad.write_bytes(b"\xff\xd8not a jpeg")
    with pytest.raises(DataError, match=r"img0\.JPEG"):
        list(load_image_folder("imagenet", root, OPTS).test.eval_batches(8))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"dataset": "imagenet", "augment": {"shift": 2}}, "augment.shift"),
        (
            {"dataset": "mnist", "image_size": 64},
            "image_size only applies to image_folder, imagenet, not to mnist",
        ),
        ({"dataset": "cifar10", "augment": {"crop_scale": [0.1, 1]}}, "crop_scale only applies"),
        ({"dataset": "imagenet", "augment": {"crop_scale": [0.5, 0.2]}}, "crop_scale"),
        ({"dataset": "imagenet", "download": True}, "download only applies to cifar10"),
        ({"dataset": "imagenet", "augment": {"pad": "black"}}, "crops at random already"),
        ({"dataset": "imagenet", "image_size": 288, "eval_resize": 256}, "must be at least"),
    ],
)
def test_config_refuses_options_that_do_not_fit(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config({"model": "resnet18", "data": data})


def test_resnet50_recipe_runs_on_a_fake_image_folder(tmp_path: Path) -> None:
    """The shipped config, shrunk to a few batches: it validates, loads, prunes exactly."""
    root = _write_folder(tmp_path / "imagenet", {"train": 4, "val": 2})
    cfg = yaml.safe_load((REPO / "configs/resnet50_imagenet_prune.yaml").read_text())
    validate_config(cfg)  # as shipped
    cfg["init"] = None  # no trained weights here
    cfg["data"].update(
        root=str(root), batch_size=4, eval_batch_size=3, workers=1, image_size=32, eval_resize=36
    )
    cfg["runtime"] = {"progress": False, "channels_last": True}
    for phase in ("admm", "retrain"):
        cfg[phase].update(epochs=1)
    cfg["admm"]["period"] = 1
    path = tmp_path / "r50.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    layers = {r["name"]: r for r in report["layers"]}
    stage = [r for n, r in layers.items() if n.startswith("layer")]
    assert len(stage) == 52
    for r in stage:
        assert (
            r["nonzero"] == round(r["params"] * 0.115)
            or abs(r["nonzero"] - r["params"] * 0.115) <= 1
        )
    assert layers["fc"]["nonzero"] == round(2048 * 1000 * 0.2)
    # eval crops as the run did (image size and resize from the model file's metadata)
    assert main(["eval", str(tmp_path / "run"), "--data-dir", str(root)]) == 0
