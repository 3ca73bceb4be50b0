"""Keep pruned weights exactly zero while any torch optimizer trains the rest."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle


class MaskEnforcer:
    """Zero the gradient of pruned weights and re-zero the weights after every optimizer step.

    Both halves are needed: the gradient hook keeps momentum and Adam moments clean, and the
    post-step re-masking defeats weight decay, momentum carried from before the mask existed,
    and any optimizer that moves a weight with zero gradient.
    """

    def __init__(self, params: Mapping[str, nn.Parameter], masks: Mapping[str, Tensor]) -> None:
        missing = sorted(set(masks) - set(params))
        if missing:
            raise KeyError(f"masks name unknown parameters: {', '.join(missing)}")
        self._pruned: dict[str, tuple[nn.Parameter, Tensor]] = {}
        for name, mask in masks.items():
            p = params[name]
            if mask.shape != p.shape:
                raise ValueError(
                    f"mask for {name!r} has shape {tuple(mask.shape)}, weight has {tuple(p.shape)}"
                )
            self._pruned[name] = (p, ~mask.to(device=p.device, dtype=torch.bool))
        self._handles: list[RemovableHandle] = []

    @classmethod
    def for_layers(cls, model: nn.Module, masks: Mapping[str, Tensor]) -> MaskEnforcer:
        """Masks keyed by layer name (as ``ADMM.harden`` returns them) apply to ``.weight``."""
        modules = dict(model.named_modules())
        params = {}
        for name in masks:
            if name not in modules:
                raise KeyError(f"model has no layer named {name!r}")
            params[name] = modules[name].weight
        return cls(params, masks)

    @property
    def masks(self) -> dict[str, Tensor]:
        return {name: ~pruned for name, (_, pruned) in self._pruned.items()}

    @torch.no_grad()
    def apply(self) -> None:
        """Zero every pruned weight now (call after each step in a loop without ``attach``)."""
        for p, pruned in self._pruned.values():
            p.masked_fill_(pruned, 0.0)

    def attach(self, optimizers: torch.optim.Optimizer | Iterable[torch.optim.Optimizer]) -> None:
        """Hook into the optimizer(s) and the gradients, and zero the pruned weights once."""
        if isinstance(optimizers, torch.optim.Optimizer):
            optimizers = [optimizers]
        for opt in optimizers:
            self._handles.append(opt.register_step_post_hook(lambda *_: self.apply()))
        for p, pruned in self._pruned.values():
            self._handles.append(p.register_hook(lambda g, pruned=pruned: g.masked_fill(pruned, 0)))
        self.apply()

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
