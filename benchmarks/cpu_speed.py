"""Training speed of ResNet-20 on CIFAR-10 on the CPU: a plain hand-written PyTorch loop
against admmcompress's loop, in fp32, fp32 + channels_last, bf16 autocast, bf16 +
channels_last and ``torch.compile``; then bf16 against fp32 accuracy on a short schedule.

    python benchmarks/cpu_speed.py                 # speed, then accuracy (about 25 min)
    python benchmarks/cpu_speed.py --skip-accuracy # speed only (about 8 min)

Speed: each variant trains ``--batches`` batches of 128 real CIFAR-10 images (a fresh
model per variant, same seed, SGD with momentum), after ``--warmup`` batches that are not
timed; rounds interleave the variants so drift in machine load hits them alike, and the
median of the rounds is reported. Both loops see the same tensors without augmentation
(the plain loop has none); "ours + augment" adds the recipes' crop-and-flip for scale.
``torch.compile`` (inductor) is measured on the plain loop, with its compile time apart.
Accuracy: the CLI runs the same recipe (``resnet20_cifar``, ``--epochs`` epochs on a
``--train-subset`` of the training set, cosine schedule, full test set) in fp32 and in
bf16 for each ``--seeds``, one after the other. Nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from admmcompress import create_model
from admmcompress.data import load_dataset, resolve_data_root
from admmcompress.data.augment import Augment
from admmcompress.data.split import Split
from admmcompress.train.loop import train_epoch
from common import write_results

ROOT = Path(__file__).resolve().parent.parent
BATCH = 128
#: (name, channels_last, autocast dtype)
SETTINGS = [
    ("fp32", False, None),
    ("fp32 + channels_last", True, None),
    ("bf16", False, torch.bfloat16),
    ("bf16 + channels_last", True, torch.bfloat16),
]


def _fresh(channels_last: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = create_model("resnet20_cifar")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    return model, opt


def plain_loop(
    model: Callable, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, dtype
) -> float:
    """What a user writes by hand: shuffle, slice, forward (under autocast), step."""
    gen = torch.Generator().manual_seed(1)
    perm = torch.randperm(len(y), generator=gen)
    start = time.perf_counter()
    for i in range(0, len(y), BATCH):
        idx = perm[i : i + BATCH]
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def our_loop(model, opt, split: Split, dtype, augment: Augment | None = None) -> float:
    gen = torch.Generator().manual_seed(1)
    stats = train_epoch(
        model,
        split,
        opt,
        batch_size=BATCH,
        generator=gen,
        progress=False,
        autocast=dtype,
        augment=augment,
    )
    return stats.seconds


def speed(args: argparse.Namespace, data) -> dict:
    n = args.batches * BATCH
    train = data.train.subset(n + args.warmup * BATCH, seed=0)
    warm = Split(train.x[n:], train.y[n:], train.black)  # other images, not timed
    timed = Split(train.x[:n], train.y[:n], train.black)
    layouts = {False: (warm, timed), True: (warm.as_channels_last(), timed.as_channels_last())}
    augment = Augment(shift=4, hflip=True, pad="black")

    runners: dict[str, Callable[[], float]] = {}
    compile_seconds: dict[str, float] = {}
    for name, cl, dtype in SETTINGS:
        w, t = layouts[cl]
        for loop in ("plain", "ours"):
            model, opt = _fresh(cl)
            if loop == "plain":
                plain_loop(model, opt, w.x, w.y, dtype)
                runners[f"plain | {name}"] = lambda m=model, o=opt, t=t, d=dtype: plain_loop(
                    m, o, t.x, t.y, d
                )
            else:
                our_loop(model, opt, w, dtype)
                runners[f"ours | {name}"] = lambda m=model, o=opt, t=t, d=dtype: our_loop(
                    m, o, t, d
                )
        model, opt = _fresh(cl)
        our_loop(model, opt, w, dtype, augment)
        runners[f"ours + augment | {name}"] = lambda m=model, o=opt, t=t, d=dtype: our_loop(
            m, o, t, d, augment
        )
    if not args.skip_compile:
        for name, cl, dtype in SETTINGS[1::2]:  # the channels_last settings
            w, t = layouts[cl]
            model, opt = _fresh(cl)
            compiled = torch.compile(model)
            start = time.perf_counter()
            plain_loop(compiled, opt, w.x, w.y, dtype)
            compile_seconds[name] = time.perf_counter() - start
            print(f"compiled {name} in {compile_seconds[name]:.0f} s", flush=True)
            runners[f"plain + torch.compile | {name}"] = lambda m=compiled, o=opt, t=t, d=dtype: (
                plain_loop(m, o, t.x, t.y, d)
            )
    times: dict[str, list[float]] = {k: [] for k in runners}
    for r in range(args.rounds):
        for key, run in runners.items():
            times[key].append(run())
        print(
            f"round {r + 1}: " + ", ".join(f"{k} {n / v[-1]:.0f}/s" for k, v in times.items()),
            flush=True,
        )
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    return {"images": n, "images_per_second": rate, "compile_seconds": compile_seconds}


def accuracy(args: argparse.Namespace) -> dict:
    """The CLI's own recipe in fp32 and bf16: final test accuracy and wall time."""
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for precision in ("fp32", "bf16"):
                cfg = {
                    "name": f"speed_{precision}_{seed}",
                    "seed": seed,
                    "model": "resnet20_cifar",
                    "data": {
                        "dataset": "cifar10",
                        "batch_size": BATCH,
                        "train_subset": args.train_subset,
                        "augment": {"shift": 4, "hflip": True, "pad": "black"},
                    },
                    "pretrain": {
                        "epochs": args.epochs,
                        "optimizer": {
                            "name": "sgd",
                            "lr": 0.1,
                            "momentum": 0.9,
                            "weight_decay": 5e-4,
                        },
                        "scheduler": {"name": "cosine"},
                    },
                    "rules": {"*": {"prune": "irregular", "keep": 1.0}},  # dense
                    "admm": {"epochs": 0},
                    "retrain": {"epochs": 0},
                    "runtime": {"precision": precision, "channels_last": True, "progress": False},
                }
                path = Path(tmp) / f"{precision}_{seed}.yaml"
                path.write_text(yaml.safe_dump(cfg))
                run_dir = Path(tmp) / f"run_{precision}_{seed}"
                start = time.perf_counter()
                cmd = [sys.executable, "-m", "admmcompress", "run", str(path)]
                cmd += ["--out", str(run_dir), "--data-dir", args.data_dir]
                subprocess.run(cmd, check=True, cwd=ROOT)
                wall = time.perf_counter() - start
                report = json.loads((run_dir / "report.json").read_text())
                acc = report["final"]["test_accuracy"]
                out[f"{precision} seed {seed}"] = {"test_accuracy": acc, "seconds": wall}
                print(f"{precision} seed {seed}: {acc:.4f} in {wall:.0f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--batches", type=int, default=40, help="timed batches per round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--train-subset", type=int, default=10000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parent.parent / "data"))
    ap.add_argument(
        "--name",
        default="cpu_speed",
        help="results file name under benchmarks/results/ (one per CPU kind: the speed of bf16 "
        "depends on whether the CPU computes it natively)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as the CLI does
    data = load_dataset("cifar10", resolve_data_root(args.data_dir))
    result = speed(args, data)
    rate = result["images_per_second"]
    rows = ["| loop | setting | images/s | vs plain fp32 | ours / plain (time) |"]
    rows.append("| --- | --- | ---: | ---: | ---: |")
    base = rate["plain | fp32"]
    for key, r in rate.items():
        loop, setting = key.split(" | ")
        ratio = ""
        if loop == "ours":
            ratio = f"{rate[f'plain | {setting}'] / r:.3f}"
        rows.append(f"| {loop} | {setting} | {r:.0f} | {r / base:.2f}x | {ratio} |")
    for name, s in result["compile_seconds"].items():
        rows.append(f"\ntorch.compile of the plain loop, {name}: {s:.0f} s to compile")
    data_json = {"threads": args.threads, "rounds": args.rounds, "batch_size": BATCH, **result}
    write_results(args.name, data_json, "\n".join(rows))  # the speed, before the long part
    if not args.skip_accuracy:
        result["accuracy"] = accuracy(args)
        rows.append(
            f"\nShort schedule: ResNet-20, {args.epochs} epochs on {args.train_subset} training "
            "images (augmented, SGD lr 0.1 cosine, batch 128, channels_last), full test set\n"
        )
        rows.append("| precision | seed | test accuracy | wall (s) |")
        rows.append("| --- | ---: | ---: | ---: |")
        for key, v in result["accuracy"].items():
            precision, _, seed = key.split()
            rows.append(
                f"| {precision} | {seed} | {100 * v['test_accuracy']:.2f}% | {v['seconds']:.0f} |"
            )
    write_results(
        args.name,
        {"threads": args.threads, "rounds": args.rounds, "batch_size": BATCH, **result},
        "\n".join(rows),
    )


if __name__ == "__main__":
    main()
