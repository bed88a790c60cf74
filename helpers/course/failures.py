"""Where a model fails, as pictures from its per-image predictions CSV (`helpers.evaluate(..., predictions=...)`):
the confusion matrix, the pairs of classes confused most, a gallery of the most confident mistakes,
`error_analysis` (all three in one call) and `prediction_changes` (the photos one change fixed and broke, with
McNemar's p). Each function returns a matplotlib Figure and, given `folder`, saves `<name>.png` there.
Given the run, the gallery also shows where the model looked (class activation maps, `helpers.use.cam`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.splits import pretty
from .analysis import (
    confused_pairs,
    confusion_counts,
    failures,
    paired_changes,
    paired_text,
    read_predictions,
    with_interval,
)
from .plots import BAD, GOOD, _figure, _grid, _square, _styled, _thumbnail, save_figure

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from ..training.trained import Trained

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


@_styled
def failure_gallery(predictions: str | Path | pd.DataFrame, *, n: int = 16, cols: int = 4, offset: int = 0,
                    true_class: str | None = None, pred_class: str | None = None, title: str | None = None,
                    folder: str | Path | None = None, name: str = "failures", run: Trained | str | Path | None = None,
                    device: str = "auto") -> Figure:
    """Misclassified test photos, the most confident mistakes first: true label, prediction and its confidence.

    Args:
        n: photos shown; offset: skip the first `offset` failures (paging).
        true_class / pred_class: only the failures of one class, or of one confused pair.
        run: the model that made the predictions (a run folder or a loaded `Trained`): each failure is then shown
            as the crop the model saw and where it looked (Grad-CAM, `helpers.use.cam`) for the predicted class
            and for the true class, three panels a photo, `cols // 2` photos a row.
        device: where a run folder is loaded for the maps.
    """
    frame, _ = read_predictions(predictions)
    wrong = failures(frame, true_class=true_class, pred_class=pred_class)
    page = wrong.iloc[offset: offset + n]
    what = "photos"
    if true_class is not None:
        what = f"{pretty(true_class)} photos"
    if pred_class is not None:
        what += f" predicted as {pretty(pred_class)}"
    if run is not None and not page.empty:
        fig = _gallery_with_maps(page, run, max(1, cols // 2), device)
    else:
        fig = _gallery(page, cols, f"No misclassified {what}.")
    shown = f"{offset + 1}-{offset + len(page)}" if len(page) else "0"
    fig.suptitle(f"{title or 'Failure cases'}: {len(wrong)} misclassified {what} of {len(frame)} test photos, "
                 f"most confident first (showing {shown})")
    save_figure(fig, name, folder)
    return fig


def _gallery(page: pd.DataFrame, cols: int, empty: str) -> Figure:
    fig, axes = _grid(max(len(page), 1), cols, 2.9, extra_height=0.55)
    if page.empty:
        axes.flat[0].text(0.5, 0.5, empty, ha="center", va="center", fontsize=11, transform=axes.flat[0].transAxes)
    for ax, (i, row) in zip(axes.flat, page.iterrows()):
        _framed(ax, _square(_thumbnail(row["path"])), BAD)
        ax.set_title(f"#{i + 1}  true: {pretty(row['true'], 24)}", fontsize=9, color=GOOD, loc="left")
        ax.set_xlabel(f"pred: {pretty(row['pred'], 24)} ({row['confidence']:.0%})\n"
                      f"p(true class) = {row['true_prob']:.0%}", fontsize=9, color=BAD, loc="left")
    return fig


def _gallery_with_maps(page: pd.DataFrame, run: Trained | str | Path, per_row: int, device: str) -> Figure:
    """Each failure as three panels: the crop the model saw, where it looked for the predicted class, and for the
    true class; a narrow gap between failures."""
    from ..use.cam import overlay, photo_maps

    maps = photo_maps(run, list(page["path"]), classes=[[p, t] for p, t in zip(page["pred"], page["true"])],
                      device=device)
    rows = -(-len(page) // per_row)
    ratios = ([1, 1, 1, 0.12] * per_row)[:-1]
    fig, axes = _figure(sum(ratios) * 2.2, rows * 2.75 + 0.5, rows, len(ratios), squeeze=False,
                        gridspec_kw={"width_ratios": ratios})
    for ax in axes.flat:
        ax.set_axis_off()
    for k, ((i, row), m) in enumerate(zip(page.iterrows(), maps)):
        left = axes[k // per_row, 4 * (k % per_row):]
        _framed(left[0], m.crop, BAD)
        left[0].set_title(f"#{i + 1} true: {pretty(row['true'], 20)}", fontsize=9, color=GOOD, loc="left")
        left[0].set_xlabel(f"pred: {pretty(row['pred'], 20)} ({row['confidence']:.0%})\n"
                           f"p(true class) = {row['true_prob']:.0%}", fontsize=9, color=BAD, loc="left")
        for ax, cls, color, role in ((left[1], row["pred"], BAD, "predicted"), (left[2], row["true"], GOOD, "true")):
            _framed(ax, overlay(m.crop, m.maps[cls]), color)
            ax.set_title("where it looked for", fontsize=8, color="#555555", loc="left")
            ax.set_xlabel(f"{pretty(cls, 20)} ({role})", fontsize=9, color=color, loc="left")
    fig.text(0.5, 0, "Each failure: the crop the model saw, then where it looked for the predicted and for the true "
             "class (Grad-CAM: red is where that class's evidence is strongest, each map scaled to its own maximum).",
             ha="center", va="top", fontsize=9)
    return fig


def _framed(ax, image: np.ndarray, color: str) -> None:
    ax.imshow(image)
    ax.set_axis_on()
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_color(color)


class Figures(dict):
    """Several figures by name; a notebook cell ending with it shows each one (IPython's display protocol)."""

    def _ipython_display_(self) -> None:
        from IPython.display import display

        for fig in self.values():
            display(fig)


def error_analysis(predictions: str | Path | pd.DataFrame, *, title: str, prefix: str,
                   compare_with: str | None = None, n: int = 12, folder: str | Path | None = None,
                   run: Trained | str | Path | None = None, device: str = "auto") -> Figures:
    """Where a model fails, in three pictures: the confusion matrix, the pairs mistaken most often and the most
    confident mistakes (saved as `<prefix>_confusion_matrix`, `<prefix>_top_confusions`, `<prefix>_failures`),
    then a prompt that compares them with an earlier notebook's.

    Args:
        predictions: the test predictions CSV of the model.
        title: what the model is, e.g. "04 · Mixup and CutMix".
        prefix: the figures' name prefix, e.g. "04".
        compare_with: the earlier error analysis to compare with, e.g. "01 (the baseline)".
        n: photos in the failure gallery.
        run: the model of the predictions: the gallery then shows where it looked (`failure_gallery`).
    """
    figures = Figures(
        confusion_matrix=confusion_matrix(predictions, title=title, folder=folder, name=f"{prefix}_confusion_matrix"),
        top_confusions=top_confusions(predictions, folder=folder, name=f"{prefix}_top_confusions"),
        failures=failure_gallery(predictions, n=n, title=title, folder=folder, name=f"{prefix}_failures", run=run,
                                 device=device))
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
