"""Sparse CPU inference for irregularly pruned models: CSR twins of Linear and Conv2d.

A pruned layer keeps its full dense weight, zeros included, so dense inference gains
nothing from pruning. ``sparsify`` swaps every layer that is sparse enough for a twin that
stores only the non-zeros (torch sparse CSR) and multiplies with them. Inference only:
float32, CPU, no autograd through the weights.

Kernel choice. Median time per call, 1 thread, torch 2.14 CPU (MKL), on the layers of the
LeNet-5 (310x) and LeNet-300-100 (62x) record models, the other core busy with training:

    layer (out x in, density)                 l5.fc1 500x800  l3.fc1 300x784  l3.fc3 10x100
                                                     0.15%           1.2%           28%
    batch 1   dense F.linear                        26.4 us         13.3 us         1.7 us
              CSR int32, addmv(b, W, x)              3.0 us          4.0 us         2.6 us
              CSR int32, mv(W, x) + b                3.5 us          4.5 us         3.2 us
              CSR int64, addmv(b, W, x)              4.3 us          5.6 us         4.0 us
              CSR int32, addmm(b, W, x.T)            7.0 us          6.0 us         3.9 us
              CSR, F.linear(x, W)                    8.4 us          9.2 us         7.5 us
              COO, mv(W, x) + b                     15.8 us         63.0 us         8.7 us
              gather x[col] * w, index_add           5.7 us         14.2 us         4.4 us
              x @ W.T with W.T in CSR               42.7 us          143 us        32.7 us
    batch 256 dense F.linear                        1085 us          657 us         9.0 us
              CSR int32, addmm(b, W, x.T), x.T
                already contiguous                    26 us           42 us         6.0 us
              same, x row-major (x.T is copied)      146 us          156 us        19.8 us
              COO, addmm(b, W, x.T), x.T contig.      30 us           98 us        10.3 us
              x @ W.T with W.T in CSR                215 us          497 us        47.9 us

Hence: CSR with int32 indices (int64 ones cost ~1.3 us more per call; COO is slower
everywhere), ``torch.addmv`` at batch 1 (one call, bias fused), and ``W @ x.T`` with
``torch.addmm`` at larger batches, where the transpose copy of a row-major input costs more
than the product itself. So the batch>1 result is returned as the transposed view of the
``(out, batch)`` product: no copy, and the next sparse layer (through element-wise ops such
as ReLU, which keep strides) finds its ``x.T`` already contiguous; a stack of sparse layers
pays the transpose once, at its input. Dense @ sparse (``x @ W.T``) is always the slowest.
At batch 1 the Python around the kernel matters too: reading a registered buffer through
``nn.Module.__getattr__`` costs ~0.5 us, so ``forward`` uses plain-attribute aliases.

Batch-1 chains: ``fuse_linear_chain`` / ``SparseMLP``. Per-layer ``sparsify`` leaves
LeNet-300-100's fully connected layers only ~1.4x faster than the eager dense ones at batch
1: fc2 (100x300) and fc3 (10x100) cost as much sparse as dense, and per layer the Python
around the kernel (``nn.Module.__call__`` ~1.3 us, the twin's reshapes ~2 us) is as large as
the kernel. ``fuse_linear_chain`` runs a ``[flatten] -> Linear -> [ReLU] -> ...`` model as one
module whose batch-1 ``forward`` is a loop of ``addmv`` (+ in-place ReLU), each layer CSR
or dense (a dense ``addmv``, faster than ``F.linear``'s matrix-matrix product at batch 1),
with ``autotune=True`` picking per layer by timing that very call. Medians of 15
interleaved rounds (benchmarks/sparse_inference.py, 1 thread, the other core busy), fully
connected layers of LeNet-300-100 at batch 1, against the eager dense layers (36.3 us):

    sparsify(max_density=0.3), eager CSR modules                26.2 us   1.39x
    sparsify(autotune=True): fc3 dense                          26.2 us   1.39x
    compact_model, dense (259 and 89 hidden units left)         33.4 us   1.09x
    torch.jit.script, dense                                     27.7 us   1.31x
    fused, all dense                                            24.1 us   1.51x
    compact + fused, all dense (the fastest dense form)         20.8 us   1.74x
    fused, CSR by density (all three CSR)                       16.2 us   2.24x
    fused, autotune (fc1 CSR; fc2, fc3 dense)                   14.3 us   2.53x
    compact + fused, autotune (fc1 CSR; fc2, fc3 dense)         13.6 us   2.67x

So the 2x goal is met against eager dense PyTorch, but a good part of it is not sparsity:
over the fastest dense form (compacted, fused) the sparse chain is 1.53x, and CSR pays
only in fc1 (4.0 against 13.2 us dense; fc2 3.1 against 2.9, fc3 2.8 against 1.2). For
LeNet-5's fc1-fc2 the same variant is 5.35x against eager dense, 1.36x against compact +
fused dense (compaction alone removes most of fc1's dead units). What is left at batch 1
(LeNet-300-100, autotuned): kernels ~9 us, ReLUs and reshapes ~3.5 us, the loop ~0.7 us,
the module call ~1.3 us. Tried and dropped: ``torch.jit.script`` of the fused sparse chain
(it runs CSR ``addmv``, but 15.2 us against 13.0 us for the Python ``forward``, and scripted
dense gains only 1.3x); ``addmv(..., out=buffer)`` into preallocated buffers (~0.6 us less
per layer, but a module that is not safe to call from two threads). Autotune times batch 1
only: at batch 256 the autotuned chain keeps fc2 dense where CSR would win, and reaches
2.74x where CSR by density reaches 3.54x.

Where sparse loses (benchmarks/sparse_inference.py has the numbers): small layers (10x100,
10x500, about even at 100x300), at batch 1 because a CSR call has a fixed cost a small
dense product does not exceed, and at batch 256 as well; and convolutions at large batches,
where ``F.unfold`` alone costs about as much as the dense (oneDNN) convolution. Large sparse
layers gain 2.5-7x, at batch 1 and 256 alike.
"""

