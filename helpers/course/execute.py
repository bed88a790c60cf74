"""Executing one notebook headlessly with papermill, for `run-notebooks` (`runner.py`): its kernel checked, its
output echoed cell by cell into a log (lines that matter also to the terminal), and a failure summarised as the
notebook, the cell and its failing line (`NotebookFailure`). `WarmKernel` starts the next notebook's kernel while
the current one runs."""

from __future__ import annotations

import logging
import os
import queue
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..base.errors import UserError

KERNEL = "food101"  # the kernel every notebook names: the project's environment
# Notebook output lines worth showing in the terminal (the rest is in the notebook's log).
ECHO = re.compile(r"epoch \d+/\d+ |Test top-1|Resuming|Starting a new stage|Early stopping|Ledger |rror")
# A notebook's last code cells draw its figures and print its summary on one core: the next notebook's kernel loads
# its imports then (`execute(on_tail=...)`). Loading them while the notebook trains would take a core from
# torch's threads, which then wait for each other: its training ran 2-4x slower for those seconds.
TAIL_CELLS = 4


class NotebookFailure(Exception):
    """A notebook stopped with an error; `where` names the cell, `summary` is one line."""

    def __init__(self, where: str, error: str, executed: Path, log: Path):
        self.where, self.error, self.executed, self.log = where, error, executed, log
        self.summary = f"{where}: {error}"
        super().__init__(self.summary)


class _Echo(logging.Handler):
    """Writes papermill's log of a notebook (cells, outputs) to a file and shows progress lines in the terminal."""

    def __init__(self, log_file, cells: list[str], on_tail: Callable[[], None] | None = None):
        super().__init__(logging.INFO)
        self.file = log_file
        self.cells = cells  # the first source line of each cell of the executed notebook ("" for markdown)
        self.code_total = sum(1 for c in cells if c)
        self.code_seen = 0
        self.on_tail = on_tail  # called once, when the notebook's last TAIL_CELLS code cells begin

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.file.write(message if message.endswith("\n") else message + "\n")
        self.file.flush()
        cell = re.match(r"Executing Cell (\d+)", message)
        if cell:
            index = int(cell.group(1)) - 1
            line = self.cells[index] if index < len(self.cells) else ""
            if line:
                self.code_seen += 1
                _say(f"{'':9}cell {self.code_seen}/{self.code_total}: {line[:90]}")
                if self.on_tail is not None and self.code_seen > self.code_total - TAIL_CELLS:
                    tail, self.on_tail = self.on_tail, None
                    tail()
            return
        if message.startswith("Ending Cell"):
            return
        for part in re.split(r"[\r\n]+", message):
            if ECHO.search(part) and "%|" not in part:
                _say(f"{'':11}{part.strip()[:150]}")


def _cell_lines(source: Path) -> tuple[list[str], int]:
    """First code line of every cell of the notebook as papermill will run it (with the injected parameters
    cell after the `parameters` cell), and the index of that injected cell."""
    import nbformat

    nb = nbformat.read(source, as_version=4)
    lines, injected = [], -1
    for cell in nb.cells:
        first = next((ln for ln in cell.source.splitlines() if ln.strip() and not ln.startswith("#")), "")
        lines.append(first.strip() if cell.cell_type == "code" else "")
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []) and injected < 0:
            injected = len(lines)
            lines.append("(injected parameters)")
    return lines, injected


def kernel_name(source: Path, kernel: str | None = None) -> str:
    """The kernel a notebook runs in: `kernel` if given, else the notebook's own kernelspec, else `food101`."""
    import nbformat

    return kernel or nbformat.read(source, as_version=4).metadata.get("kernelspec", {}).get("name") or KERNEL


def _kernel_environment(cwd: Path, env: dict[str, str | None] | None) -> dict[str, str | None]:
    """What a notebook's kernel changes in this process's environment (None: removed): the project first on
    PYTHONPATH (the kernel imports helpers from it), no MPLBACKEND (figures are drawn inline), and `env`."""
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": os.pathsep.join([str(cwd)] + ([path] if path else [])), "MPLBACKEND": None, **(env or {})}


