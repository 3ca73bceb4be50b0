"""ADMM state and steps for constrained training, usable from any PyTorch training loop.

Three calls drive it::

    admm = ADMM(model, {"conv*": Irregular(keep=0.2), "fc1": Irregular(keep=0.01)})
    loss = criterion(model(x), y) + admm.penalty()   # W-step: every batch
    admm.update()                                    # Z-, U-step and rho growth: every period
    masks = admm.harden()                            # project W onto its set, get masks

The core imports nothing from the CLI, the data or the model zoo.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..constraints import (
    Constraint,
    ConstraintError,
    StructuredRule,
    coupled_group_masks,
    structured_rule,
)
from .selection import bind, select_targets


@dataclass(frozen=True)
class Residual:
    """Convergence of one layer: primal ||W - Z|| and dual rho * ||Z_new - Z_old||."""

    primal: float
    dual: float
    rho: float
    relative_primal: float  # ||W - Z|| / ||W||: how far W still is from its set


def _residual(w: Tensor, z: Tensor, dual: float, rho: float) -> Residual:
    primal = float(torch.linalg.vector_norm(w - z))
    w_norm = float(torch.linalg.vector_norm(w))
    return Residual(primal, dual, rho, primal / w_norm if w_norm else 0.0)


def check_layer_fits(name: str, weight: Tensor, constraint: Constraint) -> None:
    """Raise ``ConstraintError`` naming the layer when its set cannot apply to its weight."""
    try:
        constraint.check_fits(weight)
    except ConstraintError as e:
        raise ConstraintError(f"layer {name!r}: {e}", e.param) from None


#: where ``rho="auto"`` starts and how it balances (Boyd et al. 2011, sec. 3.4.1)
AUTO_RHO = 1e-3
AUTO_RHO_MAX = 10.0
BALANCE_MU = 10.0
BALANCE_TAU = 2.0
#: relative primal residual ||W - Z|| / ||W|| above which hardening is expected to hurt
FAR_FROM_SET = 0.1


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_state(state: object, layers: Mapping[str, _Layer]) -> None:
    """Raise ``ValueError`` unless ``state`` has the fields ``state_dict`` writes, each of
    its kind and shape: a damaged state would otherwise fail mid-training."""
    if not isinstance(state, Mapping) or not isinstance(state.get("layers"), Mapping):
        raise ValueError("ADMM state is not a mapping with 'layers'")
    it = state.get("iteration")
    if not isinstance(it, int) or isinstance(it, bool) or it < 0:
        raise ValueError(f"ADMM state's iteration {it!r} is not a count")
    history = state.get("history")
    if not isinstance(history, list) or not all(
        isinstance(h, Mapping)
        and all(
            isinstance(v, list | tuple) and len(v) == 4 and all(map(_is_number, v))
            for v in h.values()
        )
        for h in history
    ):
        raise ValueError("ADMM state's history is not a list of per-layer residuals")
    for name, s in state["layers"].items():
        layer = layers.get(name)
        if layer is None:
            continue  # the names are compared afterwards, with a message listing them
        if not isinstance(s, Mapping):
            raise ValueError(f"ADMM state for {name!r} is not a mapping")
        for key in ("z", "u"):
            t = s.get(key)
            if not (
                isinstance(t, Tensor) and t.is_floating_point() and t.shape == layer.weight.shape
            ):
                raise ValueError(
                    f"ADMM state for {name!r}: {key} is not a floating-point tensor of shape "
                    f"{tuple(layer.weight.shape)}"
                )
        rho, dual = s.get("rho"), s.get("last_dual")
        if not (_is_number(rho) and math.isfinite(rho) and rho > 0 and _is_number(dual)):
            raise ValueError(f"ADMM state for {name!r}: rho {rho!r} or last_dual {dual!r} is bad")


class ADMMConvergenceWarning(UserWarning):
    """ADMM ended with weights far from their sets: hardening will cost accuracy."""


class ADMMOverflowError(ArithmeticError):
    """rho (or a residual) overflowed: continuing would only corrupt the weights."""


# Devices where add_penalty_grad_ updates all layers in one multi-tensor call (launch-bound).
FOREACH_DEVICES = frozenset({"cuda"})


class _Layer:
    """Per-layer ADMM variables. Z, U and the penalty target Z - U never carry autograd history."""

    def __init__(self, weight: nn.Parameter, constraint: Constraint, rho: float) -> None:
        self.weight = weight
        self.constraint = constraint
        self.rho = rho
        w = weight.detach()
        self.z = constraint.project(w).clone()
        self.u = torch.zeros_like(w)
        self.target = self.z.clone()  # Z - U, cached so the penalty costs one subtraction
        self.scratch: Tensor | None = None  # reused by add_penalty_grad_ (no per-batch alloc)
        self.last_dual = 0.0

    def refresh_target(self) -> None:
        torch.sub(self.z, self.u, out=self.target)


class ADMM:
    """Augmented-Lagrangian splitting of ``min f(W) s.t. W_i in S_i`` for chosen layers.

    Args:
        model: the network whose parameters are constrained: a layer's ``weight`` (named
            by the layer) or any other parameter of two or more dimensions (by its name).
        rules: selector -> constraint; a selector is an exact name, a glob such as
            ``"fc*"`` or ``"*.in_proj_weight"``, a module's name (its own parameters), or
            ``"type:Conv2d"``. Each rule must match a parameter, no parameter twice.
        rho_growth: factor applied to rho after each ``update()``; growing rho is what
            drives W onto the set.
        rho: initial penalty (the authors use 1e-3 to 1e-2), or ``"auto"``: start at
            ``AUTO_RHO`` and balance each layer's residuals at every update (Boyd et al.
            2011, sec. 3.4.1: rho times ``BALANCE_TAU`` while the primal residual is more than
            ``BALANCE_MU`` times the dual one, divided by it in the opposite case), on top of
            ``rho_growth``, up to ``rho_max`` (default ``AUTO_RHO_MAX``). For the non-convex
            sets here it is a heuristic; the growth schedule stays as the fallback that
            drives every layer onto its set in the end.
        rho_max: cap on rho, if any.
        rescale_dual: keep the scaled dual consistent when rho changes (U <- U * old/new,
            Boyd et al. 2011, sec. 3.4.1). The authors' code skips this; it matters little
            for small growth factors but keeps the unscaled multiplier continuous.
        couple: sets of layer names under ``filter`` rules that must lose the same filters
            (the convolutions writing one residual sum), or under ``channel`` rules that must
            drop the same input channels (the layers reading it); ``groups.coupled_layer_sets``
            finds them. Their Z-step is one joint projection (``coupled_group_masks``), so
            that a pruned channel is gone from every layer that writes (or reads) it.
    """

    def __init__(
        self,
        model: nn.Module,
        rules: Mapping[str, Constraint],
        *,
        rho: float | str = 1e-3,
        rho_growth: float = 1.3,
        rho_max: float | None = None,
        rescale_dual: bool = True,
        couple: Sequence[Sequence[str]] = (),
    ) -> None:
        self.balance = rho == "auto"
        if self.balance:
            rho = AUTO_RHO
            rho_max = AUTO_RHO_MAX if rho_max is None else rho_max
        if isinstance(rho, str) or not rho > 0 or not math.isfinite(rho):
            raise ValueError(f"rho must be a positive number or 'auto', got {rho!r}")
        if not rho_growth >= 1.0:
            raise ValueError(f"rho_growth must be >= 1, got {rho_growth}")
        if rho_max is not None and not rho_max >= rho:
            raise ValueError(f"rho_max ({rho_max}) must be >= the initial rho ({rho})")
        if not rules:
            raise ValueError("ADMM needs at least one rule: no layer would be constrained")
        self.rho_growth = rho_growth
        self.rho_max = rho_max
        self.rescale_dual = rescale_dual
        self.iteration = 0
        self.history: list[dict[str, Residual]] = []
        self.masks: dict[str, Tensor] = {}  # set by harden(): what retraining must keep
        # The shape of one input (without the batch), seen at the model's first forward, so
        # that a file saved from this ADMM can be compacted or exported without asking.
        self.input_shape: tuple[int, ...] | None = None
        self._shape_hook = model.register_forward_pre_hook(self._see_input, with_kwargs=True)
        selected = {
            name: (target, bind(target, constraint))
            for name, (target, constraint) in select_targets(model, rules).items()
        }
        for name, (target, constraint) in selected.items():
            check_layer_fits(name, target.param, constraint)
        self.layers: dict[str, _Layer] = {
            name: _Layer(target.param, constraint, rho)
            for name, (target, constraint) in selected.items()
        }
        self.coupled = [tuple(names) for names in couple if len(names) > 1]
        self._check_coupling()
        for n, (z, _) in self._coupled(lambda n: self.layers[n].weight.detach()).items():
            self.layers[n].z = z
            self.layers[n].target = z.clone()

    def _see_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)
        if first is not None and first.dim() >= 1:
            self.input_shape = tuple(int(d) for d in first.shape[1:])
            self._shape_hook.remove()

    def _check_coupling(self) -> None:
        seen: set[str] = set()
        for names in self.coupled:
            for n in names:
                if n not in self.layers:
                    raise ValueError(f"coupled layer {n!r} has no ADMM rule")
                if n in seen:
                    raise ValueError(f"layer {n!r} is in more than one coupled set")
                if structured_rule(self.layers[n].constraint) is None:
                    raise ValueError(
                        f"coupled layer {n!r} must be under a filter or channel rule, not "
                        f"{self.layers[n].constraint.describe()}"
                    )
                seen.add(n)
            axes = {n: self._rule(n).rule.axis for n in names}
            if len(set(axes.values())) != 1:
                raise ValueError(
                    "coupled layers must all prune filters or all channels, got "
                    + ", ".join(f"{n}: {a}" for n, a in axes.items())
                )
            ks = {n: self._rule(n).rule.k(self.layers[n].weight) for n in names}
            if len(set(ks.values())) != 1:
                raise ValueError(
                    f"coupled layers must keep the same number of {axes[names[0]]}s, got "
                    + ", ".join(f"{n}: {k}" for n, k in ks.items())
                )

    def _rule(self, name: str) -> StructuredRule:
        rule = structured_rule(self.layers[name].constraint)
        assert rule is not None
        return rule

    def _coupled(self, value: Callable[[str], Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        """Per coupled layer: (its projection, its mask), the kept groups chosen jointly."""
        out = {}
        for names in self.coupled:
            rules = [self._rule(n) for n in names]
            vs = [
                value(n) if r.support is None else value(n) * r.support
                for n, r in zip(names, rules, strict=True)
            ]
            first = rules[0].rule
            k = first.k(self.layers[names[0]].weight)
            masks = coupled_group_masks(vs, k, first.axis)
            for n, v, m, r in zip(names, vs, masks, rules, strict=True):
                if r.support is not None:
                    m = m & r.support.to(device=m.device, dtype=torch.bool)
                out[n] = (r.finish(v, m), m)
        return out

    # -- W-step -------------------------------------------------------------------------------
    def penalty(self) -> Tensor:
        """sum_i rho_i / 2 * ||W_i - Z_i + U_i||_F^2, differentiable in W; add it to the loss."""
        terms = [
            (0.5 * layer.rho) * (layer.weight - layer.target).pow(2).sum()
            for layer in self.layers.values()
        ]
        return torch.stack(terms).sum()

    @torch.no_grad()
    def add_penalty_grad_(self) -> None:
        """Add the penalty's gradient rho * (W - Z + U) to each ``weight.grad`` in place.

        The same W-step as adding ``penalty()`` to the loss, for a loop that calls this between
        ``backward()`` and ``optimizer.step()``: it skips the autograd graph. On a GPU all
        layers go at once (``torch._foreach_*``: a few kernel launches per step instead of two
        per layer, which matters when small batches make a step launch-bound); on the CPU each
        layer reuses one buffer (no per-batch allocation, one pass over memory). Both do the
        arithmetic of ``grad.add_(w - target, alpha=rho)``, to the bit.
        """
        layers = list(self.layers.values())
        for layer in layers:
            w = layer.weight
            if w.grad is None:
                w.grad = torch.zeros_like(w, memory_format=torch.preserve_format)
        if layers and all(layer.weight.device.type in FOREACH_DEVICES for layer in layers):
            diffs = torch._foreach_sub(
                [layer.weight.detach() for layer in layers], [layer.target for layer in layers]
            )
            by_rho: dict[float, tuple[list[Tensor], list[Tensor]]] = {}
            for layer, diff in zip(layers, diffs, strict=True):
                grads, ds = by_rho.setdefault(layer.rho, ([], []))
                grads.append(layer.weight.grad)
                ds.append(diff)
            for rho, (grads, ds) in by_rho.items():
                torch._foreach_add_(grads, ds, alpha=rho)
            return
        for layer in layers:
            w = layer.weight
            if layer.scratch is None or layer.scratch.shape != w.shape:
                layer.scratch = torch.empty_like(w, memory_format=torch.preserve_format)
            torch.sub(w.detach(), layer.target, out=layer.scratch)
            w.grad.add_(layer.scratch, alpha=layer.rho)

    # -- Z-, U-step and rho schedule --------------------------------------------------------
    @torch.no_grad()
    def update(self) -> dict[str, Residual]:
        """One ADMM iteration after a W-step: Z = Proj(W + U), U += W - Z, rho *= growth."""
        out: dict[str, Residual] = {}
        joint = {
            n: z
            for n, (z, _) in self._coupled(
                lambda n: self.layers[n].weight.detach() + self.layers[n].u
            ).items()
        }
        for name, layer in self.layers.items():
            w = layer.weight.detach()
            z_old = layer.z
            layer.z = joint[name] if name in joint else layer.constraint.project(w + layer.u)
            layer.u.add_(w).sub_(layer.z)
            dual = layer.rho * float(torch.linalg.vector_norm(layer.z - z_old))
            out[name] = _residual(w, layer.z, dual, layer.rho)
            layer.last_dual = dual
            new_rho = layer.rho * self.rho_growth
            if self.balance:
                if out[name].primal > BALANCE_MU * dual:
                    new_rho *= BALANCE_TAU
                elif dual > BALANCE_MU * out[name].primal:
                    new_rho /= BALANCE_TAU
            if self.rho_max is not None:
                new_rho = min(new_rho, self.rho_max)
            if not (math.isfinite(new_rho) and math.isfinite(out[name].primal)):
                raise ADMMOverflowError(
                    f"ADMM update {self.iteration + 1}: rho of {name!r} would become "
                    f"{new_rho:g} (from {layer.rho:g}, growth {self.rho_growth:g}) and its "
                    f"residual is {out[name].primal:g}; lower rho or rho_growth, or cap rho "
                    "with rho_max"
                )
            if self.rescale_dual and new_rho != layer.rho:
                layer.u.mul_(layer.rho / new_rho)
            layer.rho = new_rho
            layer.refresh_target()
        self.iteration += 1
        self.history.append(out)
        return out

    @torch.no_grad()
    def residuals(self) -> dict[str, Residual]:
        """Current primal residual of every layer, with the dual residual of the last update."""
        out = {}
        for name, layer in self.layers.items():
            w = layer.weight.detach()
            out[name] = _residual(w, layer.z, layer.last_dual, layer.rho)
        return out

    @torch.no_grad()
    def set_rho(self, rho: float | str, rho_max: float | None = None) -> None:
        """Every layer's rho to ``rho`` (a new start; ``"auto"``: ``AUTO_RHO``), the scaled
        dual rescaled to match; for a resume that changes rho."""
        self.balance = rho == "auto"
        value = AUTO_RHO if self.balance else float(rho)
        if not value > 0 or not math.isfinite(value):
            raise ValueError(f"rho must be a positive number or 'auto', got {rho!r}")
        self.rho_max = AUTO_RHO_MAX if self.balance and rho_max is None else rho_max
        if self.rho_max is not None:
            value = min(value, self.rho_max)
        for layer in self.layers.values():
            if self.rescale_dual:
                layer.u.mul_(layer.rho / value)
            layer.rho = value
            layer.refresh_target()

    def far_from_sets(self, threshold: float = FAR_FROM_SET) -> dict[str, float]:
        """Layers whose relative primal residual ||W - Z|| / ||W|| is above ``threshold``
        now: their weights have not reached their sets, and hardening will cost accuracy."""
        return {
            n: r.relative_primal
            for n, r in self.residuals().items()
            if r.relative_primal > threshold
        }

    def convergence_advice(self, threshold: float = FAR_FROM_SET) -> str | None:
        """What to change when ADMM ends far from the sets (None when it does not)."""
        far = self.far_from_sets(threshold)
        if not far:
            return None
        worst = ", ".join(f"{n} {v:.2f}" for n, v in sorted(far.items(), key=lambda x: -x[1]))
        rho = "auto" if self.balance else f"{min(lay.rho for lay in self.layers.values()):.3g}"
        return (
            f"ADMM ended with ||W-Z||/||W|| above {threshold:g} ({worst}): these weights did "
            f"not reach their sets and hardening will cost accuracy. Raise rho (its value now: "
            f"{rho}) or rho_growth ({self.rho_growth:g}), train more ADMM epochs, or use "
            "rho='auto'"
        )

    # -- hardening ----------------------------------------------------------------------------
    @torch.no_grad()
    def harden(self) -> dict[str, Tensor]:
        """Project every constrained weight onto its set in place; return the boolean masks.

        A mask marks the weights the set allows to be non-zero (all of them for a layer that
        is only quantized); retraining keeps the others at zero. Warns
        (``ADMMConvergenceWarning``) when the weights were far from their sets.
        """
        advice = self.convergence_advice() if self.iteration else None
        if advice is not None:
            warnings.warn(advice, ADMMConvergenceWarning, stacklevel=2)
        masks = {}
        joint = self._coupled(lambda n: self.layers[n].weight.detach())
        for name, layer in self.layers.items():
            w = layer.weight.detach()
            if name in joint:
                z, mask = joint[name]
                layer.weight.copy_(z)
            else:
                mask = layer.constraint.mask(w)
                layer.weight.copy_(layer.constraint.project(w))
            masks[name] = mask
        self.masks = masks
        return masks

    # -- persistence ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Tensors and plain numbers only, so it loads with ``torch.load(weights_only=True)``."""
        return {
            "iteration": self.iteration,
            "layers": {
                name: {
                    "z": layer.z.clone(),
                    "u": layer.u.clone(),  # update() changes u in place
                    "rho": layer.rho,
                    "last_dual": layer.last_dual,
                    "constraint": layer.constraint.describe(),
                }
                for name, layer in self.layers.items()
            },
            "history": [
                {name: [r.primal, r.dual, r.rho, r.relative_primal] for name, r in it.items()}
                for it in self.history
            ],
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a saved state; it must be for the same parameters under the same sets
        (a state saved under other rules would pull the weights towards the wrong set)."""
        _check_state(state, self.layers)
        names = set(state["layers"])
        for name, layer in self.layers.items():
            saved = state["layers"].get(name, {}).get("constraint")
            if saved is not None and saved != layer.constraint.describe():
                raise ValueError(
                    f"ADMM state for {name!r} was saved under {saved!r}, this ADMM has "
                    f"{layer.constraint.describe()!r}: it belongs to other rules"
                )
        if names != set(self.layers):
            raise ValueError(
                f"ADMM state is for layers {sorted(names)}, this model has {sorted(self.layers)}"
            )
        for name, layer in self.layers.items():
            s = state["layers"][name]
            dev, dt = layer.weight.device, layer.weight.dtype
            layer.z = s["z"].to(device=dev, dtype=dt).clone()
            layer.u = s["u"].to(device=dev, dtype=dt).clone()
            layer.rho = float(s["rho"])
            layer.last_dual = float(s["last_dual"])
            layer.target = torch.empty_like(layer.z)
            layer.refresh_target()
        self.iteration = int(state["iteration"])
        self.history = [
            {name: Residual(*vals) for name, vals in it.items()} for it in state["history"]
        ]
