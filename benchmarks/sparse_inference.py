"""Sparse (CSR) against dense PyTorch CPU inference for the pruned LeNet-5 and LeNet-300-100.

    python benchmarks/sparse_inference.py [--lenet5 PATH] [--lenet300 PATH] [--threads 1 2]

For each model: whole-model batch-1 latency and batch-256 throughput, every Linear / Conv2d
alone at batch 1 and 256 (its CSR twin is timed whatever its density), and the fully
connected layers together with their ReLUs, which carry the issue's goal: at least 2x faster
than dense at batch 1. The baseline everywhere is the plain eager dense PyTorch model: the
loaded one with its masks applied (the pruned weights are stored as zeros), run as is.

The variants, each timed against that baseline in the same interleaved rounds:

- ``sparsify(model, --max-density)``: each sparse enough layer a CSR module (eager);
  ``sparsify(..., autotune=True)`` keeps a Linear dense where that measured faster;
- compact, dense: ``compact_model`` removes dead units, no CSR (what compaction alone gives);
- fused: ``fuse_linear_chain`` runs the Linear/ReLU chain as one ``SparseMLP`` module
  (batch 1: one ``addmv`` per layer, no per-layer module call), either all dense (what
  fusion alone gives), CSR by density, or CSR where timed faster (``autotune=True``); also
  after compaction. Only for a model that is such a chain: all of LeNet-300-100, the fully
  connected part of LeNet-5;
- TorchScript dense (``torch.jit.script``), another dense baseline, for the fully connected
  layers.

The goal is judged on one fixed variant, ``GOAL_VARIANT`` (compact + fused, autotune), not
the best of many noisy rows; the table also gives its gain over the fastest dense form.

Timing: ``torch.inference_mode``, a warm-up, then ``--rounds`` rounds that interleave the
variants being compared, each round timing a block of calls of about ``--block-ms``; the
median per call is reported, and speed-ups are ratios within this one run, so that load from
other processes hits both sides alike. Inputs are random: the work does not depend on values.

Writes benchmarks/results/sparse_inference.json and .md.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from admmcompress.formats import read_model_file
from admmcompress.inference.sparse import (
    SparseConv2d,
    SparseLinear,
    density,
    fuse_linear_chain,
    interleaved_timings,
    sparsify,
)
from admmcompress.structure.compact import compact_model
from common import write_results

REPO = Path(__file__).resolve().parents[1]
MODELS = {  # key: (label, default file, config that produces it)
    "lenet5": ("LeNet-5", "runs/lenet5_record/model.safetensors", "lenet5_mnist_record.yaml"),
    "lenet300": (
        "LeNet-300-100",
        "runs/lenet300_record/model.safetensors",
        "lenet300_mnist_record.yaml",
    ),
}
BIG_BATCH = 256
GOAL = 2.0  # the issue: >= 2x faster than dense at batch 1 on the fully connected layers
GOAL_VARIANT = "compact + fused, CSR where timed faster (autotune)"


def load_dense(key: str, path: Path) -> nn.Module:
    saved = read_model_file(path)
    if saved.model_name != key:
        sys.exit(f"{path} holds a {saved.model_name!r} model, expected {key!r}")
    model = saved.model.eval()
    with torch.no_grad():  # the file stores hardened weights; applying the masks is a no-op
        for name, mask in saved.masks.items():
            model.get_submodule(name).weight.mul_(mask)
    return model


def layer_inputs(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """The input each Linear / Conv2d receives when ``model`` runs on ``x``."""
    seen: dict[str, Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda _m, args, name=name: seen.setdefault(name, args[0]))
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
    ]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return {k: v.clone() for k, v in seen.items()}


def fc_stack(model: nn.Module) -> nn.Sequential:
    """The model's Linear layers in order with a ReLU between each (as in both LeNets).

    The layers keep their names in the model, so reports name them alike.
    """
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    layers: dict[str, nn.Module] = {}
    for i, (name, lin) in enumerate(linears):
        if i:
            layers[f"relu{i}"] = nn.ReLU()
        layers[name] = lin
    return nn.Sequential(OrderedDict(layers)).eval()


def _row(batch: int, base: list[float], var: list[float], err: float) -> dict[str, Any]:
    b, v = statistics.median(base), statistics.median(var)
    return {
        "batch": batch,
        "baseline_s": b,
        "variant_s": v,
        "speedup": b / v,
        "max_abs_diff": err,
        "samples_s": {"baseline": base, "variant": var},
    }


def compare(
    dense: Callable[[Tensor], Tensor],
    sparse: Callable[[Tensor], Tensor],
    x: Tensor,
    args: argparse.Namespace,
    extra: dict[str, Callable[[], object]] | None = None,
) -> dict[str, Any]:
    """Median seconds per call of ``dense(x)`` and ``sparse(x)`` (and of ``extra``)."""
    fns: dict[str, Callable[[], object]] = {"dense": lambda: dense(x), "sparse": lambda: sparse(x)}
    with torch.inference_mode():
        err = (dense(x) - sparse(x)).abs().max().item()
        s = interleaved_timings({**fns, **(extra or {})}, args.rounds, args.block)
    row = _row(x.shape[0], s.pop("dense"), s.pop("sparse"), err)
    return {**row, "uses_csr": True, "extra_s": {k: statistics.median(v) for k, v in s.items()}}


def compare_many(
    baseline: nn.Module,
    variants: dict[str, nn.Module],
    x: Tensor,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Each variant against ``baseline`` on ``x``, all interleaved in the same rounds."""
    fns: dict[str, Callable[[], object]] = {"": lambda: baseline(x)}
    fns.update({name: (lambda m=m: m(x)) for name, m in variants.items()})
    with torch.inference_mode():
        ref = baseline(x)
        errs = {name: (m(x) - ref).abs().max().item() for name, m in variants.items()}
        s = interleaved_timings(fns, args.rounds, args.block)
    rows = []
    for name, m in variants.items():
        report = getattr(m, "sparsify_report", None)
        choices = [] if report is None else [vars(li) for li in report.layers]
        rows.append(
            {
                "variant": name,
                **_row(x.shape[0], s[""], s[name], errs[name]),
                "uses_csr": any(c["sparse"] for c in choices),
                "layers": choices,
            }
        )
    return rows


