"""Retraining that ends with every quantized layer exactly on its grid.

Two well-known ways, both here so they can be compared on the same budget:

- ``STEQuantizer`` (straight-through estimator, as in BinaryConnect): the optimizer updates
  full-precision shadow weights; the model always computes with their quantized values, and
  the gradient with respect to the quantized weights is applied to the shadows unchanged.
  The scale is re-fitted once per epoch and held fixed in between, so a step costs one
  elementwise rounding, not a sort.
- ``SnapFreeze`` (ADMM-NN): in rounds, the weights closest to their grid point are snapped to
  it and frozen while the rest keep training at full precision, until all are snapped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..constraints import Constraint, quantizer_of
from ..core.masking import WeightFreezer
from ..core.selection import compressible_parameters


def quantize_at_scale(w: Tensor, scale: Tensor, quant: Any, mask: Tensor | None = None) -> Tensor:
    """Round ``w`` to ``quant``'s grid for a fixed ``scale`` (one per tensor or per row)."""
    a = scale.to(w.dtype)
    if a.dim() > 0:
        a = a.view(-1, *([1] * (w.dim() - 1)))
    kind = quant.kind
    if kind == "binary":
        q = torch.where(w >= 0, a, -a).expand_as(w)
    elif kind == "ternary":
        q = torch.where(w.abs() > a / 2, torch.sign(w) * a, torch.zeros_like(w))
    else:
        levels = 2 ** (quant.bits - 1) - 1
        safe = torch.where(a > 0, a, torch.ones_like(a))
        q = torch.where(a > 0, torch.clamp(torch.round(w / safe), -levels, levels) * a, 0.0)
    q = q.to(w.dtype).expand_as(w).clone()
    if mask is not None:
        q.masked_fill_(~mask, 0.0)
    return q


def quantized_layers(
    model: nn.Module, constraints: Mapping[str, Constraint], masks: Mapping[str, Tensor]
) -> Iterator[tuple[str, nn.Parameter, Any, Tensor | None]]:
    """(name, parameter, quantizer, mask or None) for every parameter whose set quantizes."""
    params = compressible_parameters(model)
    for name, c in constraints.items():
        quant = quantizer_of(c)
        if quant is not None:
            yield name, params[name], quant, masks.get(name)


class STEQuantizer:
    """Train shadow weights through their quantized values (straight-through estimator)."""

    def __init__(
        self,
        model: nn.Module,
        constraints: Mapping[str, Constraint],
        masks: Mapping[str, Tensor],
        init: Mapping[str, Tensor] | None = None,
    ) -> None:
        self.layers: dict[str, tuple[nn.Parameter, Any, Tensor | None]] = {}
        self.shadow: dict[str, nn.Parameter] = {}
        self.scales: dict[str, Tensor] = {}
        for name, weight, quant, mask in quantized_layers(model, constraints, masks):
            self.layers[name] = (weight, quant, mask)
            start = (init or {}).get(name, weight.detach())
            shadow = start.detach().clone()
            if mask is not None:
                shadow.masked_fill_(~mask, 0.0)
            self.shadow[name] = nn.Parameter(shadow)
            # The optimizer never sees this weight, so nothing else would clear a gradient
            # left from earlier training; it would leak into the first step.
            weight.grad = None
        self._handles: list[Any] = []
        self.refit()

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.refit()

    def finish(self) -> None:
        self.quantize_()

    def optimizer_params(self, model: nn.Module) -> list[nn.Parameter]:
        """The model's parameters with each quantized weight replaced by its shadow."""
        swap = {id(w): self.shadow[n] for n, (w, _, _) in self.layers.items()}
        return [swap.get(id(p), p) for p in model.parameters()]

    @torch.no_grad()
    def refit(self) -> None:
        """Fit each layer's scale to its shadow weights, then requantize the model."""
        for name, (_, quant, mask) in self.layers.items():
            _, self.scales[name] = quant.fit(self.shadow[name].detach(), mask=mask)
        self.quantize_()

    @torch.no_grad()
    def quantize_(self) -> None:
        for name, (weight, quant, mask) in self.layers.items():
            q = quantize_at_scale(self.shadow[name].detach(), self.scales[name], quant, mask)
            weight.copy_(q)

    def after_backward(self) -> None:
        """Hand the gradient of the quantized weights to the shadows (the straight-through step)."""
        for name, (weight, _, _) in self.layers.items():
            self.shadow[name].grad = weight.grad
            weight.grad = None

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        self._handles.append(optimizer.register_step_post_hook(lambda *_: self.quantize_()))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def state_dict(self) -> dict[str, Any]:
        return {
            "shadow": {n: p.detach().clone() for n, p in self.shadow.items()},
            "scales": {n: s.clone() for n, s in self.scales.items()},
        }

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, p in self.shadow.items():
            p.copy_(state["shadow"][name])
            self.scales[name] = state["scales"][name].to(p.device)
        self.quantize_()


