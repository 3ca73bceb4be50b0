"""How much hardening costs, and what fixes it: rho (fixed, tuned, auto) and BatchNorm
recalibration, on LeNet-5 / MNIST, a depthwise-separable CNN and ResNet-20 on CIFAR-10.

    python benchmarks/rho_and_batchnorm.py            # about 30 minutes on 2 CPU cores

Each model is pretrained once (dense), then ADMM-pruned from those weights with each rho
setting, through the ``admmcompress`` command with no retraining: the report gives the
accuracy before hardening, right after the projection, and after BatchNorm recalibration
(100 training batches, the default), and each layer's relative primal residual
||W - Z|| / ||W|| at the last ADMM update. Writes results/rho_and_batchnorm.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from common import write_results

ROOT = Path(__file__).resolve().parent.parent
CIFAR = str(ROOT.parent / "shared" / "datasets")
LENET_RULES = {  # the demo's (the authors' one-step keep ratios, 74.5x)
    "conv1": {"prune": "irregular", "keep": 0.2},
    "conv2": {"prune": "irregular", "keep": 0.053},
    "fc1": {"prune": "irregular", "keep": 0.01},
    "fc2": {"prune": "irregular", "keep": 0.07},
}
CIFAR_DATA = {
    "dataset": "cifar10",
    "root": CIFAR,
    "batch_size": 128,
    "train_subset": 10000,
    "test_subset": 2000,
    "augment": {"shift": 4, "hflip": True, "pad": "black"},
}
SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
CASES: dict[str, dict[str, Any]] = {
    "lenet5": {
        "model": "lenet5",
        "data": {"dataset": "mnist", "batch_size": 64},
        "pretrain": {"epochs": 2, "optimizer": {"name": "adam", "lr": 0.001}},
        "admm": {"epochs": 6, "period": 1, "optimizer": {"name": "adam", "lr": 0.001}},
        "rules": LENET_RULES,
        "rhos": [1e-3, 1e-2, "auto"],
    },
    "dscnn": {
        "model": "dscnn_cifar",
        "data": CIFAR_DATA,
        "pretrain": {"epochs": 6, "optimizer": SGD, "scheduler": {"name": "cosine"}},
        "admm": {"epochs": 6, "period": 1, "optimizer": {**SGD, "lr": 0.01}},
        "rules": {"*": {"prune": "irregular", "keep": 0.2}},
        "rhos": [1e-3, 1e-2, "auto"],
    },
    "resnet20": {
        "model": "resnet20_cifar",
        "data": CIFAR_DATA,
        "pretrain": {"epochs": 6, "optimizer": SGD, "scheduler": {"name": "cosine"}},
        "admm": {"epochs": 6, "period": 1, "optimizer": {**SGD, "lr": 0.01}},
        "rules": {
            "layer*.conv*": {"prune": "filter", "keep": 0.5},
            "layer*.shortcut.0": {"prune": "filter", "keep": 0.5},
        },
        "rhos": ["auto"],
    },
}


def _cli(config: dict[str, Any], out: Path) -> dict[str, Any]:
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "admmcompress", "run", str(path), "--out", str(out)]
    subprocess.run([*cmd, "--no-progress"], check=True, cwd=ROOT)
    return json.loads((out / "report.json").read_text())


def run_case(name: str, case: dict[str, Any], work: Path) -> list[dict[str, Any]]:
    base = {
        "name": name,
        "seed": 0,
        "model": case["model"],
        "data": case["data"],
        "runtime": {"threads": 2, "progress": False},
    }
    start = time.perf_counter()
    dense = _cli(  # pretraining only: keep=1 prunes nothing, no ADMM, no retraining
        {
            **base,
            "pretrain": case["pretrain"],
            "admm": {"epochs": 0},
            "retrain": {"epochs": 0},
            "rules": {"*": {"prune": "irregular", "keep": 1.0}},
        },
        work / f"{name}_dense",
    )
    rows = []
    for rho in case["rhos"]:
        report = _cli(
            {
                **base,
                "init": str(work / f"{name}_dense" / "model.safetensors"),
                "admm": {**case["admm"], "rho": rho},
                "retrain": {"epochs": 0},
                "rules": case["rules"],
            },
            work / f"{name}_rho_{rho}",
        )
        last = report["admm_residuals"][-1]["layers"]
        harden = report["phases"]["harden"]
        rows.append(
            {
                "model": name,
                "rho": rho,
                "dense_accuracy": dense["final"]["test_accuracy"],
                "pruning_rate": report["pruning_rate"],
                "admm_accuracy": report["phases"]["admm"]["test_accuracy"],
                "hardened_accuracy": harden.get(
                    "test_accuracy_before_recalibration", harden["test_accuracy"]
                ),
                "recalibrated_accuracy": harden["test_accuracy"]
                if "test_accuracy_before_recalibration" in harden
                else None,
                "max_relative_primal": max(r["relative_primal"] for r in last.values()),
                "relative_primal": {n: r["relative_primal"] for n, r in last.items()},
                "final_rho": {n: r["rho"] for n, r in last.items()},
                "warnings": report["warnings"],
            }
        )
    print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    return rows


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2%}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=sorted(CASES))
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "rho_and_batchnorm")
    args = ap.parse_args()
    start = time.perf_counter()
    rows = [r for n in (args.only or CASES) for r in run_case(n, CASES[n], args.work)]
    table = [
        "| model | rho | rate | dense | after ADMM | after hardening | + BatchNorm "
        "recalibration | max ‖W−Z‖/‖W‖ at the last update | warned |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        table.append(
            f"| {r['model']} | {r['rho']} | {r['pruning_rate']:.1f}x | "
            f"{_pct(r['dense_accuracy'])} | {_pct(r['admm_accuracy'])} | "
            f"{_pct(r['hardened_accuracy'])} | {_pct(r['recalibrated_accuracy'])} | "
            f"{r['max_relative_primal']:.3f} | {'yes' if r['warnings'] else 'no'} |"
        )
    write_results(
        "rho_and_batchnorm",
        {"rows": rows, "seconds": time.perf_counter() - start, "cases": CASES},
        "\n".join(table),
    )


if __name__ == "__main__":
    main()
