"""Does the per-layer split decide how well ResNet-20 survives 16x irregular pruning?

    python benchmarks/allocation_split.py --rate 16 --epochs 1 --data-dir ../shared/datasets

From the shipped dense ResNet-20, every split prunes one-shot by magnitude within each layer
to the same total of weights kept, then the same masked fine-tuning runs (SGD lr 0.01,
momentum 0.9, weight decay 5e-4, batch 128, shifts of 4 and flips, bf16 autocast, seed 0,
``--epochs`` passes over the training set at a constant learning rate). Splits:

- ``global_magnitude``, ``uniform`` and ``lamp`` (layer-adaptive magnitude, Lee et al.,
  ICLR 2021: a weight's score is its w^2 over the sum of w^2 of the weights of its layer at
  least as large; global top-k on scores): the library's (``recipe.allocation.allocate``);
- ``erk``: Erdos-Renyi-Kernel (Evci et al., ICML 2020): a layer's density proportional to
  the sum of its weight shape's dimensions over their product, layers that would exceed
  full density kept dense.

ERK is written here, not in the library. LAMP was written here first too; on this probe it
led, so it moved into the library (same counts, checked: 16,931 weights, fewest 229).
It reports, per split, the accuracy right after pruning, after recalibrating BatchNorm on
2,000 training images, and after fine-tuning, on the 10,000 test images (fp32). Writes
benchmarks/results/allocation_split_<rate>x.{json,md}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from admmcompress.constraints import topk_mask
from admmcompress.core.selection import compressible_parameters
from admmcompress.data import Split, augment_batch, iterate_batches, load_dataset
from admmcompress.models import create_model, load_weights_file
from admmcompress.recipe.allocation import allocate
from common import write_results

WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "resnet20_cifar10_dense.safetensors"


def erk_counts(weights: dict[str, Tensor], budget: int) -> dict[str, int]:
    """Per-layer keep counts of ERK, layers whose density would exceed 1 kept dense."""
    raw = {n: sum(w.shape) / w.numel() for n, w in weights.items()}
    dense: set[str] = set()
    while True:
        rest = budget - sum(weights[n].numel() for n in dense)
        free = [n for n in weights if n not in dense]
        eps = rest / sum(raw[n] * weights[n].numel() for n in free)
        over = {n for n in free if eps * raw[n] > 1}
        if not over:
            break
        dense |= over
    return {
        n: w.numel() if n in dense else int(eps * raw[n] * w.numel()) for n, w in weights.items()
    }


@torch.no_grad()
def accuracy(model: nn.Module, split: Split) -> float:
    model.eval()
    right = 0
    for x, y in iterate_batches(split, 1000, shuffle=False):
        right += int((model(x).argmax(1) == y).sum())
    return right / len(split)


@torch.no_grad()
def recalibrate(model: nn.Module, x: Tensor) -> None:
    """BatchNorm statistics measured again on ``x`` (cumulative average)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    for i in range(0, len(x), 250):
        model(x[i : i + 250])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rate", type=float, default=16.0)
    ap.add_argument("--epochs", type=int, default=1, help="masked fine-tuning passes")
    ap.add_argument("--data-dir", type=Path, default=Path("data"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("cifar10", args.data_dir)
    train, test = data.train, data.test
    g = torch.Generator().manual_seed(0)
    calib = train.x[torch.randperm(len(train), generator=g)[:2000]]

    def dense_model() -> nn.Module:
        return load_weights_file(create_model("resnet20_cifar"), WEIGHTS)

    base = dense_model()
    dense_acc = accuracy(base, test)
    weights = {n: p.detach() for n, p in compressible_parameters(base).items()}
    sizes = {n: w.numel() for n, w in weights.items()}
    budget = int(sum(sizes.values()) // args.rate)
    splits = {
        "global_magnitude": allocate(budget, sizes, "global_magnitude", weights=weights),
        "uniform": allocate(budget, sizes, "uniform"),
        "lamp": allocate(budget, sizes, "lamp", weights=weights),
        "erk": erk_counts(weights, budget),
    }
    rows = []
    for name, counts in splits.items():
        t0 = time.perf_counter()
        torch.manual_seed(0)
        model = dense_model()
        params = compressible_parameters(model)
        masks = {}
        with torch.no_grad():
            for n, p in params.items():
                masks[n] = topk_mask(p.abs().flatten(), counts[n]).view_as(p).to(p.dtype)
                p.mul_(masks[n])
        pruned = accuracy(model, test)
        recalibrate(model, calib)
        recal = accuracy(model, test)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        gen = torch.Generator().manual_seed(0)
        for _ in range(args.epochs):
            model.train()
            for x, y in iterate_batches(train, 128, shuffle=True, generator=gen):
                x = augment_batch(x, 4, True, gen, train.black)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    for n, p in params.items():
                        p.mul_(masks[n])
        tuned = accuracy(model, test)
        kept = sum(int(torch.count_nonzero(p)) for p in params.values())
        rows.append(
            {
                "split": name,
                "kept": kept,
                "after_pruning": pruned,
                "after_bn_recalibration": recal,
                "after_fine_tuning": tuned,
                "seconds": time.perf_counter() - t0,
                "counts": counts,
            }
        )
        print(f"{name}: {pruned:.4f} -> {recal:.4f} -> {tuned:.4f} ({kept} kept)", flush=True)
    best = max(r["after_fine_tuning"] for r in rows)
    lines = [
        f"ResNet-20 / CIFAR-10 from the shipped dense model ({dense_acc:.2%}), one-shot "
        f"{args.rate:g}x ({budget} of {sum(sizes.values())} weights kept), then {args.epochs} "
        "masked fine-tuning epoch(s), seed 0; test accuracy:",
        "",
        "| split | right after pruning | BN recalibrated | after fine-tuning | s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        tuned = f"{r['after_fine_tuning']:.2%}"
        lines.append(
            f"| {r['split']} | {r['after_pruning']:.2%} | {r['after_bn_recalibration']:.2%} | "
            + (f"**{tuned}**" if r["after_fine_tuning"] == best else tuned)
            + f" | {r['seconds']:.0f} |"
        )
    lines += ["", "| layer | weights | " + " | ".join(splits) + " |"]
    lines.append("| --- | ---: | " + " | ".join("---:" for _ in splits) + " |")
    for n, size in sizes.items():
        lines.append(f"| {n} | {size} | " + " | ".join(str(splits[s][n]) for s in splits) + " |")
    write_results(
        f"allocation_split_{args.rate:g}x",
        {
            "rate": args.rate,
            "epochs": args.epochs,
            "threads": args.threads,
            "seed": 0,
            "dense_accuracy": dense_acc,
            "results": rows,
        },
        "\n".join(lines),
    )


if __name__ == "__main__":
    main()