from __future__ import annotations

import copy
import itertools
import math
import statistics
import time
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

__all__ = [
    "LayerInfo",
    "SparseConv2d",
    "SparseLinear",
    "SparseMLP",
    "SparsifyReport",
    "density",
    "fuse_linear_chain",
    "sparsify",
    "to_csr",
]


def density(weight: Tensor) -> float:
    """Fraction of non-zero entries (1.0 for an empty tensor: nothing to gain)."""
    n = weight.numel()
    return float(torch.count_nonzero(weight).item()) / n if n else 1.0


def to_csr(weight2d: Tensor) -> Tensor:
    """A 2-D float32 CPU tensor as sparse CSR with int32 indices.

    int32 because the MKL kernel behind CPU CSR products takes int32 indices and converts
    int64 ones on every call (about 1.3 us per batch-1 call, measured).
    """
    if weight2d.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(weight2d.shape)}")
    w = weight2d.detach().to(device="cpu", dtype=torch.float32)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": known, not actionable
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support.*")
        csr = w.to_sparse_csr()
        crow = csr.crow_indices().to(torch.int32)
        col = csr.col_indices().to(torch.int32)
        return torch.sparse_csr_tensor(
            crow, col, csr.values().clone(), size=csr.shape, check_invariants=True
        )


class _CSRModule(nn.Module):
    """Base of the sparse twins: fast attribute access in ``forward``, and deep copies.

    ``forward`` reads the weight and bias as plain attributes ``_w`` and ``_b``: a registered
    buffer is found through ``nn.Module.__getattr__``, about 0.5 us per access, as much as a
    whole op at batch 1. The buffers stay registered for ``state_dict``; ``_apply`` (``.to``,
    ``.float`` ...) re-points the aliases.

    ``copy.deepcopy`` of a CSR tensor fails in torch ("Cannot access storage of
    SparseCsrTensorImpl"), which would break ``deepcopy`` (and so ``sparsify``) of any model
    holding a sparse twin; the CSR buffers are cloned instead.
    """

    weight: Tensor
    bias: Tensor | None

    def _register(self, weight_csr: Tensor, bias: Tensor | None) -> None:
        self.register_buffer("weight", weight_csr)
        b = None if bias is None else bias.detach().to(device="cpu", dtype=torch.float32).clone()
        self.register_buffer("bias", b)
        self._alias()

    def _alias(self) -> None:
        self._w = self.weight
        self._b = self.bias

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]  # nn.Module's signature
        out = super()._apply(fn, recurse)
        self._alias()
        return out

    def __deepcopy__(self, memo: dict[int, Any]) -> _CSRModule:
        for b in self._buffers.values():
            if b is not None and b.layout == torch.sparse_csr and id(b) not in memo:
                memo[id(b)] = b.clone()
        new = copy.copy(self)
        memo[id(self)] = new
        new.__dict__ = copy.deepcopy(self.__dict__, memo)
        return new


