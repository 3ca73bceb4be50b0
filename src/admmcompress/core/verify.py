"""Refuse to call a model compressed unless every layer satisfies its constraint exactly."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..constraints import Constraint
from .selection import compressible_parameters


class ConstraintViolationError(RuntimeError):
    """A layer is outside its constraint set: the result must not be saved as compressed."""


def revived_weights(w: Tensor, mask: Tensor) -> str | None:
    """Why ``w`` breaks its pruning ``mask`` (a non-zero where the mask is False), or None."""
    revived = int(torch.count_nonzero(w[~mask.to(device=w.device, dtype=torch.bool)]))
    return f"{revived} weights outside the mask are non-zero" if revived else None


def model_violations(
    model: nn.Module, constraints: Mapping[str, Constraint], masks: Mapping[str, Tensor]
) -> list[str]:
    """Every problem found, one line each; an empty list means the model is valid."""
    params = compressible_parameters(model)
    problems = []
    for name, constraint in constraints.items():
        w = params[name].detach()
        if not torch.isfinite(w).all():
            problems.append(f"{name}: weight holds NaN or infinite values")
            continue
        why = constraint.violation(w)
        if why:
            problems.append(f"{name}: {constraint.describe()} violated: {why}")
        mask = masks.get(name)
        if mask is None:
            problems.append(f"{name}: no mask was recorded for this pruned layer")
        elif mask.shape != w.shape:
            problems.append(f"{name}: mask shape {tuple(mask.shape)} != weight {tuple(w.shape)}")
        elif (why := revived_weights(w, mask)) is not None:
            problems.append(f"{name}: {why}")
    for name, mask in masks.items():  # masked layers under no rule (an init model's pruning)
        if name not in constraints and (why := revived_weights(params[name], mask)):
            problems.append(f"{name}: {why}")
    return problems


def verify_model(
    model: nn.Module, constraints: Mapping[str, Constraint], masks: Mapping[str, Tensor]
) -> None:
    problems = model_violations(model, constraints, masks)
    if problems:
        raise ConstraintViolationError(
            "the compressed model fails verification and was not saved:\n  - "
            + "\n  - ".join(problems)
        )
