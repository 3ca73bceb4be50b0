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
from torch import nn

from .checkpoint import atomic_write_text
from .constraints import Constraint
from .selection import compressible_layers

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


def layer_table(model: nn.Module, constraints: Mapping[str, Constraint]) -> list[dict[str, Any]]:
    """One row per conv/linear layer, counted from the weights themselves."""
    rows = []
    for name, module in compressible_layers(model).items():
        w = module.weight.detach()
        nonzero = int(torch.count_nonzero(w))
        c = constraints.get(name)
        rows.append(
            {
                "name": name,
                "type": type(module).__name__,
                "shape": list(w.shape),
                "params": w.numel(),
                "nonzero": nonzero,
                "density": nonzero / w.numel(),
                "bits": 32,
                "constraint": c.describe() if c is not None else None,
                "pruned": c is not None,
            }
        )
    return rows


def pruning_rates(layers: list[dict[str, Any]]) -> dict[str, float]:
    """Rates as the paper counts them: weights of conv/fc layers over their non-zeros."""

    def rate(rows: list[dict[str, Any]]) -> float:
        params = sum(r["params"] for r in rows)
        nonzero = sum(r["nonzero"] for r in rows)
        return params / nonzero if nonzero else float("inf")

    return {
        "pruning_rate": rate([r for r in layers if r["pruned"]]),
        "overall_rate": rate(layers),
    }


def build_report(
    *,
    cfg: Any,
    model: nn.Module,
    constraints: Mapping[str, Constraint],
    final: dict[str, float],
    phases: dict[str, dict[str, float]],
    history: list[dict[str, Any]],
    device: str,
    model_file: Path,
    wall_seconds: float,
) -> dict[str, Any]:
    layers = layer_table(model, constraints)
    residuals = [
        {"iteration": i + 1, "epoch": rec["epoch"], "layers": rec["residuals"]}
        for i, rec in enumerate(r for r in history if "residuals" in r)
    ]
    return {
        "name": cfg.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **pruning_rates(layers),
        "final": final,
        "phases": phases,
        "layers": layers,
        "weights_total": sum(r["params"] for r in layers),
        "nonzero_total": sum(r["nonzero"] for r in layers),
        "wall_seconds": wall_seconds,
        "device": device,
        "seed": cfg.seed,
        "dataset": cfg.data.dataset,
        "model": {"name": cfg.model.name, "args": cfg.model.args},
        "model_file": model_file.name,
        "versions": library_versions(),
        "config": cfg.model_dump(mode="json"),
        "history": history,
        "admm_residuals": residuals,
    }


def _fmt_rate(x: float) -> str:
    return f"{x:,.1f}x"


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Compression report: {report['name']}",
        "",
        f"Model `{report['model']['name']}` on `{report['dataset']}`, seed {report['seed']}, "
        f"device {report['device']}, created {report['created']}.",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| pruning rate (pruned layers) | {_fmt_rate(report['pruning_rate'])} |",
        f"| pruning rate (all conv/fc weights) | {_fmt_rate(report['overall_rate'])} |",
        f"| non-zero weights | {report['nonzero_total']:,} of {report['weights_total']:,} |",
        f"| final test accuracy | {report['final']['test_accuracy'] * 100:.2f}% |",
        f"| wall time | {report['wall_seconds'] / 60:.1f} min |",
        "",
        "## Phases",
        "",
        "| phase | epochs | test accuracy | test loss | seconds |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in ("pretrain", "admm", "harden", "retrain"):
        p = report["phases"].get(name)
        if p:
            lines.append(
                f"| {name} | {int(p['epochs'])} | {p['test_accuracy'] * 100:.2f}% | "
                f"{p['test_loss']:.4f} | {p['seconds']:.1f} |"
            )
    lines += [
        "",
        "## Layers",
        "",
        "| layer | type | shape | weights | non-zero | density | rate | bits | constraint |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in report["layers"]:
        rate = r["params"] / r["nonzero"] if r["nonzero"] else float("inf")
        lines.append(
            f"| {r['name']} | {r['type']} | {'x'.join(map(str, r['shape']))} | {r['params']:,} | "
            f"{r['nonzero']:,} | {r['density'] * 100:.2f}% | {_fmt_rate(rate)} | {r['bits']} | "
            f"{r['constraint'] or '-'} |"
        )
    if report["admm_residuals"]:
        last = report["admm_residuals"][-1]
        lines += [
            "",
            f"## ADMM residuals after the last update (iteration {last['iteration']})",
            "",
            "| layer | primal ‖W−Z‖ | relative ‖W−Z‖/‖W‖ | dual ρ‖Z−Z_prev‖ | ρ |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, r in last["layers"].items():
            lines.append(
                f"| {name} | {r['primal']:.4g} | {r['relative_primal']:.4g} | "
                f"{r['dual']:.4g} | {r['rho']:.4g} |"
            )
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