class SparseLinear(_CSRModule):
    """``nn.Linear`` for inference with the weight stored as CSR (see the module docstring).

    With a batch > 1 the 2-D output is a transposed view (``y.T`` of an ``(out, batch)``
    tensor): values and shape are those of ``nn.Linear``, only ``is_contiguous()`` differs.
    Call ``.contiguous()`` where a ``view`` of it is needed.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"SparseLinear needs a 2-D weight, got {tuple(weight.shape)}")
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        self._register(to_csr(weight), bias)
        self.density = density(weight)

    @classmethod
    def from_dense(cls, linear: nn.Linear) -> SparseLinear:
        return cls(linear.weight, linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        w, b = self._w, self._b
        if x.dim() == 2 and x.shape[0] == 1:  # batch 1: one matrix-vector call, bias fused
            y = torch.mv(w, x[0]) if b is None else torch.addmv(b, w, x[0])
            return y.unsqueeze(0)
        x2 = x.reshape(-1, self.in_features)
        # W @ x.T, returned as its transpose (a view); an (out, 1) bias broadcasts over columns
        y = torch.mm(w, x2.T).T if b is None else torch.addmm(b[:, None], w, x2.T).T
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    def to_dense(self) -> nn.Linear:
        """The equivalent ``nn.Linear`` (for checks and comparisons)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(self.weight.to_dense())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, density={self.density:.4f}"
        )


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _conv_supported(conv: nn.Conv2d) -> str | None:
    """Why ``conv`` cannot get a sparse twin, or None when it can."""
    if conv.groups != 1:
        return f"groups={conv.groups} (only groups=1 is supported)"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} (only 'zeros' is supported)"
    if isinstance(conv.padding, str) and conv.padding != "valid":
        return f"padding={conv.padding!r} (give the padding as numbers)"
    return None


