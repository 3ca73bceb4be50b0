"""What a config names, built: the model, the data, and the plain values the training loop
takes (optimizer, schedule, augmentation, distillation)."""

from __future__ import annotations

import os
from dataclasses import replace
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


def build_model(model: ModelConfig) -> nn.Module:
    """The config's model; arguments it does not take are a config error."""
    try:
        return create_model(model.name, **model.args)
    except ModelSourceError as e:
        raise ConfigError(f"model: {e}") from None


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
