"""Data sets by name (``load_dataset``), their splits and batches, and augmentation.

One module per family of data sets (``mnist``, ``cifar``, ``image_folder``); each registers
its loaders, and the registry imports them on its first lookup.
"""

from .augment import Augment, augment_batch
from .files import DEFAULT_DATA_DIR, ENV_VAR, resolve_data_root
from .registry import (
    DatasetEntry,
    FileOptions,
    available_datasets,
    dataset_entry,
    load_dataset,
    register_dataset,
)
from .split import BatchSource, DataError, Dataset, Split, iterate_batches, num_batches

__all__ = [
    "DEFAULT_DATA_DIR",
    "ENV_VAR",
    "Augment",
    "BatchSource",
    "DataError",
    "Dataset",
    "DatasetEntry",
    "FileOptions",
    "Split",
    "augment_batch",
    "available_datasets",
    "dataset_entry",
    "iterate_batches",
    "load_dataset",
    "num_batches",
    "register_dataset",
    "resolve_data_root",
]
