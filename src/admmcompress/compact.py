"""Compact export: physically remove pruned units, giving an ordinary, smaller ``nn.Module``.

Pruning leaves zeros in full-size tensors; this module deletes the units that can no longer
matter, so the exported model is smaller and faster, not just sparse. ``torch.fx`` traces the
model and ``ShapeProp`` propagates ``example_input``; every producer layer (``nn.Conv2d`` with
``groups == 1``, ``nn.Linear``) is followed through channel-preserving ops (ReLU and other
element-wise activations, max/avg/adaptive pooling, eval-mode BatchNorm, Dropout, Identity,
flatten / ``view(N, -1)``) to its single consumer layer. Channel ``c`` on such a path is removed

(a) when the consumer's input slice for ``c`` is all zero: the producer's filter, its bias entry
    and the BatchNorm entries on the path are then unused; or
(b) when the producer's weight slice for ``c`` is all zero: the channel is then a constant (the
    op chain applied to its bias, evaluated numerically in float64), which is folded exactly
    into the consumer's bias (one is created if needed). A consumer convolution with zero
    padding sees that constant only away from the borders, so there the channel is pinned
    unless the constant is exactly 0.

Removals feed each other (a dropped fc2 input can leave an fc1 neuron dead, which can leave a
conv channel dead), so this repeats to a fixed point. The network's inputs and the outputs of
the final layer are never touched, and every layer keeps at least one channel (zeroed if all
could go) so that shapes stay valid.

Anything else on a path pins the producer's channels: a second consumer, ``add`` / ``cat`` /
``mul``, the graph output, an unknown call, a module called twice or with shared parameters.
Residual and other coupled channel groups are therefore left full-size for now (a later issue).

Constants are computed with eval-mode semantics: BatchNorm uses its running statistics and
Dropout is the identity. The compact model matches the original in ``eval()`` mode; its
modules keep the original train/eval flags.
"""

from __future__ import annotations

import copy
import math
import operator
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

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


# -- finding producer -> consumer paths ------------------------------------------------------

Op = Callable[[Tensor], Tensor]

_ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
)
_IDENTITY_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)
_POOL_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)
_ELEMENTWISE_FUNCTIONS = {
    F.relu,
    F.relu_,
    torch.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.gelu,
    F.silu,
    F.hardtanh,
    torch.sigmoid,
    torch.tanh,
}
_ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "tanh"}
_DROPOUT_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d}
_POOL_FUNCTIONS = {
    F.max_pool1d,
    F.max_pool2d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
}


@dataclass
class _Layer:
    """Working copy (float64, CPU) of a module on some path, and the original indices kept."""

    module: nn.Module
    tensors: dict[str, Tensor]
    out_kept: list[int]
    in_kept: list[int] = field(default_factory=list)
    changed: bool = False
    bias_created: bool = False


@dataclass
class _Edge:
    """A producer's channels reaching a single consumer through channel-preserving ops."""

    producer: str
    consumer: str
    ops: list[Op]
    bns: list[str]
    block: int  # consumer inputs per channel: 1, or H*W after a flatten
    spatial: tuple[int, ...]  # the producer's output size past (N, C)


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def _nodes_in(args: object) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(args, lambda n: found.append(n) or n)
    return found


def _is_batch_query(user: fx.Node, node: fx.Node) -> bool:
    """``x.size(0)``, ``x.shape[0]``, ``x.dim()``: reads that compaction leaves unchanged."""
    if user.op == "call_method" and user.target == "dim":
        return len(user.args) == 1 and not user.kwargs
    if user.op == "call_method" and user.target == "size":
        dims = list(user.args[1:]) + list(user.kwargs.values())
        return dims == [0] and user.args[0] is node
    if user.op == "call_function" and user.target is getattr and user.args[1:] == ("shape",):
        return all(
            u.op == "call_function" and u.target is operator.getitem and u.args[1] == 0
            for u in user.users
        )
    return False


def _is_flatten_to_batch(user: fx.Node) -> bool:
    """Whether ``user`` flattens all but the batch dim in a way that does not hard-code sizes."""
    if user.target in (torch.flatten, "flatten"):
        return True  # the caller's shape check confirms (N, rest...) -> (N, prod(rest))
    if user.target in ("view", "reshape") or user.target is torch.reshape:
        dims = list(user.args[1:])
        if len(dims) == 1 and isinstance(dims[0], tuple | list):
            dims = list(dims[0])
        # (batch, -1): the batch may be a literal or a node such as x.size(0)
        return len(dims) == 2 and dims[1] == -1 and not user.kwargs
    return False


