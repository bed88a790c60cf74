"""Techniques shown on real photos with the trainer's own functions: class samples (00), augmentation previews
and steps (03), a mixed batch at a fixed weight (04) and the test-time augmentation views (06). Each function
returns a matplotlib Figure and, given `folder`, saves `<name>.png` there (`plots.save_figure`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure
from ..data.splits import pretty
from .plots import _figure, _grid, _square, _styled, _thumbnail, save_figure

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
    from ..data import augment

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
    from ..data.augment import preset_steps

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


TTA_VIEW_NAMES = ("centre crop", "centre crop, mirrored", "loose crop (100%)", "loose crop, mirrored",
                  "tight crop (75%)", "tight crop, mirrored")


@_styled
def tta_views(image: np.ndarray | str, *, views: int = 6, size: int = 224, title: str | None = None,
              folder: str | Path | None = None, name: str = "tta_views") -> Figure:
    """The deterministic test-time views of one photo, as `helpers.data.augment.tta_transforms` makes them."""
    from ..data import augment

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
