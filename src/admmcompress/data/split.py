"""What a data set is once loaded: splits held in memory, the batches they yield, and the
``BatchSource`` protocol that streamed splits (``image_folder``) follow too."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import Tensor

from .augment import Augment, augment_batch


class DataError(ValueError):
    """A data problem the user can fix: missing, corrupt or mismatched files."""


# --------------------------------------------------------------------------- root


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
        augment: Augment | None = None,
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
        augment: Augment | None = None,
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
