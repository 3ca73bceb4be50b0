"""Data sets by name: each registers its loader and the options it reads.

Adding a data set is one new module in this folder that calls ``register_dataset``; the
registry imports the folder's modules on its first lookup. A loader is called as
``loader(root, options)``, where ``options`` is an instance of the dataclass it registered
with (``FileOptions`` for files read into memory, ``FolderOptions`` for image folders), so
a config's data options are checked against the data set that reads them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..registry import Registry
from .split import DataError, Dataset


@dataclass(frozen=True)
class FileOptions:
    """Options of a data set read from its files into memory."""

    verify: bool = True  # check the files' md5 checksums
    download: bool = False  # let torchvision fetch missing files (needs a network)

    def recorded(self) -> dict[str, Any]:
        """What a model file must record for ``eval`` to read the data the way the run did."""
        return {}


@dataclass(frozen=True)
class DatasetEntry:
    """A registered data set: how to load it and what it accepts."""

    name: str
    load: Callable[[Path, Any], Dataset]
    options: type  # a dataclass; its fields are the options the loader reads
    augmentations: frozenset[str]  # the Augment fields its training batches honour

    def option_names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.options)]

    def make_options(self, **values: Any) -> Any:
        """The loader's options from ``values`` (None: the default), checked by name."""
        given = {k: v for k, v in values.items() if v is not None}
        unknown = sorted(set(given) - set(self.option_names()))
        if unknown:
            raise DataError(
                f"{', '.join(unknown)} do{'es' if len(unknown) == 1 else ''} not apply to "
                f"the data set {self.name!r}; it takes {', '.join(self.option_names())}"
            )
        try:
            return self.options(**given)
        except ValueError as e:
            raise DataError(str(e)) from None


_REGISTRY: Registry[DatasetEntry] = Registry(
    "dataset", error=DataError, discover="admmcompress.data"
)


def register_dataset(
    name: str, *, options: type = FileOptions, augmentations: tuple[str, ...] | None = None
) -> Callable[[Callable[[Path, Any], Dataset]], Callable[[Path, Any], Dataset]]:
    """Register ``loader(root, options) -> Dataset`` under ``name``.

    ``augmentations`` names the ``Augment`` fields the data set's training batches honour
    (default: all of them, as in-memory splits do).
    """
    allowed = frozenset(augmentations or ("shift", "hflip", "pad"))

    def wrap(loader: Callable[[Path, Any], Dataset]) -> Callable[[Path, Any], Dataset]:
        _REGISTRY.register(name)(DatasetEntry(name, loader, options, allowed))
        return loader

    return wrap


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return _REGISTRY.names()


def _normal_name(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def dataset_entry(name: str) -> DatasetEntry:
    """The registered data set ``name`` ("Fashion-MNIST" finds fashion_mnist)."""
    return _REGISTRY.get(_normal_name(name))


def load_dataset(name: str, root: str | os.PathLike, **options: Any) -> Dataset:
    """Load data set ``name`` from ``root`` (in memory, or streamed for image folders).

    ``options`` are the data set's own (``verify``, ``download`` for files; ``image_size``,
    ``eval_resize``, ``crop_scale``, ``workers`` for image folders).
    """
    entry = dataset_entry(name)
    return entry.load(Path(os.fspath(root)).expanduser(), entry.make_options(**options))