def execute(source: Path, output: Path, log: Path, *, parameters: dict[str, Any], cwd: Path, kernel: str | None = None,
            cell_timeout: int | None = None, env: dict[str, str | None] | None = None,
            warm: WarmKernel | None = None, on_tail: Callable[[], None] | None = None) -> None:
    """Run one notebook with papermill into `output`, logging everything it prints to `log`.

    Args:
        kernel: the Jupyter kernel (None: the notebook's own kernelspec, else `food101`).
        env: environment variables for the kernel (None values: removed), restored afterwards.
        warm: this notebook's kernel, started earlier with the same kernel, folder and environment (shut down
            here when the notebook ends); None: papermill starts one.
        on_tail: called once when the notebook's last `TAIL_CELLS` code cells begin (figures and summaries, one
            core busy): `run-notebooks` has the next notebook's kernel load its imports then (`WarmKernel.load`).

    Raises:
        UserError: the kernel is not installed (with how to install it).
        NotebookFailure: the notebook raised, its kernel died or a cell timed out; names the cell.
    """
    import papermill

    from .kernels import KernelManager

    kernel = kernel_name(source, kernel)
    try:
        check_kernel(kernel)
        lines, injected = _cell_lines(source)
    except BaseException:
        if warm:
            warm.discard()
        raise
    logger = logging.getLogger("papermill")
    saved = (logger.level, logger.propagate)
    changes = _kernel_environment(cwd, env)
    saved_env = {k: os.environ.get(k) for k in changes}
    km = warm.take(kernel) if warm else None
    with open(log, "a") as log_file:
        log_file.write(f"=== {source.name} {time.strftime('%Y-%m-%d %H:%M:%S')} parameters {parameters}\n")
        handler = _Echo(log_file, lines, on_tail)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        _set_environment(changes)
        # The kernel process inherits file descriptor 2: send its own messages (start-up warnings, a crash) to
        # the log rather than into the progress lines.
        sys.stderr.flush()
        terminal_stderr = os.dup(2)
        os.dup2(log_file.fileno(), 2)
        try:
            papermill.execute_notebook(str(source), str(output), parameters=parameters, kernel_name=kernel,
                                       cwd=str(cwd), log_output=True, progress_bar=False,
                                       execution_timeout=cell_timeout, request_save_on_cell_execute=True,
                                       **({"km": km} if km is not None else {"kernel_manager_class": KernelManager}))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # papermill and nbclient raise many types: execution, dead kernel, timeout
            where = _failed_cell(output, lines, injected, exc)
            error = _error_text(exc, cell_timeout)
            log_file.write(f"=== FAILED in {where}: {error}\n")
            raise NotebookFailure(where, error, output, log) from exc
        finally:
            if km is not None:  # its notebook has ended (every output received, every file closed): no need
                _shut_down(km, now=True)  # to wait 1-2 s for a graceful exit of a process that imported torch
            sys.stderr.flush()
            os.dup2(terminal_stderr, 2)
            os.close(terminal_stderr)
            logger.removeHandler(handler)
            logger.setLevel(saved[0])
            logger.propagate = saved[1]
            _set_environment(saved_env)


