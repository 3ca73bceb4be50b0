"""Exact Euclidean projections onto pruning sets, as pure tensor functions.

"Keep at most k weights" (or k groups: filters, channels, columns) is non-convex, but its
projection is exact and cheap: keep the k entries (groups) of largest magnitude (L2 norm)
and zero the rest. Ties are broken towards the lower flat index so that the result never
depends on the device, the dtype or the sort algorithm.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .base import Constraint, ConstraintError, check_int, check_ratio, register_constraint


def keep_count(total: int, keep: float) -> int:
    """Number of entries a keep ratio means: round(keep * total), at least 1."""
    keep = check_ratio("keep_count", "keep", keep)
    return max(1, min(total, math.floor(keep * total + 0.5)))


def topk_mask(scores: Tensor, k: int) -> Tensor:
    """Boolean mask of the k largest entries of a 1-D ``scores``, ties to the lower index.

    A stable descending sort gives the deterministic tie-break that ``torch.topk`` lacks.
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D, got shape {tuple(scores.shape)}")
    n = scores.numel()
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    mask = torch.zeros(n, dtype=torch.bool, device=scores.device)
    if k >= n:
        mask.fill_(True)
        return mask
    if k == 0:
        return mask
    order = torch.sort(scores, descending=True, stable=True).indices
    mask[order[:k]] = True
    return mask


def _group_view(w: Tensor, axis: str) -> Tensor:
    """Rows of the returned 2-D view are the groups that structured pruning keeps or drops."""
    if w.dim() < 2:
        raise ValueError(f"structured pruning needs a weight with >= 2 dims, got {tuple(w.shape)}")
    if axis == "filter":
        return w.reshape(w.shape[0], -1)
    if axis == "channel":
        return w.transpose(0, 1).reshape(w.shape[1], -1)
    if axis == "column":
        return w.reshape(w.shape[0], -1).t()
    raise ValueError(f"unknown group axis {axis!r}")


def group_count(w: Tensor, axis: str) -> int:
    return _group_view(w, axis).shape[0]


def _expand_group_mask(keep_groups: Tensor, w: Tensor, axis: str) -> Tensor:
    if axis == "filter":
        shape = (w.shape[0],) + (1,) * (w.dim() - 1)
        return keep_groups.view(shape).expand_as(w)
    if axis == "channel":
        shape = (1, w.shape[1]) + (1,) * (w.dim() - 2)
        return keep_groups.view(shape).expand_as(w)
    # column: a column of the [out, in*kh*kw] matrix is one (in, kh, kw) position
    return keep_groups.view(1, *w.shape[1:]).expand_as(w)


def irregular_mask(w: Tensor, k: int) -> Tensor:
    """Support of the projection onto {at most k non-zeros}: the k largest |w|."""
    return topk_mask(w.detach().abs().flatten(), k).view_as(w)


def group_mask(w: Tensor, k: int, axis: str) -> Tensor:
    """Support of the projection onto {at most k non-zero groups}: the k largest L2 norms.

    Norms are compared in float64 so that summing many small squares cannot reorder groups.
    """
    return _expand_group_mask(topk_mask(_group_norms(w, axis), k), w, axis).contiguous()


def _group_norms(w: Tensor, axis: str) -> Tensor:
    """Squared L2 norm of every group, in float64."""
    return _group_view(w.detach(), axis).double().pow(2).sum(dim=1)


def coupled_group_masks(ws: Sequence[Tensor], k: int, axis: str = "filter") -> list[Tensor]:
    """Supports of the projection of ``(w_1, ..., w_m)`` onto {the same k groups non-zero in
    every ``w_j``}: the k groups with the largest squared L2 norm summed over all tensors.

    Exact, because zeroing group ``g`` everywhere costs ``sum_j ||w_j[g]||^2`` and the costs
    of different groups add up. This is how coupled layers (the convolutions feeding one
    residual sum) lose the same filters, so that the channel disappears from all of them.
    """
    if not ws:
        raise ValueError("coupled pruning needs at least one tensor")
    counts = {group_count(w, axis) for w in ws}
    if len(counts) != 1:
        raise ValueError(f"coupled tensors must have the same number of {axis}s, got {counts}")
    norms = torch.stack([_group_norms(w, axis).to(ws[0].device) for w in ws]).sum(dim=0)
    keep = topk_mask(norms, k)
    return [_expand_group_mask(keep.to(w.device), w, axis).contiguous() for w in ws]


def project_irregular(w: Tensor, k: int) -> Tensor:
    return w * irregular_mask(w, k)


