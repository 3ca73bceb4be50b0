"""What each step of a progressive run compresses: rules carried between steps, and targets.

A layer keeps its last rule until a later step changes it, aspect by aspect: a step that
only says ``quantize: ternary`` for a layer pruned earlier keeps that pruning, and one that
only sets a new ``keep`` keeps the layer's quantization. A step's ``target`` turns an
overall rate into per-layer counts (``allocation``). Earlier masks are enforced separately
(``FixedSupport``), so no weight pruned by an earlier step comes back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ..constraints import Constraint, FixedSupport
from ..core.admm import check_layer_fits
from ..core.selection import (
    bind,
    compressible_parameters,
    compressible_targets,
    coverage,
    select_layers,
    select_targets,
)
from .allocation import ScanPoint, allocate, sensitivity_scan
from .schema import ConfigError, RuleConfig, RunConfig, StepConfig


def layer_constraints(model: nn.Module, cfg: RunConfig) -> dict[str, Constraint]:
    """The first step's explicit rules as one constraint per parameter (raises on bad rules)."""
    rules = cfg.step_list()[0].rules
    selected = select_targets(model, {sel: rule.constraint() for sel, rule in rules.items()})
    return {name: bind(target, c) for name, (target, c) in selected.items()}


def step_constraints(
    model: nn.Module, rules: Mapping[str, RuleConfig], support: Mapping[str, Tensor]
) -> dict[str, Constraint]:
    """One constraint per parameter; parameters pruned by an earlier step keep their mask."""
    out: dict[str, Constraint] = {}
    for name, target in compressible_targets(model).items():  # model order
        if name not in rules:
            continue
        c = bind(target, rules[name].constraint())
        out[name] = FixedSupport(c, support[name].bool()) if name in support else c
    return out


@dataclass
class StepPlan:
    """The per-layer rules a step resolved to, and how its target was split."""

    rules: dict[str, RuleConfig]
    allocation: dict[str, Any] = field(default_factory=dict)
    scan: dict[str, list[ScanPoint]] = field(default_factory=dict)


def check_step_selectors(model: nn.Module, step: StepConfig) -> None:
    """Fail before training when a step's rules or target name no layer, or a rule cannot
    apply to a layer it selects (raises)."""
    for name, (target, rule) in select_targets(model, step.rules).items():
        check_layer_fits(name, target.param, bind(target, rule.constraint()))
    if step.target is not None:
        select_layers(model, dict.fromkeys(step.target.layers, True))


def step_coverage(model: nn.Module, step: StepConfig) -> tuple[list[str], list[str]]:
    """(selected, left out): the compressible parameters a step's rules and target select."""
    chosen = set(select_layers(model, step.rules))
    if step.target is not None:
        chosen |= set(select_layers(model, dict.fromkeys(step.target.layers, True)))
    return coverage(model, chosen)


def plan_step(
    model: nn.Module,
    step: StepConfig,
    carried: Mapping[str, RuleConfig],
    masks: Mapping[str, Tensor],
    evaluate: Callable[[], tuple[float, float]] | None = None,
) -> StepPlan:
    """Resolve a step's rules and target against the model as the step starts.

    ``carried`` are the rules in force after the previous step, ``masks`` its masks, and
    ``evaluate`` scores the model on held-out training images (needed by the sensitivity
    allocation only).
    """
    explicit = select_layers(model, step.rules)
    rules = dict(carried)
    for name, rule in explicit.items():
        rules[name] = rule.merged_over(carried.get(name))
    target = step.target
    if target is None:
        return StepPlan(rules)
    params = compressible_parameters(model)
    chosen = [
        n for n in select_layers(model, dict.fromkeys(target.layers, True)) if n not in explicit
    ]
    if not chosen:
        raise ConfigError(
            f"step {step.name}: every layer the target selects ({', '.join(target.layers)}) "
            "already has an explicit rule in this step; nothing is left to allocate"
        )
    weights = {n: p.detach() for n, p in params.items()}
    nonzero = {n: int(masks[n].sum()) if n in masks else weights[n].numel() for n in params}
    pruned = set(chosen) | {n for n, r in rules.items() if r.prune is not None}
    total = sum(weights[n].numel() for n in pruned)
    keep_all = math.floor(total / target.rate)
    others = 0
    for n in pruned - set(chosen):
        c = rules[n].constraint()
        if n in masks:
            c = FixedSupport(c, masks[n].bool())
        others += c.budget(weights[n])
    budget = keep_all - others
    if budget < len(chosen):
        raise ConfigError(
            f"step {step.name}: target rate {target.rate:g} keeps {keep_all} weights over the "
            f"pruned layers, but the layers with their own rules already keep {others}; "
            "lower the rate or prune those layers harder"
        )
    scan: dict[str, list[ScanPoint]] = {}
    if target.allocation == "sensitivity":
        if evaluate is None:
            raise ValueError("the sensitivity allocation needs an evaluate() callable")
        scan = sensitivity_scan(model, chosen, evaluate, min_count=target.min_count)
    counts = allocate(
        budget,
        {n: weights[n].numel() for n in chosen},
        target.allocation,
        min_count=target.min_count,
        available={n: nonzero[n] for n in chosen},
        weights={n: weights[n] for n in chosen},
        scan=scan,
    )
    for n in chosen:
        old = carried.get(n)
        quantize = target.quantize if target.quantize is not None else (old and old.quantize)
        rules[n] = RuleConfig.model_validate(
            {"prune": "irregular", "count": counts[n], "quantize": quantize or None}
        )
    info = {
        "rate": target.rate,
        "method": target.allocation,
        "budget": budget,
        "counts": counts,
        "kept_by_other_layers": others,
    }
    return StepPlan(rules, info, scan)
