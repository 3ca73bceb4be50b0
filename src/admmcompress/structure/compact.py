"""Compact export: physically remove pruned units, giving an ordinary, smaller ``nn.Module``.

Pruning leaves zeros in full-size tensors; this module deletes the units that can no longer
matter, so the exported model is smaller and faster, not just sparse. The model is split into
coupled channel groups (``groups.py`` explains how, with ``torch.fx`` and ``ShapeProp`` on
``example_input``): a group's producers (``nn.Conv2d`` with ``groups == 1``, ``nn.Linear``)
own its channels as filters, the eval-mode BatchNorms on its paths as entries, its consumers
as input channels. Between them lie only per-channel ops (activations, pooling, BatchNorm,
Dropout, Identity, flatten / ``view(N, -1)``) and element-wise residual sums, so channel ``c``
can be deleted from every member at once. It is, when

(a) every consumer's input slice for ``c`` is all zero: nothing reads the channel, so the
    producers' filters and bias entries and the BatchNorm entries for ``c`` are unused; or
(b) every producer's weight slice for ``c`` is all zero: each producer then outputs its bias
    (or 0), and the channel is a constant everywhere in the group. That constant is evaluated
    numerically in float64 through the group's own graph (BatchNorm, activations, pooling,
    sums, in execution order), giving the value each consumer reads. Where it is exactly 0 the
    consumer loses nothing; otherwise it is folded exactly into that consumer's bias (one is
    created if needed) -- unless the consumer is a convolution with zero padding, which sees
    the constant only away from its borders: then ``c`` is kept for the whole group. A
    constant that varies over positions (e.g. padded average pooling) is also kept. For a
    residual group this means: a channel goes when all branches of every sum are zero for it
    (filter pruning with the BatchNorm shift ``beta - mean * gamma / sqrt(var + eps)`` exactly
    0, or a ReLU that clips the sum to 0), or when a Linear / unpadded conv can absorb it.
    A channel that only some producers of a group have pruned is kept.

Removals feed each other (a dropped fc2 input can leave an fc1 neuron dead, which can leave a
conv channel dead), so this repeats to a fixed point. Groups that touch the network's inputs,
its outputs, ``cat``, multiplication or anything else ``groups.py`` does not understand are
pinned: left full-size. Every layer keeps at least one channel (zeroed if all could go) so that
shapes stay valid.

Constants are computed with eval-mode semantics: BatchNorm uses its running statistics and
Dropout is the identity. The compact model matches the original in ``eval()`` mode; its
modules keep the original train/eval flags.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from .groups import GroupTrace, node_op, trace_groups, trace_model

__all__ = ["CompactResult", "compact_model", "resize_modules"]


@dataclass
class CompactResult:
    """A compacted copy of a model and what changed.

    ``sizes`` holds, per resized submodule, the constructor arguments that changed (plus
    ``"bias": 1`` where folding had to create a bias), which is what ``resize_modules`` needs
    to rebuild the architecture before ``load_state_dict``. ``kept`` holds the original
    indices kept along each changed dimension: ``"out"`` (filters / output features, and a
    BatchNorm's entries) and ``"in"`` (input channels, or input features of a Linear, where
    one conv channel after flatten is a block of ``H * W`` features).
    """

    model: nn.Module
    sizes: dict[str, dict[str, int]]
    kept: dict[str, dict[str, list[int]]]
    params_before: int
    params_after: int


# -- resizing --------------------------------------------------------------------------------

_RESIZABLE_KEYS: dict[type[nn.Module], frozenset[str]] = {
    nn.Conv2d: frozenset({"in_channels", "out_channels", "bias"}),
    nn.Linear: frozenset({"in_features", "out_features", "bias"}),
    nn.BatchNorm1d: frozenset({"num_features"}),
    nn.BatchNorm2d: frozenset({"num_features"}),
}


def _factory_kwargs(module: nn.Module) -> dict[str, object]:
    ref = next(iter(module.parameters()), None)
    if ref is None:
        ref = next(iter(module.buffers()), None)
    return {} if ref is None else {"device": ref.device, "dtype": ref.dtype}


def _rebuilt(name: str, old: nn.Module, new_sizes: Mapping[str, int]) -> nn.Module:
    def size(key: str, default: int) -> int:
        value = int(new_sizes.get(key, default))
        if value < 1:
            raise ValueError(f"{name!r}: {key} must be >= 1, got {value}")
        return value

    kw = _factory_kwargs(old)
    has_bias = bool(new_sizes.get("bias", getattr(old, "bias", None) is not None))
    new: nn.Module
    if isinstance(old, nn.Conv2d):
        if old.groups != 1:
            raise ValueError(f"cannot resize {name!r}: grouped convolutions are not supported")
        new = nn.Conv2d(
            size("in_channels", old.in_channels),
            size("out_channels", old.out_channels),
            old.kernel_size,
            stride=old.stride,
            padding=old.padding,
            dilation=old.dilation,
            bias=has_bias,
            padding_mode=old.padding_mode,
            **kw,
        )
    elif isinstance(old, nn.Linear):
        new = nn.Linear(
            size("in_features", old.in_features),
            size("out_features", old.out_features),
            bias=has_bias,
            **kw,
        )
    else:
        assert isinstance(old, nn.BatchNorm1d | nn.BatchNorm2d)
        new = type(old)(
            size("num_features", old.num_features),
            eps=old.eps,
            momentum=old.momentum,
            affine=old.affine,
            track_running_stats=old.track_running_stats,
            **kw,
        )
    new.train(old.training)
    return new


def resize_modules(model: nn.Module, sizes: Mapping[str, Mapping[str, int]]) -> nn.Module:
    """Swap the named submodules for new ones of the given sizes, in place; returns ``model``.

    A loader builds the compact architecture with this before ``load_state_dict``, so the new
    modules' values are left uninitialised (freshly constructed). Supports ``nn.Conv2d``
    (``in_channels`` / ``out_channels``; kernel, stride, padding, dilation, bias presence and
    padding mode are kept; ``groups`` must be 1), ``nn.Linear`` (``in_features`` /
    ``out_features``) and ``nn.BatchNorm1d/2d`` (``num_features``); ``"bias": 0/1`` adds or
    drops the bias of a Conv2d / Linear. Unknown names, types or keys raise ``ValueError``.
    """
    for name, new_sizes in sizes.items():
        if not name:
            raise ValueError("cannot resize the root module ''")
        try:
            old = model.get_submodule(name)
        except AttributeError as exc:
            raise ValueError(f"model has no submodule named {name!r}") from exc
        allowed = _RESIZABLE_KEYS.get(type(old))
        if allowed is None:
            raise ValueError(f"cannot resize {name!r}: unsupported type {type(old).__name__}")
        unknown = sorted(set(new_sizes) - allowed)
        if unknown:
            raise ValueError(f"cannot resize {name!r}: unknown size keys {', '.join(unknown)}")
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, _rebuilt(name, old, new_sizes))
    return model


# -- working copies of the layers in prunable groups ------------------------------------------

Op = Callable[[Tensor], Tensor]


@dataclass
class _Layer:
    """Working copy (float64, CPU) of a module in some group, and the original indices kept."""

    module: nn.Module
    tensors: dict[str, Tensor]
    out_kept: list[int]
    in_kept: list[int] = field(default_factory=list)
    changed: bool = False
    bias_created: bool = False


def _working_copy(module: nn.Module) -> _Layer:
    tensors = {
        k: v.detach().to("cpu", torch.float64).clone()
        for k, v in list(module.named_parameters(recurse=False))
        + list(module.named_buffers(recurse=False))
        if k in ("weight", "bias", "running_mean", "running_var")
    }
    if isinstance(module, nn.Conv2d | nn.Linear):
        n_out, n_in = module.weight.shape[:2]
        return _Layer(module, tensors, list(range(n_out)), list(range(n_in)))
    assert isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d)
    return _Layer(module, tensors, list(range(module.num_features)))


def _bn_op(layer: _Layer) -> Op:
    eps = float(layer.module.eps)

    def op(x: Tensor) -> Tensor:
        t = layer.tensors
        return F.batch_norm(
            x, t["running_mean"], t["running_var"], t.get("weight"), t.get("bias"), False, 0.0, eps
        )

    return op


# -- removing channels -----------------------------------------------------------------------


def _input_slices(consumer: _Layer, n: int, block: int) -> Tensor:
    """The consumer's weights as (channel, out, inputs-per-channel)."""
    w = consumer.tensors["weight"]
    if w.dim() == 4:
        return w.transpose(0, 1).reshape(n, w.shape[0], -1)
    return w.reshape(w.shape[0], n, block).transpose(0, 1)


