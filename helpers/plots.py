"""The course's figures. Every function returns a matplotlib Figure and, given `folder`, saves it there as
`<name>.png` through `save_figure`.

    from helpers import plots
    plots.training_curves("runs/b3", folder="figures", name="02_curves")
    plots.failure_gallery("runs/b3/test_predictions.csv", n=16, folder="figures", name="02_failures")

Predictions are the CSV files written by `helpers.evaluate(..., predictions=...)` (path, true, pred, confidence,
p_<class>...); what the figures compute from them (confusions, failures, 95% intervals) is in `helpers.analysis`. In a notebook a returned figure shows once (it is closed in pyplot, so the inline backend does
not draw it a second time); outside a kernel, pyplot uses the Agg backend unless MPLBACKEND says otherwise.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .analysis import (
    confused_pairs,
    confusion_counts,
    failures,
    format_value,
    paired_changes,
    paired_text,
    read_predictions,
    wilson,
    with_interval,
)
from .analysis import is_number as analysis_is_number

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

_logger = logging.getLogger(__name__)

DPI = 110  # saved PNGs: readable at 100% zoom, small enough to commit a few
STYLE = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9, "xtick.labelsize": 9,
    "ytick.labelsize": 9, "figure.titlesize": 12, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.3, "figure.facecolor": "white", "savefig.facecolor": "white",
}
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
GOOD, BAD, NEUTRAL = "#2a7d3f", "#b8322a", "#4c72b0"


# ----------------------------------------------------------------------------------------------------------------
# Figures and saving


def save_figure(fig: Figure, name: str, folder: str | Path | None) -> Path | None:
    """Save `fig` as `<folder>/<name>.png` (the folder is created); nothing when `folder` is None.

    Returns:
        The PNG's path, or None.
    """
    if folder is None:
        return None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "figure"
    path = folder / f"{slug}.png"
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    _logger.info("Saved figure %s", path)
    return path


def _in_kernel() -> bool:
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return bool(shell) and hasattr(shell, "kernel")


def _pyplot():
    """pyplot, with the Agg backend when this is not a notebook kernel and no backend was chosen."""
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND") and not _in_kernel():
        import matplotlib

        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Figure, Any]:
    """A new figure and axes in the course's style, already closed in pyplot (so it is shown only once)."""
    plt = _pyplot()
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained", **kwargs)
    plt.close(fig)
    return fig, axes


