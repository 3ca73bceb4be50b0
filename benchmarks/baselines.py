"""Progressive ADMM against the well-known alternatives, on the same epoch budget.

    python benchmarks/baselines.py --model lenet300 --rates 20 40 65 --epochs 24
    python benchmarks/baselines.py --model lenet5 --rates 100 200 300 --epochs 30
    python benchmarks/baselines.py --model resnet20_cifar --rates 4 8 16 --epochs 12 \
        --init weights/resnet20_cifar10_dense.safetensors --data-dir ../shared/datasets

Every method starts from the same dense model (trained once, ``--pretrain`` epochs), splits
each rate over the layers the same way (global magnitude), uses the same optimizer (LeNets:
Adam, lr 1e-3; ResNet-20: SGD with momentum, lr 0.01, weight decay 5e-4; cosine decay within
each phase) and spends exactly ``--epochs`` training epochs after pretraining. ``--init``
starts from given dense weights instead of training them (ResNet-20: the shipped reference
model); CIFAR runs use the standard augmentation and the recipes' precision (auto: bf16
where the CPU computes it in hardware, else fp32) and channels_last. All run through the
same pipeline, so only the method differs:

- one-shot magnitude: prune to the rate at once (projection, no ADMM), retrain all epochs;
- iterative magnitude (Han et al. 2015): ``--cycles`` prune-retrain cycles at geometrically
  rising rates, the epochs split evenly;
- one-step ADMM: ADMM towards the rate for 2/3 of the epochs, harden, retrain the rest;
- progressive ADMM: ``--cycles`` steps at geometrically rising rates, each ADMM 2/3 and
  retraining 1/3 of its share.

Writes benchmarks/results/baselines_<model>.json and .md, and a plot of test accuracy
against pruning rate for every method (baselines_<model>.png; ``--name`` to rename).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from admmcompress.recipe.schema import validate_config
from admmcompress.run.pipeline import Pipeline
from common import RESULTS, file_sha256, write_results

ADAM = {"optimizer": {"name": "adam", "lr": 0.001}, "scheduler": {"name": "cosine"}}
SGD = {
    "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5.0e-4},
    "scheduler": {"name": "cosine"},
}
#: per model: its data set, batch, augmentation, runtime and optimizer
SETUPS: dict[str, dict[str, Any]] = {
    "lenet300": {"data": {"dataset": "mnist", "batch_size": 64}, "runtime": {}, "opt": ADAM},
    "lenet5": {"data": {"dataset": "mnist", "batch_size": 64}, "runtime": {}, "opt": ADAM},
    "resnet20_cifar": {
        "data": {
            "dataset": "cifar10",
            "batch_size": 128,
            "augment": {"shift": 4, "hflip": True, "pad": "black"},
        },
        "runtime": {"precision": "auto", "channels_last": True},
        "opt": SGD,
    },
}
METHODS = ("one-shot magnitude", "iterative magnitude", "one-step ADMM", "progressive ADMM")


def _split(total: int, parts: int) -> list[int]:
    """``total`` epochs in ``parts`` near-equal integers (the later parts get the remainder)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i >= parts - extra else 0) for i in range(parts)]


def _rates(rate: float, cycles: int) -> list[float]:
    return [round(rate ** ((i + 1) / cycles), 2) for i in range(cycles)]


#: the ADMM methods' penalty schedule unless ``--rho``/``--rho-growth`` say otherwise: a Z-step
#: every epoch, rho from 5e-3 growing 1.4x per epoch (the MNIST models' setting)
PENALTY: dict[str, Any] = {"period": 1, "rho": 0.005, "rho_growth": 1.4}


def _step(
    rate: float,
    admm_epochs: int,
    retrain_epochs: int,
    name: str,
    opt: dict[str, Any],
    penalty: dict[str, Any] = PENALTY,
) -> dict[str, Any]:
    admm = {"epochs": admm_epochs, **penalty, **opt}
    return {
        "name": name,
        "target": {"rate": rate, "allocation": "global_magnitude"},
        "admm": admm,
        "retrain": {"epochs": retrain_epochs, **opt},
    }


