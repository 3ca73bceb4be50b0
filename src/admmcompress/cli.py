"""Command line: ``admmcompress run | eval | report``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.contrib.logging import logging_redirect_tqdm

from ._version import __version__

if TYPE_CHECKING:
    from .recipe.schema import RunConfig

log = logging.getLogger("admmcompress")

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


def _parser() -> argparse.ArgumentParser:
    from .formats import writable_formats
    from .formats.encoding import VALUE_DTYPES

    p = argparse.ArgumentParser(
        prog="admmcompress",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"admmcompress {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="compress a model as a YAML config describes",
        description="Run (or resume) the compression pipeline described by a YAML config:\n"
        "pretrain -> ADMM -> harden -> masked retrain -> verify. A checkpoint is written\n"
        "after every epoch, so a killed run continues with --resume.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The config format is documented in README.md (section 'Config reference').",
    )
    run.add_argument("config", type=Path, help="YAML config file (see configs/ for recipes)")
    run.add_argument(
        "--out",
        type=Path,
        help="run folder for checkpoints, model and report (default: runs/<config name>)",
    )
    run.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set admm.rho=0.01 or "
        "--set rules.fc1.keep=0.02 (repeatable; validated like the file)",
    )
    run.add_argument(
        "--data-dir",
        type=Path,
        help="folder holding the datasets (default: $ADMMCOMPRESS_DATA, then the config's "
        "data.root, then ./data)",
    )
    run.add_argument(
        "--allow-changes",
        action="store_true",
        help="with --resume: accept a config that differs from the run's original one",
    )
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")

    ev = sub.add_parser(
        "eval",
        help="check and evaluate a compressed model",
        description="Load a compressed model (a run folder, its model.safetensors or an "
        ".admmz file), check that every pruned weight is zero, and measure test accuracy.",
    )
    ev.add_argument("model", type=Path, help="run folder, model.safetensors or .admmz file")
    ev.add_argument("--data-dir", type=Path, help="folder holding the datasets")
    ev.add_argument("--dataset", help="dataset to evaluate on (default: the one it was trained on)")
    ev.add_argument("--batch-size", type=int, default=1000, help="evaluation batch size")
    ev.add_argument("--allow-import", action="store_true", help=ALLOW_IMPORT_HELP)

    sen = sub.add_parser(
        "sensitivity",
        help="scan how much each layer can be pruned alone, to choose per-layer rates",
        description="Magnitude-prune each layer alone over a grid of keep counts (no "
        "retraining) and score the model on training images. Writes sensitivity.json, "
        "sensitivity.md (the fewest weights each layer keeps within a given loss increase) "
        "and sensitivity.png. The dense model comes from --weights, else the config's "
        "'init', else the config's pretraining.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  admmcompress sensitivity configs/lenet5_mnist_record.yaml "
        "--weights runs/demo --rate 300",
    )
    sen.add_argument("config", type=Path, help="YAML config (model, data, pretraining)")
    sen.add_argument(
        "--weights", type=Path, help="trained weights: model.safetensors, a run folder or a .pt"
    )
    sen.add_argument(
        "--out", type=Path, help="output folder (default: runs/<config name>_sensitivity)"
    )
    sen.add_argument(
        "--layers", nargs="+", metavar="SELECTOR", help="layers to scan (default: all conv/fc)"
    )
    sen.add_argument(
        "--samples", type=int, default=5000, help="training images to score on (default 5000)"
    )
    sen.add_argument(
        "--rate", type=float, help="also show how each allocation method splits this rate"
    )
    sen.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    sen.add_argument("--data-dir", type=Path, help="folder holding the datasets")
    sen.add_argument("--no-progress", action="store_true", help="hide progress bars")

    exp = sub.add_parser(
        "export",
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
    )
    exp.add_argument(
        "source", type=Path, help="run folder, its model.safetensors, or an .admmz file"
    )
    exp.add_argument(
        "--out", type=Path, help="output file (default: model[_compact].admmz|.onnx beside it)"
    )
    exp.add_argument("--format", choices=writable_formats(), default="admmz", dest="fmt")
    exp.add_argument("--allow-import", action="store_true", help=ALLOW_IMPORT_HELP)
    exp.add_argument(
        "--values",
        choices=list(VALUE_DTYPES),
        default="float32",
        help="storage of unquantized weights (float16 halves them but is not bit-exact)",
    )
    exp.add_argument(
        "--compact",
        action="store_true",
        help="remove pruned filters/channels and dead neurons (outputs stay equal)",
    )
    exp.add_argument(
        "--input-shape",
        type=_shape,
        help="C,H,W of one input, for model files that do not record it (e.g. 1,28,28)",
    )

    ins = sub.add_parser(
        "inspect",
        help="check an .admmz file and print its per-layer sizes",
        description="Read an .admmz file, verify its checksum and every section, and print "
        "each tensor's encoding and bytes with the totals.",
    )
    ins.add_argument("file", type=Path, help=".admmz file")
    ins.add_argument("--json", action="store_true", help="print the sizes as JSON instead")
    ins.add_argument("--allow-import", action="store_true", help=ALLOW_IMPORT_HELP)

    rep = sub.add_parser(
        "report",
        help="print a run's summary and redraw its report.md and plots",
        description="Rebuild report.md and the PNG plots of a finished run from its "
        "report.json, and print the summary.",
    )
    rep.add_argument("run_dir", type=Path, help="run folder holding report.json")
    return p


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,28,28, got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"dimensions must be positive, got {text!r}")
    return dims


def _setup_logging() -> None:
    """Console logging; a run adds its own run.log once its folder is known to be its own."""
    # under torchrun only rank 0 speaks, unless something goes wrong
    log.setLevel(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(console)


def _load_config(args: argparse.Namespace) -> RunConfig:
    """The config file with its --set overrides, and --no-progress applied."""
    from .recipe.schema import load_config

    cfg = load_config(args.config, args.overrides)
    if args.no_progress:
        cfg.runtime.progress = False
    return cfg


def _cmd_run(args: argparse.Namespace) -> int:
    from .run.pipeline import Pipeline

    cfg = _load_config(args)
    out = args.out or Path("runs") / cfg.name
    _setup_logging()
    with logging_redirect_tqdm(loggers=[log]):
        Pipeline(
            cfg,
            out,
            resume=args.resume,
            allow_changes=args.allow_changes,
            data_dir=args.data_dir,
        ).run()
    return 0


def _run_data_root(model_file: Path) -> str | None:
    """The data root of the run a model file belongs to (its folder's config.yaml), if any."""
    import yaml

    config = model_file.parent / "config.yaml"
    try:
        raw = yaml.safe_load(config.read_text()) if config.is_file() else None
    except (OSError, yaml.YAMLError):
        return None
    data = raw.get("data") if isinstance(raw, dict) else None
    root = data.get("root") if isinstance(data, dict) else None
    return root if isinstance(root, str) and root else None


def _cmd_eval(args: argparse.Namespace) -> int:
    from .core.selection import compressible_parameters
    from .core.verify import revived_weights
    from .data import dataset_entry, load_dataset, resolve_data_root
    from .formats import read_model_file
    from .run.report import layer_table, pruning_rates
    from .train.loop import evaluate

    _setup_logging()
    mf = read_model_file(args.model, allow_import=args.allow_import)
    model, masks = mf.model, mf.masks
    params = compressible_parameters(model)
    problems = [
        f"{name}: {why}"
        for name, mask in masks.items()
        if (why := revived_weights(params[name].detach(), mask)) is not None
    ]
    if problems:
        raise ValueError("model fails its mask check:\n  - " + "\n  - ".join(problems))
    # an .admmz has no masks: its zeros are the pattern itself, every weight is counted
    pruned = set(masks) if mf.format != "admmz" else set(params)
    dataset = args.dataset or mf.metadata.get("dataset", "").strip('"') or "mnist"
    entry = dataset_entry(dataset)
    options = {k: mf.meta(k) for k in entry.option_names() if k in mf.metadata}
    if "image_size" in entry.option_names() and mf.input_shape:  # crop as the run evaluated
        options["image_size"] = mf.input_shape[-1]
    root = resolve_data_root(args.data_dir, _run_data_root(mf.path))
    data = load_dataset(dataset, root, **options)
    loss, acc = evaluate(model, data.test, args.batch_size)
    rows = layer_table(model, {})
    for r in rows:
        r["pruned"] = r["name"] in pruned and r["nonzero"] < r["params"]
    rates = pruning_rates(rows)
    if mf.original_weights:  # a compact model: count against the weights it had before
        nonzero = sum(r["nonzero"] for r in rows)
        rates = {
            "pruning_rate": mf.original_weights / nonzero,
            "overall_rate": mf.original_weights / nonzero,
        }
    print(f"model       {mf.model_name} ({mf.path})")
    if masks:
        print(f"masks       verified for {len(masks)} pruned layers")
    rate, overall = rates["pruning_rate"], rates["overall_rate"]
    print(f"rate        {rate:.1f}x (pruned layers), {overall:.1f}x (all)")
    print(
        f"{dataset:<11} test accuracy {acc * 100:.2f}%  loss {loss:.4f}  ({len(data.test)} images)"
    )
    return 0


def _cmd_sensitivity(args: argparse.Namespace) -> int:
    from .recipe.schema import ConfigError
    from .run.sensitivity import run_sensitivity

    cfg = _load_config(args)
    if args.samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {args.samples}")
    if args.rate is not None and not args.rate > 1:
        raise ConfigError(f"--rate must be above 1 (300 keeps one weight in 300), got {args.rate}")
    out = args.out or Path("runs") / f"{cfg.name}_sensitivity"
    _setup_logging()
    with logging_redirect_tqdm(loggers=[log]):
        run_sensitivity(
            cfg,
            out,
            data_dir=args.data_dir,
            weights=args.weights,
            layers=args.layers,
            samples=args.samples,
            rate=args.rate,
        )
    print((out / "sensitivity.md").read_text())
    print(f"written: {out}/sensitivity.json, sensitivity.md, sensitivity.png")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .formats.export import export, summary_table

    result = export(
        args.source,
        args.out,
        fmt=args.fmt,
        values=args.values,
        compact=args.compact,
        input_shape=args.input_shape,
        allow_import=args.allow_import,
    )
    if result.compact is not None:
        c = result.compact
        print(
            f"compact: {len(c['sizes'])} layers resized, parameters "
            f"{c['params_before']:,} -> {c['params_after']:,}"
        )
    if result.summary is not None:
        print(summary_table(result.summary))
        if result.report_storage_bytes is not None:
            same = result.report_storage_bytes == result.summary.weight_bytes
            print(
                f"the run's report estimated {result.report_storage_bytes:,} bytes of weights: "
                + ("the file matches" if same else "the report predates this format version")
            )
    print(f"written: {result.out}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:

    from .formats import ModelFileError, read_model_file
    from .formats.export import summary_table

    mf = read_model_file(args.file, allow_import=args.allow_import)  # decoded whole
    if mf.format != "admmz":
        raise ModelFileError(
            f"{mf.path} is a {mf.format} model file; inspect reads .admmz files. Write one "
            f"with: admmcompress export {args.file}"
        )
    if args.json:
        out = {"totals": mf.summary.totals(), "tensors": mf.summary.rows}
        print(json.dumps(out, indent=2))
    else:
        print(summary_table(mf.summary))
        print("checksum and every section verified")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .run.report import read_report, render_markdown, write_report

    report = read_report(args.run_dir)
    write_report(report, args.run_dir)
    print(render_markdown(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    from .constraints import ConstraintError
    from .core.selection import SelectionError
    from .core.verify import ConstraintViolationError
    from .data import DataError
    from .formats import ModelFileError
    from .recipe.schema import ConfigError
    from .run.checkpoint import CheckpointError
    from .run.folder import RunFolderError
    from .train.loop import NonFiniteLossError

    args = _parser().parse_args(argv)
    handlers = {
        "run": _cmd_run,
        "eval": _cmd_eval,
        "sensitivity": _cmd_sensitivity,
        "report": _cmd_report,
        "export": _cmd_export,
        "inspect": _cmd_inspect,
    }
    user_errors = (
        ConfigError,
        SelectionError,
        DataError,
        RunFolderError,
        CheckpointError,
        ModelFileError,
        ConstraintError,
        FileNotFoundError,
        ValueError,
    )
    try:
        return handlers[args.command](args)
    except NonFiniteLossError as e:
        print(f"admmcompress: training stopped: {e}", file=sys.stderr)
        return 3
    except ConstraintViolationError as e:
        print(f"admmcompress: {e}", file=sys.stderr)
        return 4
    except user_errors as e:
        prefix = "config error: " if isinstance(e, SelectionError) else ""
        print(f"admmcompress: error: {prefix}{e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "admmcompress: interrupted; the last completed epoch is checkpointed, continue "
            "with the same command and --resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