def project_filters(w: Tensor, k: int) -> Tensor:
    return w * group_mask(w, k, "filter")


def project_channels(w: Tensor, k: int) -> Tensor:
    return w * group_mask(w, k, "channel")


def project_columns(w: Tensor, k: int) -> Tensor:
    return w * group_mask(w, k, "column")


@dataclass(frozen=True)
class _PruneBase(Constraint):
    """Keep a ratio (``keep``) or an absolute number (``count``) of weights or groups."""

    keep: float | None = None
    count: int | None = None
    unit: ClassVar[str] = "weight"  # what keep and count count

    parameter_help: ClassVar[Mapping[str, str]] = {
        "keep": "the share kept, a ratio in (0, 1]",
        "count": "how many are kept, instead of keep",
    }

    def __post_init__(self) -> None:
        if (self.keep is None) == (self.count is None):
            raise ConstraintError(
                f"{self.kind}: give exactly one of keep (the share of {self.unit}s kept, in "
                f"(0, 1]) or count (how many {self.unit}s are kept)"
            )
        if self.keep is not None:
            object.__setattr__(self, "keep", check_ratio(self.kind, "keep", self.keep))
        if self.count is not None:
            object.__setattr__(self, "count", check_int(self.kind, "count", self.count))

    def _units(self, w: Tensor) -> int:
        raise NotImplementedError

    def check_fits(self, w: Tensor) -> None:
        total = self._units(w)
        if self.count is not None and self.count > total:
            raise ConstraintError(
                f"{self.kind}: count {self.count} is more than the {total:,} {self.unit}s of "
                f"a weight shaped {tuple(w.shape)}: it would prune nothing"
            )

    def k(self, w: Tensor) -> int:
        """How many units (weights or groups) of ``w`` this rule keeps."""
        total = self._units(w)
        if self.count is not None:
            return min(self.count, total)
        assert self.keep is not None
        return keep_count(total, self.keep)

    def project(self, w: Tensor) -> Tensor:
        return w * self.mask(w)

    def describe(self) -> str:
        amount = f"keep {self.keep:g}" if self.keep is not None else f"count {self.count}"
        return f"{self.kind} ({amount})"


@register_constraint("irregular")
@dataclass(frozen=True)
class Irregular(_PruneBase):
    """At most k non-zero weights anywhere in the tensor."""

    def _units(self, w: Tensor) -> int:
        return w.numel()

    def mask(self, w: Tensor) -> Tensor:
        return irregular_mask(w, self.k(w))

    def budget(self, w: Tensor) -> int:
        return self.k(w)

    def violation(self, w: Tensor) -> str | None:
        nz = int(torch.count_nonzero(w))
        k = self.k(w)
        return None if nz <= k else f"{nz} non-zero weights, at most {k} allowed"


@dataclass(frozen=True)
class _GroupPrune(_PruneBase):
    axis: ClassVar[str] = "filter"

    def check_fits(self, w: Tensor) -> None:
        if w.dim() < 2:
            raise ConstraintError(
                f"{self.kind} pruning needs a weight with two or more dimensions, got shape "
                f"{tuple(w.shape)}"
            )
        super().check_fits(w)

    def _units(self, w: Tensor) -> int:
        return group_count(w, self.axis)

    def mask(self, w: Tensor) -> Tensor:
        return group_mask(w, self.k(w), self.axis)

    def budget(self, w: Tensor) -> int:
        groups = self._units(w)
        return self.k(w) * (w.numel() // groups)

    def violation(self, w: Tensor) -> str | None:
        alive = int((_group_view(w.detach(), self.axis) != 0).any(dim=1).sum())
        k = self.k(w)
        return None if alive <= k else f"{alive} non-zero {self.axis}s, at most {k} allowed"


@register_constraint("filter")
@dataclass(frozen=True)
class Filter(_GroupPrune):
    """At most k non-zero output filters (rows of the [out, in*kh*kw] matrix)."""

    axis: ClassVar[str] = "filter"
    unit: ClassVar[str] = "filter"


@register_constraint("channel")
@dataclass(frozen=True)
class Channel(_GroupPrune):
    """At most k non-zero input channels (for a Linear layer: input features)."""

    axis: ClassVar[str] = "channel"
    unit: ClassVar[str] = "channel"


@register_constraint("column")
@dataclass(frozen=True)
class Column(_GroupPrune):
    """At most k non-zero columns of the [out, in*kh*kw] matrix (one (in, kh, kw) each)."""

    axis: ClassVar[str] = "column"
    unit: ClassVar[str] = "column"
