"""The course's figures of results, and the style every figure shares: training curves, top-1 comparisons with
their intervals and paired tests, TTA gains, ensembles and distillation, the roadmap chart and table. Every
function returns a matplotlib Figure and, given `folder`, saves it there as `<name>.png` through `save_figure`.

    from helpers.course import plots
    plots.training_curves("runs/b3", folder="figures", name="02_curves")

Failure pictures (confusion matrix, gallery) are in `failures.py`, technique previews in `previews.py`; what the
figures compute (confusions, failures, 95% intervals, McNemar) is in `analysis.py`. In a notebook a returned
figure shows once (it is closed in pyplot, so the inline backend does not draw it a second time); outside a
kernel, pyplot uses the Agg backend unless MPLBACKEND says otherwise."""

from __future__ import annotations

import logging
import os
import re
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .analysis import format_value, wilson
from .analysis import is_number as analysis_is_number
from .comparison import NO_PAIRED_TEST, compare

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
    if _in_kernel():
        _show_saved(fig, path)
    return path


def _show_saved(fig: Figure, path: Path) -> None:
    """In a notebook, show `fig` from its saved PNG rather than drawing it a second time (the inline backend's
    draw costs as much as the save: about a second for a 101-class confusion matrix on 2 cores). A figure changed
    after saving (matplotlib marks it stale) is drawn again as usual."""
    import base64

    from IPython import get_ipython
    from matplotlib.figure import Figure

    fig._saved_png = path
    fig.stale = False  # any later change to an artist of the figure sets it again
    formatter = get_ipython().display_formatter.formatters["image/png"]
    try:
        draw = formatter.lookup_by_type(Figure)
    except KeyError:  # no inline backend (e.g. %matplotlib widget): leave the display to it
        return
    if getattr(draw, "shows_saved_png", False):
        return

    def png(figure):
        saved = getattr(figure, "_saved_png", None)
        if saved is not None and not figure.stale:
            try:
                data = Path(saved).read_bytes()
            except OSError:
                data = b""
            if data[12:16] == b"IHDR":  # shown at the size the inline backend would draw it (at the figure's dpi)
                width = int.from_bytes(data[16:20], "big") * figure.dpi / DPI
                return base64.b64encode(data).decode("ascii"), {"width": round(width)}
        return draw(figure)

    png.shows_saved_png = True
    formatter.for_type(Figure, png)


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

    from ..training import recipe

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
        schedule = recipe.lr_schedule(folder_)
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


def _thumbnail(path: str, size: int = 256) -> np.ndarray:
    from ..data.images import read_image

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
    for ax in axes.flat:  # no ticks at all: an axis turned off still lays out its tick labels (half the drawing)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_axis_off()
    return fig, axes


# ----------------------------------------------------------------------------------------------------------------
# Comparisons


def _top1_and_n(value: Any) -> tuple[float, float]:
    """(top-1, photos) from a number or a result dict ({"top1", "n"}, as `evaluate` returns)."""
    if isinstance(value, dict):
        return float(value.get("top1", float("nan"))), float(value.get("n") or 0)
    return float(value), 0.0


def _noise(entry: Any, reference: Any) -> str:
    """", p=0.39, within noise": the course's one rule (`comparison.compare`): the exact McNemar test when both
    results kept their predictions of the same photos, else ", no paired test"."""
    if not (isinstance(entry, dict) and isinstance(reference, dict)):
        return f", {NO_PAIRED_TEST}"
    return ", " + compare(reference, entry, "").short().split(", ", 1)[1]


