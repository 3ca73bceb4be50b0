"""Image data sets too large for memory (ImageNet, a user's own folders), streamed from disk.

Layout: ``ROOT/train/<class>/<image>`` and ``ROOT/val/<class>/<image>`` (``test/`` is
accepted for the second), the layout torchvision's ``ImageFolder`` reads; classes are the
folder names in sorted order and must be the same in both splits.

Images are decoded in DataLoader worker processes and handed over as uint8 in pinned
memory (scaled and normalised on the device), so a GPU is not kept waiting. Training
batches are random resized crops (the standard ImageNet augmentation; flipped too with
``augment.hflip``), evaluation batches a resize of the short side and a centre crop.

Reproducible like the in-memory data sets: the order of an epoch and one seed per image
come from the run's data generator, and each image's augmentation is drawn from its own
seed, so an epoch is the same whatever the number of workers and a resumed run sees the
same batches. Under torchrun every process draws the same global batch order and loads only
its own slice of each batch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms import v2

from .augment import Augment
from .registry import register_dataset
from .split import DataError, Dataset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_DIRS = ("val", "test")


@dataclass(frozen=True)
class FolderOptions:
    """How images become tensors; see ``DataConfig`` for the user-facing fields."""

    image_size: int = 224
    eval_resize: int | None = None  # default: image_size / 0.875 (256 for 224)
    crop_scale: tuple[float, float] = (0.08, 1.0)
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))

    def __post_init__(self) -> None:
        if self.resize < self.image_size:
            raise DataError(
                f"data.eval_resize ({self.resize}) must be at least data.image_size "
                f"({self.image_size})"
            )
        object.__setattr__(self, "crop_scale", tuple(self.crop_scale))

    @property
    def resize(self) -> int:
        return self.eval_resize or round(self.image_size / 0.875)

    def recorded(self) -> dict[str, int]:
        """What a model file records so that ``eval`` crops as the run did."""
        return {"eval_resize": self.resize}


class _Images(torch.utils.data.Dataset):
    """Decodes and transforms one image per ``(index, seed)``; lives in worker processes."""

    def __init__(
        self, samples: list[tuple[str, int]], train: bool, opts: FolderOptions, hflip: bool
    ) -> None:

        self.samples = samples
        if train:
            steps: list[Callable] = [
                v2.RandomResizedCrop(opts.image_size, scale=opts.crop_scale, antialias=True)
            ]
            if hflip:
                steps.append(v2.RandomHorizontalFlip())
        else:
            steps = [v2.Resize(opts.resize, antialias=True), v2.CenterCrop(opts.image_size)]
        # uint8 out of the workers (a quarter of float32's shared and pinned memory and bus
        # traffic); FolderSplit scales and normalises on the device
        self.transform = v2.Compose([*steps, v2.ToImage()])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: tuple[int, int]) -> tuple[Tensor, int]:

        index, seed = item
        path, label = self.samples[index]
        try:
            with warnings.catch_warnings():  # a near-bomb is refused, not just warned about
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as f:
                    image = f.convert("RGB")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DataError(
                f"refused image {path}: {e} (a decompression bomb, or an image far larger "
                "than any training image)"
            ) from None
        except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for bad files
            raise DataError(f"cannot decode image {path}: {e}") from None
        # the transforms draw from torch's global generator: give them this image's seed
        # without disturbing the caller's (workers=0 runs them in the training process)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # the CPU generator only, not CUDA's
            return self.transform(image), label


@dataclass(frozen=True, eq=False)
class FolderSplit:
    """One split of an image folder: file paths and labels, decoded batch by batch."""

    samples: tuple[tuple[str, int], ...]
    options: FolderOptions
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    channels_last: bool = False

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, n: int, seed: int) -> FolderSplit:
        """``n`` images drawn without replacement, reproducibly from ``seed``."""
        if n < 1:
            raise DataError(f"Subset size must be at least 1, got {n}.")
        if n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return replace(self, samples=tuple(self.samples[i] for i in idx.tolist()))

    def to(self, device: torch.device | str) -> FolderSplit:
        """The same split, its batches delivered on ``device``."""
        return replace(self, device=torch.device(device))

    def as_channels_last(self) -> FolderSplit:
        return replace(self, channels_last=True)

    def train_batches(
        self,
        batch_size: int,
        generator: torch.Generator,
        rows: Callable[[int], slice] | None = None,
        augment: Augment | None = None,
    ) -> Iterator[tuple[Tensor, Tensor, int]]:
        """Shuffled ``(x, y, global batch size)``, each image randomly cropped (and flipped
        with ``augment.hflip``); ``rows(n)``: this rank's slice of a global batch of ``n``."""
        n = len(self)
        order = torch.randperm(n, generator=generator).tolist()
        seeds = torch.randint(0, 2**62, (n,), generator=generator).tolist()
        pairs = list(zip(order, seeds, strict=True))
        batches = []
        for start in range(0, n, batch_size):
            chunk = pairs[start : start + batch_size]
            batches.append((chunk[rows(len(chunk))] if rows else chunk, len(chunk)))
        yield from self._load(batches, train=True, hflip=bool(augment and augment.hflip))

    def eval_batches(
        self, batch_size: int, rows: slice | None = None
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Every image once, in order; ``rows``: only this slice of the split."""
        index = list(range(len(self)))[rows or slice(None)]
        batches = [
            ([(i, 0) for i in index[s : s + batch_size]], 0)
            for s in range(0, len(index), batch_size)
        ]
        for x, y, _ in self._load(batches, train=False, hflip=False):
            yield x, y

    def _load(
        self, batches: list[tuple[list[tuple[int, int]], int]], train: bool, hflip: bool
    ) -> Iterator[tuple[Tensor, Tensor, int]]:

        workers = self.options.workers
        loader = DataLoader(
            _Images(list(self.samples), train, self.options, hflip),
            batch_sampler=[items for items, _ in batches if items],
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=2 if workers else None,
        )
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1) * 255
        it = iter(loader)
        for items, global_n in batches:
            if not items:  # this rank's slice of a small batch is empty
                s = self.options.image_size
                x = torch.empty(0, 3, s, s, device=self.device)
                yield x, torch.empty(0, dtype=torch.int64, device=self.device), global_n
                continue
            try:
                x, y = next(it)
            except DataError as e:  # from a worker: torch adds the worker's traceback to it
                raise DataError(_worker_message(e)) from None
            x = x.to(self.device, non_blocking=True)
            x = ((x.float() - mean) / std).contiguous(memory_format=fmt)
            yield x, y.to(self.device, non_blocking=True), global_n


def _worker_message(e: Exception) -> str:
    """The message of an error a DataLoader worker raised, without its traceback."""
    text = str(e).strip()
    if "Original Traceback" not in text:
        return text
    last = text.splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last


def _scan(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:

    try:
        classes, index = find_classes(str(folder))
        samples = make_dataset(str(folder), index, extensions=IMG_EXTENSIONS)
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"cannot read image folder {folder}: {e}") from None
    return classes, samples


def load_image_folder(name: str, root: str | os.PathLike, options: FolderOptions) -> Dataset:
    """``ROOT/train`` and ``ROOT/val`` (or ``ROOT/test``) as streamed splits."""
    root = Path(root).expanduser()
    train_dir = root / "train"
    eval_dir = next((root / d for d in EVAL_DIRS if (root / d).is_dir()), None)
    if not train_dir.is_dir() or eval_dir is None:
        raise DataError(
            f"{name}: expected an image folder at {root} with train/<class>/<images> and "
            f"val/<class>/<images> (or test/); found "
            f"{sorted(p.name for p in root.iterdir()) if root.is_dir() else 'no such folder'}. "
            "Point data.root (or --data-dir) at the folder that holds train/ and val/."
        )
    classes, train = _scan(train_dir)
    eval_classes, test = _scan(eval_dir)
    if eval_classes != classes:
        missing = sorted(set(classes) ^ set(eval_classes))[:5]
        raise DataError(
            f"{name}: {train_dir} and {eval_dir} hold different classes "
            f"({len(classes)} and {len(eval_classes)}; e.g. {missing}); they must be the same"
        )
    size = options.image_size
    return Dataset(
        name,
        FolderSplit(tuple(train), options),  # type: ignore[arg-type]
        FolderSplit(tuple(test), options),  # type: ignore[arg-type]
        len(classes),
        (3, size, size),
    )


@register_dataset("imagenet", options=FolderOptions, augmentations=("hflip",))
def _load_imagenet(root: Path, options: FolderOptions) -> Dataset:
    """ImageNet in torchvision's ImageFolder layout (train/ and val/)."""
    return load_image_folder("imagenet", root, options)


@register_dataset("image_folder", options=FolderOptions, augmentations=("hflip",))
def _load_folder(root: Path, options: FolderOptions) -> Dataset:
    """Your own images: ``root/train/<class>/*`` and ``root/val/<class>/*``."""
    return load_image_folder("image_folder", root, options)
