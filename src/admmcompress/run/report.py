"""report.json (the machine-readable contract), report.md and plots for a finished run."""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..constraints import Constraint, count_levels, prunes, quantizer_of
from ..core.selection import compressible_targets
from ..formats.atomic import atomic_write_text
from ..formats.encoding import QuantSpec, plan_tensor

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    return {
        "admmcompress": _version("admmcompress"),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "numpy": _version("numpy"),
        "pydantic": _version("pydantic"),
        "python": platform.python_version(),
    }


def _scales_summary(scale: Tensor | None) -> list[float] | dict[str, float] | None:
    if scale is None:
        return None
    values = scale.detach().flatten().double().tolist()
    if len(values) <= 8:
        return values
    return {"count": len(values), "min": min(values), "max": max(values)}


def layer_table(
    model: nn.Module,
    constraints: Mapping[str, Constraint],
    masks: Mapping[str, Tensor] | None = None,
) -> list[dict[str, Any]]:
    """One row per compressible parameter (every conv/linear weight, and any other of two or
    more dimensions), counted from the weights themselves."""
    rows = []
    masks = masks or {}
    for name, target in compressible_targets(model).items():
        module = target.module
        w = target.param.detach()
        nonzero = int(torch.count_nonzero(w))
        c = constraints.get(name)
        quant = quantizer_of(c) if c is not None else None
        scale = None
        if quant is not None:
            _, scale = quant.fit(w, mask=masks.get(name))
        bits = quant.bits if quant is not None else 32
        spec = QuantSpec(quant.bits, quant.per_channel) if quant is not None else None
        hint = scale.detach().cpu().numpy() if scale is not None else None
        storage = plan_tensor(w, spec, hint)
        rows.append(
            {
                "name": name,
                "type": type(module).__name__,
                "shape": list(w.shape),
                "params": w.numel(),
                "nonzero": nonzero,
                "density": nonzero / w.numel(),
                "bits": bits,
                "distinct_values": int(torch.unique(w).numel()),
                "distinct_values_per_channel": count_levels(w, per_channel=True)
                if getattr(quant, "per_channel", False)
                else None,
                "scales": _scales_summary(scale),
                "constraint": c.describe() if c is not None else None,
                "pruned": prunes(c),
                "quantized": quant is not None,
                "storage": storage.summary(),
            }
        )
    return rows


def storage_summary(layers: list[dict[str, Any]]) -> dict[str, float]:
    """Bytes of the weights as stored (see ``storage``) against dense fp32 weights."""
    dense = sum(r["params"] for r in layers) * 4
    stored = sum(r["storage"]["bytes"] for r in layers)
    # Some papers leave the sparsity pattern out of their storage figures; this one makes
    # their numbers comparable, the honest figure is storage_rate.
    values = sum(r["storage"]["value_bytes"] + r["storage"]["scale_bytes"] for r in layers)
    return {
        "dense_bytes": dense,
        "storage_bytes": stored,
        "storage_rate": dense / stored,
        "storage_rate_without_index": dense / values,
    }


def pruning_rates(layers: list[dict[str, Any]]) -> dict[str, float]:
    """Rates as the paper counts them: weights of conv/fc layers over their non-zeros."""

    def rate(rows: list[dict[str, Any]]) -> float:
        params = sum(r["params"] for r in rows)
        nonzero = sum(r["nonzero"] for r in rows)
        if not rows:
            return 1.0  # nothing pruned
        return params / nonzero if nonzero else float("inf")

    return {
        "pruning_rate": rate([r for r in layers if r["pruned"]]),
        "overall_rate": rate(layers),
    }


def step_summary(
    *,
    index: int,
    name: str,
    model: nn.Module,
    constraints: Mapping[str, Constraint],
    masks: Mapping[str, Tensor],
    test: tuple[float, float],
    phases: dict[str, dict[str, float]],
    allocation: dict[str, Any],
    model_file: str,
) -> dict[str, Any]:
    """One finished step of a progressive run, as report.json lists it."""
    layers = layer_table(model, constraints, masks)
    return {
        "index": index,
        "name": name,
        **pruning_rates(layers),
        **storage_summary(layers),
        "nonzero_total": sum(r["nonzero"] for r in layers),
        "test_accuracy": test[1],
        "test_loss": test[0],
        "phases": {k: phases[k] for k in ("admm", "harden", "retrain") if k in phases},
        "layers": {
            r["name"]: {"nonzero": r["nonzero"], "bits": r["bits"], "constraint": r["constraint"]}
            for r in layers
        },
        "allocation": allocation,
        "model_file": model_file,
    }