class SparseConv2d(_CSRModule):
    """``nn.Conv2d`` (groups=1, zero padding) as im2col (``F.unfold``) times a CSR weight.

    At batch 1 the unfolded input is already the ``(C*kh*kw, L)`` matrix the CSR product
    wants; at larger batches each image is multiplied in turn into one preallocated output,
    which measured faster than one product over a transposed copy of all columns (13.9 ms
    against 25.6 ms for LeNet-5's conv2 at batch 256) -- both lose to dense there, since
    ``F.unfold`` alone costs about as much as the dense convolution.
    """

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor | None = None,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
    ) -> None:
        super().__init__()
        if weight.dim() != 4:
            raise ValueError(f"SparseConv2d needs a 4-D weight, got {tuple(weight.shape)}")
        out_ch, in_ch, kh, kw = (int(s) for s in weight.shape)
        self.in_channels, self.out_channels = in_ch, out_ch
        self.kernel_size = (kh, kw)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self._register(to_csr(weight.reshape(out_ch, -1)), bias)
        self.density = density(weight)

    @classmethod
    def from_dense(cls, conv: nn.Conv2d) -> SparseConv2d:
        reason = _conv_supported(conv)
        if reason is not None:
            raise ValueError(f"cannot make a SparseConv2d from this Conv2d: {reason}")
        padding = (0, 0) if conv.padding == "valid" else conv.padding
        return cls(conv.weight, conv.bias, conv.stride, padding, conv.dilation)

    def _out_size(self, h: int, w: int) -> tuple[int, int]:
        size = []
        for n, k, s, p, d in zip(
            (h, w), self.kernel_size, self.stride, self.padding, self.dilation, strict=True
        ):
            size.append((n + 2 * p - d * (k - 1) - 1) // s + 1)
        return size[0], size[1]

    def _mm(self, cols: Tensor, out: Tensor | None = None) -> Tensor:
        if self._b is None:
            return torch.mm(self._w, cols, out=out)
        return torch.addmm(self._b[:, None], self._w, cols, out=out)

    def forward(self, x: Tensor) -> Tensor:
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        n, _, h, w = x.shape
        ho, wo = self._out_size(h, w)
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        if n == 1:
            y = self._mm(cols[0]).view(1, self.out_channels, ho, wo)
        else:
            y = x.new_empty(n, self.out_channels, ho * wo)
            for i in range(n):
                self._mm(cols[i], out=y[i])
            y = y.view(n, self.out_channels, ho, wo)
        return y[0] if unbatched else y

    def to_dense(self) -> nn.Conv2d:
        """The equivalent ``nn.Conv2d`` (for checks and comparisons)."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            bias=self.bias is not None,
        )
        with torch.no_grad():
            conv.weight.copy_(self.weight.to_dense().view_as(conv.weight))
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"bias={self.bias is not None}, density={self.density:.4f}"
        )


@dataclass
class LayerInfo:
    name: str
    kind: str  # "Linear" or "Conv2d"
    density: float
    sparse: bool
    reason: str  # why it was converted or left dense
    # with autotune: median seconds per batch-1 call of the dense and the CSR form, else None
    dense_s: float | None = None
    sparse_s: float | None = None


@dataclass
class SparsifyReport:
    """What ``sparsify`` did to each Linear / Conv2d, in module order."""

    max_density: float
    layers: list[LayerInfo] = field(default_factory=list)

    @property
    def converted(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.sparse]

    @property
    def dense(self) -> list[str]:
        return [layer.name for layer in self.layers if not layer.sparse]


def _check_max_density(max_density: object) -> None:
    if isinstance(max_density, bool) or not (
        isinstance(max_density, (int, float)) and 0.0 < max_density <= 1.0
    ):
        raise ValueError(
            f"max_density must be a number in (0, 1] (the largest fraction of non-zero weights "
            f"a layer may have to be made sparse), got {max_density!r}"
        )


def _check_skip(model: nn.Module, skip: Collection[str]) -> set[str]:
    names = {skip} if isinstance(skip, str) else set(skip)
    unknown = names - {name for name, _ in model.named_modules()}
    if unknown:
        raise ValueError(f"skip names layers the model does not have: {sorted(unknown)}")
    return names


def interleaved_timings(
    fns: dict[str, Callable[[], object]], rounds: int = 9, block_s: float = 1e-3
) -> dict[str, list[float]]:
    """Seconds per call of each function, one sample per round; the rounds interleave them.

    Each block of calls lasts about ``block_s``; the order alternates between rounds, so that
    load from other processes hits every function alike. Runs under ``torch.inference_mode``.
    """
    samples: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        calls: dict[str, int] = {}
        for name, fn in fns.items():
            fn()  # first call: allocations, kernel selection, MKL handles
            t0, n = time.perf_counter(), 0
            while n < 5 or time.perf_counter() - t0 < min(block_s, 0.05):
                fn()
                n += 1
            calls[name] = max(1, math.ceil(block_s * n / (time.perf_counter() - t0)))
        order = list(fns)
        for r in range(rounds):
            for name in order if r % 2 == 0 else order[::-1]:
                fn, n = fns[name], calls[name]
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                samples[name].append((time.perf_counter() - t0) / n)
    return samples


def _median_times(
    fns: dict[str, Callable[[], object]], rounds: int = 9, block_s: float = 1e-3
) -> dict[str, float]:
    """Median seconds per call of each function (see ``interleaved_timings``)."""
    samples = interleaved_timings(fns, rounds, block_s)
    return {name: statistics.median(v) for name, v in samples.items()}


def _timed_choice(
    name: str, d: float, dense_fn: Callable[[], object], sparse_fn: Callable[[], object]
) -> LayerInfo:
    """Time both forms of one layer at batch 1 and keep the faster (autotune)."""
    t = _median_times({"dense": dense_fn, "sparse": sparse_fn})
    faster = t["sparse"] < t["dense"]
    reason = (
        f"density {d:.4f}; batch 1 timed: CSR {t['sparse'] * 1e6:.1f} us, "
        f"dense {t['dense'] * 1e6:.1f} us"
    )
    return LayerInfo(name, "Linear", d, faster, reason, t["dense"], t["sparse"])


def _dense_linear_twin(module: nn.Module) -> nn.Linear:
    """A dense ``nn.Linear`` equal to ``module`` (an ``nn.Linear`` or a ``SparseLinear``)."""
    return module.to_dense() if isinstance(module, SparseLinear) else module


def sparsify(
    model: nn.Module,
    max_density: float = 0.3,
    *,
    skip: Collection[str] = (),
    autotune: bool = False,
) -> nn.Module:
    """A deep copy of ``model`` with each sparse enough Linear / Conv2d(groups=1) as CSR.

    A layer is converted when its weight density is <= ``max_density``; denser layers, those
    named in ``skip``, unsupported convolutions and subclasses of Linear / Conv2d (which may
    use ``.weight`` in ways a twin cannot follow) stay dense. ``model`` is left untouched.
    The returned model carries a ``SparsifyReport`` as ``.sparsify_report``. Its sparse
    layers hold buffers only, so it is for inference: no gradients, no training.

    ``autotune=True`` also times each Linear that passes those rules, dense against CSR, on a
    random batch-1 input (``forward`` of each, interleaved rounds, medians; ~20 ms a layer)
    and keeps the faster: small layers, where a CSR call's fixed cost exceeds the dense
    product, stay dense. The choice then depends on the machine and its load at conversion
    time; the report holds the times. Convolutions are decided by density alone (their
    input size is not known here). Without ``autotune`` the result is deterministic.
    """
    _check_max_density(max_density)
    skip = _check_skip(model, skip)
    out = copy.deepcopy(model)
    report = SparsifyReport(max_density=float(max_density))
    replacements: list[tuple[str, nn.Module]] = []
    for name, module in out.named_modules():
        if type(module) is nn.Linear:
            kind, why_not = "Linear", None
        elif type(module) is nn.Conv2d:
            kind, why_not = "Conv2d", _conv_supported(module)
        else:
            continue
        d = density(module.weight)
        if why_not is None and module.weight.device.type != "cpu":
            why_not = f"weight on {module.weight.device} (CPU only)"
        if why_not is None and module.weight.dtype != torch.float32:
            why_not = f"weight dtype {module.weight.dtype} (only float32 is supported)"
        if why_not is None and name in skip:
            why_not = "in skip"
        if why_not is None and not d <= max_density:
            why_not = f"density {d:.4f} > max_density {max_density}"
        if why_not is not None:
            report.layers.append(LayerInfo(name, kind, d, False, why_not))
            continue
        if kind == "Linear":
            twin: nn.Module = SparseLinear.from_dense(module)
            info = LayerInfo(name, kind, d, True, f"density {d:.4f}")
            if autotune:
                x = torch.randn(1, twin.in_features)
                info = _timed_choice(
                    name, d, lambda m=module, x=x: m.forward(x), lambda m=twin, x=x: m.forward(x)
                )
        else:
            twin = SparseConv2d.from_dense(module)
            note = " (Conv2d: not timed)" if autotune else ""
            info = LayerInfo(name, kind, d, True, f"density {d:.4f}{note}")
        report.layers.append(info)
        if info.sparse:
            replacements.append((name, twin))
    for name, twin in replacements:
        if name == "":
            out = twin
        else:
            parent_name, _, attr = name.rpartition(".")
            setattr(out.get_submodule(parent_name), attr, twin)
    out.sparsify_report = report
    return out


class SparseMLP(nn.Module):
    """A chain ``[flatten] -> Linear -> [ReLU] -> Linear -> ...`` run in one ``forward``.

    Each layer is an ``nn.Linear`` or a ``SparseLinear`` (so dense and CSR layers can mix:
    ``fuse_linear_chain`` picks per layer). At batch 1 ``forward`` is one loop of
    ``torch.addmv(bias, W, v)`` (+ in-place ReLU) over plain-attribute tensors: no
    ``nn.Module.__call__`` per layer (~1.3 us each), no reshape between layers, and a dense
    layer runs as a matrix-vector product, which MKL does faster than the matrix-matrix one
    ``F.linear`` uses for a ``(1, in)`` input. At other batch sizes it calls each layer's own
    ``forward`` in turn, so results and costs are those of the eager layers.

    ``flatten=True`` flattens the input from dim 1 first (as ``x.flatten(1)``). Inference
    only: no hooks run on the inner layers, and a ``SparseLinear`` holds buffers only.
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        relu: Sequence[bool] | None = None,
        *,
        flatten: bool = False,
    ) -> None:
        super().__init__()
        layers = list(layers)
        if not layers:
            raise ValueError("SparseMLP needs at least one layer")
        for layer in layers:
            if type(layer) not in (nn.Linear, SparseLinear):
                raise TypeError(f"SparseMLP layers must be nn.Linear or SparseLinear, got {layer}")
        for a, b in itertools.pairwise(layers):
            if a.out_features != b.in_features:
                raise ValueError(
                    f"layer sizes do not chain: {a.out_features} outputs feed "
                    f"{b.in_features} inputs"
                )
        relu = [True] * (len(layers) - 1) + [False] if relu is None else [bool(r) for r in relu]
        if len(relu) != len(layers):
            raise ValueError(f"relu needs one flag per layer ({len(layers)}), got {len(relu)}")
        self.layers = nn.ModuleList(layers)
        self.relu = tuple(relu)
        self.flatten = bool(flatten)
        self.in_features = int(layers[0].in_features)
        self.out_features = int(layers[-1].out_features)
        self._alias()

    def _alias(self) -> None:
        """Plain-attribute (weight, bias, relu) per layer for the batch-1 loop."""
        steps = []
        for layer, relu in zip(self.layers, self.relu, strict=True):
            w = layer.weight
            b = layer.bias
            if b is None:  # addmv needs one: a zero bias costs nothing measurable
                b = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
            steps.append((w, b, relu))
        self._steps = tuple(steps)
        self._mods = tuple(self.layers)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]  # nn.Module's signature
        out = super()._apply(fn, recurse)
        self._alias()
        return out

    def __deepcopy__(self, memo: dict[int, Any]) -> SparseMLP:
        # the aliases would make deepcopy meet the CSR tensors before their modules do
        new = copy.copy(self)
        memo[id(self)] = new
        state = {k: v for k, v in self.__dict__.items() if k not in ("_steps", "_mods")}
        new.__dict__ = copy.deepcopy(state, memo)
        new._alias()
        return new

    def forward(self, x: Tensor) -> Tensor:
        d = x.dim()
        if (d == 2 or (d > 2 and self.flatten)) and x.shape[0] == 1:
            v = x.reshape(-1)
            for w, b, relu in self._steps:
                v = torch.addmv(b, w, v)
                if relu:
                    v = torch.relu_(v)
            return v.unsqueeze(0)
        if self.flatten:
            x = x.flatten(1)
        for layer, relu in zip(self._mods, self.relu, strict=True):
            x = layer.forward(x)
            if relu:
                x = torch.relu(x)
        return x

    def extra_repr(self) -> str:
        return f"flatten={self.flatten}, relu={list(self.relu)}"


