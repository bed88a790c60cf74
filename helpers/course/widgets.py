"""ipywidgets explorers for the notebooks: page through failures, try augmentations on a photo, upload a photo
to predict.

    from helpers.course import widgets
    widgets.failure_explorer("runs/course-demo/predictions/01_baseline-baseline-test.csv")

ipywidgets is imported when an explorer is built, so the rest of the package works without it. In a headless
(papermill) run an explorer draws its first page once. Its display carries that picture as a PNG besides the
widget, so the executed notebook shows it when opened later: JupyterLab draws no widget in an output it did not
produce (an untrusted notebook; the executor's saved widget state is not used there), and shows the PNG instead.

An explorer's pictures are drawn by the kernel: while another cell runs (training, say), a pick waits until that
cell ends, which each explorer says in a line under its picture. Each explorer's box carries a CSS class
(`FAILURE_CLASS`, `AUGMENTATION_CLASS`) by which tests and styles find it.
"""

from __future__ import annotations

import base64
import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base.errors import UserError
from ..data.splits import pretty
from . import analysis, failures, previews

if TYPE_CHECKING:
    import pandas as pd


FAILURE_CLASS = "helpers-failure-explorer"

AUGMENTATION_CLASS = "helpers-augmentation-explorer"

UPLOAD_CLASS = "helpers-upload-predictor"

# Shown under an explorer's controls: its callbacks run in the kernel, which runs one cell at a time.
BUSY_NOTE = "Pictures are drawn by the kernel: while another cell runs (training, say), a new pick waits until it ends."


def _ipywidgets():
    try:
        import ipywidgets
    except ImportError as exc:
        raise UserError("The explorers need ipywidgets: pip install ipywidgets (it is in requirements.txt).") from exc
    return ipywidgets


def _box(w, controls: list, output, css_class: str, name: str) -> Any:
    """The explorer's layout: its controls, the picture, and the note that picks wait for a busy kernel."""
    note = w.HTML(f"<small style='color: var(--jp-ui-font-color2, #666)'>{BUSY_NOTE}</small>")
    box = _explorer_class()([w.HBox(controls), output, note], picture=output, name=name)
    box.add_class(css_class)
    return box


@functools.cache
def _explorer_class() -> type:
    """A VBox whose display also carries its picture as a PNG (built on first use: ipywidgets is imported then)."""
    w = _ipywidgets()

    class Explorer(w.VBox):
        """An explorer's box. Its display bundle holds, besides the widget, the picture it shows as image/png and a
        one-line text: a notebook executed headless (papermill) and opened later shows that picture where the
        widget cannot be drawn: JupyterLab does not draw widgets in outputs it did not produce itself (an untrusted
        notebook) and neither do GitHub or the HTML export without the widgets' scripts."""

        def __init__(self, children: list, *, picture: Any, name: str):
            super().__init__(children)
            self._picture, self._name = picture, name

        def _repr_mimebundle_(self, **kwargs: Any) -> Any:
            bundle = super()._repr_mimebundle_(**kwargs)
            if isinstance(bundle, dict):
                bundle["text/plain"] = f"{self._name} (interactive where the notebook runs; its first view below)"
                if self._picture.value:
                    bundle["image/png"] = base64.b64encode(self._picture.value).decode("ascii")
            return bundle

    return Explorer


def _show(image, fig, dpi: int = 90) -> None:
    """Put a figure into an Image widget as PNG bytes. (An Output widget holding a large figure hangs papermill's
    client, nbclient 0.11; an Image widget does not, and it updates without flicker.)"""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    image.value = buffer.getvalue()


def failure_options(predictions: str | Path | pd.DataFrame, max_pairs: int = 30) -> list[tuple[str, tuple]]:
    """The explorer's choices: all failures, each class with failures, and the most confused pairs.

    Returns:
        (label, (true class or None, predicted class or None)) pairs.
    """
    frame, _ = analysis.read_predictions(predictions)
    wrong = analysis.failures(frame)
    options: list[tuple[str, tuple]] = [(f"all failures ({len(wrong)})", (None, None))]
    for name, count in wrong["true"].value_counts().sort_index().items():
        options.append((f"class: {pretty(name)} ({count})", (name, None)))
    pairs = analysis.confused_pairs(frame, max_pairs)
    for t, p, count in pairs[["true", "pred", "count"]].itertuples(index=False):
        options.append((f"pair: {pretty(t)} → {pretty(p)} ({count})", (t, p)))
    return options


