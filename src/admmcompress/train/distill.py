"""Knowledge distillation: learn from a teacher's softened outputs as well as the labels.

A heavily pruned network underfits; the dense model's full output distribution carries more
signal per image than the label alone (Hinton et al. 2015).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Distillation:
    """``weight``: share of the distillation term; ``temperature``: of both softmaxes."""

    weight: float = 0.5
    temperature: float = 4.0

    def objective(self, loss: Tensor, logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """``(1 - w) * loss + w * T^2 * KL(teacher || student)`` at temperature ``T``."""
        t = self.temperature
        target = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
        kd = F.kl_div(
            F.log_softmax(logits.float() / t, dim=1),
            target,
            reduction="batchmean",
            log_target=True,
        )
        w = self.weight
        return (1 - w) * loss + w * t**2 * kd
