"""Run a recipe end to end through the CLI and record rate, accuracy and wall time.

    python benchmarks/run_config.py configs/lenet5_mnist_demo.yaml --name demo
    python benchmarks/run_config.py configs/lenet5_mnist_admm.yaml --name paper_admm \\
        --paper "ECCV 2018 one-step ADMM: 71x at 99.2%"
    python benchmarks/run_config.py configs/X.yaml --set a.b=c --out runs/x --name x --recorded

The wall time is the whole command (process start, data loading, every phase, report),
as a user would see it; creating the virtual environment is not included. ``--recorded``
records a run that already finished in ``--out`` instead of running it again: its saved
config must equal the config with the overrides (else it refuses), and the wall time is the
run's own (``report.json``: the pipeline, without process start).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from admmcompress.recipe.schema import load_config
from common import write_results


def _settings(path: Path, overrides: list[str] | None = None) -> dict:
    """A config's every value but the progress display (``--no-progress`` writes it)."""
    cfg = load_config(path, overrides or []).model_dump(mode="json")
    cfg["runtime"].pop("progress")
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("config", type=Path)
    ap.add_argument("--name", required=True, help="result name (benchmarks/results/<name>.*)")
    ap.add_argument("--out", type=Path, help="run folder (default: runs/bench_<name>)")
    ap.add_argument("--paper", default="", help="the published result to print beside ours")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument(
        "--recorded", action="store_true", help="record the finished run in --out, do not run"
    )
    args = ap.parse_args()

    out = args.out or Path("runs") / f"bench_{args.name}"
    if args.recorded:
        if _settings(out / "config.yaml") != _settings(args.config, args.overrides):
            sys.exit(f"{out} was not run with {args.config} and {args.overrides}; not recorded")
        report = json.loads((out / "report.json").read_text())
        if any("changed settings" in w for w in report.get("warnings", [])):
            sys.exit(f"{out} was resumed with changed settings; its config is not the one run")
        wall = float(report["wall_seconds"])
    else:
        if out.exists():
            shutil.rmtree(out)
        cmd = [sys.executable, "-m", "admmcompress", "run", str(args.config), "--out", str(out)]
        cmd += ["--no-progress"] + [x for o in args.overrides for x in ("--set", o)]
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - start
        report = json.loads((out / "report.json").read_text())
    phases = report["phases"]
    pre_epochs = int(phases["pretrain"]["epochs"])
    start = f"dense, {pre_epochs} epochs" if pre_epochs else "the config's init weights"
    rows = [
        "| measure | value |",
        "| --- | ---: |",
        f"| config | `{args.config}` |",
        f"| overrides | {' '.join(f'`--set {o}`' for o in args.overrides) or 'none'} |",
        f"| pruning rate (pruned layers) | {report['pruning_rate']:.1f}x |",
        f"| non-zero weights | {report['nonzero_total']:,} of {report['weights_total']:,} |",
        f"| weight storage | {report['storage_bytes']:,} bytes (dense fp32 "
        f"{report['dense_bytes']:,}) |",
        f"| storage compression | {report['storage_rate']:.1f}x "
        f"({report['storage_rate_without_index']:.1f}x without the index) |",
        f"| test accuracy of the starting model ({start}) | "
        f"{phases['pretrain']['test_accuracy']:.2%} |",
        "| test accuracy after ADMM, before hardening (last step) | "
        f"{phases['admm']['test_accuracy']:.2%} |",
        "| test accuracy right after hardening (last step) | "
        f"{phases['harden']['test_accuracy']:.2%} |",
        f"| final test accuracy (masked retraining) | {report['final']['test_accuracy']:.2%} |",
        f"| wall time of the {'run (its report)' if args.recorded else 'whole command'} "
        f"| {wall / 60:.1f} min |",
        f"| run finished (the header's date is when it was recorded) | {report['created']} |",
    ]
    residuals = report.get("admm_residuals") or []
    last = residuals[-1]["layers"] if residuals else {}
    worst = max(last.items(), key=lambda kv: kv[1]["relative_primal"], default=None)
    if worst:
        rows.append(
            "| largest relative ADMM residual, norm(W-Z) / norm(W), at the last update | "
            f"{worst[1]['relative_primal']:.3f} ({worst[0]}, rho {worst[1]['rho']:.3g}) |"
        )
    trained = [r for r in report["history"] if r["phase"] == "retrain"]
    if trained:
        rows.append(
            f"| training accuracy of the last retraining epoch (augmented batches) | "
            f"{trained[-1]['train_accuracy']:.2%} |"
        )
    spent: dict[str, list[float]] = {}
    for rec in report["history"]:  # every step's epochs, not only the last step's
        t = spent.setdefault(rec["phase"], [0.0, 0])
        t[0] += rec["train_seconds"] + rec["eval_seconds"]
        t[1] += 1
    rows += [
        f"| {p} time, all steps | {t / 60:.1f} min ({n} epochs) |" for p, (t, n) in spent.items()
    ]
    steps = report.get("steps") or []
    if len(steps) > 1:
        rows.append(
            "\n| step | pruning rate | storage | after ADMM | after harden | final "
            "| epochs |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
        )
        for st in steps:
            ph = st["phases"]
            acc = {k: f"{v['test_accuracy']:.2%}" for k, v in ph.items()}
            epochs = int(sum(v["epochs"] for v in ph.values()))
            rows.append(
                f"| {st['name']} | {st['pruning_rate']:.1f}x | {st['storage_rate']:.1f}x "
                f"({st['storage_rate_without_index']:.0f}x w/o index) | {acc.get('admm', '-')} "
                f"| {acc.get('harden', '-')} | {st['test_accuracy']:.2%} | {epochs} |"
            )
    if args.paper:
        rows.append(f"| published result | {args.paper} |")
    rows.append(
        "\n| layer | weights | non-zero | rate | bits | distinct values | stored bytes |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    for r in report["layers"]:
        rate = r["params"] / r["nonzero"]
        rows.append(
            f"| {r['name']} | {r['params']:,} | {r['nonzero']:,} | {rate:.1f}x | {r['bits']} | "
            f"{r['distinct_values']:,} | {r['storage']['bytes']:,} ({r['storage']['encoding']}) |"
        )
    write_results(
        args.name,
        {
            "config": str(args.config),
            "overrides": args.overrides,
            "wall_seconds": wall,
            "wall_measured": "report.json (pipeline only)" if args.recorded else "whole command",
            "run_created": report["created"],
            "last_admm_residuals": last,
            "last_retrain_train_accuracy": trained[-1]["train_accuracy"] if trained else None,
            "warnings": report.get("warnings", []),
            "pruning_rate": report["pruning_rate"],
            "storage_rate": report["storage_rate"],
            "storage_bytes": report["storage_bytes"],
            "storage_rate_without_index": report["storage_rate_without_index"],
            "steps": [
                {k: st[k] for k in ("name", "pruning_rate", "storage_rate", "test_accuracy")}
                for st in report.get("steps") or []
            ],
            "seconds_by_phase": {p: t for p, (t, _) in spent.items()},
            "final_test_accuracy": report["final"]["test_accuracy"],
            "phases": phases,
            "layers": [{k: r[k] for k in ("name", "params", "nonzero")} for r in report["layers"]],
            "paper": args.paper,
        },
        "\n".join(rows),
    )


if __name__ == "__main__":
    main()
