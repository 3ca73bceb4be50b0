"""A constraint applied to the transpose of a weight stored ``[in, out]``.

Hugging Face GPT-2's ``Conv1D`` keeps its weight as ``[in, out]``, the transpose of a
Linear's. Filters, input channels, N:M groups and columns are defined on ``[out, in]``, so
a set on such a weight works on its transpose and hands the result back transposed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from .base import Constraint, ConstraintError
from .quantization import quantizer_of


@dataclass(frozen=True, eq=False)
class Transposed(Constraint):
    """``inner`` on ``w.t()``; not registered under a kind: selection wraps a set in it for
    parameters it knows are stored transposed."""

    kind: ClassVar[str] = "transposed"
    holds_support: ClassVar[bool] = False  # a layout, not an earlier step's mask

    inner: Constraint

    @property
    def family(self) -> str:  # type: ignore[override]
        return self.inner.family

    def check_fits(self, w: Tensor) -> None:
        if w.dim() != 2:
            raise ConstraintError(f"a transposed weight must be 2-D, got shape {tuple(w.shape)}")
        quant = quantizer_of(self.inner)
        if quant is not None and getattr(quant, "per_channel", False):
            raise ConstraintError(
                f"{quant.kind}: per_channel quantization of a weight stored [in, out] (such as "
                "GPT-2's Conv1D) is not supported; use per_channel: false for it"
            )
        self.inner.check_fits(w.t())

    def project(self, w: Tensor) -> Tensor:
        return self.inner.project(w.t()).t().contiguous()

    def mask(self, w: Tensor) -> Tensor:
        return self.inner.mask(w.t()).t().contiguous()

    def violation(self, w: Tensor) -> str | None:
        return self.inner.violation(w.t())

    def budget(self, w: Tensor) -> int:
        return self.inner.budget(w.t())

    def describe(self) -> str:
        return self.inner.describe()
