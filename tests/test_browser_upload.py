"""Notebook 11's upload box in JupyterLab, driven in a real browser (headless Chromium via selenium, as
`test_browser.py`): run the notebook through the Run menu, upload a photo through the FileUpload's file input,
and see the picture change to that photo's top-5 (PyTorch and the exported ONNX model side by side).

The JupyterLab server, browser and page come from `test_browser.py`; this module's `clone` gives them a
repository holding notebook 11 prepared for the ci profile with a trained run of the test session.
Screenshots go to <tmp>/shots (or BROWSER_SHOTS=DIR).
"""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest

from helpers.course import widgets

from .conftest import FAST
from .test_browser import _git, _kernelspec, _wait, browser, lab, page, shots  # noqa: F401 - fixtures used here

pytestmark = pytest.mark.slow  # JupyterLab in a real browser
ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "11_use_your_model"
UPLOAD = ROOT / "data" / "my-photos" / "bibimbap.webp"


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A git repository holding notebook 11, prepared (papermill, prepare-only) to use a short real run (lite0,
    offline ImageNet weights, 4 steps at 64 px: the box needs a model, not a good one)."""
    import papermill

    import helpers

    base = tmp_path_factory.mktemp("upload")
    trained_run = base / "run"
    helpers.train(helpers.TrainConfig(**{**FAST, "image_size": 64}, epochs=1, max_steps=4, output_dir=str(trained_run)))
    repo = base / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    target = repo / f"{NOTEBOOK}.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / f"{NOTEBOOK}.ipynb"), str(target), prepare_only=True,
                               parameters={"profile": "ci", "model": str(trained_run),
                                           "my_photos": str(ROOT / "data" / "my-photos")}, progress_bar=False)
    nb = nbformat.read(target, as_version=4)
    nb.metadata.kernelspec = _kernelspec()
    nb.metadata.pop("jupytext", None)  # a lone notebook here, not a pair
    nbformat.write(nb, target)
    return repo


def _upload_box(view) -> dict | None:
    return view.js("const x = document.querySelector(`.${arguments[0]}`); if (!x) return null;"
                   "const i = x.querySelector('img'); x.scrollIntoView();"
                   "return {src: i ? i.src : null, width: i ? i.naturalWidth : 0, text: x.textContent};",
                   widgets.UPLOAD_CLASS)


def test_uploading_a_photo_shows_its_top5_from_pytorch_and_onnx(page, lab):  # noqa: F811 - fixtures of test_browser
    from selenium.webdriver.common.by import By

    page.open(f"{NOTEBOOK}.ipynb")
    errors = page.run_to_the_end(900, f"every cell of {NOTEBOOK}")
    assert not errors, errors
    before = _wait(lambda: _upload_box(page), 60, "the upload box")
    assert before["width"] > 300 and "showing" in before["text"], before
    page.shot("11_upload_before")
    # The button opens the browser's file dialog through an <input type=file> that ipywidgets never attaches to
    # the page; headless Chromium has no dialog, so the input is put into the page when the button clicks it,
    # and selenium fills it as the dialog would (the widget's own change handler reads and sends the file).
    page.js("const click = HTMLInputElement.prototype.click; HTMLInputElement.prototype.click = function () {"
            "  if (this.type !== 'file') return click.call(this);"
            "  this.classList.add('test-file-dialog'); this.style.display = 'block'; document.body.appendChild(this); };")
    page.driver.find_element(By.CSS_SELECTOR, f".{widgets.UPLOAD_CLASS} .widget-upload").click()
    field = _wait(lambda: page.driver.find_elements(By.CSS_SELECTOR, "input.test-file-dialog"), 10,
                  "the upload button to open its file input")[0]
    field.send_keys(str(UPLOAD))
    after = _wait(lambda: (b := _upload_box(page)) and UPLOAD.name in b["text"] and b["src"] != before["src"] and b,
                  120, f"the upload box to show {UPLOAD.name} (screenshots in {page.shots})")
    time.sleep(1)
    page.shot("11_upload_after")
    assert after["width"] > 300
    saved = lab["root"].parent / "course" / "uploads" / UPLOAD.name
    assert saved.read_bytes() == UPLOAD.read_bytes()  # what the browser sent is the photo, byte for byte
