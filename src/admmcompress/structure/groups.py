"""Coupled channel groups: which layers must lose the same channels together.

A filter of one convolution is not always the producer's own business. With BatchNorm and
residual connections one channel index is shared by several layers: in
``relu(bn2(conv2(h)) + x)`` channel ``c`` of ``conv2``, of ``bn2``, of whatever produced ``x``
and of every layer that reads the sum is one and the same channel. Removing it from one member
alone changes the shapes (or the values) of the others, so structured pruning and compact
export must treat the whole *channel group* as one unit.

How groups are found
--------------------
``torch.fx.symbolic_trace`` turns the model into a graph (modules from ``torch.nn`` are leaves)
and ``ShapeProp`` runs ``example_input`` through it in eval mode, without gradients, to record
every tensor's shape; the model's train/eval flags are restored afterwards. The graph is then
walked once, in execution order, giving every tensor with a channel dimension (dim 1) a
*channel space*; spaces are merged with a union-find:

1. A *producer* is an ``nn.Conv2d`` with ``groups == 1`` on a 4-D tensor, or an ``nn.Linear``
   on a 2-D one, called exactly once and sharing no parameters. It opens a new space for its
   output channels, and it is a *consumer* of its input's space: it reads those channels
   through its input dimension.
2. Channel-preserving ops carry their input's space to their output: eval-mode BatchNorm (with
   running statistics; it becomes a member of the group), element-wise activations (ReLU,
   GELU, Sigmoid, ...), Dropout, Identity, max/avg/adaptive pooling, and ``flatten`` /
   ``view(N, -1)`` to ``(N, C*H*W)``, after which one channel is a block of ``H*W``
   consecutive features.
3. An element-wise sum of two tensors of the same shape (``a + b``, ``a += b``,
   ``torch.add(a, b)``, ``a.add(b)``) merges the spaces of both inputs, and the result is in
   the merged space. This is what couples a residual block: the sum ties ``conv2``'s channels
   to the shortcut's. The merging is transitive: an identity shortcut passes a block's input,
   itself the previous block's sum, straight into the next sum, so the stem convolution (or the
   stage's projection shortcut) and every ``conv2`` of a ResNet stage end up in one group, with
   every layer that reads the stage as its consumers. A 1x1 projection shortcut is an ordinary
   producer, so it separates the stages: it consumes the previous stage's group and produces
   into the next one.
4. Anything else pins every space it touches (the group is reported with ``prunable=False``
   and a reason): the network input, the graph output, ``cat``, multiplication, a sum with a
   constant or with broadcasting, reading the channel count (``x.size(1)``), a hard-coded
   ``view``, a grouped (e.g. depthwise) convolution, any other call, an in-place op on a
   tensor that is read again elsewhere; likewise a producer or BatchNorm called more than once
   or whose parameters are shared or read elsewhere; and a group that no layer reads. A
   pinned op's output starts a new, pinned space, so the layers reading it are listed as its
   consumers. Batch-size reads (``x.size(0)``, ``x.shape[0]``) are harmless and ignored.

Each final space is one ``ChannelGroup``: its producers (whose output channels it is), the
BatchNorms on its paths, its consumers (whose input channels it is) and its channel count.
Every op on a group's paths acts on each channel separately, and channel ``c`` reaches nothing
outside the group, so deleting ``c`` from every member at once (filter ``c`` of each producer,
entry ``c`` of each BatchNorm, input channel ``c`` of each consumer) leaves all other
channels' values unchanged; ``compact`` decides when that also leaves the outputs unchanged.
Groups with a single producer and consumer are the plain conv -> conv case; they are listed
too, so that the groups describe the whole model.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import math
import operator
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

__all__ = [
    "ChannelGroup",
    "batchnorm_masks",
    "channel_groups",
    "coupled_filter_scores",
    "coupled_layer_sets",
    "describe_groups",
]


@dataclass
class ChannelGroup:
    """Layers whose channels share one index and must be pruned together (see module doc).

    ``producers`` own the channels as output filters (rows), ``batchnorms`` as entries and
    ``consumers`` as input channels (for a Linear after a flatten: blocks of ``H * W`` input
    features). Names are submodule names in execution order. ``prunable`` is False, with the
    reason, when something outside the rules above touches the group.
    """

    producers: list[str]
    batchnorms: list[str]
    consumers: list[str]
    channels: int
    prunable: bool = True
    reason: str = ""


# -- ops that keep channels apart ------------------------------------------------------------

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
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_", "__add__", "__iadd__"}
_MUL_FUNCTIONS = {operator.mul, operator.imul, torch.mul}
_MUL_METHODS = {"mul", "mul_", "__mul__", "__imul__"}
_CAT_FUNCTIONS = {torch.cat, torch.concat, torch.stack}


# -- the traced graph, as compact export needs it --------------------------------------------


@dataclass(frozen=True)
class Step:
    """One tensor of a group: how its per-channel value follows from the group's tensors.

    ``kind`` is ``"producer"`` (a fresh output of ``module``), ``"batchnorm"`` (``module``),
    ``"op"`` (an activation or pooling: ``node_op``), ``"identity"``, ``"flatten"`` or
    ``"add"`` (the sum of the two ``inputs``).
    """

    node: fx.Node
    kind: str
    inputs: tuple[fx.Node, ...] = ()
    module: str = ""


@dataclass
class GroupTrace:
    """A group with its graph: ``steps`` in execution order, and per consumer the tensor it
    reads and how many of its inputs one channel is (1, or ``H * W`` after a flatten)."""

    group: ChannelGroup
    steps: list[Step]
    consumer_inputs: dict[str, tuple[fx.Node, int]]


class _Spaces:
    """Union-find over channel spaces, each with the reasons it is pinned."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.reasons: list[list[str]] = []

    def new(self, reason: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.reasons.append([reason] if reason else [])
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            ra, rb = min(ra, rb), max(ra, rb)
            self.parent[rb] = ra
            self.reasons[ra] += self.reasons[rb]
        return ra

    def pin(self, i: int, reason: str) -> None:
        self.reasons[self.find(i)].append(reason)


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


def _flattens(shape: tuple[int, ...], out: tuple[int, ...]) -> bool:
    return len(shape) >= 2 and out == (shape[0], math.prod(shape[1:]))


def _dropout_training(user: fx.Node) -> bool:
    if "training" in user.kwargs:
        return bool(user.kwargs["training"])
    return bool(user.args[2]) if len(user.args) > 2 else True


def node_op(node: fx.Node, modules: dict[str, nn.Module]) -> Callable[[Tensor], Tensor]:
    """The node's op with its tensor argument replaced, for evaluating constant channels."""
    if node.op == "call_module":
        return modules[str(node.target)]
    rest, kwargs = node.args[1:], dict(node.kwargs)
    if node.op == "call_method":
        return lambda x: getattr(x, str(node.target))(*rest, **kwargs)
    fn = node.target
    assert callable(fn)
    return lambda x: fn(x, *rest, **kwargs)


def _is_producer(module: nn.Module, shape: tuple[int, ...] | None) -> bool:
    if type(module) is nn.Conv2d:
        return module.groups == 1 and shape is not None and len(shape) == 4
    return type(module) is nn.Linear and shape is not None and len(shape) == 2


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


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        module = modules[str(node.target)]
        grouped = "grouped " if isinstance(module, nn.Conv2d) and module.groups != 1 else ""
        return f"{grouped}{type(module).__name__} {node.target!r}"
    if node.op == "call_method":
        return f".{node.target}()"
    return getattr(node.target, "__name__", str(node.target))


def _is_add(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _ADD_FUNCTIONS
    return node.op == "call_method" and node.target in _ADD_METHODS


def _in_place(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether the op overwrites its first argument (``relu_``, ``+=``, ``inplace=True``)."""
    if node.op == "call_module":
        return bool(getattr(modules[str(node.target)], "inplace", False))
    if node.op == "call_method":
        name = str(node.target)
        return name.startswith("__i") or (name.endswith("_") and not name.endswith("__"))
    if node.target in (operator.iadd, operator.imul) or node.target in (F.relu_, torch.relu_):
        return True
    try:
        bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return bool(bound.arguments.get("inplace", False))


def _pin_reason(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_function" and node.target in _CAT_FUNCTIONS:
        return "cat"
    if (node.op == "call_function" and node.target in _MUL_FUNCTIONS) or (
        node.op == "call_method" and node.target in _MUL_METHODS
    ):
        return "multiplication"
    if _is_add(node):
        return "add with a constant or a broadcast"
    return f"unsupported op {_describe(node, modules)}"


def _preserving_kind(
    node: fx.Node,
    shape: tuple[int, ...],
    block: int,
    modules: dict[str, nn.Module],
    usable: Callable[[str], bool],
) -> str | None:
    """The step kind of a channel-preserving op reading ``node.args[0]``, or None."""
    out = _shape(node)
    if out is None:
        return None
    pool_ok = len(shape) >= 3 and len(out) == len(shape) and out[:2] == shape[:2]
    if node.op == "call_module":
        name = str(node.target)
        module = modules[name]
        kind = type(module)
        if kind in (nn.BatchNorm1d, nn.BatchNorm2d):
            ok = usable(name) and module.running_mean is not None and block == 1
            return "batchnorm" if ok and out == shape else None
        if kind in _ELEMENTWISE_MODULES:
            return "op" if out == shape else None
        if kind in _IDENTITY_MODULES:
            return "identity" if out == shape else None
        if kind in _POOL_MODULES:
            return "op" if pool_ok else None
        if kind is nn.Flatten:
            return "flatten" if _flattens(shape, out) else None
        return None
    if node.op not in ("call_function", "call_method"):
        return None
    if _is_flatten_to_batch(node):  # may read x.size(0): extra nodes are fine here
        return "flatten" if _flattens(shape, out) else None
    if len(_nodes_in((node.args[1:], node.kwargs))) > 0:
        return None
    target = node.target
    if target in _ELEMENTWISE_FUNCTIONS or target in _ELEMENTWISE_METHODS:
        return "op" if out == shape else None
    if target in _DROPOUT_FUNCTIONS:
        return "identity" if out == shape and not _dropout_training(node) else None
    if target in _POOL_FUNCTIONS:
        return "op" if pool_ok else None
    return None


def trace_groups(gm: fx.GraphModule) -> list[GroupTrace]:
    """The channel groups of a traced, shape-propagated graph (the algorithm in the module doc).

    Groups come in the order their first tensor is computed; pinned ones are included. Used by
    ``channel_groups`` and by ``compact.compact_model``.
    """
    modules = dict(gm.named_modules())
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    unsafe = _modules_with_outside_use(gm, modules)

    def usable(name: str) -> bool:
        return calls[name] == 1 and name not in unsafe

    spaces = _Spaces()
    tracked: dict[fx.Node, tuple[int, int]] = {}  # tensor -> (space, inputs per channel)
    steps: list[tuple[int, Step]] = []
    consumers: list[tuple[int, str, fx.Node, int]] = []

    def pin_all(nodes: list[fx.Node], reason: str) -> None:
        for n in nodes:
            spaces.pin(tracked[n][0], reason)

    for node in gm.graph.nodes:
        ins = [n for n in _nodes_in((node.args, node.kwargs)) if n in tracked]
        shape = _shape(node)
        if node.op == "placeholder":
            if shape is not None and len(shape) >= 2:
                tracked[node] = (spaces.new("network input"), 1)
            continue
        if node.op == "output":
            pin_all(ins, "graph output")
            continue
        src = node.args[0] if node.args else None
        if node.op == "call_module" and _is_producer(modules[str(node.target)], shape):
            name = str(node.target)
            bad = None if usable(name) else "module called twice or sharing parameters"
            if ins:
                if bad is None and ins == [src] and len(node.args) == 1 and not node.kwargs:
                    space, block = tracked[src]
                    consumers.append((space, name, src, block))
                else:
                    pin_all(ins, bad or f"unusual call of {name!r}")
            out = spaces.new(bad)
            tracked[node] = (out, 1)
            steps.append((out, Step(node, "producer", module=name)))
            continue
        if not ins:
            continue
        if len(ins) == 1 and _is_batch_query(node, ins[0]):
            continue
        if isinstance(src, fx.Node) and src in tracked and _in_place(node, modules):
            readers = [u for u in src.users if u is not node and not _is_batch_query(u, src)]
            if readers:  # they would see this op's result, not src's: too subtle to follow
                pin_all(ins, "in-place op on a tensor that is read again")
                tracked[node] = (spaces.new("in-place op on a tensor that is read again"), 1)
                continue
        if ins == [src]:
            space, block = tracked[src]
            kind = _preserving_kind(node, _shape(src) or (), block, modules, usable)
            if kind is not None:
                assert shape is not None
                if kind == "flatten":
                    block *= math.prod((_shape(src) or ())[2:])
                name = str(node.target) if kind == "batchnorm" else ""
                tracked[node] = (space, block)
                steps.append((space, Step(node, kind, (src,), name)))
                continue
        if _is_add(node) and len(node.args) == 2 and not node.kwargs and len(ins) == 2:
            a, b = node.args
            if (
                isinstance(a, fx.Node)
                and isinstance(b, fx.Node)
                and a in tracked
                and b in tracked
                and _shape(a) == _shape(b) == shape
                and tracked[a][1] == tracked[b][1]
            ):
                space = spaces.union(tracked[a][0], tracked[b][0])
                tracked[node] = (space, tracked[a][1])
                steps.append((space, Step(node, "add", (a, b))))
                continue
        reason = _pin_reason(node, modules)
        pin_all(ins, reason)
        if shape is not None and len(shape) >= 2:  # its readers see channels we cannot follow
            tracked[node] = (spaces.new(f"output of {_describe(node, modules)}"), 1)

    return _collect(gm, spaces, tracked, steps, consumers)


def _collect(
    gm: fx.GraphModule,
    spaces: _Spaces,
    tracked: dict[fx.Node, tuple[int, int]],
    steps: list[tuple[int, Step]],
    consumers: list[tuple[int, str, fx.Node, int]],
) -> list[GroupTrace]:
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    first: dict[int, int] = {}
    counts: dict[int, set[int]] = {}
    for node, (space, block) in tracked.items():
        root = spaces.find(space)
        first[root] = min(first.get(root, order[node]), order[node])
        shape = _shape(node)
        if shape is not None and len(shape) >= 2:
            counts.setdefault(root, set()).add(shape[1] // block)
    traces: dict[int, GroupTrace] = {}

    def trace(space: int) -> GroupTrace:
        root = spaces.find(space)
        if root not in traces:
            channels = sorted(counts.get(root, {0}))
            traces[root] = GroupTrace(ChannelGroup([], [], [], channels[0]), [], {})
            if len(channels) > 1:
                spaces.pin(root, "inconsistent channel counts")
        return traces[root]

    for space, step in steps:
        t = trace(space)
        t.steps.append(step)
        if step.kind == "producer":
            t.group.producers.append(step.module)
        elif step.kind == "batchnorm":
            t.group.batchnorms.append(step.module)
    for space, name, node, block in consumers:
        t = trace(space)
        t.group.consumers.append(name)
        t.consumer_inputs[name] = (node, block)
    for root in first:
        t = trace(root)
        if t.group.producers and not t.group.consumers and not spaces.reasons[root]:
            spaces.pin(root, "no consumer layer")
    result = []
    for root in sorted(traces, key=first.__getitem__):
        t = traces[root]
        reasons = list(dict.fromkeys(spaces.reasons[root]))
        t.group.prunable = not reasons
        t.group.reason = "; ".join(reasons)
        if t.group.producers or t.group.consumers:
            result.append(t)
    return result


def trace_model(model: nn.Module, example_input: Tensor) -> fx.GraphModule:
    """``symbolic_trace`` + ``ShapeProp`` in eval mode; the model's flags are restored after.

    The graph shares the model's submodules, so eval mode matters: a training-mode BatchNorm
    would update its running statistics while the example passes through.
    """
    modes = {name: m.training for name, m in model.named_modules()}
    model.eval()
    try:
        try:
            gm = fx.symbolic_trace(model)
        except Exception as exc:
            raise ValueError(f"channel groups need a torch.fx-traceable model: {exc}") from exc
        # ShapeProp prints the traceback of a failing node before raising: keep it for the
        # error it raises instead (a caller may turn that into one message)
        printed = io.StringIO()
        with torch.no_grad(), contextlib.redirect_stderr(printed):
            ShapeProp(gm).propagate(example_input)
    finally:
        for name, m in model.named_modules():
            m.training = modes[name]
    return gm


def channel_groups(model: nn.Module, example_input: Tensor) -> list[ChannelGroup]:
    """Every channel group of ``model`` (see the module doc), pinned ones included.

    ``example_input`` (any batch size) is run once through the traced graph for its shapes;
    the model itself is not changed.
    """
    return [t.group for t in trace_groups(trace_model(model, example_input))]


def describe_groups(groups: list[ChannelGroup]) -> str:
    """A plain-text table of ``groups``: one row each, the pin reason last."""
    header = ("#", "channels", "producers", "batchnorms", "consumers", "status")
    rows = [
        (
            str(i),
            str(g.channels),
            ", ".join(g.producers) or "-",
            ", ".join(g.batchnorms) or "-",
            ", ".join(g.consumers) or "-",
            "prunable" if g.prunable else f"pinned: {g.reason}",
        )
        for i, g in enumerate(groups)
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]

    def line(row: tuple[str, ...]) -> str:
        cells = [
            c.rjust(w) if i < 2 else c.ljust(w)
            for i, (c, w) in enumerate(zip(row[:-1], widths, strict=True))
        ]
        return "  ".join([*cells, row[-1]]).rstrip()

    return "\n".join(line(r) for r in [header, *rows])


def coupled_filter_scores(model: nn.Module, group: ChannelGroup) -> Tensor:
    """One importance score per channel of ``group``: the sum over its producers of that
    channel's squared filter norm (conv filter or Linear row), in float32 on the first
    producer's device.

    A group's channel can only be removed from all producers at once, so a structured-pruning
    rule should rank the group's channels by one shared score and zero the same channels in
    every producer; per-layer rankings would zero different channels in each producer, and
    compact export could then remove none of them.
    """
    if not group.producers:
        raise ValueError("the group has no producers to score")
    total: Tensor | None = None
    for name in group.producers:
        w = model.get_submodule(name).weight.detach()
        if w.shape[0] != group.channels:
            raise ValueError(
                f"{name!r} has {w.shape[0]} filters, the group {group.channels} channels"
            )
        score = w.reshape(w.shape[0], -1).float().pow(2).sum(dim=1)
        total = score if total is None else total + score.to(total.device)
    assert total is not None
    return total


def coupled_layer_sets(
    model: nn.Module, groups: list[ChannelGroup], axes: dict[str, str]
) -> tuple[list[tuple[str, ...]], list[str]]:
    """The layers that structured pruning must prune together, and why some groups cannot
    shrink.

    ``axes`` maps a layer to the kind of its structured rule (``"filter"`` or ``"channel"``).
    Returns, per prunable group, the producers under filter rules (they must drop the same
    filters) and the consumers under channel rules (the same input channels) when there are
    two or more of them: the ``couple`` argument of ``ADMM``. The notes name groups that
    cannot lose a channel whatever the rules give: filter-pruned producers beside producers
    without a filter rule, channel-pruned consumers beside consumers without a channel rule.
    A consumer that reads the group through a flatten (several features per channel) is left
    to its own rule and named in the notes, since it keeps the channels in use.
    """
    sets: list[tuple[str, ...]] = []
    notes: list[str] = []
    for g in groups:
        if not g.prunable:
            continue
        readers = [
            c
            for c in g.consumers
            if model.get_submodule(c).weight.shape[1] == g.channels  # not through a flatten
        ]
        for members, everyone, axis, role in (
            (g.producers, g.producers, "filter", "writes"),
            (readers, g.consumers, "channel", "reads"),
        ):
            ruled = [n for n in members if axes.get(n) == axis]
            if not ruled:
                continue
            if len(ruled) > 1:
                sets.append(tuple(ruled))
            free = [n for n in everyone if n not in ruled]  # flatten readers count here
            if free:
                notes.append(
                    f"{', '.join(ruled)} ({axis} rules) share channels with {', '.join(free)}, "
                    f"which also {role} them without a {axis} rule: pruned {axis}s stay zero "
                    f"but no channel can be removed; give those layers the same {axis} rule"
                )
    return sets, notes


def batchnorm_masks(
    model: nn.Module, groups: list[ChannelGroup], masks: dict[str, Tensor]
) -> dict[str, Tensor]:
    """Entries of the groups' BatchNorms whose channel every producer has pruned whole.

    Keyed ``"<bn>.weight"`` and ``"<bn>.bias"`` (False: held at zero). With its filters gone
    a channel still carries the BatchNorm's shift; zeroing its scale and shift as well makes
    the channel exactly zero, in training and in eval mode, so compact export can remove it.
    Only groups whose producers all have masks are covered.
    """
    out: dict[str, Tensor] = {}
    for g in groups:
        if not g.prunable or not g.batchnorms or not g.producers:
            continue
        if not all(p in masks for p in g.producers):
            continue
        alive = torch.zeros(g.channels, dtype=torch.bool)
        for p in g.producers:
            m = masks[p]
            alive |= m.reshape(m.shape[0], -1).any(dim=1).cpu()
        if bool(alive.all()):
            continue
        for bn in g.batchnorms:
            module = model.get_submodule(bn)
            for param in ("weight", "bias"):
                if getattr(module, param, None) is not None:
                    out[f"{bn}.{param}"] = alive.to(getattr(module, param).device)
    return out