class _ChainTracer(fx.Tracer):
    """torch.fx tracer that keeps the sparse twins whole (their ``forward`` branches)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (_CSRModule, SparseMLP)) or super().is_leaf_module(
            m, module_qualified_name
        )


_RELU_FUNCTIONS = (F.relu, F.relu_, torch.relu, torch.relu_)


def _flatten_dims(args: tuple[Any, ...], kwargs: dict[str, Any], default_start: int) -> bool:
    """Whether a flatten call's arguments (after the tensor) are start_dim=1, end_dim=-1."""
    start = args[0] if args else kwargs.get("start_dim", default_start)
    end = args[1] if len(args) > 1 else kwargs.get("end_dim", -1)
    return start == 1 and end == -1


def _chain_step(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """'linear', 'relu', 'flatten' or 'identity' for a node a chain may hold, else None."""
    if node.op == "call_module":
        m = modules[str(node.target)]
        if type(m) in (nn.Linear, SparseLinear):
            return "linear"
        if type(m) is nn.ReLU:
            return "relu"
        if type(m) is nn.Flatten and m.start_dim == 1 and m.end_dim == -1:
            return "flatten"
        if type(m) is nn.Identity or (type(m) is nn.Dropout and not m.training):
            return "identity"
        return None
    if node.op == "call_function":
        if node.target in _RELU_FUNCTIONS:
            return "relu"
        if node.target is torch.flatten and _flatten_dims(node.args[1:], node.kwargs, 0):
            return "flatten"
        return None
    if node.op == "call_method":
        if node.target in ("relu", "relu_"):
            return "relu"
        if node.target == "flatten" and _flatten_dims(node.args[1:], node.kwargs, 0):
            return "flatten"
    return None


def _parse_chain(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], list[bool], bool]:
    """The (name, layer) list, ReLU-after flags and flatten flag of a Linear chain model."""
    if type(model) in (nn.Linear, SparseLinear):
        return [("", model)], [False], False
    form = "[flatten(1)] -> Linear -> [ReLU] -> Linear -> [ReLU] ..."
    try:
        graph = _ChainTracer().trace(model)
    except Exception as exc:
        raise ValueError(f"fuse_linear_chain needs a torch.fx-traceable model: {exc}") from exc
    modules = dict(model.named_modules())
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise ValueError(f"fuse_linear_chain needs a model with one input, got {len(inputs)}")
    layers: list[tuple[str, nn.Module]] = []
    relu: list[bool] = []
    flatten = False
    cur = inputs[0]
    for node in graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            if node.args[0] is not cur:
                raise ValueError(f"the model's output is not the end of a chain {form}")
            break
        kind = _chain_step(node, modules)
        if node.all_input_nodes != [cur] or len(cur.users) != 1 or kind is None:
            raise ValueError(
                f"fuse_linear_chain needs a model that is one chain {form}; "
                f"it cannot take {node.format_node()}"
            )
        if kind == "linear":
            layers.append((str(node.target), modules[str(node.target)]))
            relu.append(False)
        elif kind == "relu":
            if not layers:
                raise ValueError(f"a ReLU before the first Linear is not a chain {form}")
            relu[-1] = True
        elif kind == "flatten":
            if layers:
                raise ValueError(f"a flatten after the first Linear is not a chain {form}")
            flatten = True
        cur = node
    if not layers:
        raise ValueError(f"fuse_linear_chain found no Linear layer in a chain {form}")
    return layers, relu, flatten


