"""The peer baseline: Torch-Pruning (``pip install torch-pruning``, run unmodified) filter
pruning of a dense CIFAR model to a FLOPs target, with its iterative schedule and its
recommended importance, fine-tuned with the same loop, data and epochs as our runs.

    python benchmarks/torch_pruning_runner.py --init weights/resnet20_cifar10_dense.safetensors \\
        --target 2.0 --epochs 32 --name tp_resnet20_2x
    python benchmarks/torch_pruning_runner.py --init ... --smoke   # a minute on 512 images

What runs: ``tp.pruner.MetaPruner`` with ``tp.importance.GroupMagnitudeImportance(p=2)``
(the "group norm" importance its README recommends), the classifier ignored, global
pruning as in its CIFAR benchmark (``--local`` for a uniform ratio per layer). The
iterative schedule: ``--rounds`` rounds, each pruning in small steps
(``iterative_steps=--granularity``) until the FLOPs reach ``dense / target^(k/rounds)``,
then fine-tuning ``epochs / rounds`` epochs. The fine-tuning is our ``train_epoch``
(crop + flip, SGD with momentum, cosine over all rounds): the same optimizer settings and
epochs as the ADMM recipe's retraining, so only the pruning method differs.
FLOPs: ``flops.count_flops`` (PyTorch's FlopCounterMode), the same counter as our arm;
Torch-Pruning's own MACs count is recorded beside it as a check.

Writes results/<name>.{json,md} and <name>.pt (the pruned model, whole, for deployment
timing: its architecture is no longer the registry's).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn

from admmcompress import load
from admmcompress.data import load_dataset, resolve_data_root
from admmcompress.data.augment import Augment
from admmcompress.run.runtime import resolve_precision
from admmcompress.train.loop import evaluate, train_epoch
from common import RESULTS, write_results
from flops import count_flops


def classifier(model: nn.Module) -> nn.Module:
    """The last Linear layer: its outputs are the classes and are never pruned."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--init", type=Path, required=True, help="the dense model file")
    ap.add_argument("--target", type=float, default=2.0, help="times fewer FLOPs")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--granularity", type=int, default=400, help="pruning steps to ratio 1")
    ap.add_argument("--epochs", type=int, default=80, help="fine-tuning epochs in all")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--local", action="store_true", help="one ratio per layer, not global")
    how = ap.add_mutually_exclusive_group()
    how.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="bf16: train under bfloat16 autocast; auto (as our CIFAR recipes): bf16 where the "
        "CPU computes it in hardware, else fp32",
    )
    how.add_argument("--bf16", action="store_true", help="the same as --precision bf16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="512 training images, 1 epoch")
    ap.add_argument("--name", default="torch_pruning")
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parent.parent / "data"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    start = time.perf_counter()

    data = load_dataset("cifar10", resolve_data_root(args.data_dir))
    train, test = data.train, data.test
    if args.smoke:
        train, test = train.subset(512, args.seed), test.subset(512, args.seed)
        args.epochs, args.rounds = max(1, min(args.epochs, 2)), min(args.rounds, 2)
    model = load(args.init).train()
    shape = tuple(train.x.shape[1:])
    example = torch.zeros(1, *shape)
    dense_flops = count_flops(model, shape)
    _, dense_acc = evaluate(model, test)

    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        global_pruning=not args.local,
        pruning_ratio=1.0,
        iterative_steps=args.granularity,
        ignored_layers=[classifier(model)],
    )
    augment = Augment(shift=4, hflip=True, pad="black")
    gen = torch.Generator().manual_seed(args.seed)
    precision = "bf16" if args.bf16 else resolve_precision(args.precision, torch.device("cpu"))
    autocast = torch.bfloat16 if precision == "bf16" else None
    per_round = [
        args.epochs // args.rounds + (k < args.epochs % args.rounds) for k in range(args.rounds)
    ]
    history = []
    done_epochs = 0
    for k in range(1, args.rounds + 1):
        goal = dense_flops / args.target ** (k / args.rounds)
        steps = 0
        while count_flops(model, shape) > goal and steps < args.granularity:
            pruner.step()
            steps += 1
        flops = count_flops(model, shape)
        # a fresh optimizer for the new shapes; one cosine schedule over every round
        opt = torch.optim.SGD(
            model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay
        )
        for _ in range(per_round[k - 1]):
            lr = args.lr * 0.5 * (1 + torch.cos(torch.tensor(done_epochs / args.epochs * torch.pi)))
            for g in opt.param_groups:
                g["lr"] = float(lr)
            stats = train_epoch(
                model,
                train,
                opt,
                batch_size=args.batch_size,
                generator=gen,
                progress=False,
                augment=augment,
                autocast=autocast,
            )
            done_epochs += 1
        _, acc = evaluate(model, test)
        history.append(
            {
                "round": k,
                "pruning_steps": steps,
                "flops": flops,
                "test_accuracy": acc,
                "last_train_loss": stats.loss if per_round[k - 1] else None,
            }
        )
        print(f"round {k}: {dense_flops / flops:.2f}x fewer FLOPs, test acc {acc:.4f}", flush=True)

    model.eval()
    flops = count_flops(model, shape)
    macs, params = tp.utils.count_ops_and_params(model, example)
    _, acc = evaluate(model, test)
    RESULTS.mkdir(parents=True, exist_ok=True)
    torch.save(model, RESULTS / f"{args.name}.pt")
    seconds = time.perf_counter() - start
    result = {
        "init": str(args.init),
        "torch_pruning": tp.__version__,
        "target": args.target,
        "dense_flops": dense_flops,
        "flops": flops,
        "flops_reduction": dense_flops / flops,
        "torch_pruning_macs": int(macs),
        "params": int(params),
        "dense_test_accuracy": dense_acc,
        "test_accuracy": acc,
        "epochs": args.epochs,
        "rounds": args.rounds,
        "global_pruning": not args.local,
        "smoke": args.smoke,
        "seed": args.seed,
        "precision": precision,
        "threads": args.threads,
        "seconds": seconds,
        "history": history,
    }
    table = (
        "| method | FLOPs (M) | fewer FLOPs | params | dense acc | pruned acc | epochs "
        "| wall (s) |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        f"| Torch-Pruning {tp.__version__} (group magnitude, "
        f"{'global' if not args.local else 'local'}, {args.rounds} rounds) | {flops / 1e6:.1f} | "
        f"{dense_flops / flops:.2f}x | {params:,} | {100 * dense_acc:.2f}% | {100 * acc:.2f}% | "
        f"{args.epochs} | {seconds:.0f} |"
    )
    write_results(args.name, result, table)


if __name__ == "__main__":
    main()
