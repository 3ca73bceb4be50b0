"""What a config names, built: the model, the data, and the plain values the training loop
takes (optimizer, schedule, augmentation, distillation)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import Augment, Dataset, dataset_entry, load_dataset, resolve_data_root
from ..models import ModelSourceError, create_model, recorded_args
from ..recipe.schema import (
    AugmentConfig,
    ConfigError,
    DataConfig,
    DistillConfig,
    ModelConfig,
    OptimizerConfig,
    RunConfig,
    SchedulerConfig,
)
from ..train.distill import Distillation
from ..train.optim import make_optimizer, make_scheduler


def _available_memory() -> int | None:
    """Bytes this machine could still give (MemAvailable), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def build_model(model: ModelConfig) -> nn.Module:
    """The config's model; arguments it does not take, or a model too large for this
    machine's memory, are config errors found before anything is allocated (the model is
    first built on the meta device, where tensors have shapes but no memory)."""
    probe_args = {k: v for k, v in model.args.items() if k not in ("weights", "pretrained")}
    try:
        with torch.device("meta"):
            probe = create_model(model.name, **probe_args)
        values = sum(t.numel() for t in (*probe.parameters(), *probe.buffers()))
        bytes_needed = sum(
            t.numel() * t.element_size() for t in (*probe.parameters(), *probe.buffers())
        )
        available = _available_memory()
        if available is not None and bytes_needed > available:
            raise ConfigError(
                f"model {model.name!r} with {probe_args} would hold {values:,} values "
                f"({bytes_needed / 2**30:.1f} GiB), more than the {available / 2**30:.1f} GiB "
                "of memory this machine has free; check model.args"
            )
        return create_model(model.name, **model.args)
    except ModelSourceError as e:
        raise ConfigError(f"model: {e}") from None
    except (RuntimeError, TypeError, ValueError, OverflowError) as e:
        if isinstance(e, ConfigError):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(
            f"model {model.name!r} cannot be built from {model.args}: {first[:300]}"
        ) from None


def recorded_model_args(model: ModelConfig) -> dict[str, Any]:
    """What a model file records of the config's model arguments (``recorded_args``)."""
    return recorded_args(model.name, model.args)


def load_run_data(
    cfg: RunConfig, data_dir: str | os.PathLike | None, device: torch.device
) -> Dataset:
    """The config's data set (and subsets), loaded once onto ``device``."""
    root = resolve_data_root(data_dir, cfg.data.root)
    d = cfg.data
    data = load_dataset(d.dataset, root, **d.loader_options())
    train, test = data.train, data.test
    for key, n, split in (
        ("train_subset", d.train_subset, train),
        ("test_subset", d.test_subset, test),
    ):
        if n is not None and n > len(split):
            raise ConfigError(
                f"data.{key} ({n:,}) is larger than the {len(split):,} images of {d.dataset}'s "
                f"{key.split('_')[0]} split; give at most {len(split):,}, or leave it out"
            )
    if d.train_subset:
        train = train.subset(d.train_subset, cfg.seed)
    if d.test_subset:
        test = test.subset(d.test_subset, cfg.seed)
    return replace(data, train=train.to(device), test=test.to(device))


def channels_last(data: Dataset) -> Dataset:
    """Images in NHWC, so that every batch reaches the convolutions in that layout."""
    return replace(data, train=data.train.as_channels_last(), test=data.test.as_channels_last())


def recorded_data_options(data: DataConfig) -> dict[str, Any]:
    """What a model file records about the data, so that ``eval`` reads it as the run did."""
    entry = dataset_entry(data.dataset)
    return entry.make_options(**data.loader_options()).recorded()


def augmentation(augment: AugmentConfig) -> Augment:
    return Augment(shift=augment.shift, hflip=augment.hflip, pad=augment.pad)


def distillation(distill: DistillConfig) -> Distillation:
    return Distillation(weight=distill.weight, temperature=distill.temperature)


def optimizer(params: Any, opt: OptimizerConfig) -> torch.optim.Optimizer:
    return make_optimizer(params, **opt.model_dump())


def scheduler(
    optim: torch.optim.Optimizer, sched: SchedulerConfig, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    return make_scheduler(optim, epochs, **sched.model_dump())


def check_fits(
    model: nn.Module,
    input_shape: tuple[int, ...],
    num_classes: int,
    what: str,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
) -> None:
    """One forward pass of two blank inputs (eval mode, no gradient): raise ``ConfigError``
    unless the model takes inputs of ``input_shape`` and scores at least ``num_classes``."""
    example = torch.zeros(2, *input_shape, device=device)
    if channels_last and example.dim() == 4:
        example = example.contiguous(memory_format=torch.channels_last)
    training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(example)
    except Exception as e:  # any error of the user's forward: report it, briefly
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"{what} do not fit: a batch of its inputs, shape {(2, *input_shape)}, fails in the "
            f"model's forward pass ({type(e).__name__}: {first[:300]})"
        ) from None
    finally:
        model.train(training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"{what} do not fit: the model should return class scores of shape (batch, "
            f"classes), it returns {got} for inputs of shape {(2, *input_shape)}"
        )
    if out.shape[1] < num_classes:
        raise ConfigError(
            f"{what} do not fit: the model scores {out.shape[1]} classes, the data set has "
            f"{num_classes}; set the model's num_classes (e.g. --set model.args.num_classes="
            f"{num_classes})"
        )