@_styled
def compare_top1(results: dict[str, float | dict], *, highlight: str | None = None, reference: str | None = None,
                 title: str | None = None, xlabel: str = "test top-1 (%)", folder: str | Path | None = None,
                 name: str = "compare_top1") -> Figure:
    """Top-1 per model or technique as dots on one scale with their 95% Wilson intervals, each labelled with
    its value and its gain over `reference` (default: the first entry) with the verdict of the course's one rule
    (`comparison.compare`): when both carry their "predictions" of the same photos, the exact McNemar p and "real"
    (p < 0.05) or "within noise"; otherwise "no paired test". Entries that are NaN show as "not measured".

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
            delta = f"  ({value - base:+.1f}{_noise(results[key], results[reference])})"
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
    summary += _noise(top1_by_views[views[-1]], top1_by_views[views[0]])
    ax.set_title(title or f"Test-time augmentation: {summary}", loc="left")
    save_figure(fig, name, folder)
    return fig


def ensemble_vs_members(result: dict[str, Any], *, member_tests: Sequence[dict] | None = None,
                        title: str | None = None, folder: str | Path | None = None,
                        name: str = "ensemble_vs_members") -> Figure:
    """Each member's test top-1 beside the ensemble's (the result of `helpers.ensemble`), the deltas against the best
    member by validation with their paired test when the members' own evaluations (`member_tests`, in the order of
    `result["members"]`, with their "predictions") are given."""
    from .analysis import best_by_val

    entries, runs = {}, {}
    for i, m in enumerate(result["members"], start=1):
        label = f"member {i}: {m['backbone']} @{m['image_size']}"
        predictions = m.get("predictions") or (member_tests[i - 1].get("predictions") if member_tests else None)
        entries[label] = {"top1": m["top1"], "n": result.get("n"), **({"predictions": predictions}
                                                                      if predictions else {})}
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
        results: `roadmap.results(course)`: phase, technique, plan: top-1, measured: top-1, measured: gain.
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
            verdict = f", {row['gain is']}" if row.get("gain is") else ""  # the paired test's verdict, or none
            text = f" {value:.1f}%" + (f" ({float(gain):+.1f}{verdict})" if analysis_is_number(gain) else "")
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
    ("plan: gain", "plan: gain", 9), ("plan: top-1", "plan: top-1", 11),
    ("published", "published figure\n(full scale)", 22), ("trained", "this run trained", 22),
    ("measured: top-1", "measured\ntop-1", 9), ("95% interval", "95%\ninterval", 10),
    ("measured: gain", "measured\ngain", 13), ("paired p", "paired p\n(McNemar)", 9),
    ("gain against", "gain against", 20), ("train minutes", "train minutes\n(machine)", 16),
)
MEASURED_COLUMNS = ("trained", "measured: top-1", "95% interval", "measured: gain", "paired p", "train minutes")


def _roadmap_cell(row: Any, column: str) -> str:
    value = row.get(column)
    if column == "95% interval":
        low, high = row.get("95% low"), row.get("95% high")
        return f"{low:.1f}-{high:.1f}" if analysis_is_number(low) and analysis_is_number(high) else "–"
    if column == "published":
        figure, source = row.get("published: figure") or "–", row.get("published: source") or ""
        return f"{figure}\n{source}" if source else figure
    if column == "measured: gain" and analysis_is_number(value):
        return f"{float(value):+.1f}" + (f"\n{row.get('gain is')}" if row.get("gain is") else "")
    if column == "measured: top-1" and analysis_is_number(value):
        return f"{float(value):.1f}%"
    if column == "train minutes" and analysis_is_number(value):
        return f"{float(value):.1f}" + (f"\n({row.get('machine')})" if row.get("machine") else "")
    return format_value(value, column)


@_styled
def roadmap_table(results: pd.DataFrame, *, title: str | None = None, folder: str | Path | None = None,
                  name: str = "roadmap_table") -> Figure:
    """The plan's Quick Reference table with a published figure and the measured numbers beside the plan's, as a
    picture.

    Each column is as wide as its longest (wrapped) line and each row as tall as its tallest cell, so every text
    fits its cell. The plan's top-1 and the published figure (with its source) are separate columns; "this run
    trained" says what the profile ran (e.g. "lite2 @160 px, 2 epochs"), which is not the plan's recipe; the
    measured gain carries the paired test's verdict (or "no paired test"); the training minutes name the machine.
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
        elif ROADMAP_COLUMNS[c][0] in MEASURED_COLUMNS:
            cell.set_facecolor("#eef3fb")
    ax.set_title(title or "The plan's roadmap with the measured numbers", loc="left")
    save_figure(fig, name, folder)
    return fig


# ----------------------------------------------------------------------------------------------------------------
# The learning-rate finder

_FINDER_RULES = (("valley", "o", GOOD, "valley (suggested)"), ("steep", "^", "#ff7f0e", "steep"),
                 ("minimum", "v", "#9467bd", "minimum / 10"))


@_styled
def lr_finder(result: Any, *, current_lr: float | None = None, title: str | None = None,
              folder: str | Path | None = None, name: str = "lr_find") -> Figure:
    """The range test's loss against the head's rate on a log axis (fastai's `plot_lr_find`): the loss of each
    step, its smoothed curve, each rule's suggested rate as a vertical line with its point on the curve (for
    minimum / 10 the point is the minimum itself), and `current_lr` (the rate the run uses) dashed.

    Args:
        result: a `helpers.training.lr_find.LRFinderResult` (what `helpers.lr_find` returns).
        current_lr: the rate to compare with, e.g. the notebook's `cfg.lr`.
    """
    rates, losses, smoothed = (np.asarray(v, dtype=float) for v in (result.rates, result.losses, result.smoothed))
    fig, ax = _figure(8, 4.6)
    ax.plot(rates, losses, color="#bbbbbb", lw=1, label="loss of each step")
    ax.plot(rates, smoothed, color=NEUTRAL, lw=2.2, label="smoothed (EMA, beta 0.98)")
    for rule, marker, color, label in _FINDER_RULES:
        if rule not in result.suggestions:
            continue
        rate, loss = result.points[rule]
        ax.plot(rate, loss, marker=marker, ms=10, color=color, mec="black", mew=0.6, ls="none")
        ax.axvline(result.suggestions[rule], color=color, lw=1.4, ls="-" if rule == "valley" else ":",
                   label=f"{label}: {result.suggestions[rule]:.1e}")
    if current_lr is not None:
        ax.axvline(current_lr, color="black", lw=1.4, ls="--", label=f"the rate in use: {current_lr:.1e}")
    shown = smoothed[np.isfinite(smoothed)]
    if len(shown):  # up to its bottom and a quarter above: the diverging tail leaves the frame, not squash it
        top = 1.25 * shown[: int(np.argmin(shown)) + 1].max()
        low = min(shown.min(), np.nanmin(np.where(losses <= top, losses, np.nan), initial=shown.min()))
        ax.set_ylim(max(0.0, low - 0.05 * (top - low)), top)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate of the head (log scale)")
    ax.set_ylabel("training loss")
    fig.legend(loc="outside lower center", ncols=3, frameon=False)
    backbone = "backbone held (head-only warm-up)" if result.backbone_held else "whole network"
    stop = {"steps": "", "diverged": ", stopped at divergence", "non-finite loss": ", stopped at a NaN loss"}
    ax.set_title(title or f"Learning-rate finder: {len(rates)} steps{stop.get(result.stopped, '')}, {backbone}",
                 loc="left")
    save_figure(fig, name, folder)
    return fig
