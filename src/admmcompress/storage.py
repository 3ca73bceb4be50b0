"""How many bytes a compressed layer needs, under an encoding simple enough to implement.

Per layer, the cheapest of three encodings of the sparsity pattern is chosen:

- ``dense``: every weight stored, no index (what an unpruned layer uses);
- ``bitmask``: one bit per weight position, then the non-zero values;
- ``relative``: Deep Compression's relative index: each non-zero stores the gap to the
  previous one in ``b`` bits (best ``b`` in 1..16); a gap that does not fit is bridged by
  filler entries holding a zero value.

Values take 32 bits (fp32) unless the layer is quantized (binary 1 bit, ternary 2, b-bit
uniform b); each scale takes 32 bits. Biases and BatchNorm parameters are not counted, as the
papers' storage rates count weights only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

SCALE_BITS = 32


@dataclass(frozen=True)
class LayerStorage:
    encoding: str  # dense | bitmask | relative
    index_bits: int  # bits of the sparsity pattern (bitmask or relative indices)
    value_bits: int  # bits of the stored values, fillers included
    scale_bits: int
    relative_index_width: int | None  # b for the relative encoding

    @property
    def total_bits(self) -> int:
        return self.index_bits + self.value_bits + self.scale_bits

    @property
    def bytes(self) -> int:
        return (self.total_bits + 7) // 8

    def as_dict(self) -> dict[str, int | str | None]:
        return {**asdict(self), "total_bits": self.total_bits, "bytes": self.bytes}


def relative_index_entries(nonzero: Tensor, width: int) -> int:
    """Entries (real and filler) needed to store the positions ``nonzero`` with ``width`` bits."""
    if nonzero.numel() == 0:
        return 0
    pos = nonzero.to(torch.int64)
    gaps = torch.diff(pos, prepend=pos.new_tensor([-1])) - 1  # zeros skipped before each entry
    fillers = torch.div(gaps, 1 << width, rounding_mode="floor")
    return int(pos.numel() + fillers.sum())


def layer_storage(w: Tensor, bits_per_value: int = 32, num_scales: int = 0) -> LayerStorage:
    """The cheapest encoding of ``w``'s non-zeros, with values of ``bits_per_value`` bits."""
    flat = w.detach().flatten()
    numel = flat.numel()
    positions = torch.nonzero(flat, as_tuple=True)[0]
    nnz = int(positions.numel())
    scale_bits = num_scales * SCALE_BITS
    options = [
        LayerStorage("dense", 0, numel * bits_per_value, scale_bits, None),
        LayerStorage("bitmask", numel, nnz * bits_per_value, scale_bits, None),
    ]
    for width in range(1, 17):
        entries = relative_index_entries(positions, width)
        options.append(
            LayerStorage("relative", entries * width, entries * bits_per_value, scale_bits, width)
        )
    return min(options, key=lambda s: (s.total_bits, s.encoding != "dense"))
