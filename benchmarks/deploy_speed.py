"""Is a compressed ResNet-20 faster where it is deployed? CPU inference of the dense model
against filter-pruned compact ones and an int8 model, in PyTorch eager, ``torch.compile``
and onnxruntime; one and two threads, batch 1 and 64.

    python benchmarks/deploy_speed.py                    # random weights: speed and sizes
    python benchmarks/deploy_speed.py --init weights/resnet20_cifar10_dense.safetensors
        # trained weights: also the test accuracy of every variant (int8's loss with it)

Variants (speed does not depend on the values of the weights, only on the shapes):

- dense: ``resnet20_cifar`` as trained (fp32);
- compact 2x / 3x fewer FLOPs: every conv filter-pruned by magnitude at the keep ratio
  ``flops.keep_for`` finds, the coupled residual groups together, then ``compact_model``;
- compact 2x (16-channel widths): the same, but every width a whole number of onnxruntime's
  16-channel blocks: the rules of ``configs/resnet20_cifar10_filter_2x_aligned.yaml`` (16, 16
  and 32 channels in the three stages);
- ``--trained LABEL=FILE``: trained compressed models (ours as ``.admmz``, Torch-Pruning's
  as the runner's ``.pt``), timed like the others and evaluated in PyTorch and onnxruntime;
- int8: a model on an 8-bit symmetric per-channel grid, ``--int8-from`` an ADMM run of
  ``configs/resnet20_cifar10_int8.yaml`` (else the dense weights projected onto the grid),
  exported to ONNX and quantized by onnxruntime's ``quantize_static`` (QDQ format,
  per-channel weights, activation scales from ``--calibration`` training images, after
  onnxruntime's ``quant_pre_process``), run by onnxruntime. The kernels that ran, and where
  the time goes part by part, are read from onnxruntime's profile.

Timing: a warm-up, then ``--rounds`` rounds interleaving every variant of one runtime,
thread count and batch size; each round times a block of calls of about ``--block-ms``;
the median per image is reported, and speed-ups are against the dense fp32 model in the
same runtime (and against dense eager) measured in the same rounds. Nothing else should
run meanwhile. File sizes: the ``.admmz`` of each variant (the compact ones as their
resized architecture), and each ONNX file.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from admmcompress import ADMM, Uniform, create_model, load
from admmcompress.constraints.base import Constraint
from admmcompress.constraints.quantization import check_on_grid, fit_uniform
from admmcompress.formats.admmz import save_admmz
from admmcompress.formats.encoding import QuantSpec
from admmcompress.recipe.planning import layer_constraints
from admmcompress.recipe.schema import load_config
from common import write_results
from flops import count_flops, filter_prune, keep_for

SHAPE = (3, 32, 32)
#: a compact variant's resized layers, which its .admmz records to rebuild it
RESIZED: dict[str, dict[str, dict[str, int]]] = {}


#: the recipe whose widths are whole 16-channel blocks (16, 16, 32 in the three stages)
ALIGNED = Path(__file__).resolve().parent.parent / "configs/resnet20_cifar10_filter_2x_aligned.yaml"


def _variants(init: Path | None, trained: dict[str, Path]) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    dense = load(init) if init else create_model("resnet20_cifar")
    dense.eval()
    out = {"dense": dense}
    rules: dict[str, float | dict[str, Constraint]] = {
        f"compact {t:g}x": keep_for("resnet20_cifar", t)[0] for t in (2.0, 3.0)
    }
    # the aligned recipe's own rules, so the timed shape is the one it trains
    rules["compact 2x aligned (16-channel widths)"] = layer_constraints(dense, load_config(ALIGNED))
    for name, keep in rules.items():
        m = load(init) if init else create_model("resnet20_cifar")
        if not init:
            m.load_state_dict(dense.state_dict())
        result = filter_prune(m, keep, SHAPE)
        RESIZED[name] = result.sizes
        out[name] = result.model.eval()
    for label, path in trained.items():
        out[label] = _load_trained(path).eval()
    return out


def _load_trained(path: Path) -> nn.Module:
    """A trained compressed model: one of our files (``.admmz``, compact or not), or a whole
    pickled module (``.pt``, as the Torch-Pruning runner writes: its architecture is not the
    registry's). Only open ``.pt`` files you made: unpickling runs code."""
    if path.suffix == ".pt":
        return torch.load(path, weights_only=False, map_location="cpu")
    return load(path)


def _onnx(model: nn.Module, path: Path) -> Path:
    torch.onnx.export(
        model,
        (torch.zeros(1, *SHAPE),),
        str(path),
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return path


class _Calibration:
    """onnxruntime's CalibrationDataReader: training images, one batch of 16 at a time."""

    def __init__(self, images: np.ndarray) -> None:
        self.batches = iter(np.array_split(images, max(1, len(images) // 16)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        b = next(self.batches, None)
        return None if b is None else {"x": b}


def _on_8bit_grid(model: nn.Module, source: Path) -> None:
    """Refuse a model whose conv and linear weights are not on an 8-bit per-channel grid."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            w = m.weight.detach()
            why = check_on_grid(w, "uniform", bits=8, per_channel=True)
            if why is not None:
                raise SystemExit(
                    f"{source}: {name}.weight is not on an 8-bit per-channel grid ({why}); "
                    "run ADMM with quantize: {bits: 8, per_channel: true} first "
                    "(configs/resnet20_cifar10_int8.yaml)"
                )


def _own_codes(qdq: Path, prepared: Path) -> dict[str, int]:
    """Put the grid's own int8 codes and scales into onnxruntime's QDQ model, in place.

    ``quantize_static`` sets each channel's weight scale to its largest |weight| / 127, so a
    channel whose largest weight is not at code +-127 of our grid would be re-rounded onto
    a finer one. The exported weights are ours with BatchNorm folded in, which scales each
    output channel: still a per-channel grid with the same codes. Each conv's int32 bias is
    re-quantized with the new scale (a bias' scale must be input scale x weight scale).
    Returns how many weights onnxruntime had coded differently, and how many in all."""
    import onnx
    from onnx import numpy_helper

    fp32 = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(prepared)).graph.initializer}
    model = onnx.load(str(qdq))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    made_by = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}

    def put(name: str, value: np.ndarray) -> None:
        inits[name].CopyFrom(numpy_helper.from_array(value, name))

    changed = total = 0
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or node.input[1] not in made_by:
            continue
        w_dq, x_dq = made_by[node.input[1]], made_by[node.input[0]]
        if any(a.name == "axis" and a.i != 0 for a in w_dq.attribute):
            raise SystemExit(f"{node.name}: weight scales not per output channel (axis 0)")
        w = torch.from_numpy(fp32[w_dq.input[0].removesuffix("_quantized")].copy())
        _, scale = fit_uniform(w, 8, per_channel=True)
        scale = scale.flatten()
        codes = torch.round(w.flatten(1) / torch.where(scale > 0, scale, 1.0)[:, None])
        off = (codes * scale[:, None] - w.flatten(1)).abs().amax(dim=1)
        if bool((off > 1e-5 * w.flatten(1).abs().amax(dim=1)).any()) or codes.abs().max() > 127:
            raise SystemExit(f"{node.name}: its exported weights are not on an 8-bit grid")
        q = codes.reshape(w.shape).numpy().astype(np.int8)
        changed += int((numpy_helper.to_array(inits[w_dq.input[0]]) != q).sum())
        total += q.size
        put(w_dq.input[0], q)
        put(w_dq.input[1], scale.numpy().astype(np.float32))
        if len(node.input) > 2 and node.input[2] in made_by:  # the bias, int32
            b_dq = made_by[node.input[2]]
            bias = fp32[b_dq.input[0].removesuffix("_quantized")]
            x_scale = numpy_helper.to_array(inits[x_dq.input[1]])
            b_scale = (x_scale * scale.numpy()).astype(np.float32)
            put(b_dq.input[0], np.round(bias / b_scale).astype(np.int32))
            put(b_dq.input[1], b_scale)
    onnx.save(model, str(qdq))
    return {"recoded": changed, "weights": total}


def _int8(
    dense: nn.Module, work: Path, calibration: np.ndarray, source: Path | None = None
) -> tuple[Path, nn.Module, dict[str, int]]:
    """A model on an 8-bit per-channel grid as a QDQ int8 ONNX model: ``source``'s weights
    (an ADMM run's, checked to be on the grid), else the dense weights projected onto it."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if source is not None:
        grid = load(source)
    else:
        grid = create_model("resnet20_cifar")
        grid.load_state_dict(dense.state_dict())
        rules = {
            n: Uniform(bits=8, per_channel=True)
            for n, m in grid.named_modules()
            if isinstance(m, nn.Conv2d | nn.Linear)
        }
        ADMM(grid, rules).harden()
    _on_8bit_grid(grid, source or Path("the projected dense model"))
    grid.eval()
    fp32 = _onnx(grid, work / "grid8_fp32.onnx")
    # onnxruntime's recommended pre-processing (shape inference, graph optimisation): without
    # it, the biases of the exported convs are not initialisers and 18 of the 21 convs stay
    # fp32 between (de)quantize nodes; with it, all 21 run as QLinearConv
    prepared = work / "grid8_prepared.onnx"
    quant_pre_process(str(fp32), str(prepared))
    out = work / "int8_qdq.onnx"
    quantize_static(
        str(prepared),
        str(out),
        _Calibration(calibration),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return out, grid, _own_codes(out, prepared)


def _session(path: Path, threads: int, profile: bool = False):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_profiling = profile
    if profile:  # beside the model, in the benchmark's temporary folder
        opts.profile_file_prefix = str(path.with_suffix("")) + "_profile"
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _kernels(
    path: Path, batch: int = 64, runs: int = 10
) -> tuple[dict[str, int], dict[str, float]]:
    """Which onnxruntime kernels ran (op type -> nodes), and where the time went (network part
    -> ms per batch of ``batch``, one thread: each node's median over ``runs`` calls), both
    read from its profile."""
    import json

    sess = _session(path, 1, profile=True)
    x = np.random.default_rng(0).random((batch, *SHAPE), dtype=np.float32)
    for _ in range(runs):
        sess.run(None, {"x": x})
    profile = Path(sess.end_profiling())
    trace = json.loads(profile.read_text())
    profile.unlink()
    nodes: dict[tuple[str, str], list[float]] = {}
    for e in trace:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            key = (e["name"], e.get("args", {}).get("op_name", "?"))
            nodes.setdefault(key, []).append(e["dur"] / 1000)
    ops: dict[str, int] = {}
    parts: dict[str, float] = {}
    for (node, op), ms in nodes.items():
        ops[op] = ops.get(op, 0) + 1
        part = _part(node, op)
        parts[part] = parts.get(part, 0.0) + statistics.median(ms)
    return ops, parts


def _part(node: str, op: str) -> str:
    """The part of ResNet-20 a node computes: its stage, the stem, or the rest."""
    for stage in ("layer1", "layer2", "layer3"):
        if f"/{stage}/" in node:
            return f"{stage} ({'convolutions' if 'Conv' in op else 'adds and other'})"
    return "stem convolution" if "Conv" in op else "input, pooling, classifier, layout"


def _block(fn: Callable[[], object], block_ms: float) -> float:
    """Seconds per call over a block of about ``block_ms``."""
    start = time.perf_counter()
    fn()
    one = max(time.perf_counter() - start, 1e-6)
    n = max(1, int(block_ms / 1000 / one))
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def _accuracy(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    correct = 0
    for i in range(0, len(y), 250):
        correct += int((run(x[i : i + 250]).argmax(1) == y[i : i + 250]).sum())
    return correct / len(y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--init", type=Path, help="trained dense ResNet-20 (else random weights)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block-ms", type=float, default=300.0)
    ap.add_argument("--calibration", type=int, default=512)
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument(
        "--int8-from",
        type=Path,
        help="the int8 variant's weights: a run of configs/resnet20_cifar10_int8.yaml "
        "(model.safetensors), whose weights ADMM put on the 8-bit grid; without it, the dense "
        "weights projected onto that grid",
    )
    ap.add_argument(
        "--trained",
        nargs="+",
        default=[],
        metavar="LABEL=FILE",
        help="trained compressed models to time and evaluate beside the others, e.g. "
        "'ours 2x=runs/resnet20_filter_2x/model_compact.admmz' "
        "'Torch-Pruning 2x=benchmarks/results/tp_resnet20_2x.pt'",
    )
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parent.parent / "data"))
    ap.add_argument(
        "--name",
        default="deploy_speed",
        help="results file name under benchmarks/results/ (one per CPU kind: int8 and fp32 "
        "kernels differ between AMX, VNNI-only and AVX2 CPUs)",
    )
    args = ap.parse_args()
    torch.set_flush_denormal(True)

    from admmcompress.data import load_dataset, resolve_data_root

    data = load_dataset("cifar10", resolve_data_root(args.data_dir))
    calib = data.train.subset(args.calibration, seed=1).x.numpy().astype(np.float32)
    test_x = data.test.x.numpy().astype(np.float32)
    test_y = data.test.y.numpy()
    trained = {}
    for item in args.trained:
        label, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            ap.error(f"--trained wants LABEL=FILE with an existing file, got {item!r}")
        trained[label] = Path(path)
    models = _variants(args.init, trained)
    flops = {k: count_flops(m, SHAPE) for k, m in models.items()}
    results: dict = {"flops": flops, "sizes": {}, "timings": [], "accuracy": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        onnx_paths = {k: _onnx(m, work / f"{i}.onnx") for i, (k, m) in enumerate(models.items())}
        int8_path, grid, results["int8_codes"] = _int8(models["dense"], work, calib, args.int8_from)
        onnx_paths["int8 (8-bit grid, QDQ)"] = int8_path
        results["int8_kernels"], results["int8_profile_ms"] = _kernels(int8_path)
        results["fp32_kernels"], results["fp32_profile_ms"] = _kernels(onnx_paths["dense"])
        quant8 = {
            n: QuantSpec(8, True)
            for n, m in grid.named_modules()
            if isinstance(m, nn.Conv2d | nn.Linear)
        }
        for k, m in {**models, "8-bit grid": grid}.items():
            if k in trained:  # its own file, as trained (a Torch-Pruning .pt is a pickle)
                results["sizes"][f"{k} ({trained[k].suffix})"] = trained[k].stat().st_size
                continue
            p = work / "m.admmz"
            save_admmz(
                p,
                m,
                model_name="resnet20_cifar",
                model_args={},
                input_shape=SHAPE,
                resized=RESIZED.get(k),
                quant=quant8 if k == "8-bit grid" else None,
            )
            results["sizes"][f"{k} (.admmz)"] = p.stat().st_size
        for k, p in onnx_paths.items():
            results["sizes"][f"{k} (ONNX)"] = p.stat().st_size
        if args.init:  # the magnitude-pruned compact variants are not fine-tuned: no accuracy
            evaluated = {"dense": models["dense"], "8-bit grid": grid}
            evaluated.update({k: models[k] for k in trained})
            for k, m in evaluated.items():
                with torch.inference_mode():
                    results["accuracy"][f"{k} (PyTorch)"] = _accuracy(
                        lambda x, m=m: m(torch.from_numpy(x)).numpy(), test_x, test_y
                    )
            in_onnx = {k: onnx_paths[k] for k in ["dense", *trained]}
            in_onnx["int8 (8-bit grid, QDQ)"] = int8_path
            for k, path in in_onnx.items():
                sess = _session(path, 2)
                results["accuracy"][f"{k} (onnxruntime)"] = _accuracy(
                    lambda x, sess=sess: sess.run(None, {"x": x})[0], test_x, test_y
                )
        # every variant is the same Python class with other shapes: dynamo's default of 8
        # recompilations per function would run the later ones in eager mode unnoticed
        torch._dynamo.config.recompile_limit = 64
        for threads in args.threads:
            torch.set_num_threads(threads)
            compiled = {}
            if not args.skip_compile:
                for k, m in models.items():
                    compiled[k] = torch.compile(m)
            sessions = {k: _session(p, threads) for k, p in onnx_paths.items()}
            for batch in args.batches:
                xn = calib[:batch].copy()
                x = torch.from_numpy(xn)
                fns: dict[tuple[str, str], Callable[[], object]] = {}
                for k, m in models.items():
                    fns[("eager", k)] = lambda m=m, x=x: m(x)
                    if k in compiled:
                        fns[("torch.compile", k)] = lambda c=compiled[k], x=x: c(x)
                for k, s in sessions.items():
                    fns[("onnxruntime", k)] = lambda s=s, xn=xn: s.run(None, {"x": xn})
                with torch.inference_mode():
                    for fn in fns.values():  # warm-up (and compilation)
                        for _ in range(3):
                            fn()
                    times: dict[tuple[str, str], list[float]] = {k: [] for k in fns}
                    for _ in range(args.rounds):
                        for key, fn in fns.items():
                            times[key].append(_block(fn, args.block_ms))
                for (runtime, variant), v in times.items():
                    results["timings"].append(
                        {
                            "threads": threads,
                            "batch": batch,
                            "runtime": runtime,
                            "variant": variant,
                            "ms_per_batch": 1000 * statistics.median(v),
                        }
                    )
                print(f"threads {threads}, batch {batch}: done", flush=True)
    rows = _table(results)
    record = {
        "init": str(args.init) if args.init else None,
        "trained": {k: str(v) for k, v in trained.items()},
        "int8_from": str(args.int8_from) if args.int8_from else None,
    }
    write_results(args.name, {**record, **results}, rows)


def _table(results: dict) -> str:
    t = results["timings"]
    base = {
        (r["threads"], r["batch"], r["runtime"]): r["ms_per_batch"]
        for r in t
        if r["variant"] == "dense"
    }
    eager = {
        (r["threads"], r["batch"]): r["ms_per_batch"]
        for r in t
        if r["variant"] == "dense" and r["runtime"] == "eager"
    }
    lines = [
        "| threads | batch | runtime | variant | ms per batch | vs dense, same runtime | "
        "vs dense eager |",
        "| ---: | ---: | --- | --- | ---: | ---: | ---: |",
    ]
    for r in t:
        key = (r["threads"], r["batch"], r["runtime"])
        dense = base.get(key, base.get((r["threads"], r["batch"], "onnxruntime")))
        lines.append(
            f"| {r['threads']} | {r['batch']} | {r['runtime']} | {r['variant']} | "
            f"{r['ms_per_batch']:.3f} | {dense / r['ms_per_batch']:.2f}x | "
            f"{eager[(r['threads'], r['batch'])] / r['ms_per_batch']:.2f}x |"
        )
    lines += ["", "| model | FLOPs (M) |", "| --- | ---: |"]
    lines += [f"| {k} | {v / 1e6:.1f} |" for k, v in results["flops"].items()]
    lines += ["", "| file | bytes |", "| --- | ---: |"]
    lines += [f"| {k} | {v:,} |" for k, v in results["sizes"].items()]
    lines += ["", f"onnxruntime kernels, int8 model: {results['int8_kernels']}"]
    lines += [f"onnxruntime kernels, dense fp32 model: {results['fp32_kernels']}"]
    codes = results["int8_codes"]
    lines += [
        f"int8 weights: the grid's own codes and scales; onnxruntime's quantize_static had "
        f"coded {codes['recoded']:,} of {codes['weights']:,} differently (its scale is a "
        "channel's largest |weight| / 127)",
    ]
    lines += [
        "",
        "Where onnxruntime's time goes at batch 64 on one thread, the dense fp32 model against "
        "the int8 model (its profiler: each node's median over 10 calls, summed; fp32 fuses "
        "each residual add and ReLU into its convolution, int8 runs them as QLinearAdd):",
        "",
        "| part | fp32 (ms) | int8 (ms) | int8 faster |",
        "| --- | ---: | ---: | ---: |",
    ]
    fp, q = results["fp32_profile_ms"], results["int8_profile_ms"]
    for part in sorted(set(fp) | set(q)):
        a, b = fp.get(part, 0.0), q.get(part, 0.0)
        ratio = f"{a / b:.2f}x" if a and b else "-"
        lines.append(f"| {part} | {a:.2f} | {b:.2f} | {ratio} |")
    lines.append(
        f"| all | {sum(fp.values()):.2f} | {sum(q.values()):.2f} | "
        f"{sum(fp.values()) / sum(q.values()):.2f}x |"
    )
    if results["accuracy"]:
        lines += ["", "| variant | test accuracy |", "| --- | ---: |"]
        lines += [f"| {k} | {100 * v:.2f}% |" for k, v in results["accuracy"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
