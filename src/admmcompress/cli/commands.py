"""The commands behind ``admmcompress``: each turns its parsed options into one action."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.contrib.logging import logging_redirect_tqdm

if TYPE_CHECKING:
    from ..recipe.schema import RunConfig

log = logging.getLogger("admmcompress")


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
    from ..recipe.schema import load_config

    cfg = load_config(args.config, args.overrides)
    if args.no_progress:
        cfg.runtime.progress = False
    return cfg


def _cmd_run(args: argparse.Namespace) -> int:
    from ..run.pipeline import Pipeline

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


def _run_data_section(model_file: Path) -> dict[str, object]:
    """The ``data:`` section of the run a model file belongs to (its folder's config.yaml)."""
    import yaml

    config = model_file.parent / "config.yaml"
    try:
        raw = yaml.safe_load(config.read_text()) if config.is_file() else None
    except (OSError, yaml.YAMLError):
        return {}
    data = raw.get("data") if isinstance(raw, dict) else None
    return data if isinstance(data, dict) else {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _eval_dataset(
    args: argparse.Namespace, path: Path, metadata: dict[str, str], run_data: dict[str, object]
) -> str:
    """The data set to evaluate on: --dataset, else the one the file or its run folder names.

    A file saved by a user's own code may name none; guessing one (it used to be MNIST) turns
    into a confusing shape error or, worse, a number on the wrong data, so it is asked for.
    """
    from ..data import available_datasets

    named = args.dataset or metadata.get("dataset", "").strip('"')
    named = named or _text(run_data.get("dataset"))
    if not named:
        raise ValueError(
            f"{path} does not say which data set it was trained on; name one with "
            f"--dataset (one of: {', '.join(available_datasets())})"
        )
    return named


def _cmd_eval(args: argparse.Namespace) -> int:
    from ..core.selection import compressible_parameters
    from ..core.verify import revived_weights
    from ..data import dataset_entry, load_dataset, resolve_data_root
    from ..formats import read_model_file
    from ..run.inputs import check_fits
    from ..run.report import layer_table, pruning_rates
    from ..train.loop import evaluate

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
    run_data = _run_data_section(mf.path)
    dataset = _eval_dataset(args, mf.path, mf.metadata, run_data)
    entry = dataset_entry(dataset)
    options = {k: mf.meta(k) for k in entry.option_names() if k in mf.metadata}
    if "image_size" in entry.option_names() and mf.input_shape:  # crop as the run evaluated
        options["image_size"] = mf.input_shape[-1]
    root = resolve_data_root(args.data_dir, _text(run_data.get("root")))
    data = load_dataset(dataset, root, **options)
    what = f"model {mf.model_name!r} ({mf.path}) and data set {dataset!r}"
    check_fits(model, tuple(data.input_shape), data.num_classes, what)
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
    from ..recipe.schema import ConfigError
    from ..run.sensitivity import run_sensitivity

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
    from ..formats.export import export, summary_table

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

    from ..formats import ModelFileError, sniff
    from ..formats.admmz import verify_admmz
    from ..formats.export import summary_table
    from ..formats.model_file import ReadOptions

    fmt = sniff(args.file)
    if fmt.name != "admmz":
        raise ModelFileError(
            f"{args.file} is a {fmt.description}; inspect reads .admmz files. Write one "
            f"with: admmcompress export {args.file}"
        )
    # every check of a load, each tensor decoded and dropped: no model is built
    summary = verify_admmz(args.file, opts=ReadOptions(allow_import=args.allow_import))
    if args.json:
        out = {"totals": summary.totals(), "tensors": summary.rows}
        print(json.dumps(out, indent=2))
    else:
        print(summary_table(summary))
        print("checksum and every section verified")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from ..run.report import read_report, render_markdown, write_report

    report = read_report(args.run_dir)
    write_report(report, args.run_dir)
    print(render_markdown(report))
    return 0


HANDLERS = {
    "run": _cmd_run,
    "eval": _cmd_eval,
    "sensitivity": _cmd_sensitivity,
    "report": _cmd_report,
    "export": _cmd_export,
    "inspect": _cmd_inspect,
}