def failure_explorer(predictions: str | Path | pd.DataFrame, *, run: Any = None, per_page: int = 8, cols: int = 4,
                     device: str = "auto") -> Any:
    """Pick all failures, a class or a confused pair, and page through its misclassified photos, worst first.
    With `run`, the checkbox "where it looked" shows each failure's crop with its class activation maps for the
    predicted and the true class (`failures.failure_gallery(..., run=...)`).

    Args:
        predictions: a predictions CSV of `helpers.evaluate` (or its DataFrame).
        run: the model of the predictions (a run folder or a loaded `Trained`), loaded once at the first tick;
            None: the checkbox is disabled.
        device: where a run folder is loaded for the maps.
    Returns:
        The ipywidgets box to display.
    """
    w = _ipywidgets()
    frame, _ = analysis.read_predictions(predictions)
    choice = w.Dropdown(options=failure_options(frame), description="Show", layout=w.Layout(width="460px"))
    page = w.BoundedIntText(value=1, min=1, max=1, description="Page", layout=w.Layout(width="150px"))
    of = w.Label()
    looked = w.Checkbox(value=False, description="where it looked", indent=False, disabled=run is None,
                        tooltip="the crop the model saw, and its class activation maps for the predicted and the "
                                "true class" if run is not None else "give the explorer run=... to draw maps",
                        layout=w.Layout(width="150px"))
    output = w.Image(format="png", layout=w.Layout(max_width="100%"))
    loaded: dict[str, Any] = {}

    def model() -> Any:
        if "run" not in loaded:
            from ..base.devices import get_device
            from ..training.trained import Trained
            from ..use.runs import load_trained

            loaded["run"] = run if isinstance(run, Trained) else load_trained(run, device=get_device(device))
        return loaded["run"]

    def pages() -> int:
        true_class, pred_class = choice.value
        return max(1, math.ceil(len(analysis.failures(frame, true_class=true_class, pred_class=pred_class)) / per_page))

    def draw(*_: Any) -> None:
        true_class, pred_class = choice.value
        of.value = f"of {page.max}"
        fig = failures.failure_gallery(frame, n=per_page, cols=cols, offset=(page.value - 1) * per_page,
                                       true_class=true_class, pred_class=pred_class, title="Failures",
                                       run=model() if looked.value else None)
        _show(output, fig)

    def new_choice(_: Any) -> None:
        page.max = pages()
        if page.value != 1:
            page.value = 1  # draws through the page observer
        else:
            draw()

    choice.observe(new_choice, names="value")
    page.observe(draw, names="value")
    looked.observe(draw, names="value")
    page.max = pages()
    draw()
    return _box(w, [choice, page, of, looked], output, FAILURE_CLASS, "Failure explorer")


def augmentation_explorer(samples: Sequence[tuple[str, str]], *, size: int = 224) -> Any:
    """Pick a photo and a preset (or every step of one), move the seed, and see what training sees.

    Args:
        samples: (path, class name) of the photos to choose from.
        size: the training resolution.
    Returns:
        The ipywidgets box to display.
    """
    w = _ipywidgets()
    if not samples:
        raise UserError("augmentation_explorer needs at least one (path, class name) photo.")
    photo = w.Dropdown(options=[(pretty(c), p) for p, c in samples], description="Photo")
    view = w.Dropdown(options=[("light: 5 random draws", ("preset", "light")),
                               ("basic: 5 random draws", ("preset", "basic")),
                               ("advanced: 5 random draws", ("preset", "advanced")),
                               ("every step of basic on its own", ("steps", "basic")),
                               ("every step of advanced on its own", ("steps", "advanced"))],
                      value=("preset", "advanced"), description="Show", layout=w.Layout(width="360px"))
    seed = w.IntSlider(value=0, min=0, max=99, description="Seed")
    output = w.Image(format="png", layout=w.Layout(max_width="100%"))

    def draw(*_: Any) -> None:
        kind, preset = view.value
        if kind == "preset":
            fig = previews.augmentation_preview(photo.value, presets=[preset], size=size, n=5, seed=seed.value,
                                                title=f"{preset} at {size} px, seed {seed.value}")
        else:
            fig = previews.transform_steps(photo.value, preset=preset, size=size, seed=seed.value)
        _show(output, fig)

    for widget in (photo, view, seed):
        widget.observe(draw, names="value")
    draw()
    return _box(w, [photo, view, seed], output, AUGMENTATION_CLASS, "Augmentation explorer")


def upload_predictor(model: Any, *, example: str | Path, folder: str | Path, top_k: int = 5,
                     onnx: str | Path | None = None) -> Any:
    """Upload a photo and see its top-k classes (and, with `onnx`, the exported model's beside them).

    Args:
        model: a run folder, a `helpers.training.trained.Trained` or several (as `helpers.predict` takes them).
        example: the photo shown before the first upload (and, in an executed notebook, as the static picture).
        folder: where uploaded photos are saved to be read (an ignored folder, e.g. runs/uploads).
        onnx: an exported FILE.onnx to run with onnxruntime as well.
    Returns:
        The ipywidgets box to display.
    """
    from ..base.io import atomic_write_bytes
    from ..use.predict import predict
    from . import predict_figures

    w = _ipywidgets()
    upload = w.FileUpload(accept="image/*,.heic,.heif", multiple=False, description="Upload a photo")
    status = w.Label(value=f"showing {Path(example).name}")
    output = w.Image(format="png", layout=w.Layout(max_width="100%"))

    def draw(photo: str) -> None:
        tables = {"PyTorch": predict(model, [photo], top_k=top_k, num_workers=0)}
        if onnx is not None:
            from ..use.export import predict_onnx

            tables["ONNX (onnxruntime)"] = predict_onnx(onnx, [photo], top_k=top_k)
        fig = predict_figures.photo_predictions(tables if onnx is not None else tables["PyTorch"], n=1, cols=1)
        _show(output, fig)

    def uploaded(_: Any) -> None:
        if not upload.value:
            return
        item = upload.value[0]
        name = Path(item["name"]).name or "upload.jpg"
        Path(folder).mkdir(parents=True, exist_ok=True)
        path = Path(folder) / name
        atomic_write_bytes(path, bytes(item["content"]))
        status.value = f"showing {name} (saved to {path})"
        draw(str(path))

    upload.observe(uploaded, names="value")
    draw(str(example))
    return _box(w, [upload, status], output, UPLOAD_CLASS, "Upload predictor")


__all__ = ["failure_explorer", "augmentation_explorer", "upload_predictor", "failure_options", "FAILURE_CLASS",
           "AUGMENTATION_CLASS", "UPLOAD_CLASS", "BUSY_NOTE"]
