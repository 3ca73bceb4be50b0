"""PNG plots of a run: training curves, per-layer density, ADMM residuals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PHASE_COLORS = {"pretrain": "#4c72b0", "admm": "#dd8452", "retrain": "#55a868"}


def plot_training_curves(report: dict[str, Any], path: Path) -> None:
    hist = report["history"]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for phase, color in PHASE_COLORS.items():
        xs = [i + 1 for i, r in enumerate(hist) if r["phase"] == phase]
        if not xs:
            continue
        recs = [r for r in hist if r["phase"] == phase]
        ax_acc.plot(
            xs, [r["test_accuracy"] * 100 for r in recs], "o-", ms=3, color=color, label=phase
        )
        ax_loss.plot(
            xs, [r["train_loss"] for r in recs], "o-", ms=3, color=color, label=f"{phase} train"
        )
        ax_loss.plot(xs, [r["test_loss"] for r in recs], "--", color=color, label=f"{phase} test")
    steps = report.get("steps") or []
    hardens = [(st["index"], st["phases"].get("harden")) for st in steps]
    if not steps:
        hardens = [(1, report["phases"].get("harden"))]
    label = "after harden"
    for index, harden in hardens:
        if not harden:
            continue
        # just after the step's last ADMM epoch
        x = (
            max(
                (
                    i + 1
                    for i, r in enumerate(hist)
                    if r["phase"] in ("pretrain", "admm") and r.get("step", 1) <= index
                ),
                default=0,
            )
            + 0.5
        )
        ax_acc.plot([x], [harden["test_accuracy"] * 100], "kx", ms=8, label=label)
        label = None
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss", yscale="log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a run with no training epochs has none
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_layer_density(report: dict[str, Any], path: Path) -> None:
    layers = report["layers"]
    names = [r["name"] for r in layers]
    dens = [r["density"] * 100 for r in layers]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.5))
    bars = ax.barh(names, dens, color=["#dd8452" if r["pruned"] else "#999999" for r in layers])
    for bar, r in zip(bars, layers, strict=True):
        ax.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            f" {r['nonzero']:,}/{r['params']:,}",
            va="center",
            fontsize=8,
        )
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set(
        xlabel="non-zero weights (%, log scale)",
        title=f"Density per layer ({report['pruning_rate']:.1f}x)",
    )
    ax.set_xlim(right=max(dens) * 8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_admm_residuals(report: dict[str, Any], path: Path) -> None:
    its = report["admm_residuals"]
    fig, (ax_p, ax_d) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(dict.fromkeys(n for it in its for n in it["layers"]))
    legend = len(names) <= 12  # beyond that a legend hides the plot: one thin line a layer
    style = {"marker": "o", "ms": 3} if legend else {"lw": 0.7, "alpha": 0.6}
    for name in names:
        sel = [it for it in its if name in it["layers"]]
        xs = [it["iteration"] for it in sel]
        primal = [it["layers"][name]["relative_primal"] for it in sel]
        dual = [max(it["layers"][name]["dual"], 1e-12) for it in sel]
        ax_p.plot(xs, primal, label=name, **style)
        ax_d.plot(xs, dual, label=name, **style)
    for st in {it.get("step", 1) for it in its} - {1}:  # step boundaries
        first = min(it["iteration"] for it in its if it.get("step", 1) == st)
        for ax in (ax_p, ax_d):
            ax.axvline(first - 0.5, color="#999999", lw=0.8, ls=":")
    ax_p.set(
        xlabel="ADMM iteration", ylabel="||W - Z|| / ||W||", title="Primal residual", yscale="log"
    )
    ax_d.set(
        xlabel="ADMM iteration", ylabel="rho ||Z - Z_prev||", title="Dual residual", yscale="log"
    )
    for ax in (ax_p, ax_d):
        ax.grid(alpha=0.3)
        if legend:
            ax.legend(fontsize=8)
        else:
            ax.set_title(f"{ax.get_title()} ({len(names)} layers, one line each)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_steps(report: dict[str, Any], path: Path) -> None:
    """Test accuracy against pruning (and storage) rate, one point per step."""
    steps = report["steps"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [1.0] + [st["pruning_rate"] for st in steps]
    ys = [None] + [st["test_accuracy"] * 100 for st in steps]
    pre = report["phases"].get("pretrain")
    if pre:
        ys[0] = pre["test_accuracy"] * 100
    else:
        xs, ys = xs[1:], ys[1:]
    ax.plot(xs, ys, "o-", color="#dd8452", label="pruning rate")
    if any(st["storage_rate"] > st["pruning_rate"] * 1.01 for st in steps):
        ax.plot(
            [st["storage_rate"] for st in steps],
            [st["test_accuracy"] * 100 for st in steps],
            "s--",
            color="#4c72b0",
            label="storage compression",
        )
    for st in steps:
        ax.annotate(
            st["name"],
            (st["pruning_rate"], st["test_accuracy"] * 100),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set(
        xlabel="compression rate (log scale)",
        ylabel="test accuracy (%)",
        title="Rate against accuracy over the steps",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sensitivity(scan: dict[str, list[dict[str, float]]], path: Path, title: str) -> None:
    """Accuracy with one layer at a time magnitude-pruned, against the weights it keeps."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for name, pts in scan.items():
        size = max(p["count"] for p in pts)
        keep = [p["count"] / size * 100 for p in pts]
        ax_acc.plot(keep, [p["accuracy"] * 100 for p in pts], "o-", ms=3, label=name)
        ax_loss.plot(keep, [p["loss"] for p in pts], "o-", ms=3, label=name)
    ax_acc.set(
        xlabel="weights kept (% of its non-zeros at the scan, log)",
        ylabel="accuracy (%)",
        xscale="log",
        title=title,
    )
    ax_loss.set(
        xlabel="weights kept (% of its non-zeros at the scan, log)",
        ylabel="cross-entropy",
        xscale="log",
        yscale="log",
        title="Loss",
    )
    for ax in (ax_acc, ax_loss):
        ax.invert_xaxis()
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_all(report: dict[str, Any], out: Path) -> None:
    plot_training_curves(report, out / "training_curves.png")
    plot_layer_density(report, out / "layer_density.png")
    if report["admm_residuals"]:
        plot_admm_residuals(report, out / "admm_residuals.png")
    if len(report.get("steps") or []) > 1:
        plot_steps(report, out / "steps.png")
    for st in report.get("steps") or []:
        scan = (st.get("allocation") or {}).get("scan")
        if scan:
            plot_sensitivity(
                scan,
                out / f"sensitivity_{st['name']}.png",
                f"Sensitivity at the start of {st['name']}",
            )
