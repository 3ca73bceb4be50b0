"""Progressive ADMM against the well-known alternatives, on the same epoch budget.

    python benchmarks/baselines.py --model lenet300 --rates 20 40 65 --epochs 24
    python benchmarks/baselines.py --model lenet5 --rates 100 200 300 --epochs 30

Every method starts from the same dense model (trained once, ``--pretrain`` epochs), splits
each rate over the layers the same way (global magnitude), uses the same optimizer (Adam, lr
1e-3, cosine decay within each phase) and spends exactly ``--epochs`` training epochs after
pretraining. All run through the same pipeline, so only the method differs:

- one-shot magnitude: prune to the rate at once (projection, no ADMM), retrain all epochs;
- iterative magnitude (Han et al. 2015): ``--cycles`` prune-retrain cycles at geometrically
  rising rates, the epochs split evenly;
- one-step ADMM: ADMM towards the rate for 2/3 of the epochs, harden, retrain the rest;
- progressive ADMM: ``--cycles`` steps at geometrically rising rates, each ADMM 2/3 and
  retraining 1/3 of its share.

Writes benchmarks/results/baselines_<model>.json and .md, and a plot of test accuracy
against pruning rate for every method (baselines_<model>.png).
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

from admmcompress.recipe.schema import validate_config
from admmcompress.run.pipeline import Pipeline
from common import RESULTS, write_results

OPT = {"optimizer": {"name": "adam", "lr": 0.001}, "scheduler": {"name": "cosine"}}
METHODS = ("one-shot magnitude", "iterative magnitude", "one-step ADMM", "progressive ADMM")


def _split(total: int, parts: int) -> list[int]:
    """``total`` epochs in ``parts`` near-equal integers (the later parts get the remainder)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i >= parts - extra else 0) for i in range(parts)]


def _rates(rate: float, cycles: int) -> list[float]:
    return [round(rate ** ((i + 1) / cycles), 2) for i in range(cycles)]


def _step(rate: float, admm_epochs: int, retrain_epochs: int, name: str) -> dict[str, Any]:
    admm = {"epochs": admm_epochs, "period": 1, "rho": 0.005, "rho_growth": 1.4, **OPT}
    return {
        "name": name,
        "target": {"rate": rate, "allocation": "global_magnitude"},
        "admm": admm,
        "retrain": {"epochs": retrain_epochs, **OPT},
    }


def method_steps(method: str, rate: float, epochs: int, cycles: int) -> list[dict[str, Any]]:
    if method == "one-shot magnitude":
        return [_step(rate, 0, epochs, "oneshot")]
    if method == "iterative magnitude":
        return [
            _step(r, 0, e, f"cycle{i + 1}")
            for i, (r, e) in enumerate(
                zip(_rates(rate, cycles), _split(epochs, cycles), strict=True)
            )
        ]
    if method == "one-step ADMM":
        admm = round(epochs * 2 / 3)
        return [_step(rate, admm, epochs - admm, "admm")]
    if method == "progressive ADMM":
        steps = []
        for i, (r, e) in enumerate(zip(_rates(rate, cycles), _split(epochs, cycles), strict=True)):
            admm = max(1, round(e * 2 / 3))
            steps.append(_step(r, admm, e - admm, f"step{i + 1}"))
        return steps
    raise ValueError(method)


def run(cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    if out.exists():
        shutil.rmtree(out)
    return Pipeline(validate_config(cfg), out).run()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="lenet300", choices=["lenet300", "lenet5"])
    ap.add_argument("--rates", type=float, nargs="+", default=[20, 40, 65])
    ap.add_argument("--epochs", type=int, default=24, help="training epochs after pretraining")
    ap.add_argument("--pretrain", type=int, default=6, help="epochs of the shared dense model")
    ap.add_argument("--cycles", type=int, default=3, help="steps of the iterative methods")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--work", type=Path, default=Path("runs/baselines"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    work = args.work / args.model
    base = {
        "seed": 0,
        "model": args.model,
        "data": {"dataset": "mnist", "batch_size": 64},
        "runtime": {"progress": False},
    }
    t0 = time.perf_counter()
    dense_cfg = {
        **copy.deepcopy(base),
        "name": "dense",
        "pretrain": {"epochs": args.pretrain, **OPT},
        # a step that keeps everything: the pipeline's way of saving a dense model
        "steps": [
            {
                "rules": {"*": {"prune": "irregular", "keep": 1.0}},
                "admm": {"epochs": 0},
                "retrain": {"epochs": 0},
            }
        ],
    }
    dense = run(dense_cfg, work / "dense")
    dense_seconds = time.perf_counter() - t0
    init = str(work / "dense" / "model.safetensors")
    print(f"dense: {dense['final']['test_accuracy']:.4f} ({dense_seconds:.0f} s)", flush=True)

    results: list[dict[str, Any]] = []
    for rate in args.rates:
        for method in args.methods:
            cfg = {
                **copy.deepcopy(base),
                "name": f"{method} {rate:g}x",
                "init": init,
                "steps": method_steps(method, rate, args.epochs, args.cycles),
            }
            slug = method.replace(" ", "_").replace("-", "_")
            t0 = time.perf_counter()
            report = run(cfg, work / f"{slug}_{rate:g}")
            epochs = sum(int(p["epochs"]) for st in report["steps"] for p in st["phases"].values())
            row = {
                "method": method,
                "target_rate": rate,
                "pruning_rate": report["pruning_rate"],
                "test_accuracy": report["final"]["test_accuracy"],
                "epochs": epochs,
                "seconds": time.perf_counter() - t0,
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

    lines = [
        f"{args.model} / MNIST. Same dense start ({dense['final']['test_accuracy']:.2%} after "
        f"{args.pretrain} epochs), same per-layer split (global magnitude), same optimizer, "
        f"{args.epochs} training epochs per method after pretraining; test accuracy:",
        "",
        "| rate | " + " | ".join(args.methods) + " |",
        "| ---: | " + " | ".join("---:" for _ in args.methods) + " |",
    ]
    for rate in args.rates:
        accs = {r["method"]: r["test_accuracy"] for r in results if r["target_rate"] == rate}
        best = max(accs.values())
        cells = [
            f"**{accs[m]:.2%}**" if accs[m] == best else f"{accs[m]:.2%}" for m in args.methods
        ]
        lines.append(f"| {rate:g}x | " + " | ".join(cells) + " |")
    name = f"baselines_{args.model}"
    write_results(
        name,
        {
            "model": args.model,
            "epochs": args.epochs,
            "pretrain_epochs": args.pretrain,
            "cycles": args.cycles,
            "dense_accuracy": dense["final"]["test_accuracy"],
            "results": results,
        },
        "\n".join(lines),
    )
    _plot(results, args, dense["final"]["test_accuracy"], RESULTS / f"{name}.png")
    print(json.dumps({"written": str(RESULTS / name)}))


def _plot(
    results: list[dict[str, Any]], args: argparse.Namespace, dense: float, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in args.methods:
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
        title=f"{args.model} / MNIST, {args.epochs} epochs per method",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
