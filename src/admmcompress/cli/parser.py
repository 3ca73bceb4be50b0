"""The ``admmcompress`` command line: its commands and their options.

Only the invoked command's options are built: ``admmcompress --help`` lists the commands
without importing torch, and a command's options (``--format`` reads the format registry)
cost only that command.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from .._version import __version__

DESCRIPTION = """\
Compress a neural network with ADMM weight pruning and quantization.

A run trains (or loads) a model, pulls its weights towards the sparsity (and the few values)
you ask for with ADMM, projects them exactly ("harden"), retrains the remaining weights with
the pruned ones held at zero, verifies the result and writes a run folder with the model, a
report and plots. A progressive run repeats this in steps, each from the last one's model.
"""

EPILOG = """\
examples:
  admmcompress run configs/lenet5_mnist_demo.yaml --out runs/demo
  admmcompress run configs/lenet5_mnist_demo.yaml --out runs/demo --resume
  admmcompress run my.yaml --data-dir /data/datasets   # data outside ./data
  admmcompress run configs/lenet5_mnist_admm.yaml --set admm.rho=0.01 --set retrain.epochs=20
  admmcompress eval runs/demo
  admmcompress report runs/demo
  admmcompress export runs/demo && admmcompress inspect runs/demo/model.admmz
  admmcompress sensitivity configs/lenet5_mnist_record.yaml --weights runs/demo --rate 300
