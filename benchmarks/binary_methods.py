"""Fully binarized LeNet-5 on MNIST, three ways on the same epoch budget:

1. ADMM binarization, then straight-through-estimator retraining (our default);
2. ADMM binarization, then ADMM-NN style snap-and-freeze retraining;
3. BinaryConnect-style baseline: straight-through estimator from random init, with no ADMM,
   for as many epochs as the ADMM runs use in total (pretrain + ADMM + retrain).

    python benchmarks/binary_methods.py [--config configs/lenet5_mnist_binary.yaml]

Writes benchmarks/results/binary_methods.{json,md}. Runs one after another (timed work on a
shared 2-core machine must not overlap).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from admmcompress.constraints import check_on_grid
from admmcompress.data import load_dataset, resolve_data_root
from admmcompress.models import create_model
from admmcompress.recipe.planning import layer_constraints
from admmcompress.recipe.schema import load_config
from admmcompress.run import inputs
from admmcompress.train.loop import evaluate, train_epoch
from admmcompress.train.quantized import STEQuantizer
from common import write_results


def run_pipeline(config: Path, out: Path, overrides: list[str]) -> dict:
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "admmcompress", "run", str(config), "--out", str(out)]
    cmd += ["--no-progress"] + [x for o in overrides for x in ("--set", o)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    report = json.loads((out / "report.json").read_text())
    return {
        "test_accuracy": report["final"]["test_accuracy"],
        "dense_accuracy": report["phases"]["pretrain"]["test_accuracy"],
        "storage_rate": report["storage_rate"],
        "wall_seconds": time.perf_counter() - start,
        "epochs": sum(int(report["phases"][p]["epochs"]) for p in ("pretrain", "admm", "retrain")),
    }


def binaryconnect(config: Path, epochs: int) -> dict:
    """STE training of binary weights from scratch with the recipe's optimizer and data."""
    cfg = load_config(config)
    torch.set_flush_denormal(True)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model.name, **cfg.model.args)
    constraints = layer_constraints(model, cfg)
    data = load_dataset(cfg.data.dataset, resolve_data_root(None, cfg.data.root))
    ste = STEQuantizer(model, constraints, masks={})
    opt = inputs.optimizer(ste.optimizer_params(model), cfg.retrain.optimizer)
    sched = inputs.scheduler(opt, cfg.retrain.scheduler, epochs)
    ste.attach(opt)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    start = time.perf_counter()
    for epoch in range(epochs):
        ste.start_epoch(epoch, epochs)
        stats = train_epoch(
            model,
            data.train,
            opt,
            batch_size=cfg.data.batch_size,
            generator=gen,
            after_backward=ste.after_backward,
            progress=False,
        )
        sched.step()
        _, acc = evaluate(model, data.test)
        print(f"binaryconnect {epoch + 1}/{epochs}: loss {stats.loss:.4f} test acc {acc:.4f}")
    modules = dict(model.named_modules())
    for name, c in constraints.items():
        problem = check_on_grid(modules[name].weight, "binary", per_channel=c.per_channel)
        assert problem is None, f"{name}: {problem}"
    return {
        "test_accuracy": evaluate(model, data.test)[1],
        "wall_seconds": time.perf_counter() - start,
        "epochs": epochs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", type=Path, default=Path("configs/lenet5_mnist_binary.yaml"))
    args = ap.parse_args()
    runs = Path("runs")
    results = {
        "admm_ste": run_pipeline(args.config, runs / "bench_binary_ste", []),
        "admm_freeze": run_pipeline(
            args.config, runs / "bench_binary_freeze", ["retrain.quant_method=freeze"]
        ),
    }
    results["binaryconnect"] = binaryconnect(args.config, results["admm_ste"]["epochs"])
    dense = results["admm_ste"]["dense_accuracy"]
    names = {
        "admm_ste": "ADMM + STE retraining (default)",
        "admm_freeze": "ADMM + snap-and-freeze retraining",
        "binaryconnect": "BinaryConnect-style STE from scratch (no ADMM)",
    }
    rows = [
        f"Fully binarized LeNet-5 (every layer, per-channel scales), `{args.config}`; "
        f"dense accuracy after pretraining {dense:.2%}.",
        "",
        "| method | epochs | test accuracy | wall time |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key, r in results.items():
        rows.append(
            f"| {names[key]} | {r['epochs']} | {r['test_accuracy']:.2%} | "
            f"{r['wall_seconds'] / 60:.1f} min |"
        )
    write_results(
        "binary_methods", {"config": str(args.config), "results": results}, "\n".join(rows)
    )


if __name__ == "__main__":
    main()