class WarmKernel:
    """A notebook's kernel, started while the notebook before it runs (`run-notebooks`): when its turn comes, the
    kernel is up and the modules every notebook imports (torch, timm, helpers, pyplot, grad-cam) are loaded, 4-6 s
    of each notebook on 2 cores (on Linux the kernel is forked with the third-party ones loaded: `kernels.py`).
    The modules are loaded with `__import__`, which binds no name in the notebook's namespace: a notebook that
    forgets an import still fails as it would alone. Its stderr goes to the notebook's log. A file of helpers/
    saved after it started (a fix made during a long run) makes it unused: the notebook then gets a fresh kernel
    that imports the fix.

        warm = WarmKernel(source, log, cwd=root, kernel=None, env=env)   # returns at once
        execute(source, ..., warm=warm)                                  # runs in it, then shuts it down
    """

    # what nearly every notebook imports, directly or on its first figure or activation map
    PRELOAD = ("helpers.use.runs", "helpers.course.course", "helpers.course.failures", "matplotlib.pyplot", "seaborn",
               "pytorch_grad_cam")

    def __init__(self, source: Path, log: Path, *, cwd: Path, kernel: str | None,
                 env: dict[str, str | None] | None = None, preload: bool = True):
        from jupyter_core.utils import run_sync

        from .kernels import KernelManager

        self.kernel, self.taken, self.request = kernel_name(source, kernel), False, None
        self.package, self.started = Path(cwd) / "helpers", time.time()
        environment = dict(os.environ)
        _set_environment(_kernel_environment(cwd, env), environment)
        self.km = KernelManager(kernel_name=self.kernel)  # forked from a process that loaded torch (Linux)
        # papermill leaves the channels of a kernel it was given open: keep its clients, to stop them at shutdown
        self.km.clients, make_client = [], self.km.client
        self.km.client = lambda **kw: self.km.clients.append(make_client(**kw)) or self.km.clients[-1]
        with open(log, "a") as stderr:
            run_sync(self.km.start_kernel)(cwd=str(cwd), env=environment, stderr=stderr)
        self.kc = self.km.blocking_client()  # (synchronous: `load` may be called from inside papermill's loop)
        self.kc.start_channels()
        if preload:
            self.load()

    def load(self) -> None:
        """Have the kernel import PRELOAD now (once; not after `take`). Not called: the notebook imports them itself
        (a kernel needed at once would only wait for modules its notebook may not use)."""
        if self.request is None and not self.taken:
            self.request = self.kc.execute("; ".join(f"__import__({m!r})" for m in self.PRELOAD), silent=True,
                                           store_history=False)

    def take(self, kernel: str, wait: float = 300) -> Any:
        """The kernel manager, once the imports are done (or failed: the notebook then shows why); None when
        `kernel` is another kernel, a file of helpers/ changed since it started, or it died (papermill then starts a
        fresh one)."""
        from jupyter_core.utils import run_sync

        if kernel != self.kernel or self._edited():
            self.discard()
            return None
        alive = run_sync(self.km.is_alive)()
        deadline = time.monotonic() + wait
        try:
            while alive and self.request and time.monotonic() < deadline:
                try:
                    reply = self.kc.get_shell_msg(timeout=1)
                except queue.Empty:
                    alive = run_sync(self.km.is_alive)()
                    continue
                if reply["parent_header"].get("msg_id") == self.request:
                    break
        except BaseException:  # interrupted while waiting
            self.discard()
            raise
        self.kc.stop_channels()
        self.taken = True
        if not alive:
            _shut_down(self.km, now=True)
            return None
        return self.km

    def _edited(self) -> bool:
        """A module of the project's package was saved after this kernel started (a fix made during a long run):
        the notebook then gets a fresh kernel that imports it as it is now."""
        return any(p.stat().st_mtime > self.started for p in self.package.rglob("*.py"))

    def discard(self) -> None:
        """Shut the kernel down unused (the sequence stopped before its notebook); nothing once taken."""
        if not self.taken:
            self.taken = True
            self.kc.stop_channels()
            _shut_down(self.km, now=True)


def _shut_down(km: Any, now: bool = False) -> None:
    from jupyter_core.utils import run_sync

    for client in getattr(km, "clients", ()):
        client.stop_channels()
    try:
        run_sync(km.shutdown_kernel)(now=now)
    except Exception as exc:  # a kernel already gone: nothing to shut down
        logging.getLogger(__name__).debug("kernel shutdown: %s", exc)


