"""The exploratory GPU sweeps behind the issue-5 recipes: candidate configs, run all at once.

    python benchmarks/gpu_sweep.py 1 .sweep/cfg   # or 2: writes the sweep's configs
    # then on a GPU machine, one process per config, all at once:
    for f in .sweep/cfg/*.yaml; do
      python -m admmcompress run $f --out runs/sweep/$(basename $f .yaml) --no-progress \\
        --set runtime.device=cuda --set runtime.threads=1 & done; wait

Sweep 1 compares allocation methods and step schedules without augmentation; sweep 2 adds
random shifts, a lower learning rate and a finer 4-step schedule. Single seed, one H200 shared
by 12 processes, cut off at a time limit: a guide for the CPU recipes, not a result.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

ADAM = {"optimizer": {"name": "adam", "lr": 0.001}, "scheduler": {"name": "cosine"}}


def base(model: str = "lenet5", pretrain: int = 4, shift: int = 0) -> dict[str, Any]:
    return {
        "seed": 0,
        "model": model,
        "data": {"dataset": "mnist", "batch_size": 64, "augment": {"shift": shift}},
        "pretrain": {"epochs": pretrain, **copy.deepcopy(ADAM)},
        "admm": {"epochs": 6, "period": 2, "rho": 0.005, "rho_growth": 1.5, **copy.deepcopy(ADAM)},
        "retrain": {"epochs": 4, **copy.deepcopy(ADAM)},
        "runtime": {"progress": False},
    }


def steps(
    rates: list[int],
    alloc: str = "sensitivity",
    last_retrain: int = 14,
    admm: dict[str, Any] | None = None,
    retrain: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    out = []
    for r in rates:
        step: dict[str, Any] = {"name": f"x{r}", "target": {"rate": r, "allocation": alloc}}
        if admm:
            step["admm"] = dict(admm)
        if retrain:
            step["retrain"] = dict(retrain)
        out.append(step)
    out[-1].setdefault("retrain", {})["epochs"] = last_retrain
    return out


def with_steps(cfg: dict[str, Any], st: list[dict[str, Any]], **changes: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(cfg)
    for key, value in changes.items():  # "admm.rho" style keys
        node = cfg
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    cfg["steps"] = st
    return cfg


def quant_steps(rates: list[int], kind: Any, last: int, **kw: Any) -> list[dict[str, Any]]:
    st = steps(rates, **kw)
    st.append({"name": "q", "rules": {"*": {"quantize": kind}}, "retrain": {"epochs": last}})
    return st


def sweep1() -> dict[str, dict[str, Any]]:
    b, r4 = base(), [25, 80, 170, 320]
    l3 = base("lenet300", pretrain=10)
    return {
        "l5_sens4": with_steps(b, steps(r4)),
        "l5_glob4": with_steps(b, steps(r4, "global_magnitude")),
        "l5_sens3_long": with_steps(
            b, steps([40, 150, 320], admm={"epochs": 8}, retrain={"epochs": 6}, last_retrain=16)
        ),
        "l5_sens4_rho01": with_steps(b, steps(r4), **{"admm.rho": 0.01, "admm.rho_growth": 1.3}),
        "l5_sens5_420": with_steps(b, steps([25, 80, 170, 300, 420])),
        "l5_sens3_short": with_steps(
            b, steps([30, 100, 320], admm={"epochs": 4}, retrain={"epochs": 2}, last_retrain=10)
        ),
        "l3_sens3": with_steps(l3, steps([8, 25, 65], last_retrain=15)),
        "l3_glob3": with_steps(l3, steps([8, 25, 65], "global_magnitude", last_retrain=15)),
        "l3_sens3_long": with_steps(
            l3, steps([10, 30, 65], admm={"epochs": 8}, retrain={"epochs": 6}, last_retrain=20)
        ),
        "q_320_bin": with_steps(b, quant_steps(r4, "binary", 12, last_retrain=6)),
        "q_320_ter": with_steps(b, quant_steps(r4, "ternary", 12, last_retrain=6)),
        "q_450_bin": with_steps(b, quant_steps([25, 80, 170, 300, 450], "binary", 12)),
    }


def sweep2() -> dict[str, dict[str, Any]]:
    short = {"admm.epochs": 4, "retrain.epochs": 3}
    b = with_steps(base(pretrain=3, shift=2), [], **short)
    l3 = with_steps(base("lenet300", pretrain=6, shift=2), [], **short)
    r5, r3, g = [30, 100, 320], [8, 25, 65], "global_magnitude"
    lr5 = {"admm.optimizer.lr": 5e-4, "retrain.optimizer.lr": 5e-4}
    fine = steps([30, 100, 200, 400], g, 14, admm={"epochs": 3, "period": 1}, retrain={"epochs": 2})
    q = quant_steps([30, 100, 250], 4, 8, alloc=g, last_retrain=4)
    q[-1]["admm"] = {"epochs": 3, "period": 1}
    qt = copy.deepcopy(q)
    qt[-1]["rules"] = {"*": {"quantize": "ternary"}}
    return {
        "l5_aug": with_steps(b, steps(r5, g, 16)),
        "l5_aug_sens": with_steps(b, steps(r5, "sensitivity", 16)),
        "l5_noaug": with_steps(b, steps(r5, g, 16), **{"data.augment.shift": 0}),
        "l5_aug_lr5": with_steps(b, steps(r5, g, 16), **lr5),
        "l5_aug_400": with_steps(b, fine),
        "l5_aug_shift1": with_steps(b, steps(r5, g, 16), **{"data.augment.shift": 1}),
        "l3_aug": with_steps(l3, steps(r3, g, 16)),
        "l3_aug_sens": with_steps(l3, steps(r3, "sensitivity", 16)),
        "l3_noaug": with_steps(l3, steps(r3, g, 16), **{"data.augment.shift": 0}),
        "l3_aug_lr5": with_steps(l3, steps(r3, g, 16), **lr5),
        "q_250_4bit": with_steps(b, q),
        "q_250_ter": with_steps(b, qt),
    }


def main() -> None:
    which, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for name, cfg in (sweep1() if which == "1" else sweep2()).items():
        (out / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, **cfg}, sort_keys=False))
        print(out / f"{name}.yaml")


if __name__ == "__main__":
    main()