def _call(user: fx.Node) -> Op:
    """The user's op with its tensor argument replaced, for evaluating a constant channel."""
    rest, kwargs = user.args[1:], dict(user.kwargs)
    if user.op == "call_method":
        return lambda x: getattr(x, str(user.target))(*rest, **kwargs)
    fn = user.target
    assert callable(fn)
    return lambda x: fn(x, *rest, **kwargs)


def _dropout_training(user: fx.Node) -> bool:
    if "training" in user.kwargs:
        return bool(user.kwargs["training"])
    return bool(user.args[2]) if len(user.args) > 2 else True


def _bn_op(layer: _Layer) -> Op:
    eps = float(layer.module.eps)

    def op(x: Tensor) -> Tensor:
        t = layer.tensors
        return F.batch_norm(
            x, t["running_mean"], t["running_var"], t.get("weight"), t.get("bias"), False, 0.0, eps
        )

    return op


def _find_edges(
    gm: fx.GraphModule, modules: dict[str, nn.Module], layers: dict[str, _Layer]
) -> list[_Edge]:
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    unsafe = _modules_with_outside_use(gm, modules)

    def usable(name: str) -> bool:
        return calls[name] == 1 and name not in unsafe

    def layer(name: str) -> _Layer:
        if name not in layers:
            layers[name] = _working_copy(modules[name])
        return layers[name]

    edges = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not _is_producer(modules[node.target], _shape(node)):
            continue
        if not usable(node.target):
            continue
        edge = _follow(node, modules, usable, layer)
        if edge is not None:
            edges.append(edge)
    return edges


def _modules_with_outside_use(gm: fx.GraphModule, modules: dict[str, nn.Module]) -> set[str]:
    """Modules whose parameters are read outside their own call or shared with another module."""
    unsafe = set()
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            unsafe.add(str(node.target).rpartition(".")[0])
    owners: dict[int, list[str]] = {}
    for name, module in modules.items():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(name)
        for b in module.buffers(recurse=False):
            owners.setdefault(id(b), []).append(name)
    for names in owners.values():
        if len(names) > 1:
            unsafe.update(names)
    return unsafe


def _is_producer(module: nn.Module, shape: tuple[int, ...] | None) -> bool:
    if type(module) is nn.Conv2d:
        return module.groups == 1 and shape is not None and len(shape) == 4
    return type(module) is nn.Linear and shape is not None and len(shape) == 2


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


def _follow(
    start: fx.Node,
    modules: dict[str, nn.Module],
    usable: Callable[[str], bool],
    layer: Callable[[str], _Layer],
) -> _Edge | None:
    """Walk from a producer to its consumer; None (pinned) on anything not channel-preserving."""
    start_shape = _shape(start)
    assert start_shape is not None
    node, shape = start, start_shape
    ops: list[Op] = []
    bns: list[str] = []
    block, flat = 1, len(start_shape) == 2
    while True:
        users = [u for u in node.users if not _is_batch_query(u, node)]
        if len(users) != 1:
            return None
        user = users[0]
        if not user.args or user.args[0] is not node:
            return None
        if _nodes_in((user.args, user.kwargs)).count(node) != 1:
            return None
        out = _shape(user)
        if out is None:
            return None
        extra_nodes = _nodes_in((user.args[1:], user.kwargs))

        if user.op == "call_module":
            name = str(user.target)
            module = modules[name]
            kind = type(module)
            if kind is nn.Linear or kind is nn.Conv2d:  # the consumer
                if kind is nn.Linear:
                    fits = len(shape) == 2
                else:
                    fits = not flat and len(shape) == 4 and module.groups == 1
                if not usable(name) or not fits or user.kwargs:
                    return None
                layer(str(start.target))
                layer(name)
                return _Edge(str(start.target), name, ops, bns, block, start_shape[2:])
            if kind in (nn.BatchNorm1d, nn.BatchNorm2d):
                if not usable(name) or flat or module.running_mean is None or out != shape:
                    return None
                bns.append(name)
                ops.append(_bn_op(layer(name)))
            elif kind in _ELEMENTWISE_MODULES or kind in _IDENTITY_MODULES:
                if out != shape:
                    return None
                if kind in _ELEMENTWISE_MODULES:
                    ops.append(module)
            elif kind in _POOL_MODULES:
                if flat or len(out) != len(shape) or out[:2] != shape[:2]:
                    return None
                ops.append(module)
            elif kind is nn.Flatten:
                if not _flattens(shape, out):
                    return None
                block, flat = block * math.prod(shape[2:]), True
                ops.append(lambda x: x.flatten(1))
            else:
                return None
        elif user.op in ("call_function", "call_method"):
            target = user.target
            if _is_flatten_to_batch(user) and _flattens(shape, out):
                block, flat = block * math.prod(shape[2:]), True
                ops.append(lambda x: x.flatten(1))
            elif extra_nodes:
                return None
            elif target in _ELEMENTWISE_FUNCTIONS or target in _ELEMENTWISE_METHODS:
                if out != shape:
                    return None
                ops.append(_call(user))
            elif target in _DROPOUT_FUNCTIONS:
                if out != shape or _dropout_training(user):
                    return None
            elif target in _POOL_FUNCTIONS:
                if flat or len(out) != len(shape) or out[:2] != shape[:2]:
                    return None
                ops.append(_call(user))
            else:
                return None
        else:
            return None
        node, shape = user, out