def chain_variants(dense: nn.Module, compact: nn.Module, md: float) -> dict[str, nn.Module]:
    """The fused forms of a Linear/ReLU chain model (empty when it is no such chain)."""
    names = [n for n, m in dense.named_modules() if isinstance(m, nn.Linear)]
    cnames = [n for n, m in compact.named_modules() if isinstance(m, nn.Linear)]
    try:
        return {
            "fused, dense (no CSR)": fuse_linear_chain(dense, skip=names),
            "compact + fused, dense (no CSR)": fuse_linear_chain(compact, skip=cnames),
            f"fused, CSR by density (max_density={md})": fuse_linear_chain(dense, md),
            "fused, CSR where timed faster (autotune)": fuse_linear_chain(dense, md, autotune=True),
            GOAL_VARIANT: fuse_linear_chain(compact, md, autotune=True),
        }
    except ValueError:  # not a chain (LeNet-5 with its convolutions)
        return {}


def scripted(model: nn.Module) -> nn.Module:
    with warnings.catch_warnings():  # torch.jit.script is deprecated in favour of torch.compile
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(model)


def bench_model(key: str, dense: nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    label = MODELS[key][0]
    md = args.max_density
    gen = torch.Generator().manual_seed(0)
    inputs = {b: torch.randn(b, 1, 28, 28, generator=gen) for b in (1, BIG_BATCH)}
    layers = {n: m for n, m in dense.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    sparse = sparsify(dense, md)
    report = sparse.sparsify_report
    convs = [n for n, m in layers.items() if isinstance(m, nn.Conv2d)]
    compact = compact_model(dense, inputs[1]).model.eval()

    variants: dict[str, nn.Module] = {f"sparsify(max_density={md})": sparse}
    if convs:
        variants["sparse fully connected layers only"] = sparsify(dense, md, skip=convs)
        variants["every layer sparse"] = sparsify(dense, 1.0)
    variants["sparsify(autotune=True)"] = sparsify(dense, md, autotune=True)
    variants["compact, dense (no CSR)"] = compact
    variants[f"compact + sparsify(max_density={md})"] = sparsify(compact, md)
    variants.update(chain_variants(dense, compact, md))
    whole = []
    for b, x in inputs.items():
        rows = compare_many(dense, variants, x, args)
        whole += rows
        for row in rows:
            print(f"{label} whole, {row['variant']}, batch {b}: {row['speedup']:.2f}x", flush=True)

    per_layer = []
    for b, x in inputs.items():
        for name, inp in layer_inputs(dense, x).items():
            layer = layers[name]
            twin = (
                SparseLinear.from_dense(layer)
                if isinstance(layer, nn.Linear)
                else SparseConv2d.from_dense(layer)
            )
            extra = None
            if isinstance(layer, nn.Conv2d):  # im2col alone: the floor of SparseConv2d
                k, d, p, st = layer.kernel_size, layer.dilation, layer.padding, layer.stride
                extra = {"unfold": lambda inp=inp, k=k, d=d, p=p, st=st: F.unfold(inp, k, d, p, st)}
            row = compare(layer, twin, inp, args, extra)
            per_layer.append({"layer": name, **row})
            print(f"{label} {name}, batch {b}: {row['speedup']:.2f}x", flush=True)

    dense_fc = fc_stack(dense)
    fc_in = layer_inputs(dense, inputs[1])[next(n for n in layers if n not in convs)]
    compact_fc = compact_model(dense_fc, fc_in).model.eval()
    fc_variants: dict[str, nn.Module] = {
        f"sparsify(max_density={md})": sparsify(dense_fc, md),
        "sparsify(autotune=True)": sparsify(dense_fc, md, autotune=True),
        "compact, dense (no CSR)": compact_fc,
        "TorchScript dense (torch.jit.script)": scripted(dense_fc),
        **chain_variants(dense_fc, compact_fc, md),
    }
    fc_rows = []
    for b in (1, BIG_BATCH):
        x = fc_in if b == 1 else torch.randn(b, fc_in.shape[1], generator=gen)
        rows = compare_many(dense_fc, fc_variants, x, args)
        fc_rows += rows
        for row in rows:
            print(f"{label} fc layers, {row['variant']}, batch {b}: {row['speedup']:.2f}x")

    fc1 = [row for row in fc_rows if row["batch"] == 1]
    goal_row = next(row for row in fc1 if row["variant"] == GOAL_VARIANT)
    best_dense = min((row for row in fc1 if not row["uses_csr"]), key=lambda r: r["variant_s"])

    info = []
    for name, layer in layers.items():
        w = layer.weight
        li = next(li for li in report.layers if li.name == name)
        info.append(
            {
                "layer": name,
                "shape": list(w.shape),
                "density": density(w),
                "nonzero": int(torch.count_nonzero(w)),
                "weights": w.numel(),
                "sparsified": li.sparse,
                "reason": li.reason,
            }
        )
    total = sum(i["weights"] for i in info)
    nnz = sum(i["nonzero"] for i in info)
    return {
        "label": label,
        "weights": total,
        "nonzero": nnz,
        "rate": total / nnz if nnz else math.inf,
        "layers": info,
        "whole": whole,
        "per_layer": per_layer,
        "fc_layers": fc_rows,
        "fc_goal": GOAL,
        "fc_goal_variant": GOAL_VARIANT,
        "fc_goal_speedup": goal_row["speedup"],
        "fc_goal_met": goal_row["speedup"] >= GOAL,
        "fc_best_dense_variant": best_dense["variant"],
        "fc_gain_over_best_dense": best_dense["variant_s"] / goal_row["variant_s"],
    }


def _us(s: float) -> str:
    return f"{s * 1e6:,.1f} µs" if s < 1e-3 else f"{s * 1e3:,.2f} ms"


def _cell(row: dict[str, Any]) -> tuple[str, str]:
    """Latency at batch 1, throughput (images/s) at larger batches."""
    if row["batch"] == 1:
        return _us(row["baseline_s"]), _us(row["variant_s"])
    b = row["batch"]
    return f"{b / row['baseline_s']:,.0f} img/s", f"{b / row['variant_s']:,.0f} img/s"


def _speed(row: dict[str, Any]) -> str:
    s = row["speedup"]
    if s >= 1:
        return f"{s:.2f}x"
    digits = 2 if s < 0.995 else 3  # no "1.00x (slower)"
    return f"**{s:.{digits}f}x ({'sparse' if row['uses_csr'] else 'variant'} slower)**"


def _choices(row: dict[str, Any]) -> str:
    """'fc1 CSR, fc2 dense, ...' for a variant that chose per layer, else ''."""
    parts = []
    for li in row["layers"]:
        form = "CSR" if li["sparse"] else "dense"
        if li["dense_s"] is not None:
            form += f" ({li['sparse_s'] * 1e6:.1f} vs {li['dense_s'] * 1e6:.1f} µs dense)"
        parts.append(f"{li['name']} {form}")
    return ", ".join(parts)


def model_table(r: dict[str, Any], threads: int, rounds: int) -> tuple[str, list[str]]:
    losses: list[str] = []
    t = f"{threads} thread" + ("s" if threads > 1 else "")
    lines = [
        f"### {r['label']}, {r['rate']:.0f}x ({r['nonzero']:,} of {r['weights']:,} weights), {t}",
        "",
        f"Batch 1: latency per call; batch {BIG_BATCH}: images per second. Median of {rounds} "
        "interleaved rounds. Baseline: the plain eager dense PyTorch model (or layers), timed "
        "in the same rounds. Speed-up = baseline time / variant time.",
        "",
        "| what | batch | baseline: eager dense | variant | speed-up |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]

    def add(what: str, row: dict[str, Any]) -> None:
        d, s = _cell(row)
        lines.append(f"| {what} | {row['batch']} | {d} | {s} | {_speed(row)} |")
        if row["speedup"] < 1 and row["uses_csr"]:
            losses.append(f"{r['label']} {what}, batch {row['batch']} ({row['speedup']:.2f}x)")

    for row in sorted(r["whole"], key=lambda row: row["batch"]):
        add(f"whole model, {row['variant']}", row)
    for row in r["fc_layers"]:
        goal = ""
        if row["batch"] == 1 and row["variant"] == r["fc_goal_variant"]:
            goal = f" (**goal >= {GOAL:g}x: {'met' if r['fc_goal_met'] else 'NOT met'}**)"
        add(f"fully connected layers, {row['variant']}{goal}", row)
    dens = {li["layer"]: li for li in r["layers"]}
    for row in sorted(r["per_layer"], key=lambda row: row["batch"]):
        li = dens[row["layer"]]
        note = "" if li["sparsified"] else ", left dense by sparsify"
        add(f"{row['layer']} alone, CSR module (density {li['density']:.4f}{note})", row)
        if "unfold" in row["extra_s"] and row["speedup"] < 1:
            losses.append(
                f"{r['label']} {row['layer']}, batch {row['batch']}: `F.unfold` alone takes "
                f"{_us(row['extra_s']['unfold'])}, the whole dense convolution "
                f"{_us(row['baseline_s'])}"
            )
    lines += ["", "Per-layer choices at batch 1 (autotune: CSR vs dense time of that layer):", ""]
    seen = set()
    for part, rows in (("whole model", r["whole"]), ("fully connected layers", r["fc_layers"])):
        for row in rows:
            c = _choices(row)
            if row["batch"] != 1 or not c or (part, row["variant"]) in seen:
                continue
            seen.add((part, row["variant"]))
            lines.append(f"- {part}, {row['variant']}: {c}")
    lines += [
        "",
        "| layer | shape | non-zero | density | sparsify |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for li in r["layers"]:
        shape = "x".join(map(str, li["shape"]))
        what = "CSR" if li["sparsified"] else f"dense: {li['reason']}"
        lines.append(
            f"| {li['layer']} | {shape} | {li['nonzero']:,} | {li['density']:.4f} | {what} |"
        )
    return "\n".join(lines), losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lenet5", type=Path, default=REPO / MODELS["lenet5"][1])
    ap.add_argument("--lenet300", type=Path, default=REPO / MODELS["lenet300"][1])
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="e.g. --threads 1 2")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--block-ms", type=float, default=20.0, help="time per block of calls")
    ap.add_argument("--max-density", type=float, default=0.3)
    args = ap.parse_args()
    args.block = args.block_ms / 1000

    missing = []
    for key in MODELS:
        path = getattr(args, key)
        if not path.is_file():
            cfg = MODELS[key][2]
            missing.append(
                f"{path} not found. Produce it with\n"
                f"    admmcompress run configs/{cfg} --out {Path(MODELS[key][1]).parent}\n"
                f"or pass --{key} PATH to a saved {MODELS[key][0]} model.safetensors"
            )
    if missing:
        print("\n".join(missing), file=sys.stderr)
        sys.exit(2)

    dense = {key: load_dense(key, getattr(args, key)) for key in MODELS}
    threads_before = torch.get_num_threads()
    results: dict[str, Any] = {}
    sections: list[str] = []
    losses: list[str] = []
    goals: list[str] = []
    for n in args.threads:
        torch.set_num_threads(n)
        for key, model in dense.items():
            r = bench_model(key, model, args)
            results[f"{key}@{n}"] = {
                "threads": n,
                "model": key,
                "path": str(getattr(args, key)),
                **r,
            }
            table, lost = model_table(r, n, args.rounds)
            sections.append(table)
            losses += [f"{item}, {n} thread(s)" for item in lost]
            met = "met" if r["fc_goal_met"] else "NOT met"
            goals.append(
                f"{r['label']}, {n} thread(s): **{met}**, {r['fc_goal_speedup']:.2f}x with "
                f"`{r['fc_goal_variant']}` against the eager dense layers; against the fastest "
                f"dense form measured ({r['fc_best_dense_variant']}) the same variant is "
                f"{r['fc_gain_over_best_dense']:.2f}x"
            )
    summary = [
        "## Goal: fully connected layers at batch 1 at least 2x faster than dense",
        "",
        "Baseline: the plain eager dense PyTorch layers (`nn.Linear` + ReLU, pruned weights "
        "stored as zeros). Judged on one fixed variant: compact (remove dead units), then "
        "`fuse_linear_chain(..., autotune=True)` (one module for the chain, each layer CSR only "
        "where it measured faster at batch 1). Part of its gain is not sparsity: the fused "
        "dense chain and compaction alone gain too (rows above); the last ratio is the gain of "
        "sparsity over the fastest dense form.",
        "",
        *[f"- {g}" for g in goals],
        "",
        "## Where sparse loses",
        "",
        *([f"- {item}" for item in losses] or ["- nowhere in this run"]),
        "",
        "Why: at batch 1 a CSR product has a fixed cost per call (dispatch, an MKL handle) "
        "that a small dense layer (10x100, 10x500, 100x300) does not exceed, so only the large "
        "layers gain; the autotuned variants therefore keep such layers dense. Eager modules "
        "add ~1.3 µs of `nn.Module` call per layer and the eager twin another ~2 µs of Python "
        "around its kernel, which is why the fused chain gains where per-layer `sparsify` does "
        "not. For convolutions at large batches, `F.unfold` (im2col) writes a copy of the input "
        "per kernel tap and by itself costs about as much as the dense (oneDNN) convolution. "
        "At batch > 1 a sparse layer whose input comes from a dense layer also pays a "
        "transpose copy of that input; the fused module runs the eager layers there.",
        "",
        "Autotune times batch 1 only, and `SparseMLP` runs the same layers at every batch "
        "size: a layer kept dense because CSR lost at batch 1 (LeNet-300-100's fc2) stays "
        "dense at batch 256, where CSR would have won, so at batch 256 the autotuned fused "
        "model is slower than the one made CSR by density (compare those two rows).",
        "",
        "Machine load: this run may have shared the CPU with other jobs; the ratios come from "
        "interleaved rounds, the absolute times are only indicative. The autotuned choices "
        "are made by timing at conversion time and can differ between runs where dense and "
        "CSR are close (100x300).",
    ]
    table = "\n\n".join([*sections, "\n".join(summary)])
    config = {
        "rounds": args.rounds,
        "block_ms": args.block_ms,
        "threads": args.threads,
        "max_density": args.max_density,
        "big_batch": BIG_BATCH,
    }
    write_results("sparse_inference", {"config": config, "results": results}, table)
    torch.set_num_threads(threads_before)


if __name__ == "__main__":
    main()
