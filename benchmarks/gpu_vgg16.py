"""VGG-16 on CIFAR-10 on a GPU: epoch time and images/s, ours against a plain PyTorch loop.

Measured in one process, interleaved, on the same device and data:

- **plain**: the loop a user writes by hand (data on the device, random crop + flip there,
  SGD, optional bf16 autocast and channels_last);
- **ours, dense**: ``train_epoch`` (pretraining);
- **ours, ADMM**: ``train_epoch`` with the ADMM penalty gradient, and the Z/U update timed
  separately.

Then a short ADMM pruning run through the whole pipeline (pretrain, ADMM, harden, retrain)
shows the full path at scale; its accuracy is not a record (too few epochs).

    python benchmarks/gpu_vgg16.py                         # fp32, then bf16 + channels_last
    python benchmarks/gpu_vgg16.py --cpu-smoke             # a tiny CPU check of the script
    python benchmarks/gpu_vgg16.py --data-dir D --no-verify --epoch-images 50000
        # a subset copy of CIFAR-10 (for machines the full file cannot reach), its
        # training images repeated to full 50,000-image epochs for the timings

The "data path" column times the on-device batch path alone (shuffle, gather, crop + flip):
its share of an epoch says whether an epoch is bound by compute or by data.

Writes results/gpu_vgg16.{json,md}, with the GPU's name.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

import admmcompress.core.admm as admm_module
from admmcompress import ADMM, Irregular, create_model
from admmcompress.cli import main as cli_main
from admmcompress.data import Split, load_dataset, resolve_data_root
from admmcompress.data.augment import augment_batch
from admmcompress.train.loop import train_epoch
from common import write_results

KEEP = 0.06  # about 16x on the convolutions


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def hand_batches(split: Split, batch: int, gen: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    """The batches a hand-written loop draws: shuffled on the device, cropped and flipped."""
    perm = torch.randperm(len(split), generator=gen).to(split.x.device)
    for i in range(0, len(split), batch):
        idx = perm[i : i + batch]
        yield augment_batch(split.x[idx], 4, True, gen), split.y[idx]


def plain_epoch(
    model: torch.nn.Module,
    split: Split,
    opt: torch.optim.Optimizer,
    batch: int,
    gen: torch.Generator,
    dtype: torch.dtype | None,
) -> float:
    """A hand-written epoch: shuffled batches, crop + flip on the device, SGD."""
    model.train()
    _sync(split.x.device)
    t = time.perf_counter()
    for x, y in hand_batches(split, batch, gen):
        with torch.autocast(split.x.device.type, dtype=dtype or torch.float32, enabled=bool(dtype)):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(split.x.device)
    return time.perf_counter() - t


def data_epoch(split: Split, batch: int, gen: torch.Generator) -> float:
    """The batch path alone, without the model: what an epoch costs before any compute."""
    _sync(split.x.device)
    t = time.perf_counter()
    for _ in hand_batches(split, batch, gen):
        pass
    _sync(split.x.device)
    return time.perf_counter() - t


def per_layer_penalty_grad(admm: ADMM) -> None:
    """``ADMM.add_penalty_grad_``'s one-layer-at-a-time path (the CPU's), run on this device:
    the reference for its all-layers-at-once path."""
    saved = admm_module.FOREACH_DEVICES
    admm_module.FOREACH_DEVICES = frozenset()
    try:
        admm.add_penalty_grad_()
    finally:
        admm_module.FOREACH_DEVICES = saved


def penalty_ms(fn: Any, device: torch.device, calls: int = 200) -> float:
    fn()
    _sync(device)
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return (time.perf_counter() - t) / calls * 1e3


def timed_epochs(
    split: Split, device: torch.device, batch: int, rounds: int, bf16: bool, channels_last: bool
) -> dict[str, Any]:
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model("vgg16_cifar").to(device, memory_format=fmt)
    split = Split(split.x.contiguous(memory_format=fmt), split.y)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    admm = ADMM(model, {"features.*": Irregular(keep=KEEP)}, rho=1e-4)
    gen = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if bf16 else None
    from admmcompress.data import Augment

    aug = Augment(shift=4, hflip=True)
    times: dict[str, list[float]] = {
        "data": [],
        "plain": [],
        "ours_dense": [],
        "ours_admm": [],
        "update": [],
    }
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for r in range(rounds + 1):  # round 0 warms up (cuDNN autotuning, allocator)
        t_data = data_epoch(split, batch, gen)
        t_plain = plain_epoch(model, split, opt, batch, gen, dtype)
        stats = train_epoch(
            model,
            split,
            opt,
            batch_size=batch,
            generator=gen,
            progress=False,
            augment=aug,
            autocast=dtype,
        )
        _sync(device)
        stats_admm = train_epoch(
            model,
            split,
            opt,
            batch_size=batch,
            generator=gen,
            progress=False,
            augment=aug,
            after_backward=admm.add_penalty_grad_,
            autocast=dtype,
        )
        _sync(device)
        t0 = time.perf_counter()
        admm.update()
        _sync(device)
        t_update = time.perf_counter() - t0
        if r:
            times["data"].append(t_data)
            times["plain"].append(t_plain)
            times["ours_dense"].append(stats.seconds)
            times["ours_admm"].append(stats_admm.seconds)
            times["update"].append(t_update)
    med = {k: statistics.median(v) for k, v in times.items()}
    n = len(split)
    steps = -(-n // batch)
    pen = [
        (
            penalty_ms(admm.add_penalty_grad_, device),
            penalty_ms(lambda: per_layer_penalty_grad(admm), device),
        )
        for _ in range(3)
    ]
    foreach_ms = statistics.median(p[0] for p in pen)
    loop_ms = statistics.median(p[1] for p in pen)
    return {
        "bf16": bf16,
        "channels_last": channels_last,
        "images": n,
        "seconds": med,
        "images_per_second": {k: n / v for k, v in med.items() if k != "update"},
        "ours_dense_over_plain": med["ours_dense"] / med["plain"],
        "ours_admm_over_plain": med["ours_admm"] / med["plain"],
        "update_over_epoch": med["update"] / med["ours_admm"],
        "data_over_epoch": med["data"] / med["plain"],
        "penalty_grad_ms": {"all_layers_foreach": foreach_ms, "per_layer_loop": loop_ms},
        "penalty_grad_over_epoch": foreach_ms * steps / 1e3 / med["ours_admm"],
        "peak_gpu_memory_gib": (
            torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
        ),
    }


def pruning_run(
    device: str,
    epochs: tuple[int, int, int],
    subset: int | None,
    data_dir: str | None,
    verify: bool,
) -> dict[str, Any]:
    pre, adm, ret = epochs
    sgd = {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
    cfg = {
        "name": "gpu_vgg16_prune",
        "model": "vgg16_cifar",
        "data": {
            "dataset": "cifar10",
            "batch_size": 128,
            "augment": {"shift": 4, "hflip": True, "pad": "black"},
            "verify": verify,
            **({"train_subset": subset, "test_subset": subset} if subset else {}),
        },
        "pretrain": {"epochs": pre, "optimizer": sgd, "scheduler": {"name": "cosine"}},
        "admm": {
            "epochs": adm,
            "period": min(2, adm),
            "rho": 1e-4,
            "optimizer": {**sgd, "lr": 0.01},
        },
        "retrain": {
            "epochs": ret,
            "optimizer": {**sgd, "lr": 0.01},
            "scheduler": {"name": "cosine"},
        },
        "rules": {"features.*": {"prune": "irregular", "keep": KEEP}},
        "runtime": {
            "device": device,
            "progress": False,
            "precision": "bf16",
            "channels_last": True,
            "deterministic": False,
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cfg.yaml"
        path.write_text(yaml.safe_dump(cfg))
        t = time.perf_counter()
        argv = ["run", str(path), "--out", str(Path(tmp) / "run")]
        assert cli_main(argv + (["--data-dir", data_dir] if data_dir else [])) == 0
        wall = time.perf_counter() - t
        report = json.loads((Path(tmp) / "run" / "report.json").read_text())
    return {
        "epochs": {"pretrain": pre, "admm": adm, "retrain": ret},
        "wall_seconds": wall,
        "pruning_rate": report["pruning_rate"],
        "overall_rate": report["overall_rate"],
        "test_accuracy": report["final"]["test_accuracy"],
        "dense_test_accuracy": report["phases"]["pretrain"]["test_accuracy"],
        "phases": report["phases"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument(
        "--run-epochs",
        type=int,
        nargs=3,
        default=[10, 10, 10],
        metavar=("PRETRAIN", "ADMM", "RETRAIN"),
    )
    ap.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the md5 check (for a subset copy of the CIFAR-10 file)",
    )
    ap.add_argument(
        "--epoch-images",
        type=int,
        default=None,
        help="repeat the training images up to this many for the timed epochs",
    )
    ap.add_argument("--name", default=None, help="results file name (default gpu_vgg16)")
    ap.add_argument("--no-run", action="store_true", help="timings only, no pruning run")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny CPU run to check the script")
    args = ap.parse_args()

    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: run on a GPU machine, or pass --cpu-smoke to check")
    device = torch.device("cpu" if smoke else "cuda")
    verify = not args.no_verify
    data = load_dataset("cifar10", resolve_data_root(args.data_dir), verify=verify)
    train = data.train.subset(64, 0) if smoke else data.train
    real_images = len(train)
    x, y = train.x, train.y
    if args.epoch_images and args.epoch_images > len(x):
        reps = -(-args.epoch_images // len(x))
        x = x.repeat(reps, 1, 1, 1)[: args.epoch_images]
        y = y.repeat(reps)[: args.epoch_images]
    split = Split(x.to(device), y.to(device))
    rounds = 1 if smoke else args.rounds
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the same for both loops
    variants = []
    for bf16 in (False, True):
        variants.append(
            timed_epochs(split, device, args.batch_size, rounds, bf16=bf16, channels_last=bf16)
        )
        print(json.dumps(variants[-1]), flush=True)
    run = (
        None
        if args.no_run
        else pruning_run(
            "cpu" if smoke else "cuda",
            (1, 2, 1) if smoke else tuple(args.run_epochs),
            64 if smoke else None,
            args.data_dir,
            verify,
        )
    )
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "none (CPU smoke test)"
    source = (
        f"{real_images:,} real CIFAR-10 training images repeated to {len(split):,} per epoch"
        if len(split) > real_images
        else f"{len(split):,} CIFAR-10 training images"
    )
    lines = [
        f"VGG-16 (vgg16_cifar, 14.7M weights), {source}, batch {args.batch_size}, "
        f"device: {gpu}, torch {torch.__version__}. Medians of {rounds} interleaved rounds "
        "after one warm-up round.",
        "",
        "| precision, layout | plain loop img/s | ours dense img/s | ours ADMM img/s "
        "| plain epoch s | dense / plain time | ADMM / plain time | Z/U update / epoch "
        "| data path / epoch | penalty grad ms, all layers / per layer | peak GPU GiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for v in variants:
        ips = v["images_per_second"]
        label = ("bf16" if v["bf16"] else "fp32") + (
            ", channels_last" if v["channels_last"] else ""
        )
        lines.append(
            f"| {label} | {ips['plain']:,.0f} | {ips['ours_dense']:,.0f} | "
            f"{ips['ours_admm']:,.0f} | {v['seconds']['plain']:.2f} | "
            f"{v['ours_dense_over_plain']:.2f} | "
            f"{v['ours_admm_over_plain']:.2f} | {v['update_over_epoch']:.3f} | "
            f"{v['data_over_epoch']:.3f} | "
            f"{v['penalty_grad_ms']['all_layers_foreach']:.3f} / "
            f"{v['penalty_grad_ms']['per_layer_loop']:.3f} | "
            + (f"{v['peak_gpu_memory_gib']:.1f} |" if v["peak_gpu_memory_gib"] else "- |")
        )
    if run is not None:
        e = run["epochs"]
        lines += [
            "",
            f"Pruning run (bf16, channels_last; {e['pretrain']} pretrain + {e['admm']} ADMM + "
            f"{e['retrain']} retrain epochs, convolutions keep {KEEP}): "
            f"{run['pruning_rate']:.1f}x on the convolutions ({run['overall_rate']:.1f}x on "
            f"all weights), test accuracy {run['test_accuracy'] * 100:.2f}% against "
            f"{run['dense_test_accuracy'] * 100:.2f}% for the dense model after pretraining, "
            f"on {real_images:,} training images, {run['wall_seconds'] / 60:.1f} min for the "
            "whole run.",
        ]
    name = args.name or "gpu_vgg16"
    write_results(name, {"gpu": gpu, "variants": variants, "pruning_run": run}, "\n".join(lines))


if __name__ == "__main__":
    main()