def method_steps(
    method: str,
    rate: float,
    epochs: int,
    cycles: int,
    opt: dict[str, Any] = ADAM,
    penalty: dict[str, Any] = PENALTY,
) -> list[dict[str, Any]]:
    if method == "one-shot magnitude":
        return [_step(rate, 0, epochs, "oneshot", opt)]
    if method == "iterative magnitude":
        return [
            _step(r, 0, e, f"cycle{i + 1}", opt)
            for i, (r, e) in enumerate(
                zip(_rates(rate, cycles), _split(epochs, cycles), strict=True)
            )
        ]
    if method == "one-step ADMM":
        admm = round(epochs * 2 / 3)
        return [_step(rate, admm, epochs - admm, "admm", opt, penalty)]
    if method == "progressive ADMM":
        steps = []
        for i, (r, e) in enumerate(zip(_rates(rate, cycles), _split(epochs, cycles), strict=True)):
            admm = max(1, round(e * 2 / 3))
            steps.append(_step(r, admm, e - admm, f"step{i + 1}", opt, penalty))
        return steps
    raise ValueError(method)


def run(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run ``cfg`` in ``out``, or pick it up: a run of the same config that finished is read
    back and one that was killed resumes bit-exactly, so a benchmark of several hours spread
    over sessions loses nothing. Any other folder content is replaced."""
    sidecar = out / "benchmark_config.json"
    # the starting weights by content: a dense model trained again (or a new shipped file)
    # under the same path must not pass for the old one
    key = {**cfg, "init_sha256": file_sha256(Path(cfg["init"])) if cfg.get("init") else None}
    same = sidecar.is_file() and json.loads(sidecar.read_text()) == key
    if same and (out / "report.json").is_file():
        print(f"  (finished earlier: {out})", flush=True)
        return json.loads((out / "report.json").read_text())
    resume = same and (out / "checkpoint.pt").is_file()
    if not resume:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        sidecar.write_text(json.dumps(key))
    return Pipeline(validate_config(cfg), out, resume=resume).run()


#: a step that keeps everything: the pipeline's way of saving (or evaluating) a dense model
KEEP_ALL = {
    "rules": {"*": {"prune": "irregular", "keep": 1.0}},
    "admm": {"epochs": 0},
    "retrain": {"epochs": 0},
}


def _train_dense(
    base: dict[str, Any], epochs: int, opt: dict[str, Any], out: Path
) -> dict[str, Any]:
    cfg = {
        **copy.deepcopy(base),
        "name": "dense",
        "pretrain": {"epochs": epochs, **opt},
        "steps": [KEEP_ALL],
    }
    return run(cfg, out)


def _evaluate_init(base: dict[str, Any], init: Path, out: Path) -> dict[str, Any]:
    """The given dense model's test accuracy, measured by the same pipeline."""
    return run(
        {**copy.deepcopy(base), "name": "dense", "init": str(init), "steps": [KEEP_ALL]}, out
    )


def _threads(results: list[dict[str, Any]]) -> str:
    counts = sorted({int(r["threads"]) for r in results})
    return " or ".join(str(c) for c in counts) + (" thread" if counts == [1] else " threads")


def _rho(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"a positive number or 'auto', not {text!r}")
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="lenet300", choices=list(SETUPS))
    ap.add_argument("--rates", type=float, nargs="+", default=[20, 40, 65])
    ap.add_argument("--epochs", type=int, default=24, help="training epochs after pretraining")
    ap.add_argument("--pretrain", type=int, default=6, help="epochs of the shared dense model")
    ap.add_argument("--cycles", type=int, default=3, help="steps of the iterative methods")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--work", type=Path, default=Path("runs/baselines"))
    ap.add_argument("--init", type=Path, help="dense weights to start from (skips pretraining)")
    ap.add_argument("--data-dir", type=Path, help="folder holding the data sets")
    ap.add_argument("--train-subset", type=int, help="train on a subset (smoke runs)")
    ap.add_argument("--test-subset", type=int, help="evaluate on a subset (smoke runs)")
    ap.add_argument("--name", help="results/<name>.{json,md,png} (default: baselines_<model>)")
    ap.add_argument(
        "--threads",
        type=int,
        help="CPU threads of every run (default: the recipe default). Two processes of one "
        "thread each, given different --methods and the same --work, share the two cores "
        "better than one of two threads; a last call with all methods then reads every "
        "finished run back and writes the one table and plot",
    )
    ap.add_argument(
        "--rho",
        type=_rho,
        default=PENALTY["rho"],
        help="the ADMM methods' starting penalty: a number, or 'auto' (balanced per layer "
        "from the residuals); default %(default)s",
    )
    ap.add_argument(
        "--rho-growth",
        type=float,
        default=PENALTY["rho_growth"],
        help="rho's factor per epoch (default %(default)s)",
    )
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="RESULTS_JSON",
        help="run nothing: write one table and plot (--name) from these results files of one "
        "setup (rates or methods run by separate calls)",
    )
    args = ap.parse_args()
    if args.merge:
        if not args.name or any(Path(m).stem == args.name for m in args.merge):
            ap.error("--merge needs a --name of its own (not one of the files merged)")
        merge(args.merge, args.name)
        return
    penalty = {**PENALTY, "rho": args.rho, "rho_growth": args.rho_growth}
    logging.basicConfig(level=logging.WARNING)

    work = args.work / args.model
    setup = SETUPS[args.model]
    opt = setup["opt"]
    data = dict(setup["data"])
    if args.data_dir is not None:
        data["root"] = str(args.data_dir)
    for key in ("train_subset", "test_subset"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    base = {
        "seed": 0,
        "model": args.model,
        "data": data,
        "runtime": {"progress": False, **setup["runtime"]},
    }
    if args.threads is not None:
        base["runtime"]["threads"] = args.threads
    t0 = time.perf_counter()
    if args.init is not None:
        dense = _evaluate_init(base, args.init, work / "dense")
        args.pretrain = 0
    else:
        dense = _train_dense(base, args.pretrain, opt, work / "dense")
    dense_seconds = time.perf_counter() - t0
    init = str(args.init or work / "dense" / "model.safetensors")
    print(f"dense: {dense['final']['test_accuracy']:.4f} ({dense_seconds:.0f} s)", flush=True)

    results: list[dict[str, Any]] = []
    for rate in args.rates:
        for method in args.methods:
            slug = method.replace(" ", "_").replace("-", "_")
            cfg = {
                **copy.deepcopy(base),
                "name": f"{slug}_{rate:g}x",
                "init": init,
                "steps": method_steps(method, rate, args.epochs, args.cycles, opt, penalty),
            }
            report = run(cfg, work / f"{slug}_{rate:g}")
            epochs = sum(int(p["epochs"]) for st in report["steps"] for p in st["phases"].values())
            row = {
                "method": method,
                "target_rate": rate,
                "pruning_rate": report["pruning_rate"],
                "test_accuracy": report["final"]["test_accuracy"],
                "epochs": epochs,
                "seconds": report["wall_seconds"],  # of every session, if resumed
                # the run's own threads, not this call's: a table read back from runs of two
                # one-thread processes must say they had one each. None is torch's default
                # (physical cores), which no run of this call changed (they share --threads)
                "threads": report["config"]["runtime"].get("threads") or torch.get_num_threads(),
                "steps": [
                    {"name": s["name"], "rate": s["pruning_rate"], "accuracy": s["test_accuracy"]}
                    for s in report["steps"]
                ],
            }
            assert epochs == args.epochs, (method, epochs)
            results.append(row)
            print(
                f"{method:>20} {rate:>6g}x: {row['test_accuracy']:.4f} "
                f"({row['pruning_rate']:.1f}x, {epochs} epochs, {row['seconds']:.0f} s)",
                flush=True,
            )

    start = f"from {args.init}" if args.init else f"after {args.pretrain} epochs"
    lines = [
        f"{args.model} / {data['dataset']}. Same dense start "
        f"({dense['final']['test_accuracy']:.2%}, {start}), same per-layer split "
        "(global magnitude), same optimizer, "
        f"{args.epochs} training epochs per method after pretraining; the ADMM methods' "
        f"penalty rho starts at {args.rho} and grows {args.rho_growth}x per epoch (a Z-step "
        f"every epoch); each run on {_threads(results)}; test accuracy:",
        "",
        *_table(results, args.methods, args.rates),
    ]
    name = args.name or f"baselines_{args.model}"
    write_results(
        name,
        {
            "model": args.model,
            "epochs": args.epochs,
            "pretrain_epochs": args.pretrain,
            "cycles": args.cycles,
            "admm_penalty": penalty,
            "dense_accuracy": dense["final"]["test_accuracy"],
            "results": results,
        },
        "\n".join(lines),
    )
    _plot(
        results,
        args.methods,
        f"{args.model} / {data['dataset']}, {args.epochs} epochs per method",
        dense["final"]["test_accuracy"],
        RESULTS / f"{name}.png",
    )
    print(json.dumps({"written": str(RESULTS / name)}))


def _table(results: list[dict[str, Any]], methods: list[str], rates: list[float]) -> list[str]:
    """Markdown rows, one per rate, the best accuracy of each in bold; '-' where a method
    was not run at that rate."""
    lines = [
        "| rate | " + " | ".join(methods) + " |",
        "| ---: | " + " | ".join("---:" for _ in methods) + " |",
    ]
    for rate in rates:
        accs = {r["method"]: r["test_accuracy"] for r in results if r["target_rate"] == rate}
        best = max(accs.values(), default=None)
        cells = [
            "-" if m not in accs else f"**{accs[m]:.2%}**" if accs[m] == best else f"{accs[m]:.2%}"
            for m in methods
        ]
        lines.append(f"| {rate:g}x | " + " | ".join(cells) + " |")
    return lines


#: what makes results files parts of one experiment: the same setup and the same dense start
SAME_SETUP = ("model", "epochs", "pretrain_epochs", "cycles", "admm_penalty", "dense_accuracy")


def merge(paths: list[Path], name: str) -> None:
    """One table and plot from results files of the same setup written by separate calls
    (rates or methods run in different sessions, whose run folders may be gone)."""
    docs = [json.loads(p.read_text()) for p in paths]
    first = docs[0]
    results: list[dict[str, Any]] = []
    seen: dict[tuple[float, str], Path] = {}
    for path, doc in zip(paths, docs, strict=True):
        differ = [k for k in SAME_SETUP if doc.get(k) != first.get(k)]
        if differ:
            raise SystemExit(
                f"{path} differs from {paths[0]} in {', '.join(differ)}: not one experiment"
            )
        for row in doc["results"]:
            cell = (row["target_rate"], row["method"])
            if cell in seen:
                raise SystemExit(f"{row['method']} at {cell[0]:g}x is in {seen[cell]} and {path}")
            seen[cell] = path
            results.append({**row, "source": path.name})
    methods = [m for m in METHODS if any(r["method"] == m for r in results)]
    rates = sorted({r["target_rate"] for r in results})
    pen = first["admm_penalty"]
    dataset = SETUPS[first["model"]]["data"]["dataset"]
    lines = [
        f"{first['model']} / {dataset}, merged from {len(paths)} results files of one setup "
        f"(same dense start at {first['dense_accuracy']:.2%}, same per-layer split (global "
        f"magnitude), same optimizer, {first['epochs']} training epochs per method; the ADMM "
        f"methods' rho starts at {pen['rho']} and grows {pen['rho_growth']}x per epoch); each "
        f"run on {_threads(results)}; test accuracy:",
        "",
        *_table(results, methods, rates),
        "",
        "Sources: "
        + "; ".join(
            f"{p.name} ({d['date']}, {d['machine']['cpu']})"
            for p, d in zip(paths, docs, strict=True)
        ),
    ]
    write_results(
        name,
        {
            **{k: first[k] for k in SAME_SETUP},
            "merged_from": [
                {"file": p.name, "date": d["date"], "machine": d["machine"]}
                for p, d in zip(paths, docs, strict=True)
            ],
            "results": results,
        },
        "\n".join(lines),
    )
    title = f"{first['model']} / {dataset}, {first['epochs']} epochs per method"
    _plot(results, methods, title, first["dense_accuracy"], RESULTS / f"{name}.png")
    print(json.dumps({"written": str(RESULTS / name)}))


def _plot(
    results: list[dict[str, Any]], methods: list[str], title: str, dense: float, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in methods:
        rows = sorted(
            (r for r in results if r["method"] == method), key=lambda r: r["pruning_rate"]
        )
        ax.plot(
            [r["pruning_rate"] for r in rows],
            [r["test_accuracy"] * 100 for r in rows],
            "o-",
            label=method,
        )
    ax.axhline(dense * 100, color="#999999", ls=":", label="dense")
    ax.set_xscale("log")
    ax.set(
        xlabel="pruning rate (log scale)",
        ylabel="test accuracy (%)",
        title=title,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
