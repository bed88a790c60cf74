"""The failure explorer's "where it looked" toggle in JupyterLab, driven in a real browser (headless Chromium via
selenium, as `test_browser.py`): run a two-cell notebook that evaluates the test session's trained run and opens
the explorer with it, tick the checkbox, and see the picture change to the crops with their class activation
maps (three panels a failure, two failures a row: a taller picture); untick it and see the plain gallery again.

The JupyterLab server, browser and page come from `test_browser.py`; this module's `clone` gives them a folder
holding the notebook. Screenshots go to <tmp>/shots (or BROWSER_SHOTS=DIR).
"""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest

from helpers.course import widgets

from .conftest import TINY
from .test_browser import _kernelspec, _wait, browser, lab, page, shots  # noqa: F401 - fixtures used here

pytestmark = pytest.mark.slow  # JupyterLab in a real browser
NOTEBOOK = "cam_explorer"


@pytest.fixture(scope="module")
def clone(tmp_path_factory, trained_run) -> Path:
    """A folder holding a notebook that evaluates the trained run on the tiny test split and opens the explorer."""
    root = tmp_path_factory.mktemp("cam_lab")
    predictions = root / "test.csv"
    nb = nbformat.v4.new_notebook()
    nb.metadata.kernelspec = _kernelspec()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import helpers\nfrom helpers.course import widgets\n"
            f"helpers.evaluate({str(trained_run)!r}, dataset='food-101', data_dir={str(TINY)!r}, "
            f"predictions={str(predictions)!r}, num_workers=0, device='cpu')"),
        nbformat.v4.new_code_cell(
            f"widgets.failure_explorer({str(predictions)!r}, run={str(trained_run)!r}, per_page=4, device='cpu')"),
    ]
    nbformat.write(nb, root / f"{NOTEBOOK}.ipynb")
    return root


def _explorer(view) -> dict | None:
    return view.js("const x = document.querySelector(`.${arguments[0]}`); if (!x) return null;"
                   "const i = x.querySelector('img'); const c = x.querySelector('input[type=checkbox]');"
                   "x.scrollIntoView();"
                   "return {src: i ? i.src : null, width: i ? i.naturalWidth : 0, height: i ? i.naturalHeight : 0,"
                   "        checkbox: c ? !c.disabled : null, checked: c ? c.checked : null, text: x.textContent};",
                   widgets.FAILURE_CLASS)


def test_the_where_it_looked_toggle_shows_the_maps(page, lab):  # noqa: F811 - fixtures of test_browser
    from selenium.webdriver.common.by import By

    page.open(f"{NOTEBOOK}.ipynb")
    errors = page.run_to_the_end(600, "the notebook")
    assert not errors, errors
    before = _wait(lambda: (b := _explorer(page)) and b["width"] > 0 and b, 60, "the explorer's picture")
    assert before["checkbox"] and not before["checked"] and "where it looked" in before["text"], before
    page.shot("cam_explorer_before")
    page.driver.find_element(By.CSS_SELECTOR, f".{widgets.FAILURE_CLASS} input[type=checkbox]").click()
    after = _wait(lambda: (b := _explorer(page)) and b["src"] != before["src"] and b["width"] > 0 and b, 120,
                  f"the picture to change to the maps (screenshots in {page.shots})")
    time.sleep(1)
    page.shot("cam_explorer_maps")
    assert after["checked"]
    assert after["height"] > 1.3 * before["height"], (before, after)  # 4 failures: one row of photos, two of maps
    page.driver.find_element(By.CSS_SELECTOR, f".{widgets.FAILURE_CLASS} input[type=checkbox]").click()
    again = _wait(lambda: (b := _explorer(page)) and b["src"] != after["src"] and b, 60, "the plain gallery again")
    assert not again["checked"] and (again["width"], again["height"]) == (before["width"], before["height"])