def _consumer_columns(consumer: _Layer, idx: Tensor, block: int) -> Tensor:
    if consumer.tensors["weight"].dim() == 4:
        return idx
    return (idx[:, None] * block + torch.arange(block)).flatten()


def _pads_with_zeros(module: nn.Module) -> bool:
    """Whether a consumer conv sees zeros, not the constant, at its borders."""
    if not isinstance(module, nn.Conv2d) or module.padding_mode != "zeros":
        return False
    if isinstance(module.padding, str):
        return module.padding == "same" and any(
            (k - 1) * d > 0 for k, d in zip(module.kernel_size, module.dilation, strict=True)
        )
    return any(p > 0 for p in module.padding)


Constants = tuple[Tensor, Tensor, Tensor]  # per channel: value, is constant, is exactly zero


def _group_constants(
    trace: GroupTrace, layers: dict[str, _Layer], modules: dict[str, nn.Module], n: int
) -> dict[str, Constants]:
    """Per consumer, what it reads on each channel when every producer outputs only its bias:
    the value, whether it is the same at every position, and whether it is exactly zero."""
    values: dict[fx.Node, Tensor] = {}
    with torch.no_grad():
        for step in trace.steps:
            if step.kind == "producer":
                bias = layers[step.module].tensors.get("bias")
                base = torch.zeros(n, dtype=torch.float64) if bias is None else bias
                meta = step.node.meta["tensor_meta"]
                spatial = tuple(meta.shape[2:])
                x = base.view(1, n, *(1,) * len(spatial)).expand(1, n, *spatial).clone()
            elif step.kind == "add":
                a, b = step.inputs
                x = values[a] + values[b]
            else:  # a copy each time: in-place modules must not touch a value read elsewhere
                x = values[step.inputs[0]].clone()
                if step.kind == "batchnorm":
                    x = _bn_op(layers[step.module])(x)
                elif step.kind == "flatten":
                    x = x.flatten(1)
                elif step.kind == "op":
                    x = node_op(step.node, modules)(x)
            values[step.node] = x
    result = {}
    for consumer, (node, _) in trace.consumer_inputs.items():
        y = values[node].reshape(n, -1)
        value = y.mean(dim=1)
        spread = (y - value[:, None]).abs().amax(dim=1)
        is_const = torch.isfinite(value) & (spread <= 1e-12 * value.abs().clamp_min(1.0))
        result[consumer] = (value, is_const, (y == 0).all(dim=1))
    return result


