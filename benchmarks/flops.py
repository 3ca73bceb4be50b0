"""FLOPs of a model and the filter-pruning keep ratio that reaches a FLOPs reduction.

FLOPs are counted by PyTorch's own ``torch.utils.flop_counter.FlopCounterMode`` on one
image in eval mode: two FLOPs per multiply-accumulate of every convolution and matrix
product (BatchNorm, ReLU, pooling and additions are not counted, as in fvcore and
Torch-Pruning's MACs, which are half these numbers). The same counter measures every arm
of a comparison (ours, Torch-Pruning, dense).

    python benchmarks/flops.py resnet56_cifar --target 2.13
    python benchmarks/flops.py resnet20_cifar --target 2 3

For each target it bisects one keep ratio for every convolution (filter pruning with the
coupled residual groups, as the recipes prune), prunes by filter magnitude, compacts the
network with ``compact_model`` and counts the FLOPs of the compact network.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from admmcompress import ADMM, Filter, create_model
from admmcompress.constraints.base import Constraint
from admmcompress.models import registry as model_registry
from admmcompress.run.coupling import ChannelStructure
from admmcompress.structure.compact import CompactResult, compact_model
from admmcompress.structure.groups import batchnorm_masks


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass on one input of ``input_shape`` (eval mode)."""
    was = model.training
    model.eval()
    x = torch.zeros(1, *input_shape)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was)
    return int(counter.get_total_flops())


def conv_rules(model: nn.Module, keep: float) -> dict[str, Filter]:
    """Filter pruning of every convolution (the classifier stays dense)."""
    return {n: Filter(keep=keep) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def filter_prune(
    model: nn.Module, keep: float | dict[str, Constraint], input_shape: tuple[int, ...]
) -> CompactResult:
    """``model`` filter-pruned by magnitude at ``keep`` (one ratio for every convolution, or
    one rule per layer) as the recipes prune it, then compacted (``.model``: the narrower
    network, ``.sizes``: its resized layers).

    As in a run (the pipeline's own ``ChannelStructure``): the layers that write the same
    residual channels (stem, a stage's conv2s and projection) lose the same filters (one
    joint projection) and the BatchNorm entries of a removed channel are zeroed, so
    ``compact_model`` can drop it everywhere. Without the coupling each writer picks its
    own filters, the residual sums keep nearly every channel, and FLOPs fall about k times
    instead of about k^2.
    """
    rules = conv_rules(model, keep) if isinstance(keep, float) else keep
    structure = ChannelStructure(model, input_shape, torch.device("cpu"))  # a run's own
    masks = ADMM(model, rules, couple=structure.coupled_sets(rules)).harden()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, kept in batchnorm_masks(model, structure.groups(rules), masks).items():
            params[key].masked_fill_(~kept, 0.0)
    return compact_model(model.eval(), torch.zeros(1, *input_shape))


def pruned_flops(name: str, keep: float, seed: int = 0) -> tuple[int, int]:
    """(FLOPs, weights) of ``name`` filter-pruned at ``keep`` and compacted."""
    torch.manual_seed(seed)
    shape = model_registry.model_input_shape(name)
    compact = filter_prune(create_model(name), keep, shape).model
    return count_flops(compact, shape), sum(p.numel() for p in compact.parameters())


def keep_for(name: str, target: float, tol: float = 0.005) -> tuple[float, int]:
    """The keep ratio whose compact network has ``1/target`` of the dense FLOPs."""
    dense = count_flops(create_model(name), model_registry.model_input_shape(name))
    lo, hi = 0.05, 1.0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        flops, _ = pruned_flops(name, mid)
        if dense / flops >= target:
            lo = mid
        else:
            hi = mid
    return lo, pruned_flops(name, lo)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--target", type=float, nargs="+", default=[2.0])
    args = ap.parse_args()
    shape = model_registry.model_input_shape(args.model)
    dense_model = create_model(args.model)
    dense = count_flops(dense_model, shape)
    weights = sum(p.numel() for p in dense_model.parameters())
    print(f"{args.model}: {dense / 1e6:.1f} MFLOPs, {weights:,} parameters (dense)")
    for t in args.target:
        keep, flops = keep_for(args.model, t)
        print(
            f"  {t}x fewer FLOPs: keep {keep:.3f} of the filters -> {flops / 1e6:.1f} MFLOPs "
            f"({dense / flops:.2f}x)"
        )


if __name__ == "__main__":
    main()
