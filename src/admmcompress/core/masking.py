"""Hold chosen weights at fixed values (zero for pruning) while any optimizer trains the rest."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .selection import compressible_parameters


class WeightFreezer:
    """Zero the gradient of frozen weights and restore their values after every optimizer step.

    Both halves are needed: the gradient hook keeps momentum and Adam moments clean, and the
    post-step restore defeats weight decay, momentum carried from before the freeze, and any
    optimizer that moves a weight with zero gradient. ``values=None`` freezes at zero.
    """

    def __init__(
        self,
        params: Mapping[str, nn.Parameter],
        frozen: Mapping[str, Tensor],
        values: Mapping[str, Tensor] | None = None,
    ) -> None:
        missing = sorted(set(frozen) - set(params))
        if missing:
            raise KeyError(f"masks name unknown parameters: {', '.join(missing)}")
        self._frozen: dict[str, tuple[nn.Parameter, Tensor, Tensor | None]] = {}
        for name, mask in frozen.items():
            p = params[name]
            if mask.shape != p.shape:
                raise ValueError(
                    f"mask for {name!r} has shape {tuple(mask.shape)}, weight has {tuple(p.shape)}"
                )
            value = None
            if values is not None and name in values:
                value = values[name].to(device=p.device, dtype=p.dtype)
            self._frozen[name] = (p, mask.to(device=p.device, dtype=torch.bool), value)
        self._handles: list[RemovableHandle] = []

    @torch.no_grad()
    def apply(self) -> None:
        """Put every frozen weight back now (call after each step in a loop without ``attach``)."""
        for p, frozen, value in self._frozen.values():
            if value is None:
                p.masked_fill_(frozen, 0.0)
            else:
                torch.where(frozen, value, p, out=p)

    def attach(self, optimizers: torch.optim.Optimizer | Iterable[torch.optim.Optimizer]) -> None:
        """Hook into the optimizer(s) and the gradients, and apply the freeze once."""
        if isinstance(optimizers, torch.optim.Optimizer):
            optimizers = [optimizers]
        for opt in optimizers:
            self._handles.append(opt.register_step_post_hook(lambda *_: self.apply()))
        for p, frozen, _ in self._frozen.values():
            self._handles.append(p.register_hook(lambda g, frozen=frozen: g.masked_fill(frozen, 0)))
        self.apply()

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class MaskEnforcer(WeightFreezer):
    """Keep pruned weights (``mask == False``) exactly zero under any torch optimizer."""

    def __init__(self, params: Mapping[str, nn.Parameter], masks: Mapping[str, Tensor]) -> None:
        super().__init__(params, {name: ~m.to(torch.bool) for name, m in masks.items()})

    @classmethod
    def for_layers(cls, model: nn.Module, masks: Mapping[str, Tensor]) -> MaskEnforcer:
        """Masks keyed as ``ADMM.harden`` returns them: a layer's name stands for its
        ``weight``, any other parameter is named in full."""
        params = compressible_parameters(model)
        missing = [name for name in masks if name not in params]
        if missing:
            raise KeyError(f"model has no compressible parameter named {missing[0]!r}")
        return cls({name: params[name] for name in masks}, masks)

    @property
    def masks(self) -> dict[str, Tensor]:
        return {name: ~frozen for name, (_, frozen, _) in self._frozen.items()}