def _styled(func):
    """Draw inside the course's rc style (fonts, grid, spines)."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        plt = _pyplot()
        with plt.rc_context(STYLE):
            return func(*args, **kwargs)

    return wrapper


def pretty(name: str, width: int | None = None) -> str:
    """A class folder name as a label: "baby_back_ribs" -> "Baby back ribs", wrapped at `width` characters."""
    text = name.replace("_", " ").strip()
    text = text[:1].upper() + text[1:]
    return "\n".join(textwrap.wrap(text, width)) if width else text


def _as_runs(runs: str | Path | Sequence[str | Path] | dict[str, str | Path]) -> dict[str, Path]:
    if isinstance(runs, dict):
        return {str(k): Path(v) for k, v in runs.items()}
    if isinstance(runs, (str, Path)):
        runs = [runs]
    return {Path(r).name: Path(r) for r in runs}


@_styled
def training_curves(runs: str | Path | Sequence[str | Path] | dict[str, str | Path], *, sequential: bool = False,
                    title: str | None = None, folder: str | Path | None = None,
                    name: str = "training_curves") -> Figure:
    """Loss, accuracy and learning rate per epoch of one or more runs (their metrics.csv).

    Args:
        runs: a run folder, a list of them, or {label: run folder}.
        sequential: the runs are stages of one training (two-stage): draw them one after the other.
    """
    import pandas as pd
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    from . import engine

    runs = _as_runs(runs)
    fig, axes = _figure(15, 4.6, 1, 3)
    offset, last = 0, 1
    for i, folder_ in enumerate(runs.values()):
        metrics = folder_ / "metrics.csv"
        if not metrics.is_file():
            raise FileNotFoundError(f"{metrics} does not exist: is {folder_} a trained run folder?")
        df = pd.read_csv(metrics)
        color = COLORS[i % len(COLORS)]
        x = df["epoch"] + offset
        marker = "o" if len(df) <= 12 else None
        axes[0].plot(x, df["train_loss"], ls="--", color=color, marker=marker, ms=4)
        axes[0].plot(x, df["val_loss"], ls="-", color=color, marker=marker, ms=4)
        axes[1].plot(x, df["train_top1"], ls="--", color=color, marker=marker, ms=4)
        axes[1].plot(x, df["val_top1"], ls="-", color=color, marker=marker, ms=4)
        axes[1].plot(x, df["val_top5"], ls=":", color=color, marker=marker, ms=3)
        best = df["val_top1"].idxmax()
        axes[1].plot(x[best], df["val_top1"][best], marker="*", ms=14, color=color, mec="black", mew=0.6, ls="none")
        schedule = engine.lr_schedule(folder_)
        # later runs dashed and thinner over the earlier ones: identical schedules stay visible
        style = dict(color=color, lw=max(3.0 - 0.8 * i, 1.2), ls=("-", (0, (5, 3)), (0, (2, 2)), "-.")[i % 4])
        if schedule is not None:
            axes[2].plot(schedule[0] + offset, schedule[1], **style)
        else:
            axes[2].plot(x, df["lr"], marker=marker, ms=4, **style)
        last = max(last, int(x.max()))
        if sequential:
            if offset:
                for ax in axes:
                    ax.axvline(offset + 0.5 if ax is not axes[2] else offset, color="grey", ls="-.", lw=1)
            offset += len(df)
    axes[0].set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    axes[1].set(title="Accuracy (★ best val top-1)", xlabel="epoch", ylabel="%")
    axes[2].set(title="Learning rate of the head, per step", xlabel="epoch", ylabel="lr")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlim(0.0 if ax is axes[2] else 0.5, last + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    run_handles = [Line2D([], [], color=COLORS[i % len(COLORS)], lw=3) for i in range(len(runs))]
    split_handles = [Line2D([], [], color="black", ls=ls) for ls in ("--", "-", ":")]
    fig.legend(run_handles + split_handles, list(runs) + ["train", "validation (top-1)", "validation top-5"],
               loc="outside lower center", ncols=min(len(runs) + 3, 7), frameon=False)
    fig.suptitle(title or "Training curves")
    save_figure(fig, name, folder)
    return fig


# ----------------------------------------------------------------------------------------------------------------
# Confusions and failures


@_styled
def confusion_matrix(predictions: str | Path | pd.DataFrame, *, title: str | None = None,
                     folder: str | Path | None = None, name: str = "confusion_matrix") -> Figure:
    """The confusion matrix as a heat map, each row normalised to the true class's photos.

    Up to 20 classes each cell shows its count; with more (Food-101's 101) the cells are small and the colour
    scale is a square root, so rare confusions stay visible; read the pairs in `top_confusions`.
    """
    import seaborn as sns
    from matplotlib.colors import PowerNorm

    counts, names = confusion_counts(predictions)
    n = len(names)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    small = n <= 20
    side = 3.0 + 0.6 * n if small else 4.0 + 0.2 * n  # 101 classes: 0.2 in (22 px) a row, 6.5 pt labels
    label_size = 9 if small else (7.5 if n <= 60 else 6.5)
    fig, ax = _figure(side + 1.6, side)
    labels = [pretty(c, 18 if small else None) for c in names]
    sns.heatmap(rates, ax=ax, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=1), square=True,
                annot=np.where(counts > 0, counts.astype(str), "") if small else False, fmt="",
                annot_kws={"fontsize": 9}, xticklabels=False, yticklabels=False, linewidths=0.5 if small else 0,
                linecolor="#eeeeee", cbar_kws={"shrink": 0.6 if small else 0.4, "pad": 0.01,
                                               "label": "share of the true class's photos"})
    # every label, set here: seaborn's own labelling measures each one to thin them out (seconds at 101 classes)
    ax.set_xticks(np.arange(n) + 0.5, labels, rotation=90, fontsize=label_size)
    ax.set_yticks(np.arange(n) + 0.5, labels, rotation=0, fontsize=label_size)
    ax.grid(False)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    top1 = 100.0 * np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"{title or 'Confusion matrix'}: top-1 {with_interval(top1, counts.sum())} on {counts.sum()} photos",
                 loc="left")
    save_figure(fig, name, folder)
    return fig


@_styled
def top_confusions(predictions: str | Path | pd.DataFrame, *, k: int = 15, title: str | None = None,
                   folder: str | Path | None = None, name: str = "top_confusions") -> Figure:
    """The `k` class pairs mistaken most often, as bars: "true -> predicted", count and share of the class."""
    pairs = confused_pairs(predictions, k)
    height = 1.6 + 0.38 * max(len(pairs), 1)
    fig, ax = _figure(9, height)
    if pairs.empty:
        ax.text(0.5, 0.5, "No mistakes: every photo was classified correctly.", ha="center", va="center")
        ax.set_axis_off()
    else:
        labels = [f"{pretty(t)}  →  {pretty(p)}" for t, p in zip(pairs["true"], pairs["pred"])]
        y = np.arange(len(pairs))
        ax.barh(y, pairs["count"], color=BAD, alpha=0.8)
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        ax.set_xlabel("misclassified test photos")
        ax.grid(axis="y", visible=False)
        ax.xaxis.get_major_locator().set_params(integer=True)
        for yi, count, share in zip(y, pairs["count"], pairs["share"]):
            ax.text(count, yi, f"  {count} ({share:.0%} of the class)", va="center", fontsize=9)
        ax.set_xlim(0, pairs["count"].max() * 1.45)
    ax.set_title(title or f"Most frequent confusions (true → predicted), top {len(pairs)}", loc="left")
    save_figure(fig, name, folder)
    return fig


def _thumbnail(path: str, size: int = 256) -> np.ndarray:
    from .data import read_image

    image = read_image(path, min_side=size)
    h, w = image.shape[:2]
    scale = size / max(h, w)
    if scale < 1:
        import cv2

        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return image


def _square(image: np.ndarray) -> np.ndarray:
    """Pad a photo with white to a square, so the tiles of a gallery line up."""
    h, w = image.shape[:2]
    side = max(h, w)
    out = np.full((side, side, 3), 255, dtype=np.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    out[top: top + h, left: left + w] = image
    return out


def _grid(n: int, cols: int, tile: float, extra_height: float = 0.0) -> tuple[Figure, np.ndarray]:
    rows = max(1, -(-n // cols))
    fig, axes = _figure(cols * tile, rows * (tile + extra_height) + 0.5, rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    return fig, axes


@_styled
def failure_gallery(predictions: str | Path | pd.DataFrame, *, n: int = 16, cols: int = 4, offset: int = 0,
                    true_class: str | None = None, pred_class: str | None = None, title: str | None = None,
                    folder: str | Path | None = None, name: str = "failures") -> Figure:
    """Misclassified test photos, the most confident mistakes first: true label, prediction and its confidence.

    Args:
        n: photos shown; offset: skip the first `offset` failures (paging).
        true_class / pred_class: only the failures of one class, or of one confused pair.
    """
    frame, _ = read_predictions(predictions)
    wrong = failures(frame, true_class=true_class, pred_class=pred_class)
    page = wrong.iloc[offset: offset + n]
    fig, axes = _grid(max(len(page), 1), cols, 2.9, extra_height=0.55)
    what = "photos"
    if true_class is not None:
        what = f"{pretty(true_class)} photos"
    if pred_class is not None:
        what += f" predicted as {pretty(pred_class)}"
    if page.empty:
        axes.flat[0].text(0.5, 0.5, f"No misclassified {what}.", ha="center", va="center", fontsize=11,
                          transform=axes.flat[0].transAxes)
    for ax, (i, row) in zip(axes.flat, page.iterrows()):
        ax.imshow(_square(_thumbnail(row["path"])))
        ax.set_axis_on()
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        for spine in ax.spines.values():
            spine.set_visible(True)
            spine.set_color(BAD)
        ax.set_title(f"#{i + 1}  true: {pretty(row['true'], 24)}", fontsize=9, color=GOOD, loc="left")
        ax.set_xlabel(f"pred: {pretty(row['pred'], 24)} ({row['confidence']:.0%})\n"
                      f"p(true class) = {row['true_prob']:.0%}", fontsize=9, color=BAD, loc="left")
    shown = f"{offset + 1}-{offset + len(page)}" if len(page) else "0"
    fig.suptitle(f"{title or 'Failure cases'}: {len(wrong)} misclassified {what} of {len(frame)} test photos, "
                 f"most confident first (showing {shown})")
    save_figure(fig, name, folder)
    return fig


class Figures(dict):
    """Several figures by name; a notebook cell ending with it shows each one (IPython's display protocol)."""

    def _ipython_display_(self) -> None:
        from IPython.display import display

        for fig in self.values():
            display(fig)


def error_analysis(predictions: str | Path | pd.DataFrame, *, title: str, prefix: str,
                   compare_with: str | None = None, n: int = 12, folder: str | Path | None = None) -> Figures:
    """Where a model fails, in three pictures: the confusion matrix, the pairs mistaken most often and the most
    confident mistakes (saved as `<prefix>_confusion_matrix`, `<prefix>_top_confusions`, `<prefix>_failures`),
    then a prompt that compares them with an earlier notebook's.

    Args:
        predictions: the test predictions CSV of the model.
        title: what the model is, e.g. "04 · Mixup and CutMix".
        prefix: the figures' name prefix, e.g. "04".
        compare_with: the earlier error analysis to compare with, e.g. "01 (the baseline)".
        n: photos in the failure gallery.
    """
    figures = Figures(
        confusion_matrix=confusion_matrix(predictions, title=title, folder=folder, name=f"{prefix}_confusion_matrix"),
        top_confusions=top_confusions(predictions, folder=folder, name=f"{prefix}_top_confusions"),
        failures=failure_gallery(predictions, n=n, title=title, folder=folder, name=f"{prefix}_failures"))
    pairs = confused_pairs(predictions, 3)
    worst = "; ".join(f"{pretty(t)} → {pretty(p)} ({c})" for t, p, c in zip(pairs["true"], pairs["pred"],
                                                                          pairs["count"])) or "none"
    print(f"{title}: the pairs confused most often: {worst}.")
    if compare_with:
        print(f"Compare with {compare_with}: are these the same pairs? Did the technique fix the mistakes that "
              "were confident, or only the close calls? Are the failures the same photos (a hard or mislabelled "
              "photo stays wrong whatever the technique)?")
    return figures


@_styled
def prediction_changes(before: str | Path | pd.DataFrame, after: str | Path | pd.DataFrame, *,
                       labels: tuple[str, str] = ("before", "after"), n: int = 8, cols: int = 4,
                       title: str | None = None, folder: str | Path | None = None,
                       name: str = "prediction_changes") -> Figure:
    """Photos whose prediction changed between two predictions CSVs of the same split: fixed ones first
    (wrong before, right after), then broken ones (right before, wrong after). The title gives the counts and
    the exact McNemar test on them (`analysis.mcnemar`), which is also printed under the figure."""
    changes = paired_changes(before, after)
    fixed, broken = changes["fixed"], changes["broken"]
    show = [(r, True) for _, r in fixed.head(n).iterrows()]
    show += [(r, False) for _, r in broken.head(max(0, n - len(show))).iterrows()]
    fig, axes = _grid(max(len(show), 1), cols, 2.9, extra_height=0.55)
    if not show:
        axes.flat[0].text(0.5, 0.5, "No prediction changed.", ha="center", va="center",
                          transform=axes.flat[0].transAxes)
    for ax, (row, was_fixed) in zip(axes.flat, show):
        ax.imshow(_square(_thumbnail(row["path"])))
        ax.set_axis_on()
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        color = GOOD if was_fixed else BAD
        for spine in ax.spines.values():
            spine.set_color(color)
            spine.set_linewidth(2)
            spine.set_visible(True)
        ax.set_title(f"{'fixed' if was_fixed else 'broken'} · true: {pretty(row['true'], 22)}", fontsize=9,
                     color=color, loc="left")
        ax.set_xlabel(f"{labels[0]}: {pretty(row['pred_a'], 22)} ({row['confidence_a']:.0%})\n"
                      f"{labels[1]}: {pretty(row['pred_b'], 22)} ({row['confidence_b']:.0%})", fontsize=9, loc="left")
    verdict = "real" if changes["p"] < 0.05 else "within noise"
    fig.suptitle(f"{title or 'What changed'} ({labels[0]} → {labels[1]}): {len(fixed)} photos fixed, {len(broken)} "
                 f"broken; exact McNemar p = {changes['p']:.3g} ({verdict})")
    save_figure(fig, name, folder)
    print(f"{labels[0]} → {labels[1]}: {paired_text(len(fixed), len(broken))}")
    return fig


# ----------------------------------------------------------------------------------------------------------------
# Data and augmentation


@_styled
def class_samples(samples: Sequence[tuple[str, str]], *, cols: int = 5, title: str | None = None,
                  folder: str | Path | None = None, name: str = "class_samples") -> Figure:
    """A grid of photos, each titled with its class: `samples` is a list of (path, class name)."""
    fig, axes = _grid(len(samples), cols, 2.6, extra_height=0.3)
    for ax, (path, class_name) in zip(axes.flat, samples):
        ax.imshow(_square(_thumbnail(path)))
        ax.set_title(pretty(class_name, 26), fontsize=10)
    fig.suptitle(title or "One photo per class")
    save_figure(fig, name, folder)
    return fig


@_styled
def augmentation_preview(image: np.ndarray | str, *, presets: Iterable[str] = ("light", "basic", "advanced"),
                         size: int = 224, n: int = 5, seed: int = 0, title: str | None = None,
                         folder: str | Path | None = None, name: str = "augmentation_preview") -> Figure:
    """One photo as the training pipeline of each preset sees it: a row per preset, `n` random draws each.

    Args:
        image: an RGB uint8 array or an image path.
        size: the training resolution of the previews.
    """
    from . import augment

    photo = _thumbnail(image, 512) if isinstance(image, (str, Path)) else image
    presets = list(presets)
    fig, axes = _figure(2.3 * (n + 1), 2.5 * len(presets) + 0.5, len(presets), n + 1, squeeze=False)
    for r, preset in enumerate(presets):
        transform = augment.train_transform(preset, size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        views = augment.preview_grid(photo, transform, n=n, seed=seed)
        axes[r, 0].imshow(photo)
        axes[r, 0].set_title("original" if r == 0 else "", fontsize=10)
        axes[r, 0].set_ylabel(preset, fontsize=12, rotation=90)
        for c, view in enumerate(views, start=1):
            axes[r, c].imshow(view)
            if r == 0:
                axes[r, c].set_title(f"draw {c}", fontsize=10)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
    fig.suptitle(title or f"Training augmentation presets at {size} px: the same photo, {n} random draws each")
    save_figure(fig, name, folder)
    return fig


@_styled
def transform_steps(image: np.ndarray | str, *, preset: str = "advanced", size: int = 224, seed: int = 0,
                    title: str | None = None, folder: str | Path | None = None,
                    name: str = "transform_steps") -> Figure:
    """Each step of a preset's pipeline on its own (always applied), to see what every augmentation does."""
    import albumentations as A

    photo = _thumbnail(image, 512) if isinstance(image, (str, Path)) else image
    from .augment import preset_steps

    steps = preset_steps(preset, size)
    fig, axes = _grid(len(steps) + 1, 5, 2.5, extra_height=0.25)
    axes.flat[0].imshow(photo)
    axes.flat[0].set_title("original", fontsize=10)
    for ax, (label, step) in zip(axes.flat[1:], steps.items()):
        pipeline = A.Compose([step], strict=True)
        pipeline.set_random_seed(seed)
        ax.imshow(pipeline(image=photo)["image"])
        ax.set_title(label, fontsize=10)
    fig.suptitle(title or f"The steps of the {preset!r} preset, each applied on its own")
    save_figure(fig, name, folder)
    return fig


@_styled
def mixed_batch(images: Any, mixed: Any, targets: Any = None, class_names: Sequence[str] = (), *, n: int = 8,
                title: str | None = None, folder: str | Path | None = None, name: str = "mixed_batch") -> Figure:
    """A batch before and after the trainer's Mixup/CutMix, each mixed image labelled with its soft target.

    Args:
        images: the batch as the loader gives it, (N, 3, H, W) uint8 or float in [0, 1].
        mixed: the same batch after `engine.make_mixup(cfg, classes)(images, labels)`, (N, 3, H, W); or several
            mixings, {row label: (mixed images, soft targets)} (e.g. `engine.mix_fixed` with mixup and CutMix).
        targets: the soft targets that came out with `mixed` (a tensor), (N, classes), rows summing to one.
        class_names: the dataset's classes, in label order.
        n: how many of the batch to show.
    """
    rows = dict(mixed) if isinstance(mixed, dict) else {"what the model sees": (mixed, targets)}
    n = min(n, len(images))
    fig, axes = _figure(2.3 * n, 0.3 + 2.8 * (len(rows) + 1), len(rows) + 1, n, squeeze=False)
    batches = [("the batch", images, None), *((label, *pair) for label, pair in rows.items())]
    for r, (label, batch, soft) in enumerate(batches):
        for i in range(n):
            ax = axes[r, i]
            image = batch[i].float()
            image = image / 255.0 if image.max() > 1.5 else image
            ax.imshow(image.permute(1, 2, 0).clamp(0, 1).cpu().numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if soft is not None:
                order = soft[i].argsort(descending=True)[:2]
                ax.set_xlabel("\n".join(f"{float(soft[i][j]):.0%} {pretty(class_names[int(j)], 16)}" for j in order),
                              fontsize=9)
            elif len(rows) > 1 or not isinstance(mixed, dict):
                ax.set_title(f"{i + 1}", fontsize=9)
        axes[r, 0].set_ylabel(label, fontsize=11)
    fig.suptitle(title or "The trainer's Mixup/CutMix on one batch: image i is mixed with image N-1-i; the soft "
                          "targets below (label smoothing keeps a little on every class)")
    save_figure(fig, name, folder)
    return fig


# ----------------------------------------------------------------------------------------------------------------
# Comparisons


def _top1_and_n(value: Any) -> tuple[float, float]:
    """(top-1, photos) from a number or a result dict ({"top1", "n"}, as `evaluate` returns)."""
    if isinstance(value, dict):
        return float(value.get("top1", float("nan"))), float(value.get("n") or 0)
    return float(value), 0.0


def _noise(entry: Any, reference: Any, base: float, lo: float, hi: float) -> str:
    """", p=0.39, within noise": the paired McNemar test when both results kept their predictions (the same
    photos), else the rule of thumb that the reference lies inside the entry's 95% interval."""
    if isinstance(entry, dict) and isinstance(reference, dict) and entry.get("predictions") \
            and reference.get("predictions"):
        changes = paired_changes(reference["predictions"], entry["predictions"])
        return f", p={changes['p']:.2g}" + (", within noise" if changes["p"] >= 0.05 else "")
    return ", within noise" if np.isfinite(lo) and lo <= base <= hi else ""


@_styled
def compare_top1(results: dict[str, float | dict], *, highlight: str | None = None, reference: str | None = None,
                 title: str | None = None, xlabel: str = "test top-1 (%)", folder: str | Path | None = None,
                 name: str = "compare_top1") -> Figure:
    """Top-1 per model or technique as dots on one scale with their 95% Wilson intervals, each labelled with
    its value and its gain over `reference` (default: the first entry). When both carry their "predictions" the
    gain gets the exact McNemar p on the same photos and is "within noise" for p >= 0.05; otherwise a gain whose
    reference lies inside the entry's interval is "within noise". Entries that are NaN show as "not measured".

    Args:
        results: {label: top-1 in percent, or a result dict with "top1" and "n" (the interval needs n)}.
    """
    labels = list(results)
    pairs = [_top1_and_n(results[k]) for k in labels]
    values = np.array([v for v, _ in pairs], dtype=float)
    intervals = np.array([wilson(v, n) for v, n in pairs], dtype=float)
    reference = reference if reference in results else labels[0]
    base = values[labels.index(reference)]
    fig, ax = _figure(10, 1.3 + 0.5 * len(labels))
    y = np.arange(len(labels))
    spans = np.concatenate([values, intervals.ravel()])
    finite = spans[np.isfinite(spans)]
    low = max(0.0, float(finite.min()) - 5) if finite.size else 0.0
    high = min(100.0, float(finite.max()) + 5) if finite.size else 100.0
    if high - low < 20:
        high = min(100.0, low + 20)
    ax.set_xlim(low, high + (high - low) * 0.3)
    if np.isfinite(base):
        ax.axvline(base, color="#999999", ls="--", lw=1)
    for yi, key, value, (lo, hi) in zip(y, labels, values, intervals):
        if not np.isfinite(value):
            ax.text(low, yi, " not measured", va="center", fontsize=9, color="#777777")
            continue
        color = GOOD if key == highlight else ("#888888" if key == reference else NEUTRAL)
        if np.isfinite(lo):
            ax.hlines(yi, lo, hi, color=color, lw=6, alpha=0.25)
        ax.plot(value, yi, "o", ms=10, color=color)
        delta = ""
        if key != reference and np.isfinite(base):
            delta = f"  ({value - base:+.1f}{_noise(results[key], results[reference], base, lo, hi)})"
        ax.text(max(value, hi if np.isfinite(hi) else value), yi, f"   {value:.1f}%{delta}", va="center", fontsize=10)
    ax.set_yticks(y, [textwrap.fill(k, 34) for k in labels])
    ax.set_ylim(len(labels) - 0.4, -0.6)
    ax.grid(axis="y", visible=False)
    shown = np.isfinite(intervals[:, 0]).any()
    ax.set_xlabel(xlabel + ("; bars: 95% interval (Wilson) over the test photos" if shown else ""))
    ax.set_title(title or "Test top-1", loc="left")
    save_figure(fig, name, folder)
    return fig


@_styled
def tta_gain(top1_by_views: dict[int, float | dict], *, title: str | None = None, folder: str | Path | None = None,
             name: str = "tta_gain") -> Figure:
    """Test top-1 against the number of test-time views (1 = plain evaluation), with the gain of each and the
    95% interval of each measurement (given result dicts with "n"). The title gives the gain of the largest
    number of views (fixed in advance, never the best on test) with its paired test when the results carry
    their predictions."""
    views = sorted(top1_by_views)
    pairs = [_top1_and_n(top1_by_views[v]) for v in views]
    values = [v for v, _ in pairs]
    base = values[0]
    fig, ax = _figure(8, 4.2)
    bounds = np.array([wilson(v, n) for v, n in pairs], dtype=float)
    if np.isfinite(bounds).all():
        ax.fill_between(views, bounds[:, 0], bounds[:, 1], color=NEUTRAL, alpha=0.15, lw=0,
                        label="95% interval (Wilson)")
        ax.legend(loc="lower right", frameon=False)
        values_span = [*values, *bounds.ravel()]
    else:
        values_span = values
    ax.plot(views, values, marker="o", ms=8, color=NEUTRAL)
    ax.axhline(base, color="grey", ls="--", lw=1)
    ax.annotate("one view", (views[-1], base), textcoords="offset points", xytext=(0, -4), va="top", ha="right",
                fontsize=9, color="grey")
    for v, value in zip(views, values):
        ax.annotate(f"{value:.1f}%\n({value - base:+.1f})" if v != views[0] else f"{value:.1f}%", (v, value),
                    textcoords="offset points", xytext=(0, 10), ha="center", fontsize=9)
    span = max(values_span) - min(values_span)
    ax.set_ylim(max(0.0, min(values_span) - 1.0), min(105.0, max(values_span) + max(2.0, 0.2 * span)))
    ax.set_xticks(views)
    ax.set_xlabel("test-time views averaged (1 = plain evaluation)")
    ax.set_ylabel("test top-1 (%)")
    summary = f"{values[-1] - base:+.1f} points with {views[-1]} views"  # the largest count, fixed in advance
    summary += _noise(top1_by_views[views[-1]], top1_by_views[views[0]], base, *bounds[-1])
    ax.set_title(title or f"Test-time augmentation: {summary}", loc="left")
    save_figure(fig, name, folder)
    return fig


TTA_VIEW_NAMES = ("centre crop", "centre crop, mirrored", "loose crop (100%)", "loose crop, mirrored",
                  "tight crop (75%)", "tight crop, mirrored")


@_styled
def tta_views(image: np.ndarray | str, *, views: int = 6, size: int = 224, title: str | None = None,
              folder: str | Path | None = None, name: str = "tta_views") -> Figure:
    """The deterministic test-time views of one photo, as `helpers.augment.tta_transforms` makes them."""
    from . import augment

    photo = _thumbnail(image, 512) if isinstance(image, (str, Path)) else image
    transforms = augment.tta_transforms(views, size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    fig, axes = _grid(views + 1, views + 1, 2.4, extra_height=0.3)
    axes.flat[0].imshow(photo)
    axes.flat[0].set_title("original", fontsize=10)
    for i, (ax, transform) in enumerate(zip(axes.flat[1:], transforms)):
        ax.imshow(augment.preview_grid(photo, transform, n=1)[0])  # deterministic views: any seed gives the same
        ax.set_title(f"view {i + 1}: {TTA_VIEW_NAMES[i]}", fontsize=9)
    fig.suptitle(title or f"The test-time views at {size} px; their softmax outputs are averaged")
    save_figure(fig, name, folder)
    return fig


def ensemble_vs_members(result: dict[str, Any], *, title: str | None = None, folder: str | Path | None = None,
                        name: str = "ensemble_vs_members") -> Figure:
    """Each member's test top-1 beside the ensemble's (the result of `helpers.ensemble`)."""
    from .analysis import best_by_val

    entries, runs = {}, {}
    for i, m in enumerate(result["members"], start=1):
        label = f"member {i}: {m['backbone']} @{m['image_size']}"
        entries[label] = {"top1": m["top1"], "n": result.get("n"), **({"predictions": m["predictions"]}
                                                                      if m.get("predictions") else {})}
        runs[label] = m.get("model")
    best = best_by_val(runs)  # the best member by validation top-1: the test split chooses nothing
    entries[f"ensemble of {len(result['members'])} (mean softmax)"] = result
    gain = result["top1"] - entries[best]["top1"]
    return compare_top1(entries, highlight=list(entries)[-1], reference=best, folder=folder, name=name,
                        title=title or f"Ensemble: {gain:+.1f} points against its best member by validation "
                                       "top-1 (the deltas)")


def student_vs_teacher(teacher: dict[str, float | dict], student_alone: tuple[str, float | dict],
                       student_kd: tuple[str, float | dict], *, title: str | None = None,
                       folder: str | Path | None = None, name: str = "student_vs_teacher") -> Figure:
    """Teacher(s), the student trained alone and the student trained with the teacher's soft targets (each a
    top-1 or a result dict with "top1" and "n" for its interval)."""
    entries = {f"teacher: {k}": v for k, v in teacher.items()}
    alone = f"student alone: {student_alone[0]}"
    kd = f"student with distillation: {student_kd[0]}"
    entries[alone] = student_alone[1]
    entries[kd] = student_kd[1]
    gain = _top1_and_n(student_kd[1])[0] - _top1_and_n(student_alone[1])[0]
    return compare_top1(entries, highlight=kd, reference=alone, folder=folder, name=name,
                        title=title or f"Distillation: {gain:+.1f} points for the student (deltas against it alone)")


# ----------------------------------------------------------------------------------------------------------------
# The roadmap (12_results)


def _range(text: str) -> tuple[float, float] | None:
    numbers = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", str(text))]
    return (numbers[0], numbers[-1]) if numbers else None


@_styled
def roadmap_chart(results: pd.DataFrame, *, title: str | None = None, folder: str | Path | None = None,
                  name: str = "roadmap") -> Figure:
    """The plan's expected cumulative top-1 per phase (grey ranges) with the measured top-1 (dots).

    Args:
        results: `Course.results()`: phase, technique, plan: top-1, measured: top-1, measured: gain.
    """
    rows = results.reset_index(drop=True)
    fig, ax = _figure(11, 1.4 + 0.5 * len(rows))
    y = np.arange(len(rows))
    measured, lows = [], []
    for yi, (_, row) in zip(y, rows.iterrows()):
        span = _range(row["plan: top-1"])
        if span:
            ax.barh(yi, span[1] - span[0], left=span[0], height=0.55, color="#cfcfcf",
                    label="the plan's expected top-1" if yi == 0 else None)
        value = row["measured: top-1"]
        if value is not None and np.isfinite(float(value)):
            value = float(value)
            measured.append(value)
            lo, hi = float(row.get("95% low", np.nan)), float(row.get("95% high", np.nan))
            if np.isfinite(lo):
                ax.hlines(yi, lo, hi, color=NEUTRAL, lw=2, label="95% interval" if len(measured) == 1 else None)
                lows.append(lo)
            gain = row["measured: gain"]
            noise = ", within noise" if row.get("gain is") == "within noise" else ""
            text = f" {value:.1f}%" + (f" ({float(gain):+.1f}{noise})" if gain is not None and np.isfinite(float(gain))
                                      else "")
            ax.plot(value, yi, "o", color=NEUTRAL, ms=8, label="measured test top-1" if len(measured) == 1 else None)
            ax.text(value, yi - 0.32, text, fontsize=9, va="bottom", ha="center")
    ax.set_yticks(y, [f"{r['phase']}  {textwrap.shorten(r['technique'], 50)}" for _, r in rows.iterrows()])
    ax.invert_yaxis()
    ax.grid(axis="y", visible=False)
    low = min([70.0] + measured + lows) - 5
    ax.set_xlim(max(0.0, low), 101)
    ax.set_xlabel("top-1 (%)")
    fig.legend(loc="outside lower center", ncols=2, frameon=False)
    ax.set_title(title or "The plan's roadmap: expected against measured", loc="left")
    save_figure(fig, name, folder)
    return fig


ROADMAP_COLUMNS = (  # (results column, header, wrap width in characters)
    ("phase", "phase", 8), ("technique", "technique", 24), ("plan: recipe", "plan: recipe", 18),
    ("plan: gain", "plan: gain", 9), ("plan: top-1", "plan (or published)\ntop-1", 20),
    ("trained", "this run trained", 22), ("measured: top-1", "measured\ntop-1", 9),
    ("95% interval", "95%\ninterval", 10), ("measured: gain", "measured\ngain", 13), ("paired p", "paired p\n(McNemar)", 9),
    ("gain against", "gain against", 20), ("train min", "train\nminutes", 7),
)


def _roadmap_cell(row: Any, column: str) -> str:
    value = row.get(column)
    if column == "95% interval":
        low, high = row.get("95% low"), row.get("95% high")
        return f"{low:.1f}-{high:.1f}" if analysis_is_number(low) and analysis_is_number(high) else "–"
    if column == "measured: gain" and analysis_is_number(value):
        return f"{float(value):+.1f}" + (f"\n{row.get('gain is')}" if row.get("gain is") else "")
    if column == "measured: top-1" and analysis_is_number(value):
        return f"{float(value):.1f}%"
    return format_value(value, column)


@_styled
def roadmap_table(results: pd.DataFrame, *, title: str | None = None, folder: str | Path | None = None,
                  name: str = "roadmap_table") -> Figure:
    """The plan's Quick Reference table with the measured numbers beside the expected ones, as a picture.

    Each column is as wide as its longest (wrapped) line and each row as tall as its tallest cell, so every text
    fits its cell. "this run trained" says what the profile ran (e.g. "lite2 @160 px, 2 epochs"), which is
    not the plan's recipe; "gain is" follows the paired test where the ledger has the photos fixed and broken.
    """
    rows = results.reset_index(drop=True)
    texts = [[h for _, h, _ in ROADMAP_COLUMNS]]
    for _, row in rows.iterrows():
        texts.append(["\n".join(textwrap.fill(part, width) for part in _roadmap_cell(row, c).split("\n"))
                      for c, _, width in ROADMAP_COLUMNS])
    char_in, line_in, pad_in = 0.074, 0.19, 0.14  # 9 pt text: inches per character and per line
    widths = [max(max(len(line) * (1.15 if r == 0 else 1.0) for line in t.split("\n")) for r, t in enumerate(col))
              * char_in + pad_in for col in zip(*texts)]  # the bold header is wider per character
    heights = [max(t.count("\n") + 1 for t in row) * line_in + pad_in for row in texts]
    fig, ax = _figure(sum(widths) + 0.2, sum(heights) + 0.6)
    ax.set_axis_off()
    table = ax.table(cellText=texts[1:], colLabels=texts[0], cellLoc="left", colLoc="left", bbox=[0, 0, 1, 1])
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    for (r, c), cell in table.get_celld().items():
        cell.set_width(widths[c] / sum(widths))
        cell.set_height(heights[r] / sum(heights))
        cell.PAD = 0.5 * pad_in / widths[c]
        cell.set_edgecolor("#dddddd")
        cell.get_text().set_va("center")
        if r == 0:
            cell.set_text_props(weight="bold")
            cell.set_facecolor("#eeeeee")
        elif ROADMAP_COLUMNS[c][0] in ("trained", "measured: top-1", "95% interval", "measured: gain", "paired p",
                                       "train min"):
            cell.set_facecolor("#eef3fb")
    ax.set_title(title or "The plan's roadmap with the measured numbers", loc="left")
    save_figure(fig, name, folder)
    return fig


__all__ = ["save_figure", "training_curves", "confusion_matrix", "top_confusions", "failure_gallery",
           "prediction_changes", "error_analysis", "Figures", "class_samples", "augmentation_preview", "transform_steps", "mixed_batch",
           "compare_top1", "tta_gain", "tta_views", "ensemble_vs_members", "student_vs_teacher", "roadmap_chart",
           "roadmap_table", "pretty"]