def _compact_group(
    trace: GroupTrace, layers: dict[str, _Layer], modules: dict[str, nn.Module]
) -> bool:
    """Remove the channels rules (a) and (b) of the module doc allow; True when anything changed."""
    group = trace.group
    n = len(layers[group.producers[0]].out_kept)
    slices = {
        name: _input_slices(layers[name], n, block)
        for name, (_, block) in trace.consumer_inputs.items()
    }
    dead = torch.ones(n, dtype=torch.bool)
    for s in slices.values():
        dead &= (s == 0).flatten(1).all(dim=1)
    constant = ~dead
    for name in group.producers:
        constant &= (layers[name].tensors["weight"].reshape(n, -1) == 0).all(dim=1)
    fold = torch.zeros(n, dtype=torch.bool)
    consts: dict[str, Constants] = {}
    if constant.any():
        consts = _group_constants(trace, layers, modules, n)
        fold = constant.clone()
        for name, (_, is_const, is_zero) in consts.items():
            padded = _pads_with_zeros(layers[name].module)  # sees 0, not the constant, at borders
            fold &= is_zero | (is_const & (not padded))
    remove = dead | fold
    changed = False
    survivor = None
    if remove.all():  # keep one channel, zeroed, so the layers keep valid shapes
        survivor = int(dead.nonzero()[0]) if dead.any() else 0
        remove[survivor] = False
    for name, (value, _, is_zero) in consts.items():
        here = fold & ~is_zero
        if not here.any():
            continue
        cons = layers[name]
        if "bias" not in cons.tensors:
            cons.tensors["bias"] = torch.zeros(slices[name].shape[1], dtype=torch.float64)
            cons.bias_created = True
        cons.tensors["bias"] += (slices[name].sum(dim=2) * value[:, None])[here].sum(dim=0)
        changed = cons.changed = True
    if survivor is not None:
        for name, (_, block) in trace.consumer_inputs.items():
            if bool((slices[name][survivor] != 0).any()):
                cons = layers[name]
                cols = _consumer_columns(cons, torch.tensor([survivor]), block)
                cons.tensors["weight"][:, cols] = 0
                changed = cons.changed = True
    if remove.any():
        keep = (~remove).nonzero().flatten()
        for name in [*group.producers, *group.batchnorms]:
            part = layers[name]
            for key, t in part.tensors.items():
                if key == "weight" or t.dim() == 1:
                    part.tensors[key] = t[keep]
            part.out_kept = [part.out_kept[i] for i in keep.tolist()]
            part.changed = True
        for name, (_, block) in trace.consumer_inputs.items():
            cons = layers[name]
            cols = _consumer_columns(cons, keep, block)
            cons.tensors["weight"] = cons.tensors["weight"][:, cols]
            cons.in_kept = [cons.in_kept[i] for i in cols.tolist()]
            cons.changed = True
        changed = True
    return changed