class SnapFreeze:
    """Snap the weights nearest their grid point and freeze them, in rounds (ADMM-NN)."""

    def __init__(
        self,
        model: nn.Module,
        constraints: Mapping[str, Constraint],
        masks: Mapping[str, Tensor],
        fractions: tuple[float, ...] = (0.5, 0.75, 0.875, 0.9375),
    ) -> None:
        self.fractions = fractions
        self._optimizer: torch.optim.Optimizer | None = None
        self.layers: dict[str, tuple[nn.Parameter, Any, Tensor]] = {}
        self.scales: dict[str, Tensor] = {}
        self.frozen: dict[str, Tensor] = {}
        self.values: dict[str, Tensor] = {}
        self.fraction = 0.0
        for name, w, quant, mask in quantized_layers(model, constraints, masks):
            if mask is None:
                mask = torch.ones_like(w, dtype=torch.bool)
            self.layers[name] = (w, quant, mask)
            with torch.no_grad():
                _, self.scales[name] = quant.fit(w.detach(), mask=mask)
            self.frozen[name] = torch.zeros_like(mask)
            self.values[name] = torch.zeros_like(w.detach())
        self._freezer: WeightFreezer | None = None

    @torch.no_grad()
    def snap(self, fraction: float) -> None:
        """Snap and freeze the nearest-to-grid weights until ``fraction`` of each layer's are."""
        self.fraction = fraction
        for name, (w, quant, mask) in self.layers.items():
            q = quantize_at_scale(w.detach(), self.scales[name], quant, mask)
            kept = int(mask.sum())
            target = kept if fraction >= 1.0 else math.ceil(fraction * kept)
            frozen = self.frozen[name]
            todo = target - int((frozen & mask).sum())
            if todo > 0:
                err = (w.detach() - q).abs().flatten().double()
                err[~(mask & ~frozen).flatten()] = math.inf
                order = torch.sort(err, stable=True).indices[:todo]
                frozen.view(-1)[order] = True
            self.values[name] = torch.where(frozen, q, self.values[name])
            w.copy_(torch.where(frozen, self.values[name], w.detach()))

    def optimizer_params(self, model: nn.Module) -> list[nn.Parameter]:
        return list(model.parameters())

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Snap the next round when the epoch enters the next equal share of the phase."""
        stage = min(len(self.fractions) - 1, epoch * len(self.fractions) // epochs)
        fraction = self.fractions[stage]
        if fraction > self.fraction:
            self.snap(fraction)
            self._refreeze()

    def after_backward(self) -> None:
        pass

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        self._optimizer = optimizer
        if self.fraction > 0:
            self._refreeze()

    def detach(self) -> None:
        if self._freezer is not None:
            self._freezer.detach()
            self._freezer = None

    def finish(self) -> None:
        self.detach()
        self.snap(1.0)

    def _refreeze(self) -> None:
        if self._freezer is not None:
            self._freezer.detach()
        self._freezer = self.freezer()
        if self._optimizer is not None:
            self._freezer.attach(self._optimizer)

    def freezer(self) -> WeightFreezer:
        """Frozen (snapped) weights keep their grid values; pruned ones stay zero."""
        params = {n: w for n, (w, _, _) in self.layers.items()}
        frozen = {n: self.frozen[n] | ~m for n, (_, _, m) in self.layers.items()}
        values = {n: torch.where(m, self.values[n], 0.0) for n, (_, _, m) in self.layers.items()}
        return WeightFreezer(params, frozen, values)

    def state_dict(self) -> dict[str, Any]:
        return {
            "fraction": self.fraction,
            "scales": {n: s.clone() for n, s in self.scales.items()},
            "frozen": {n: f.clone() for n, f in self.frozen.items()},
            "values": {n: v.clone() for n, v in self.values.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.fraction = float(state["fraction"])
        for name in self.layers:
            self.scales[name] = state["scales"][name]
            self.frozen[name] = state["frozen"][name].clone()
            self.values[name] = state["values"][name].clone()
