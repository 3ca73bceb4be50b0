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
    harden = report["phases"].get("harden")
    if harden:
        x = sum(1 for r in hist if r["phase"] in ("pretrain", "admm")) + 0.5
        ax_acc.plot([x], [harden["test_accuracy"] * 100], "kx", ms=8, label="after harden")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="Loss", yscale="log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
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
    for name in its[0]["layers"]:
        xs = [it["iteration"] for it in its]
        ax_p.plot(xs, [it["layers"][name]["relative_primal"] for it in its], "o-", ms=3, label=name)
        ax_d.plot(
            xs, [max(it["layers"][name]["dual"], 1e-12) for it in its], "o-", ms=3, label=name
        )
    ax_p.set(
        xlabel="ADMM iteration", ylabel="||W - Z|| / ||W||", title="Primal residual", yscale="log"
    )
    ax_d.set(
        xlabel="ADMM iteration", ylabel="rho ||Z - Z_prev||", title="Dual residual", yscale="log"
    )
    for ax in (ax_p, ax_d):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_all(report: dict[str, Any], out: Path) -> None:
    plot_training_curves(report, out / "training_curves.png")
    plot_layer_density(report, out / "layer_density.png")
    if report["admm_residuals"]:
        plot_admm_residuals(report, out / "admm_residuals.png")