def build_report(
    *,
    cfg: Any,
    model: nn.Module,
    constraints: Mapping[str, Constraint],
    masks: Mapping[str, Tensor],
    final: dict[str, float],
    phases: dict[str, dict[str, float]],
    history: list[dict[str, Any]],
    device: str,
    model_file: Path,
    runtime: dict[str, Any] | None = None,
    wall_seconds: float,
    steps: list[dict[str, Any]] | None = None,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    layers = layer_table(model, constraints, masks)
    residuals = [
        {
            "iteration": i + 1,
            "step": rec.get("step", 1),
            "epoch": rec["epoch"],
            "layers": rec["residuals"],
        }
        for i, rec in enumerate(r for r in history if "residuals" in r)
    ]
    return {
        "name": cfg.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **pruning_rates(layers),
        **storage_summary(layers),
        "final": final,
        "phases": phases,
        "steps": steps or [],
        "layers": layers,
        "weights_total": sum(r["params"] for r in layers),
        "nonzero_total": sum(r["nonzero"] for r in layers),
        "wall_seconds": wall_seconds,
        "device": device,
        "runtime": runtime or {},
        "seed": cfg.seed,
        "dataset": cfg.data.dataset,
        "model": {"name": cfg.model.name, "args": cfg.model.args},
        "model_file": model_file.name,
        "versions": library_versions(),
        "config": cfg.model_dump(mode="json"),
        "history": history,
        "admm_residuals": residuals,
        "warnings": list(warnings or []),
    }


def _fmt_rate(x: float) -> str:
    return f"{x:,.1f}x"


def _fmt_distinct(row: dict[str, Any]) -> str:
    per_channel = row.get("distinct_values_per_channel")
    text = f"{row['distinct_values']:,}"
    return text if per_channel is None else f"{text} ({per_channel} per channel)"


def _fmt_scales(scales: list[float] | dict[str, float] | None) -> str:
    if scales is None:
        return "-"
    if isinstance(scales, dict):
        return f"{scales['count']} per channel, {scales['min']:.3g}..{scales['max']:.3g}"
    return ", ".join(f"{s:.3g}" for s in scales)


def _warnings(report: dict[str, Any]) -> list[str]:
    found = report.get("warnings") or []
    if not found:
        return []
    return ["## Warnings", "", *(f"- {w}" for w in found), ""]


def _residual_history(updates: list[dict[str, Any]]) -> list[str]:
    """Each layer's relative primal residual at every update: where it should fall towards 0
    (below about 0.1 before hardening; near 1 means the weights never approached the set)."""
    steps = sorted({u.get("step", 1) for u in updates})
    lines = [
        "",
        "## Relative primal residual ‖W−Z‖/‖W‖ at every update",
        "",
        "Each ADMM update moves Z onto the set and measures how far the weights still are. "
        "Values should fall towards 0; above 0.1 at the last update, hardening costs "
        "accuracy: raise `admm.rho`, `admm.rho_growth` or the ADMM epochs, or set "
        "`admm.rho: auto`.",
    ]
    for step in steps:
        these = [u for u in updates if u.get("step", 1) == step]
        names = list(these[0]["layers"])
        head = "| layer | " + " | ".join(str(i + 1) for i in range(len(these))) + " |"
        if len(steps) > 1:
            lines += ["", f"Step {step}:"]
        lines += ["", head, "| --- |" + " ---: |" * len(these)]
        for n in names:
            cells = [f"{u['layers'][n]['relative_primal']:.3g}" for u in these if n in u["layers"]]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines


def _fmt_runtime(runtime: dict[str, Any]) -> str:
    """`` (bf16, 2 threads)``: what a run's speed and numbers depend on besides the device."""
    parts = [runtime["precision"]] if "precision" in runtime else []
    if "threads" in runtime:
        parts.append(f"{runtime['threads']} thread{'s' if runtime['threads'] != 1 else ''}")
    return f" ({', '.join(parts)})" if parts else ""


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Compression report: {report['name']}",
        "",
        f"Model `{report['model']['name']}` on `{report['dataset']}`, seed {report['seed']}, "
        f"device {report['device']}{_fmt_runtime(report.get('runtime') or {})}, "
        f"created {report['created']}.",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| pruning rate (pruned layers) | {_fmt_rate(report['pruning_rate'])} |",
        f"| pruning rate (all conv/fc weights) | {_fmt_rate(report['overall_rate'])} |",
        f"| non-zero weights | {report['nonzero_total']:,} of {report['weights_total']:,} |",
        f"| weight storage | {report['storage_bytes']:,} bytes (dense fp32: "
        f"{report['dense_bytes']:,}) |",
        f"| storage compression | {_fmt_rate(report['storage_rate'])} "
        f"({_fmt_rate(report['storage_rate_without_index'])} without the sparsity index) |",
        f"| final test accuracy | {report['final']['test_accuracy'] * 100:.2f}% |",
        f"| wall time | {report['wall_seconds'] / 60:.1f} min |",
        "",
        *_warnings(report),
        "## Phases",
        "",
        "| phase | epochs | test accuracy | test loss | seconds |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in ("pretrain", "admm", "harden", "retrain"):
        p = report["phases"].get(name)
        if p:
            if "test_accuracy_before_recalibration" in p:
                lines.append(
                    f"| harden, before BatchNorm recalibration | 0 | "
                    f"{p['test_accuracy_before_recalibration'] * 100:.2f}% | "
                    f"{p['test_loss_before_recalibration']:.4f} | |"
                )
                name = (
                    f"harden + BatchNorm recalibration ({int(p['recalibration_batches'])} batches)"
                )
            lines.append(
                f"| {name} | {int(p['epochs'])} | {p['test_accuracy'] * 100:.2f}% | "
                f"{p['test_loss']:.4f} | {p['seconds']:.1f} |"
            )
    steps = report.get("steps") or []
    if len(steps) > 1:
        pre = report["phases"].get("pretrain")
        lines += [
            "",
            "## Steps",
            "",
            "Each step starts from the one before; its model is kept in the file named.",
            "",
            "| step | pruning rate | storage | non-zero | after ADMM | after harden "
            "| after retrain | epochs | model |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        if pre:
            lines.append(
                f"| dense (pretrain) | 1.0x | 1.0x | {report['weights_total']:,} | | | "
                f"{pre['test_accuracy'] * 100:.2f}% | {int(pre['epochs'])} | |"
            )
        for st in steps:
            ph = st["phases"]

            def acc(key: str, ph: dict[str, Any] = ph) -> str:
                return f"{ph[key]['test_accuracy'] * 100:.2f}%" if key in ph else "-"

            epochs = int(sum(ph[k]["epochs"] for k in ph))
            lines.append(
                f"| {st['name']} | {_fmt_rate(st['pruning_rate'])} | "
                f"{_fmt_rate(st['storage_rate'])} | {st['nonzero_total']:,} | {acc('admm')} | "
                f"{acc('harden')} | {acc('retrain')} | {epochs} | `{st['model_file']}` |"
            )
        lines.append("")
        lines.append("![rate against accuracy over the steps](steps.png)")
    lines += [
        "",
        "## Layers",
        "",
        "| layer | type | shape | weights | non-zero | density | rate | bits | distinct values "
        "| scales | stored bytes (encoding) | constraint |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for r in report["layers"]:
        rate = r["params"] / r["nonzero"] if r["nonzero"] else float("inf")
        st = r["storage"]
        lines.append(
            f"| {r['name']} | {r['type']} | {'x'.join(map(str, r['shape']))} | {r['params']:,} | "
            f"{r['nonzero']:,} | {r['density'] * 100:.2f}% | {_fmt_rate(rate)} | {r['bits']} | "
            f"{_fmt_distinct(r)} | {_fmt_scales(r['scales'])} | "
            f"{st['bytes']:,} ({st['encoding']}) | {r['constraint'] or '-'} |"
        )
    lines += [
        "",
        "Storage counts weights only, exactly as `admmcompress export` writes them: the "
        "sparsity pattern in the cheapest of a dense layout, a bitmask, a relative index (Deep "
        "Compression) or a Golomb-Rice code, values at their bit width (32 when not quantized) "
        "and one fp32 (or, when needed for an exact rebuild, fp64) scale per quantized tensor "
        "or channel, each section padded to a whole byte. The file adds biases, BatchNorm "
        "entries and a header.",
    ]
    if report["admm_residuals"]:
        last = report["admm_residuals"][-1]
        lines += [
            "",
            f"## ADMM residuals after the last update (iteration {last['iteration']}, "
            f"step {last.get('step', 1)})",
            "",
            "| layer | primal ‖W−Z‖ | relative ‖W−Z‖/‖W‖ | dual ρ‖Z−Z_prev‖ | ρ |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, r in last["layers"].items():
            lines.append(
                f"| {name} | {r['primal']:.4g} | {r['relative_primal']:.4g} | "
                f"{r['dual']:.4g} | {r['rho']:.4g} |"
            )
        lines += _residual_history(report["admm_residuals"])
    lines += [
        "",
        "## Plots",
        "",
        "![training curves](training_curves.png)",
        "![layer density](layer_density.png)",
    ]
    if report["admm_residuals"]:
        lines.append("![ADMM residuals](admm_residuals.png)")
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v)
    lines += ["", "## Environment", "", versions, ""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: str | Path) -> None:
    """Write report.json, report.md and the plots into ``out_dir``."""
    from .plots import plot_all  # matplotlib is slow to import; only reports need it

    out = Path(out_dir)
    atomic_write_text(out / REPORT_JSON, json.dumps(report, indent=2, allow_nan=True) + "\n")
    atomic_write_text(out / REPORT_MD, render_markdown(report))
    plot_all(report, out)


def read_report(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / REPORT_JSON
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: the run in {run_dir} has not finished (resume it with "
            "'admmcompress run CONFIG --out DIR --resume')"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
