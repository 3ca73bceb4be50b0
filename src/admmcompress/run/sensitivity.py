"""``admmcompress sensitivity``: how much each layer can lose before the model notices.

Each selected layer is magnitude-pruned alone over a grid of keep counts (no retraining) and
the model is scored on training images (never the test set). The table, the curves and the
split a target rate would get from each allocation method help choose per-layer rates,
or check what ``target: {allocation: sensitivity}`` will do.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..core.selection import compressible_parameters, select_layers
from ..formats import load_weights
from ..formats.atomic import atomic_write_text
from ..recipe.allocation import METHODS, ScanPoint, allocate, sensitivity_scan
from ..recipe.schema import ConfigError, RunConfig
from ..train.loop import evaluate, train_epoch
from . import inputs
from .runtime import setup_runtime

log = logging.getLogger("admmcompress")

LOSS_STEPS = (0.01, 0.05, 0.2)  # loss increases the table reports the fewest weights for


def _fewest_within(points: list[ScanPoint], base: float, limit: float) -> int:
    ok = [p.count for p in points if p.loss - base <= limit]
    return min(ok) if ok else points[0].count


def run_sensitivity(
    cfg: RunConfig,
    out: Path,
    *,
    data_dir: str | os.PathLike | None = None,
    weights: Path | None = None,
    layers: list[str] | None = None,
    samples: int = 5000,
    rate: float | None = None,
) -> dict[str, Any]:
    """Scan, then write sensitivity.json, sensitivity.md and sensitivity.png into ``out``."""
    device = setup_runtime(cfg.runtime)
    torch.manual_seed(cfg.seed)
    model = inputs.build_model(cfg.model)
    chosen = list(select_layers(model, dict.fromkeys(layers or ["*"], True)))
    source = weights or (Path(cfg.init) if cfg.init else None)
    if source is None and cfg.pretrain.epochs == 0:
        raise ConfigError(
            "the scan needs a trained model: pass --weights (a model.safetensors, a run "
            "folder or a state dict), set 'init:', or give the config pretrain epochs"
        )
    if source is not None:
        load_weights(model, source)
    model.to(device)
    data = inputs.load_run_data(cfg, data_dir, device)
    if source is None:  # train the dense model as the config's pretraining would
        generator = torch.Generator().manual_seed(cfg.seed + 1)
        optimizer = inputs.optimizer(model.parameters(), cfg.pretrain.optimizer)
        scheduler = inputs.scheduler(optimizer, cfg.pretrain.scheduler, cfg.pretrain.epochs)
        for epoch in range(cfg.pretrain.epochs):
            stats = train_epoch(
                model,
                data.train,
                optimizer,
                batch_size=cfg.data.batch_size,
                generator=generator,
                progress=cfg.runtime.progress,
                desc=f"pretrain {epoch + 1}/{cfg.pretrain.epochs}",
                augment=inputs.augmentation(cfg.data.augment),
            )
            scheduler.step()
            log.info("pretrain %d/%d: loss %.4f", epoch + 1, cfg.pretrain.epochs, stats.loss)
    split = data.train.subset(samples, cfg.seed) if samples < len(data.train) else data.train
    base_loss, base_acc = evaluate(model, split, cfg.data.eval_batch_size)
    _, test_acc = evaluate(model, data.test, cfg.data.eval_batch_size)
    scan = sensitivity_scan(model, chosen, lambda: evaluate(model, split, cfg.data.eval_batch_size))
    sizes = {n: int(scan[n][0].count) for n in chosen}
    result: dict[str, Any] = {
        "model": cfg.model.name,
        "weights": str(source) if source else f"pretrained {cfg.pretrain.epochs} epochs",
        "samples": len(split),
        "base": {"loss": base_loss, "accuracy": base_acc, "test_accuracy": test_acc},
        "scan": {
            n: [{"count": p.count, "loss": p.loss, "accuracy": p.accuracy} for p in pts]
            for n, pts in scan.items()
        },
        "fewest_within": {
            n: {str(d): _fewest_within(scan[n], base_loss, d) for d in LOSS_STEPS} for n in chosen
        },
    }
    if rate is not None:
        budget = int(sum(sizes.values()) / rate)
        params = compressible_parameters(model)
        result["allocations"] = {
            "rate": rate,
            **{
                method: allocate(
                    budget,
                    sizes,
                    method,
                    weights={n: params[n].detach() for n in chosen},
                    scan=scan,
                )
                for method in METHODS
            },
        }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sensitivity.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "sensitivity.md", render_markdown(result))
    from .plots import plot_sensitivity

    plot_sensitivity(result["scan"], out / "sensitivity.png", "Sensitivity per layer")
    return result


def render_markdown(result: dict[str, Any]) -> str:
    base = result["base"]
    lines = [
        f"# Sensitivity scan: {result['model']}",
        "",
        f"Weights: {result['weights']}. Scored on {result['samples']:,} training images "
        f"(loss {base['loss']:.4f}, accuracy {base['accuracy']:.2%}; test accuracy "
        f"{base['test_accuracy']:.2%}). Each layer is magnitude-pruned alone, without "
        "retraining.",
        "",
        "| layer | weights | " + " | ".join(f"fewest kept, loss +{d}" for d in LOSS_STEPS) + " |",
        "| --- | ---: | " + " | ".join("---:" for _ in LOSS_STEPS) + " |",
    ]
    for name, pts in result["scan"].items():
        size = pts[0]["count"]
        cells = []
        for d in LOSS_STEPS:
            c = result["fewest_within"][name][str(d)]
            cells.append(f"{c:,} ({size / c:.1f}x)")
        lines.append(f"| {name} | {size:,} | " + " | ".join(cells) + " |")
    alloc = result.get("allocations")
    if alloc:
        methods = METHODS
        lines += [
            "",
            f"## Weights kept per layer for a {alloc['rate']:g}x target",
            "",
            "| layer | " + " | ".join(methods) + " |",
            "| --- | " + " | ".join("---:" for _ in methods) + " |",
        ]
        for name in result["scan"]:
            lines.append(f"| {name} | " + " | ".join(f"{alloc[m][name]:,}" for m in methods) + " |")
    lines += ["", "![sensitivity](sensitivity.png)", ""]
    return "\n".join(lines)