def _flattens(shape: tuple[int, ...], out: tuple[int, ...]) -> bool:
    return len(shape) >= 2 and out == (shape[0], math.prod(shape[1:]))


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


def _chain_constants(edge: _Edge, producer: _Layer, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per channel of a zero-weight producer: its constant downstream value, whether it is
    constant (e.g. not for padded average pooling), and whether it is exactly zero."""
    bias = producer.tensors.get("bias")
    base = torch.zeros(n, dtype=torch.float64) if bias is None else bias
    x = base.view(1, n, *(1,) * len(edge.spatial)).expand(1, n, *edge.spatial).clone()
    with torch.no_grad():
        for op in edge.ops:
            x = op(x)
    y = x.reshape(n, -1)
    value = y.mean(dim=1)
    spread = (y - value[:, None]).abs().amax(dim=1)
    is_const = torch.isfinite(value) & (spread <= 1e-12 * value.abs().clamp_min(1.0))
    return value, is_const, (y == 0).all(dim=1)


def _compact_edge(edge: _Edge, layers: dict[str, _Layer]) -> bool:
    """Remove what one edge allows; True when anything changed."""
    prod, cons = layers[edge.producer], layers[edge.consumer]
    n = len(prod.out_kept)
    slices = _input_slices(cons, n, edge.block)
    dead = (slices == 0).flatten(1).all(dim=1)
    constant = (prod.tensors["weight"].reshape(n, -1) == 0).all(dim=1) & ~dead
    remove = dead.clone()
    fold = torch.zeros(n, dtype=torch.bool)
    value = torch.zeros(n, dtype=torch.float64)
    if constant.any():
        value, is_const, is_zero = _chain_constants(edge, prod, n)
        remove |= constant & is_zero
        if not _pads_with_zeros(cons.module):
            fold = constant & is_const & ~is_zero
            remove |= fold
    changed = False
    survivor = None
    if remove.all():  # keep one channel, zeroed, so the layers keep valid shapes
        survivor = int(dead.nonzero()[0]) if dead.any() else 0
        remove[survivor] = False
    if fold.any():
        if "bias" not in cons.tensors:
            cons.tensors["bias"] = torch.zeros(slices.shape[1], dtype=torch.float64)
            cons.bias_created = True
        cons.tensors["bias"] += (slices.sum(dim=2) * value[:, None])[fold].sum(dim=0)
        changed = cons.changed = True
    if survivor is not None and bool((slices[survivor] != 0).any()):
        cols = _consumer_columns(cons, torch.tensor([survivor]), edge.block)
        cons.tensors["weight"][:, cols] = 0
        changed = cons.changed = True
    if remove.any():
        keep = (~remove).nonzero().flatten()
        for name in [edge.producer, *edge.bns]:
            part = layers[name]
            for key, t in part.tensors.items():
                if key == "weight" or t.dim() == 1:
                    part.tensors[key] = t[keep]
            part.out_kept = [part.out_kept[i] for i in keep.tolist()]
            part.changed = True
        cols = _consumer_columns(cons, keep, edge.block)
        cons.tensors["weight"] = cons.tensors["weight"][:, cols]
        cons.in_kept = [cons.in_kept[i] for i in cols.tolist()]
        changed = cons.changed = True
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
    work.eval()
    try:
        gm = fx.symbolic_trace(work)
    except Exception as exc:
        raise ValueError(f"compact_model needs a torch.fx-traceable model: {exc}") from exc
    with torch.no_grad():
        ShapeProp(gm).propagate(example_input)
    modules = dict(work.named_modules())
    layers: dict[str, _Layer] = {}
    edges = _find_edges(gm, modules, layers)
    changed = True
    while changed:  # to a fixed point: each removal can enable others up- and downstream
        changed = False
        for edge in edges:
            changed |= _compact_edge(edge, layers)
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
