"""The package's progress bars: whole lines in logs, tqdm's bar in a terminal, the notebook widget in a kernel (and
no stale `0%` text left in an executed notebook)."""

from __future__ import annotations

import io
import re

import nbformat
import pytest
from nbclient import NotebookClient

from helpers.base import progress
from helpers.base.errors import UserError
from helpers.base.progress import LineBar, output_mode, progress_bar


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_mode_follows_the_stream_and_the_environment(monkeypatch):
    monkeypatch.delenv("HELPERS_PROGRESS", raising=False)
    assert output_mode(io.StringIO()) == "lines" and output_mode(_Tty()) == "terminal"
    assert isinstance(progress_bar(total=3, file=io.StringIO()), LineBar)
    monkeypatch.setenv("HELPERS_PROGRESS", "off")
    assert progress_bar(total=3, file=io.StringIO()).disable
    monkeypatch.setenv("HELPERS_PROGRESS", "fancy")
    with pytest.raises(UserError, match="HELPERS_PROGRESS='fancy' is not a progress mode"):
        output_mode()


def test_a_log_gets_whole_lines_every_tenth_and_no_carriage_returns(monkeypatch):
    monkeypatch.delenv("HELPERS_PROGRESS", raising=False)
    monkeypatch.setattr(progress, "LINE_MIN_S", 0.0)
    log = io.StringIO()
    with progress_bar(total=50, desc="epoch 1", file=log, mininterval=0) as bar:
        for _ in range(50):
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and all(line.startswith("epoch 1:") for line in lines)
    assert len(lines) == 10 and "50/50" in lines[-1] and "5/50" in lines[0]  # one line per 10%, none at 0%

    log = io.StringIO()  # a finished bar that is not kept writes no last line; an unfinished one does
    with progress_bar(total=50, desc="done", file=log, leave=False, mininterval=0) as bar:
        bar.update(50)
    with progress_bar(total=50, desc="stopped", file=log, leave=False, mininterval=0) as bar:
        bar.update(50 // 3)
    assert log.getvalue().splitlines() == [log.getvalue().splitlines()[0], log.getvalue().splitlines()[-1]]
    assert "50/50" in log.getvalue().splitlines()[0] and "stopped:" in log.getvalue().splitlines()[-1]


def test_in_a_kernel_the_bar_is_the_widget_and_leaves_no_stale_text(tmp_path):
    """Run bars in a real kernel as papermill does (nbclient, widget state stored) and read the saved notebook."""
    code = ("from helpers.base.progress import output_mode, progress_bar\n"
            "print(output_mode())\n"
            "with progress_bar(total=4, desc='epoch 1', leave=False) as bar:\n"
            "    bar.update(4)\n"
            "with progress_bar(total=4, desc='kept') as bar:\n"
            "    bar.update(4)\n"
            "bar = progress_bar(total=4, desc='stopped', leave=False)\n"
            "bar.update(1)\n"
            "bar.close()\n")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = nb.cells[0].outputs
    assert outputs[0].text.strip() == "notebook"
    views = [o for o in outputs if o.output_type == "display_data"]
    assert views[0].data == {"text/plain": ""}  # the finished epoch bar is gone from the saved notebook
    kept, stopped = views[1].data, views[2].data
    assert "application/vnd.jupyter.widget-view+json" in kept and "4/4" in kept["text/plain"]
    assert "application/vnd.jupyter.widget-view+json" in stopped and "1/4" in stopped["text/plain"]
    assert not [o for o in views if re.search(r"(?<!\d)0%", o.data.get("text/plain", ""))]
    state = nb.metadata.widgets["application/vnd.jupyter.widget-state+json"]["state"]
    classes = [s["state"].get("_dom_classes") for s in state.values() if s["model_name"] == "HBoxModel"]
    assert classes.count([progress.CSS_CLASS]) == 3