def fuse_linear_chain(
    model: nn.Module,
    max_density: float = 0.3,
    *,
    skip: Collection[str] = (),
    autotune: bool = False,
) -> SparseMLP:
    """``model``, a chain of Linear layers with ReLUs, as one ``SparseMLP``, each layer CSR or
    dense.

    ``model`` must trace (torch.fx) to ``[flatten(1)] -> Linear -> [ReLU] -> Linear ...``
    (LeNet-300-100 does; so does an ``nn.Sequential`` of such layers); its Linear layers may
    be ``nn.Linear`` or ``SparseLinear`` (an already sparsified model), and Identity and
    eval-mode Dropout are passed over. Anything else raises ``ValueError``.

    Each layer is made CSR by the rules of ``sparsify`` (``max_density``, ``skip``, float32
    CPU weights). With ``autotune=True`` each such layer is also timed at batch 1 in the form
    the fused loop runs it, ``torch.addmv`` with the dense against the CSR weight
    (interleaved rounds, medians, ~20 ms a layer), and stays dense unless CSR is faster; the
    returned module's ``.sparsify_report`` holds the times. Without ``autotune`` the choice
    is by density alone and deterministic. ``model`` is left untouched.
    """
    _check_max_density(max_density)
    skip = _check_skip(model, skip)
    chain, relu, flatten = _parse_chain(copy.deepcopy(model))
    report = SparsifyReport(max_density=float(max_density))
    layers: list[nn.Module] = []
    for name, module in chain:
        dense = _dense_linear_twin(module)
        w = dense.weight
        d = density(w)
        why_not = None
        if w.device.type != "cpu":
            why_not = f"weight on {w.device} (CPU only)"
        elif w.dtype != torch.float32:
            why_not = f"weight dtype {w.dtype} (only float32 is supported)"
        elif name in skip:
            why_not = "in skip"
        elif not d <= max_density:
            why_not = f"density {d:.4f} > max_density {max_density}"
        if why_not is not None:
            report.layers.append(LayerInfo(name, "Linear", d, False, why_not))
            layers.append(dense)
            continue
        twin = SparseLinear.from_dense(dense)
        info = LayerInfo(name, "Linear", d, True, f"density {d:.4f}")
        if autotune:
            v = torch.randn(dense.in_features)
            wd = w.detach()
            bd = dense.bias.detach() if dense.bias is not None else torch.zeros(w.shape[0])
            ws = twin.weight
            info = _timed_choice(
                name,
                d,
                lambda wd=wd, bd=bd, v=v: torch.addmv(bd, wd, v),
                lambda ws=ws, bd=bd, v=v: torch.addmv(bd, ws, v),
            )
        report.layers.append(info)
        layers.append(twin if info.sparse else dense)
    fused = SparseMLP(layers, relu, flatten=flatten)
    fused.sparsify_report = report
    return fused