"""

ALLOW_IMPORT_HELP = (
    "rebuild a model that the file names by an import path (package.module:factory); "
    "this imports and runs that module, so only use it for files you trust"
)


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,28,28, got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"dimensions must be positive, got {text!r}")
    if len(dims) > 4 or math.prod(dims) > 1 << 22:
        raise argparse.ArgumentTypeError(
            f"{text!r} is too large for one input (at most 4 dimensions, 4,194,304 values)"
        )
    return dims


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="YAML config file (see configs/ for recipes)")
    p.add_argument(
        "--out",
        type=Path,
        help="run folder for checkpoints, model and report (default: runs/<config name>)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set admm.rho=0.01 or "
        "--set rules.fc1.keep=0.02 (repeatable; validated like the file)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        help="folder holding the datasets (default: $ADMMCOMPRESS_DATA, then the config's "
        "data.root, then ./data)",
    )
    p.add_argument(
        "--allow-changes",
        action="store_true",
        help="with --resume: accept a config that differs from the run's original one",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="run folder, model.safetensors or .admmz file")
    p.add_argument("--data-dir", type=Path, help="folder holding the datasets")
    p.add_argument("--dataset", help="dataset to evaluate on (default: the one it was trained on)")
    p.add_argument("--batch-size", type=int, default=1000, help="evaluation batch size")
    p.add_argument("--allow-import", action="store_true", help=ALLOW_IMPORT_HELP)


def _sensitivity_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="YAML config (model, data, pretraining)")
    p.add_argument(
        "--weights", type=Path, help="trained weights: model.safetensors, a run folder or a .pt"
    )
    p.add_argument(
        "--out", type=Path, help="output folder (default: runs/<config name>_sensitivity)"
    )
    p.add_argument(
        "--layers", nargs="+", metavar="SELECTOR", help="layers to scan (default: all conv/fc)"
    )
    p.add_argument(
        "--samples", type=int, default=5000, help="training images to score on (default 5000)"
    )
    p.add_argument(
        "--rate", type=float, help="also show how each allocation method splits this rate"
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data-dir", type=Path, help="folder holding the datasets")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _export_options(p: argparse.ArgumentParser) -> None:
    from ..formats import writable_formats
    from ..formats.encoding import VALUE_DTYPES

    p.add_argument("source", type=Path, help="run folder, its model.safetensors, or an .admmz file")
    p.add_argument(
        "--out", type=Path, help="output file (default: model[_compact].admmz|.onnx beside it)"
    )
    p.add_argument("--format", choices=writable_formats(), default="admmz", dest="fmt")
    p.add_argument("--allow-import", action="store_true", help=ALLOW_IMPORT_HELP)
    p.add_argument(
        "--values",
        choices=list(VALUE_DTYPES),
        default="float32",
        help="storage of unquantized weights (float16 halves them but is not bit-exact)",
    )
    p.add_argument(
        "--compact",
        action="store_true",
        help="remove pruned filters/channels and dead neurons (outputs stay equal)",
    )
    p.add_argument(
        "--input-shape",
        type=_shape,
        help="C,H,W of one input, for model files that do not record it (e.g. 1,28,28)",
    )


def _inspect_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help=".admmz file")
    p.add_argument("--json", action="store_true", help="print the sizes as JSON instead")
    p.add_argument("--allow-import", action="store_true", help=ALLOW_IMPORT_HELP)


def _report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="run folder holding report.json")


#: command -> (add_parser keywords, the function adding its options)
COMMANDS: dict[str, tuple[dict, Callable[[argparse.ArgumentParser], None]]] = {
    "run": (
        dict(
            help="compress a model as a YAML config describes",
            description="Run (or resume) the compression pipeline described by a YAML config:\n"
            "pretrain -> ADMM -> harden -> masked retrain -> verify. A checkpoint is written\n"
            "after every epoch, so a killed run continues with --resume.",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog="The config format is documented in README.md (section 'Config reference').",
        ),
        _run_options,
    ),
    "eval": (
        dict(
            help="check and evaluate a compressed model",
            description="Load a compressed model (a run folder, its model.safetensors or an "
            ".admmz file), check that every pruned weight is zero, and measure test accuracy.",
        ),
        _eval_options,
    ),
    "sensitivity": (
        dict(
            help="scan how much each layer can be pruned alone, to choose per-layer rates",
            description="Magnitude-prune each layer alone over a grid of keep counts (no "
            "retraining) and score the model on training images. Writes sensitivity.json, "
            "sensitivity.md (the fewest weights each layer keeps within a given loss increase) "
            "and sensitivity.png. The dense model comes from --weights, else the config's "
            "'init', else the config's pretraining.",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog="example:\n  admmcompress sensitivity configs/lenet5_mnist_record.yaml "
            "--weights runs/demo --rate 300",
        ),
        _sensitivity_options,
    ),
    "export": (
        dict(
            help="write a compressed model as a small .admmz file or as ONNX",
            description="Export a run's hardened model. The .admmz format stores each conv/linear "
            "weight as its sparsity pattern (the smallest of a bitmask, a relative index, a "
            "Golomb-Rice code or dense) plus its values (fp32, fp16, or b-bit codes and scales for "
            "quantized layers), with a checksummed header; admmcompress.load() rebuilds the model "
            "bit for bit. --format onnx writes the dense-equivalent model for other runtimes. "
            "--compact first removes pruned filters, channels and dead neurons, giving a smaller "
            "ordinary model.",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog="examples:\n"
            "  admmcompress export runs/demo                      # -> runs/demo/model.admmz\n"
            "  admmcompress export runs/demo --compact --out small.admmz\n"
            "  admmcompress export runs/demo --format onnx        # -> runs/demo/model.onnx\n"
            "  admmcompress inspect runs/demo/model.admmz",
        ),
        _export_options,
    ),
    "inspect": (
        dict(
            help="check an .admmz file and print its per-layer sizes",
            description="Read an .admmz file, verify its checksum and every section, and print "
            "each tensor's encoding and bytes with the totals.",
        ),
        _inspect_options,
    ),
    "report": (
        dict(
            help="print a run's summary and redraw its report.md and plots",
            description="Rebuild report.md and the PNG plots of a finished run from its "
            "report.json, and print the summary.",
        ),
        _report_options,
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the options of ``command`` only (None: just the list of commands)."""
    p = argparse.ArgumentParser(
        prog="admmcompress",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"admmcompress {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (keywords, options) in COMMANDS.items():
        parser = sub.add_parser(name, **keywords)
        if name == command:
            options(parser)
    return p
