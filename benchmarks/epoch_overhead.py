"""(a) ADMM-penalty epoch vs plain epoch, and our plain epoch vs a bare PyTorch loop;
(b) one ADMM ``update()`` vs one epoch. LeNet-5 on the full MNIST train set, CPU.

Rounds interleave the variants so that drift in machine load hits them alike; the
median of each is reported, with ratios taken within this one run.

    python benchmarks/epoch_overhead.py [--rounds 3] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from admmcompress import ADMM, Irregular, create_model
from admmcompress.data import load_dataset, resolve_data_root
from admmcompress.train.loop import train_epoch
from common import write_results

RULES = {
    "conv1": Irregular(keep=0.2),
    "conv2": Irregular(keep=0.053),
    "fc1": Irregular(keep=0.01),
    "fc2": Irregular(keep=0.07),
}


def bare_epoch(model, x, y, opt, batch_size: int, gen: torch.Generator) -> float:
    """The loop a user would write by hand: no progress bar, no bookkeeping."""
    model.train()
    t = time.perf_counter()
    perm = torch.randperm(len(y), generator=gen)
    for i in range(0, len(y), batch_size):
        idx = perm[i : i + batch_size]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()

    data = load_dataset("mnist", resolve_data_root(args.data_dir))
    split = data.train
    torch.manual_seed(0)
    model = create_model("lenet5")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    admm = ADMM(model, RULES, rho=1e-3)
    gen = torch.Generator().manual_seed(0)

    torch.set_flush_denormal(True)  # as the CLI does; applies to every variant alike
    times: dict[str, list[float]] = {"bare": [], "plain": [], "admm": [], "admm_autograd": []}
    kw = {"batch_size": args.batch_size, "generator": gen, "progress": False}
    # warm-up (allocator, oneDNN kernels)
    bare_epoch(model, split.x[:6400], split.y[:6400], opt, args.batch_size, gen)
    for r in range(args.rounds):
        times["bare"].append(bare_epoch(model, split.x, split.y, opt, args.batch_size, gen))
        times["plain"].append(train_epoch(model, split, opt, **kw).seconds)
        fast = admm.add_penalty_grad_
        times["admm"].append(train_epoch(model, split, opt, after_backward=fast, **kw).seconds)
        slow = admm.penalty
        times["admm_autograd"].append(train_epoch(model, split, opt, penalty=slow, **kw).seconds)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))

    updates = []
    for _ in range(5):
        t = time.perf_counter()
        admm.update()
        updates.append(time.perf_counter() - t)

    med = {k: statistics.median(v) for k, v in times.items()}
    upd = statistics.median(updates)
    ratios = {
        "admm_over_plain": med["admm"] / med["plain"],
        "admm_autograd_over_plain": med["admm_autograd"] / med["plain"],
        "plain_over_bare": med["plain"] / med["bare"],
        "update_over_epoch": upd / med["plain"],
    }
    table = "\n".join(
        [
            "| measure | value | goal |",
            "| --- | ---: | ---: |",
            f"| bare PyTorch epoch (median of {args.rounds}) | {med['bare']:.2f} s | |",
            f"| our plain epoch | {med['plain']:.2f} s | |",
            f"| our epoch with ADMM penalty (`add_penalty_grad_`, the CLI's path) "
            f"| {med['admm']:.2f} s | |",
            f"| our epoch with ADMM penalty (`loss + penalty()`, autograd) "
            f"| {med['admm_autograd']:.2f} s | |",
            f"| ADMM-penalty epoch / plain epoch | {ratios['admm_over_plain']:.3f}x | <= 1.05x |",
            f"| same, autograd `penalty()` / plain | {ratios['admm_autograd_over_plain']:.3f}x | |",
            f"| our plain epoch / bare loop | {ratios['plain_over_bare']:.3f}x | <= 1.05x |",
            f"| one `update()` | {upd * 1000:.1f} ms | |",
            f"| one `update()` / one epoch | {ratios['update_over_epoch']:.4f} | |",
        ]
    )
    write_results(
        "epoch_overhead",
        {
            "batch_size": args.batch_size,
            "rounds": args.rounds,
            "epoch_seconds": times,
            "median_seconds": med,
            "update_seconds": updates,
            "ratios": ratios,
        },
        table,
    )


if __name__ == "__main__":
    main()
