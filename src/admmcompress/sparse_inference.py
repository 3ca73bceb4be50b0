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

Where sparse loses (benchmarks/sparse_inference.py has the numbers): small layers (10x100,
10x500, about even at 100x300), at batch 1 because a CSR call has a fixed cost a small
dense product does not exceed, and at batch 256 as well; and convolutions at large batches,
where ``F.unfold`` alone costs about as much as the dense (oneDNN) convolution. Large sparse
layers gain 2.5-7x, at batch 1 and 256 alike.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LayerInfo",
    "SparseConv2d",
    "SparseLinear",
    "SparsifyReport",
    "density",
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


def sparsify(
    model: nn.Module, max_density: float = 0.3, *, skip: Collection[str] = ()
) -> nn.Module:
    """A deep copy of ``model`` with each sparse enough Linear / Conv2d(groups=1) as CSR.

    A layer is converted when its weight density is <= ``max_density``; denser layers, those
    named in ``skip``, unsupported convolutions and subclasses of Linear / Conv2d (which may
    use ``.weight`` in ways a twin cannot follow) stay dense. ``model`` is left untouched.
    The returned model carries a ``SparsifyReport`` as ``.sparsify_report``. Its sparse
    layers hold buffers only, so it is for inference: no gradients, no training.
    """
    if isinstance(max_density, bool) or not (
        isinstance(max_density, (int, float)) and 0.0 < max_density <= 1.0
    ):
        raise ValueError(
            f"max_density must be a number in (0, 1] (the largest fraction of non-zero weights "
            f"a layer may have to be made sparse), got {max_density!r}"
        )
    skip = {skip} if isinstance(skip, str) else set(skip)
    unknown = skip - {name for name, _ in model.named_modules()}
    if unknown:
        raise ValueError(f"skip names layers the model does not have: {sorted(unknown)}")
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
        if why_not is None:
            twin = (
                SparseLinear.from_dense(module)
                if kind == "Linear"
                else SparseConv2d.from_dense(module)
            )
            replacements.append((name, twin))
            report.layers.append(LayerInfo(name, kind, d, True, f"density {d:.4f}"))
        else:
            report.layers.append(LayerInfo(name, kind, d, False, why_not))
    for name, twin in replacements:
        if name == "":
            out = twin
        else:
            parent_name, _, attr = name.rpartition(".")
            setattr(out.get_submodule(parent_name), attr, twin)
    out.sparsify_report = report
    return out
