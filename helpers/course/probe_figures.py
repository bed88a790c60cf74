"""Figures of the linear-probe track (notebook 10): accuracy against the L2 strength, probes against their
ensembles, and one batch through a probe (its features and the weights that read them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from ..data.splits import pretty
from ..use.probe import read_sweep
from . import plots


def l2_sweep(runs: dict[str, str | Path], *, folder: str | Path | None = None, name: str = "probe_l2_sweep",
             title: str | None = None) -> Figure:
    """Val top-1 of each probe against its L2 strength (log scale), the chosen strength marked.

    Args:
        runs: label -> probe run folder (with its sweep.csv).
    """
    plt = plots._pyplot()
    with plt.rc_context(plots.STYLE):
        fig, ax = plt.subplots(figsize=(7.5, 4.0), layout="constrained")
        plt.close(fig)
        for label, run in runs.items():
            sweep = read_sweep(run)
            x = [r["l2"] for r in sweep]
            y = [r["top1"] for r in sweep]
            (line,) = ax.plot(x, y, marker="o", markersize=4, label=label)
            best = max(sweep, key=lambda r: (round(r["top1"], 6), -r["loss"]))
            ax.plot([best["l2"]], [best["top1"]], marker="*", markersize=14, color=line.get_color())
        ax.set_xscale("log")
        ax.set_xlabel("regularisation strength λ: the loss is the mean cross-entropy + λ·|W|²\n"
                      "(larger = smaller weights, a simpler classifier)")
        ax.set_ylabel("val top-1 (%)")
        ax.legend(loc="lower left", fontsize=9)
        ax.set_title(title or "Linear probes (a logistic regression on frozen features): validation top-1 against "
                              "λ (star: the λ chosen)", fontsize=10)
    plots.save_figure(fig, name, folder)
    return fig


def members_vs_ensembles(members: dict[str, float | dict], ensembles: dict[str, float | dict], *,
                         folder: str | Path | None = None, name: str = "probe_members_vs_ensemble",
                         title: str | None = None) -> Figure:
    """Test top-1 of each probe beside that of their combinations (one probe over concatenated features, the
    mean softmax of the probes, ...), with the deltas against the best member.

    Args:
        members, ensembles: label -> top-1 in percent, or a result dict {"top1", "n"} (the 95% interval needs n).
    """
    val = {k: float(v.get("val_top1", float("nan"))) if isinstance(v, dict) else float("nan")
           for k, v in members.items()}
    known = [k for k in members if np.isfinite(val[k])]
    best = max(known, key=val.get) if known else next(iter(members))  # by validation: the test chooses nothing
    return plots.compare_top1({**members, **ensembles}, reference=best, folder=folder, name=name,
                              title=title or "Probes and their combinations: the deltas against the probe with "
                              "the best val top-1")


def probe_batch(features: torch.Tensor, weight: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                class_names: list[str], *, folder: str | Path | None = None, name: str = "probe_batch") -> Figure:
    """One batch through a probe: its L2-normalised features (N, D), the probe's weights (C, D) and the logits
    (N, C) they give, each row of the logits marked at the true class."""
    plt = plots._pyplot()
    order = torch.argsort(weight.abs().sum(0), descending=True)[: min(256, weight.shape[1])]
    with plt.rc_context(plots.STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), layout="constrained",
                                 gridspec_kw={"width_ratios": [2.2, 2.2, 1.3]})
        plt.close(fig)
        f = features[:, order].numpy()
        lim = float(np.abs(f).max()) or 1.0
        axes[0].imshow(f, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        axes[0].set_title(f"features x / |x| of {len(f)} photos\n({len(order)} of {features.shape[1]} dimensions, "
                          "those the probe weighs most)", fontsize=9)
        axes[0].set_ylabel("photo")
        w = weight[:, order].numpy()
        lim = float(np.abs(w).max()) or 1.0
        axes[1].imshow(w, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        axes[1].set_yticks(range(len(class_names)), [pretty(c, 18) for c in class_names], fontsize=7)
        axes[1].set_title("the probe's weights W (class x dimension)", fontsize=9)
        axes[2].imshow(logits.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
        axes[2].scatter(labels.numpy(), range(len(labels)), marker="s", facecolors="none", edgecolors="red", s=60)
        axes[2].set_title("logits W x / |x| + b\n(red: the true class)", fontsize=9)
        axes[2].set_xlabel("class")
        for ax in axes:
            ax.grid(False)
    plots.save_figure(fig, name, folder)
    return fig
