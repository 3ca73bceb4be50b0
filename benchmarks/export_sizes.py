"""What a finished run weighs on disk: .admmz variants and ONNX, checked against the run.

For each run folder: export to .admmz (fp32 values), with fp16 values, compact, and ONNX;
check that the .admmz reloads bit for bit, that its weight bytes equal the report's
estimate, and that the compact model's outputs equal the full one's. Writes
results/export_sizes.{json,md}.

    python benchmarks/export_sizes.py runs/lenet5_record runs/lenet300_record \\
        runs/lenet5_record_quant
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import admmcompress
from admmcompress.formats.export import export
from common import write_results


def _bit_exact(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        torch.equal(
            (sa[k] + 0.0).view(torch.int32) if sa[k].dtype == torch.float32 else sa[k],
            sb[k].view(torch.int32) if sb[k].dtype == torch.float32 else sb[k],
        )
        for k in sa
    )


def measure(run: Path, tmp: Path, input_shape: tuple[int, ...] | None) -> dict[str, Any]:
    report = json.loads((run / "report.json").read_text())
    full = admmcompress.load(run / "model.safetensors")
    x = torch.randn(64, *(input_shape or (1, 28, 28)))
    out: dict[str, Any] = {
        "run": str(run),
        "model": report["model"],
        "test_accuracy": report["final"]["test_accuracy"],
        "pruning_rate": report["pruning_rate"],
        "report_storage_bytes": report["storage_bytes"],
        "dense_bytes": report["dense_bytes"],
        "variants": {},
    }
    variants = {
        "admmz": {},
        "admmz fp16 values": {"values": "float16"},
        "admmz compact": {"compact": True},
    }
    for name, kw in variants.items():
        path = tmp / f"{run.name}_{name.replace(' ', '_')}.admmz"
        t0 = time.perf_counter()
        res = export(run, path, input_shape=input_shape, **kw)
        t1 = time.perf_counter()
        loaded = admmcompress.load(path)
        t2 = time.perf_counter()
        assert res.summary is not None
        totals = res.summary.totals()
        with torch.inference_mode():
            diff = float((loaded(x) - full(x)).abs().max())
        out["variants"][name] = {
            **totals,
            "export_seconds": t1 - t0,
            "load_seconds": t2 - t1,
            "bit_exact": _bit_exact(full, loaded) if not kw else None,
            "max_output_difference": diff,
            "compact": res.compact,
        }
    if importlib.util.find_spec("onnxscript") is not None:
        path = tmp / f"{run.name}.onnx"
        export(run, path, fmt="onnx", input_shape=input_shape)
        out["variants"]["onnx (dense)"] = {"file_bytes": path.stat().st_size}
    return out


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| run | accuracy | pruning | file | weights | biases/BN | header | file vs dense "
        "fp32 weights | weights vs dense | report estimate | check |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        for name, v in r["variants"].items():
            if "weight_bytes" not in v:
                lines.append(
                    f"| {Path(r['run']).name} | | | {name} | | | | "
                    f"{r['dense_bytes'] / v['file_bytes']:.2f}x ({v['file_bytes']:,} B) | | | |"
                )
                continue
            if v["bit_exact"] is not None:
                check = "bit-exact" if v["bit_exact"] else "NOT bit-exact"
            else:
                check = f"max output diff {v['max_output_difference']:.1e}"
            if v["compact"]:
                c = v["compact"]
                check += f"; params {c['params_before']:,} -> {c['params_after']:,}"
            estimate = (
                f"{r['report_storage_bytes']:,}"
                + (" (equal)" if r["report_storage_bytes"] == v["weight_bytes"] else "")
                if name == "admmz"
                else ""
            )
            lines.append(
                f"| {Path(r['run']).name} | {r['test_accuracy'] * 100:.2f}% | "
                f"{r['pruning_rate']:.1f}x | {name} | {v['weight_bytes']:,} | "
                f"{v['other_bytes']:,} | {v['header_bytes']:,} | "
                f"**{v['file_rate']:.1f}x** ({v['file_bytes']:,} B) | {v['storage_rate']:.1f}x | "
                f"{estimate} | {check} |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished run folders")
    p.add_argument("--input-shape", type=lambda s: tuple(int(v) for v in s.split(",")))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(run, Path(tmp), args.input_shape) for run in args.runs]
    write_results("export_sizes", {"runs": results}, table(results))


if __name__ == "__main__":
    main()
