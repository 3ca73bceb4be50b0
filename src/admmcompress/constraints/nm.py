"""N:M semi-structured sparsity: at most ``n`` non-zeros in every ``m`` consecutive weights.

The groups run along the input dimension, the layout sparse tensor cores use (NVIDIA's 2:4):
for a Linear ``[out, in]`` weight, ``m`` consecutive inputs of one output; for a convolution
``[out, in, kh, kw]``, ``m`` consecutive input channels at one kernel position of one filter.
The input dimension must be a multiple of ``m``.

The set is a product of independent per-group sets, so the projection is exact: in each
group, keep the ``n`` entries of largest magnitude and zero the rest. Ties go to the lower
input index, so the result never depends on the device or the sort algorithm.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .base import Constraint, ConstraintError, check_int, register_constraint


def nm_groups(w: Tensor, m: int) -> Tensor:
    """``[groups, m]`` view of ``w``'s entries, each row ``m`` consecutive inputs of one
    output (and one kernel position), in the order of ``w.movedim(1, -1)``."""
    if w.dim() < 2 or w.shape[1] % m:
        raise ConstraintError(
            f"nm: groups of {m} need a weight with two or more dimensions whose input "
            f"dimension (dim 1) is a multiple of {m}, got shape {tuple(w.shape)}"
        )
    return w.movedim(1, -1).reshape(-1, m)


def nm_mask(w: Tensor, n: int, m: int) -> Tensor:
    """Support of the projection: the ``n`` largest ``|w|`` of every group of ``m``."""
    groups = nm_groups(w.detach().abs(), m)
    order = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, :n]
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, order, True)
    moved = w.movedim(1, -1).shape
    return keep.reshape(moved).movedim(-1, 1).contiguous()


def project_nm(w: Tensor, n: int, m: int) -> Tensor:
    return w * nm_mask(w, n, m)


@register_constraint("nm")
@dataclass(frozen=True)
class NM(Constraint):
    """At most ``n`` non-zero weights in every group of ``m`` consecutive inputs."""

    n: int
    m: int

    parameter_help: ClassVar[Mapping[str, str]] = {
        "n": "weights kept in every group, 1..m-1",
        "m": "group size along the input dimension, e.g. 4 for 2:4",
    }

    def __post_init__(self) -> None:
        m = check_int(self.kind, "m", self.m, low=2)
        hint = f" (n = m = {m} would keep every weight)" if self.n == m else ""
        n = check_int(self.kind, "n", self.n, low=1, high=m - 1, hint=hint)
        object.__setattr__(self, "m", m)
        object.__setattr__(self, "n", n)

    def check_fits(self, w: Tensor) -> None:
        nm_groups(w, self.m)

    def mask(self, w: Tensor) -> Tensor:
        return nm_mask(w, self.n, self.m)

    def project(self, w: Tensor) -> Tensor:
        return w * self.mask(w)

    def budget(self, w: Tensor) -> int:
        return self.n * (w.numel() // self.m)

    def violation(self, w: Tensor) -> str | None:
        counts = (nm_groups(w.detach(), self.m) != 0).sum(dim=1)
        over = int((counts > self.n).sum())
        if not over:
            return None
        return (
            f"{over} of {counts.numel()} groups of {self.m} hold more than {self.n} non-zeros "
            f"(up to {int(counts.max())})"
        )

    def describe(self) -> str:
        return f"nm ({self.n}:{self.m})"