def _changes(layer: _Layer) -> tuple[dict[str, int], dict[str, list[int]]]:
    m = layer.module
    sizes: dict[str, int] = {}
    kept: dict[str, list[int]] = {}
    if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
        if len(layer.out_kept) != m.num_features:
            sizes["num_features"], kept["out"] = len(layer.out_kept), layer.out_kept
        return sizes, kept
    assert isinstance(m, nn.Conv2d | nn.Linear)
    n_out, n_in = m.weight.shape[:2]
    conv = isinstance(m, nn.Conv2d)
    out_key, in_key = ("out_channels", "in_channels") if conv else ("out_features", "in_features")
    if len(layer.out_kept) != n_out:
        sizes[out_key], kept["out"] = len(layer.out_kept), layer.out_kept
    if len(layer.in_kept) != n_in:
        sizes[in_key], kept["in"] = len(layer.in_kept), layer.in_kept
    if layer.bias_created:
        sizes["bias"] = 1
    return sizes, kept


def compact_model(model: nn.Module, example_input: Tensor) -> CompactResult:
    """Return a smaller copy of ``model`` with dead and constant units removed (see module doc).

    ``example_input`` (any batch size) drives the shape propagation that tells how many
    ``Linear`` inputs one channel becomes after a flatten. The input model is left untouched;
    the copy agrees with it in eval mode.
    """
    work = copy.deepcopy(model)
    modes = {name: m.training for name, m in model.named_modules()}
    gm = trace_model(work, example_input)
    work.eval()
    modules = dict(gm.named_modules())
    traces = [t for t in trace_groups(gm) if t.group.prunable]
    layers: dict[str, _Layer] = {}
    for t in traces:
        for name in [*t.group.producers, *t.group.batchnorms, *t.group.consumers]:
            if name not in layers:
                layers[name] = _working_copy(modules[name])
    changed = True
    while changed:  # to a fixed point: each removal can enable others up- and downstream
        changed = False
        for t in traces:
            changed |= _compact_group(t, layers, modules)
    for name, m in work.named_modules():
        m.training = modes[name]

    sizes: dict[str, dict[str, int]] = {}
    kept: dict[str, dict[str, list[int]]] = {}
    for name, layer in layers.items():
        s, k = _changes(layer)
        if s:
            sizes[name] = s
        if k:
            kept[name] = k
    resize_modules(work, sizes)
    with torch.no_grad():
        for name, layer in layers.items():
            if not layer.changed:
                continue
            new, old = work.get_submodule(name), layer.module
            for key, value in layer.tensors.items():
                target = getattr(new, key)
                target.copy_(value)
                reference = getattr(old, key, None)
                if reference is None:  # a bias created by folding
                    reference = old.weight
                if isinstance(target, nn.Parameter):
                    target.requires_grad_(reference.requires_grad)
            if new is not old and getattr(old, "num_batches_tracked", None) is not None:
                new.num_batches_tracked.copy_(old.num_batches_tracked)
    return CompactResult(
        model=work,
        sizes=sizes,
        kept=kept,
        params_before=sum(p.numel() for p in model.parameters()),
        params_after=sum(p.numel() for p in work.parameters()),
    )