def _error_text(exc: Exception, cell_timeout: int | None = None) -> str:
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:
        return f"{ename}: {evalue}".strip()
    if isinstance(exc, TimeoutError):  # nbclient's CellTimeoutError: its message previews the cell's source
        seconds = re.search(r"after (\d+) seconds", str(exc))
        limit = seconds.group(1) if seconds else cell_timeout
        return (f"the cell ran longer than {limit} s (--cell-timeout {cell_timeout}) and was stopped; give a larger "
                "--cell-timeout, or leave it out (no limit)" if cell_timeout else
                f"the kernel sent no output for {limit} s and the cell was stopped")
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}".strip()


def _failed_cell(output: Path, lines: list[str], injected: int, exc: Exception) -> str:
    """Name the failing cell by its number in the notebook as a person opens it, its In [n] and first line."""
    index = getattr(exc, "cell_index", None)
    count = getattr(exc, "exec_count", None)
    if index is None and isinstance(exc, TimeoutError) and output.is_file():
        index, count = _timed_out_cell(output, str(exc))
    if index is None and output.is_file():  # dead kernel or timeout: the cell papermill marked as running/failed
        import nbformat

        nb = nbformat.read(output, as_version=4)
        for i, cell in enumerate(nb.cells):
            if cell.metadata.get("papermill", {}).get("status") in ("running", "failed"):
                index, count = i, cell.get("execution_count")
                break
    if index is None:
        return "the kernel, before any cell ran"
    line = lines[index] if index < len(lines) else ""
    if index == injected:
        return f"the injected parameters cell (In [{count}])"
    number = index if injected >= 0 and index > injected else index + 1
    where = f"In [{count}]"
    failing = _failing_line(exc)
    if failing:
        where += f", line {failing[0]}"
        line = failing[1]
    return f"cell {number} ({where}) `{line[:100]}`"


def _timed_out_cell(output: Path, message: str) -> tuple[int | None, int | None]:
    """The cell a timeout stopped, and its execution count: the one whose source nbclient's message previews
    (its whole source, or for a long cell its first and last 5 lines as lists), else the last cell that started
    (papermill marks a timed-out cell "completed", so its status cannot tell)."""
    import nbformat

    nb = nbformat.read(output, as_version=4)
    for i, cell in enumerate(nb.cells):
        lines = cell.source.strip().split("\n")
        preview = cell.source if len(lines) < 11 else f"{lines[:5]}\n...\n{lines[-5:]}"
        if cell.cell_type == "code" and cell.source.strip() and f"---\n{preview}\n---" in message:
            return i, cell.get("execution_count")
    started = [i for i, cell in enumerate(nb.cells) if cell.get("execution_count") is not None]
    return (started[-1], nb.cells[started[-1]].get("execution_count")) if started else (None, None)


def _failing_line(exc: Exception) -> tuple[int, str] | None:
    """The line of the cell that raised, from IPython's traceback ("Cell In[3], line 5")."""
    source = getattr(exc, "source", None)
    traceback = "\n".join(getattr(exc, "traceback", None) or [])
    match = re.search(r"Cell In\s*\[\d+\], line (\d+)", re.sub(r"\x1b\[[0-9;]*m", "", traceback))
    if not source or not match:
        return None
    number = int(match.group(1))
    lines = source.splitlines()
    return (number, lines[number - 1].strip()) if 0 < number <= len(lines) else None


def check_kernel(name: str) -> None:
    """Raise a UserError saying how to register the kernel when Jupyter does not know `name`."""
    from jupyter_client.kernelspec import KernelSpecManager

    if name not in KernelSpecManager().find_kernel_specs():
        raise UserError(
            f"The Jupyter kernel {name!r} is not installed, and the notebooks run in it. Register this environment "
            f"as that kernel with `make install`, or: {sys.executable} -m ipykernel install --sys-prefix --name "
            f"{KERNEL} --display-name \"Food-101 workbook (.venv)\" (or give --kernel NAME)."
        )


def _say(text: str = "") -> None:
    print(text, flush=True)


def _set_environment(values: dict[str, str | None], target: Any = os.environ) -> None:
    """Set `values` in `target` (this process's environment, or a copy of it); None removes a variable."""
    for key, value in values.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
