"""Split an overall pruning target (keep K weights in all) into per-layer counts.

Four documented splits, all respecting a floor (``min_count``) and a ceiling per layer (the
weights a layer still has, so an earlier step's pruning is never undone):

- ``uniform``: the same keep ratio in every layer.
- ``global_magnitude``: the K largest |w| over all layers together.
- ``lamp``: the K largest LAMP scores over all layers (Lee et al., "Layer-adaptive sparsity
  for the magnitude-based pruning", ICLR 2021). A weight's score is its w^2 over the sum of
  the w^2 of the weights of its layer at least as large, so each layer's largest weight
  scores 1 and no layer is emptied. Global magnitude lets a wide layer of small weights
  take the budget of a narrow one (ResNet-20 at 16x: layer3.2.conv2 kept 81 of 36,864);
  LAMP spreads the cut by each layer's own distribution (969 there).
- ``sensitivity``: each layer is magnitude-pruned alone over a grid of keep counts and the
  loss on held-out training images is measured (``sensitivity_scan``). For a tolerated loss
  increase d, a layer keeps the fewest weights at which its curve (made monotone) stays
  within d; d is found by bisection so that the total meets K. Layers that hardly matter
  are pruned hard, fragile ones are spared (Han et al. 2015 prune by the same kind of scan).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..constraints import topk_mask
from ..core.selection import compressible_parameters

#: the allocation methods ``allocate`` knows (a recipe's ``target.allocation``)
METHODS = ("sensitivity", "global_magnitude", "lamp", "uniform")


@dataclass(frozen=True)
class ScanPoint:
    count: int  # weights kept in the layer
    loss: float
    accuracy: float


def keep_grid(size: int, min_count: int, factor: float = 0.8) -> list[int]:
    """Counts from ``size`` down to ``min_count``, each about ``factor`` times the last."""
    counts, c = [], float(size)
    while c >= min_count:
        n = round(c)
        if not counts or n < counts[-1]:
            counts.append(n)
        c *= factor
    if counts[-1] != min_count and min_count <= size:
        counts.append(min_count)
    return counts


@torch.no_grad()
def sensitivity_scan(
    model: nn.Module,
    layers: Sequence[str],
    evaluate: Callable[[], tuple[float, float]],
    *,
    min_count: int = 8,
    factor: float = 0.8,
) -> dict[str, list[ScanPoint]]:
    """Loss and accuracy with one layer at a time magnitude-pruned to each count of a grid.

    ``evaluate()`` returns (loss, accuracy) of the model as it stands. Weights already zero
    stay zero, so the scan of a later step starts from that step's model. The model's
    weights are restored afterwards.
    """
    params = compressible_parameters(model)
    curves: dict[str, list[ScanPoint]] = {}
    for name in layers:
        weight = params[name]
        original = weight.detach().clone()
        nonzero = int(torch.count_nonzero(original))
        scores = original.abs().flatten()
        points = []
        try:
            for count in keep_grid(nonzero, min(min_count, nonzero), factor):
                weight.copy_(original * topk_mask(scores, count).view_as(original))
                loss, acc = evaluate()
                points.append(ScanPoint(count, loss, acc))
        finally:
            weight.copy_(original)
        curves[name] = points
    return curves


def _fewest_within(points: Sequence[ScanPoint], limit: float) -> float:
    """Fewest weights (interpolated in log count) at which the monotone curve is <= limit."""
    pts = sorted(points, key=lambda p: -p.count)  # dense first
    envelope, worst = [], -math.inf
    for p in pts:  # the loss with >= this many weights kept never exceeds `worst`
        worst = max(worst, p.loss)
        envelope.append((p.count, worst))
    best = float(envelope[0][0])
    for (c_hi, l_hi), (c_lo, l_lo) in itertools.pairwise(envelope):
        if l_lo <= limit:
            best = float(c_lo)
            continue
        if l_hi <= limit < l_lo:  # crosses between the two grid points
            t = (limit - l_hi) / (l_lo - l_hi)
            best = math.exp(math.log(c_hi) + t * (math.log(c_lo) - math.log(c_hi)))
        break
    return best


def _clamp(
    counts: Mapping[str, float], floor: Mapping[str, int], ceil: Mapping[str, int]
) -> dict[str, int]:
    return {n: int(max(floor[n], min(ceil[n], math.floor(c)))) for n, c in counts.items()}


def _magnitude(weight: Tensor) -> Tensor:
    return weight.detach().abs().flatten().float().cpu()


def lamp_scores(weight: Tensor) -> Tensor:
    """LAMP score of each weight (flattened): w^2 over the sum of the w^2 at least as large.

    Ties are broken by position (a stable sort); zeros score 0 (an all-zero layer too). The
    weights are scaled by their largest |w| and squared in float64, so a layer of tiny
    weights neither underflows nor loses its top score of 1 (the score is scale-free).
    """
    w = weight.detach().flatten().double().cpu()
    top = w.abs().max() if w.numel() else w.new_zeros(())
    sq = (w / top).pow(2) if top > 0 else torch.zeros_like(w)
    ordered, idx = sq.sort(stable=True)
    tail = ordered.flip(0).cumsum(0).flip(0)  # for each rank: the squares at or above it
    scores = torch.zeros_like(sq)
    scores[idx] = torch.where(tail > 0, ordered / tail.clamp_min(1e-300), 0.0)
    return scores


def _global_top(
    scores: Mapping[str, Tensor], budget: int, floor: Mapping[str, int], ceil: Mapping[str, int]
) -> dict[str, int]:
    """Counts of the ``budget`` highest scores over all layers; a layer the top leaves below
    its floor gets the floor, and the rest of the budget is shared again by score."""
    fixed: dict[str, int] = {}
    while True:
        free = [n for n in scores if n not in fixed]
        keep = topk_mask(torch.cat([scores[n] for n in free]), max(budget - sum(fixed.values()), 0))
        counts, start = {}, 0
        for n in free:
            size = scores[n].numel()
            counts[n] = int(keep[start : start + size].sum())
            start += size
        low = [n for n in free if counts[n] < floor[n]]
        if not low:
            return {**fixed, **{n: min(counts[n], ceil[n]) for n in free}}
        fixed.update({n: floor[n] for n in low})


def allocate(
    budget: int,
    sizes: Mapping[str, int],
    method: str,
    *,
    min_count: int = 8,
    available: Mapping[str, int] | None = None,
    weights: Mapping[str, Tensor] | None = None,
    scan: Mapping[str, Sequence[ScanPoint]] | None = None,
) -> dict[str, int]:
    """Per-layer keep counts summing to at most ``budget`` (unless the floors alone exceed it).

    ``sizes`` are the layers' weight counts, ``available`` their current non-zeros (the
    ceiling; default the sizes). ``global_magnitude`` and ``lamp`` need ``weights``;
    ``sensitivity`` needs ``scan`` (from ``sensitivity_scan``).
    """
    ceil = dict(available or sizes)
    floor = {n: min(min_count, ceil[n]) for n in sizes}
    if budget < sum(floor.values()):
        raise ValueError(
            f"the target keeps {budget} weights, fewer than the floor of {min_count} per "
            f"layer over {len(sizes)} layers; lower the rate or min_count"
        )
    if budget >= sum(ceil.values()):
        return dict(ceil)
    if method == "uniform":

        def total(r: float) -> tuple[int, dict[str, int]]:
            counts = _clamp({n: r * s for n, s in sizes.items()}, floor, ceil)
            return sum(counts.values()), counts

        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if total(mid)[0] <= budget else (lo, mid)
        return total(lo)[1]
    if method in ("global_magnitude", "lamp"):
        if weights is None:
            raise ValueError(f"{method} allocation needs the layers' weights")
        score = _magnitude if method == "global_magnitude" else lamp_scores
        return _global_top({n: score(weights[n]) for n in sizes}, budget, floor, ceil)
    if method == "sensitivity":
        if scan is None:
            raise ValueError("sensitivity allocation needs a sensitivity scan")
        base = min(min(p.loss for p in pts) for pts in scan.values())

        def counts_at(d: float) -> dict[str, int]:
            return _clamp({n: _fewest_within(scan[n], base + d) for n in sizes}, floor, ceil)

        hi = max(p.loss for pts in scan.values() for p in pts) - base + 1.0
        lo = 0.0
        if sum(counts_at(hi).values()) > budget:  # even the floors' curves do not fit
            return counts_at(hi)
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if sum(counts_at(mid).values()) <= budget else (mid, hi)
        return counts_at(hi)
    raise ValueError(f"unknown allocation {method!r}; allowed: {', '.join(METHODS)}")
