"""Progress bars that suit where the code runs: one factory for every bar of the package.

    from helpers.base.progress import progress_bar
    with progress_bar(total=len(jobs), desc="prepare") as bar:
        for job in jobs:
            ...
            bar.update(1)

- In a Jupyter kernel (JupyterLab, and the kernels papermill runs) the bar is tqdm's notebook widget, which moves
  as it goes. A finished bar with `leave=False` is removed from the page *and* from the saved notebook (its
  output is replaced through a display handle), so an executed notebook keeps no stale `0%` line; a bar that
  stops early stays, red, with the text of where it stopped.
- In a terminal it is tqdm's usual bar.
- Anywhere else (a redirected file, a CI log) it writes whole lines, no carriage returns: one when another 10% is
  done (at most every 5 s) and at least one a minute, so a log shows a long epoch moving without filling up.

The environment variable HELPERS_PROGRESS overrides the choice: notebook, terminal, lines or off.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any, TextIO

from tqdm.std import tqdm as std_tqdm

from .errors import UserError

# The CSS class of the notebook bar's widget (the browser test finds the bar by it).
CSS_CLASS = "helpers-progress"

MODES = ("notebook", "terminal", "lines", "off")

# Line mode: a line per LINE_FRACTION of the total, no more often than LINE_MIN_S, and at least every LINE_MAX_S.
LINE_FRACTION, LINE_MIN_S, LINE_MAX_S = 0.1, 5.0, 60.0


def progress_bar(*, total: int | None, desc: str = "", initial: int = 0, leave: bool = True, disable: bool = False,
                 file: TextIO | None = None, **kwargs: Any) -> std_tqdm:
    """A tqdm bar drawn the way the current output shows it best (see the module docstring).

    Args:
        total: the number of steps (None: unknown).
        desc: the label before the bar, e.g. "epoch 3".
        initial: the step it starts at (a resumed epoch starts mid-way).
        leave: keep the finished bar (False: remove it when it closes; an unfinished bar always stays).
        disable: no bar at all (e.g. on the non-main processes of a distributed run).
        file: the stream of a terminal or line bar (default sys.stderr).
        **kwargs: other tqdm arguments (unit, postfix, ...).
    Returns:
        The bar: call `update(n)`, `set_postfix(...)` and `close()` (or use it as a context manager).
    """
    mode = "off" if disable else output_mode(file)
    common = dict(total=total, desc=desc, initial=initial, leave=leave, disable=mode == "off", **kwargs)
    if mode == "notebook":
        return _notebook_bar_class()(**common)
    stream = file or sys.stderr
    if mode == "terminal":
        return std_tqdm(file=stream, dynamic_ncols=True, **common)
    return LineBar(file=stream, **common)


def output_mode(file: TextIO | None = None) -> str:
    """How a bar is drawn here: "notebook" in a Jupyter kernel that can show widgets, "terminal" when the stream
    is a terminal, "lines" otherwise; HELPERS_PROGRESS overrides it.

    Raises:
        UserError: HELPERS_PROGRESS names no mode.
    """
    forced = os.environ.get("HELPERS_PROGRESS", "").strip().lower()
    if forced and forced != "auto":
        if forced not in MODES:
            raise UserError(f"HELPERS_PROGRESS={forced!r} is not a progress mode: use one of {', '.join(MODES)} "
                            "(or unset it to choose by where the code runs).")
        return forced
    if file is None and _in_kernel() and _has_widgets():
        return "notebook"
    stream = file or sys.stderr
    try:
        return "terminal" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "lines"


def _in_kernel() -> bool:
    """True inside a Jupyter kernel (JupyterLab's, or the one papermill starts); False in a terminal IPython."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and getattr(shell, "kernel", None) is not None


def _has_widgets() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


class LineBar(std_tqdm):
    """A tqdm bar that writes whole lines (for logs and redirected output, where `\\r` redraws pile up)."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs["gui"] = True  # tqdm's hook for its own front ends: no status printer, display() does the drawing
        kwargs.setdefault("ascii", True)
        kwargs.setdefault("mininterval", 1.0)
        super().__init__(*args, **kwargs)
        self._written = (self.n, time.monotonic())  # the step and time of the last line (no line for the start)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:  # noqa: ARG002 (tqdm's signature)
        """Write the bar as a line when it is due."""
        n, at = self._written
        now = time.monotonic()
        step = LINE_FRACTION * self.total if self.total else float("inf")
        if now - at >= LINE_MAX_S or (self.n - n >= step and now - at >= LINE_MIN_S):
            self._write_line()
        return True

    def _write_line(self) -> None:
        self.fp.write(self.__str__() + "\n")
        self.fp.flush()
        self._written = (self.n, time.monotonic())

    def close(self) -> None:
        """Close the bar; a kept (`leave`) or unfinished bar writes its last line."""
        if self.disable:
            return
        unfinished = bool(self.total) and self.n < self.total
        last = (self.leave or unfinished) and self.n != self._written[0]
        super().close()
        if last:
            self._write_line()


@functools.cache
def _notebook_bar_class() -> type:
    """tqdm's notebook bar, shown through a display handle (built on first use: tqdm.notebook imports ipywidgets)."""
    from IPython.display import display
    from tqdm.notebook import tqdm_notebook

    class NotebookBar(tqdm_notebook):
        """tqdm's widget bar whose output is replaced when it closes: removed when done and not `leave`, else
        re-sent so that the saved notebook's text fallback says where it ended rather than 0%."""

        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, display=False, **kwargs)
            if self.disable:
                return
            self.container.add_class(CSS_CLASS)
            self.handle = display(self.container, display_id=True)
            self.displayed = True

        def close(self) -> None:
            if self.disable:
                return
            super().close()
            finished = not self.total or self.n >= self.total
            if finished and not self.leave:
                self.handle.update({"text/plain": ""}, raw=True)
            else:
                self.handle.update(self.container)

    return NotebookBar


__all__ = ["progress_bar", "output_mode", "LineBar", "CSS_CLASS", "MODES"]
