"""ONNX: the dense-equivalent model for other runtimes (onnxruntime, TensorRT, ...).

Written only: ONNX holds no masks or quantization grids, so it cannot be read back as a
compressed model. Needs the optional packages (``pip install 'admmcompress[onnx]'``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .model_file import ModelFile, ModelFileError
from .registry import FileFormat, register_format

ONNX_HINT = "ONNX export needs the optional packages: pip install 'admmcompress[onnx]'"


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], out: Path) -> None:
    """The dense-equivalent model as ONNX (opset from torch's exporter), batch size dynamic."""
    try:
        import onnxscript  # noqa: F401  (torch's exporter needs it; fail with a clear hint)
    except ImportError:
        raise ModelFileError(ONNX_HINT) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, *input_shape)
    torch.onnx.export(
        model.eval(),
        (example,),
        str(out),
        input_names=["input"],
        output_names=["output"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
        dynamo=True,
        verbose=False,
        external_data=False,
    )


def _write(mf: ModelFile, out: Path, **_: object) -> None:
    if mf.input_shape is None:
        raise ModelFileError(
            f"ONNX export needs the model's input shape, which {mf.path} does not record: "
            "pass --input-shape, e.g. --input-shape 1,28,28"
        )
    export_onnx(mf.model, tuple(mf.input_shape), out)


register_format(FileFormat("onnx", ".onnx", "ONNX model", write=_write))
