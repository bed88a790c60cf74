"""Figures of predictions on single photos (notebook 11): each photo beside its top-k classes as bars, and the
same photo through two models side by side (PyTorch and its ONNX export, say); given the model, each photo as
the crop it saw with the class activation map of its top class."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..data.splits import pretty
from . import plots

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from ..training.trained import Trained


def photo_predictions(tables: pd.DataFrame | dict[str, pd.DataFrame], *, n: int = 6, cols: int = 2,
                      title: str | None = None, folder: str | Path | None = None, name: str = "photo_predictions",
                      model: Trained | str | Path | None = None, device: str = "auto") -> Figure:
    """Each photo with its top-k classes as horizontal bars (the top-1 on top).

    Args:
        tables: `helpers.predict`'s table, or {model name: table} of the same photos (e.g. {"PyTorch": ...,
            "ONNX": ...}): one set of bars per model, side by side for the first model's top-k classes.
        n: the first n photos of the table.
        model: the model of the (first) table, a run folder or a loaded `Trained`: each photo is then shown as the
            crop the model saw with its class activation map for the table's top class (`helpers.use.cam`).
        device: where a run folder is loaded for the maps.
    """
    tables = tables if isinstance(tables, dict) else {"": tables}
    first = next(iter(tables.values())).head(n)
    n_cols = max(1, min(cols, len(first)))
    rows = max(1, -(-len(first) // n_cols))
    fig, axes = plots._figure(6.4 * n_cols, 2.6 * rows, rows, 2 * n_cols, squeeze=False,
                              gridspec_kw={"width_ratios": [1, 1.35] * n_cols})
    for ax in axes.flat:
        ax.set_axis_off()
    maps = _top_class_maps(first, model, device) if model is not None else {}
    for i, row in enumerate(first.itertuples()):
        photo_ax, bars_ax = axes[i // n_cols, 2 * (i % n_cols)], axes[i // n_cols, 2 * (i % n_cols) + 1]
        _photo(photo_ax, row.path, maps.get(row.path))
        if row.error:
            bars_ax.text(0, 0.5, f"not predicted:\n{row.error[:160]}", fontsize=8, color=plots.BAD, wrap=True,
                         va="center")
            continue
        _bars(bars_ax, {label: t.iloc[i] for label, t in tables.items()}, row.predictions)
    if title:
        fig.suptitle(title)
    plots.save_figure(fig, name, folder)
    return fig


def _top_class_maps(table: pd.DataFrame, model: Trained | str | Path, device: str) -> dict[str, tuple]:
    """{path: (the crop with the map of the row's top class over it, that class)} of the table's readable photos."""
    from ..use.cam import overlay, photo_maps

    readable = table[table["error"].isna()] if "error" in table else table
    found = photo_maps(model, list(readable["path"]), classes=list(readable["class"]), device=device)
    return {m.path: (overlay(m.crop, m.maps[c]), c) for m, c in zip(found, readable["class"])}


def _photo(ax, path: str, shown: tuple | None = None) -> None:
    ax.set_axis_on()
    ax.grid(False)
    ax.set_xticks([])
    ax.set_yticks([])
    if shown is not None:
        image, cls = shown
        ax.imshow(image)
        ax.set_xlabel(f"where it looked for {pretty(cls, 22)}", fontsize=8, loc="left")
    else:
        try:
            ax.imshow(plots._square(plots._thumbnail(path)))
        except Exception:  # noqa: BLE001 - an unreadable photo is shown as its name only
            pass
    ax.set_title(Path(path).name[:32], fontsize=8, loc="left")


def _bars(ax, rows: dict, top: list[dict]) -> None:
    import numpy as np

    ax.set_axis_on()
    classes = [p["class"] for p in top]
    y = np.arange(len(classes))
    height = 0.8 / len(rows)
    for j, (label, row) in enumerate(rows.items()):
        probs = {p["class"]: p["probability"] for p in (row.predictions or [])}
        values = [probs.get(c, 0.0) for c in classes]
        offset = (j - (len(rows) - 1) / 2) * height
        bars = ax.barh(y + offset, values, height=height * 0.95, label=label or None,
                       color=plots.COLORS[j % len(plots.COLORS)] if len(rows) > 1 else plots.NEUTRAL)
        for bar, value in zip(bars, values):
            ax.text(min(value, 1.0) + 0.01, bar.get_y() + bar.get_height() / 2, f"{value:.0%}", va="center",
                    fontsize=7)
    ax.set_yticks(y, [pretty(c, 22) for c in classes], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("probability", fontsize=8)
    if len(rows) > 1:
        ax.legend(fontsize=7, loc="lower right")
