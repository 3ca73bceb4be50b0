"""A constraint restricted to the weights an earlier step kept: how masks only shrink.

In a progressive run, step k+1 must not revive a weight that step k pruned. Its set is
therefore ``S ∩ {W : W = 0 outside M}``, with ``M`` the earlier mask. Every set here keeps
or drops entries by magnitude, so the exact projection onto the intersection is the
projection of ``W ⊙ M`` restricted to ``M``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .base import Constraint
from .pruning import Channel, Filter
from .quantization import PrunedQuantized, Quantizer, project_pruned_quantized


@dataclass(frozen=True, eq=False)
class FixedSupport(Constraint):
    """``inner``, with every weight outside the bool ``support`` held at zero.

    Not registered under a kind: the pipeline builds it from a layer's earlier mask, since
    a support belongs to one layer while other constraints describe any layer.
    """

    kind: ClassVar[str] = "fixed_support"
    family: ClassVar[str] = "prune"
    holds_support: ClassVar[bool] = True

    inner: Constraint
    support: Tensor

    def __post_init__(self) -> None:
        if self.support.dtype != torch.bool:
            raise ValueError(f"support must be a bool tensor, got {self.support.dtype}")

    def _support(self, w: Tensor) -> Tensor:
        if self.support.shape != w.shape:
            raise ValueError(
                f"support shape {tuple(self.support.shape)} != weight {tuple(w.shape)}"
            )
        return self.support.to(w.device)

    @property
    def quantizes(self) -> bool:
        return isinstance(self.inner, Quantizer | PrunedQuantized)

    def mask(self, w: Tensor) -> Tensor:
        s = self._support(w)
        if isinstance(self.inner, Quantizer):  # quantize only: the earlier mask stays
            return s.clone()
        return self.inner.mask(w * s) & s

    def project(self, w: Tensor) -> Tensor:
        m = self.mask(w)
        if isinstance(self.inner, Quantizer):
            return project_pruned_quantized(w, m, self.inner)
        if isinstance(self.inner, PrunedQuantized):
            return project_pruned_quantized(w, m, self.inner.quant)
        return w * m

    def budget(self, w: Tensor) -> int:
        return min(self.inner.budget(w), int(self._support(w).sum()))

    def violation(self, w: Tensor) -> str | None:
        s = self._support(w)
        revived = int(torch.count_nonzero(w[~s]))
        if revived:
            return f"{revived} weights pruned by an earlier step are non-zero"
        if isinstance(self.inner, Quantizer):
            return self.inner.grid_violation(w, mask=s)
        return self.inner.violation(w)

    def describe(self) -> str:
        if isinstance(self.inner, Quantizer):
            return f"earlier mask + {self.inner.describe()}"
        return self.inner.describe()


@dataclass(frozen=True)
class StructuredRule:
    """What coupling needs of a constraint that prunes whole filters or input channels."""

    rule: Filter | Channel  # the pruning set: its axis and how many groups it keeps
    support: Tensor | None  # an earlier step's mask the result must stay inside, if any
    quant: Constraint | None  # the quantizer of the kept weights, if the rule also quantizes

    def finish(self, v: Tensor, mask: Tensor) -> Tensor:
        """The projection once the kept groups are chosen: zero elsewhere, kept ones
        quantized (scale fitted on them) when the rule quantizes."""
        if self.quant is None:
            return v * mask
        return project_pruned_quantized(v, mask, self.quant)


def structured_rule(c: Constraint) -> StructuredRule | None:
    """The structured part of ``c`` if it prunes whole filters or input channels (alone,
    inside an earlier step's support, and/or with quantization), else None. Such
    constraints can be coupled across layers (``ADMM``)."""
    support = None
    if isinstance(c, FixedSupport):
        c, support = c.inner, c.support
    quant = None
    if isinstance(c, PrunedQuantized):
        c, quant = c.prune, c.quant
    if isinstance(c, Filter | Channel):
        return StructuredRule(c, support, quant)
    return None
