"""The course in JupyterLab 4, driven in a real browser (headless Chromium and its chromedriver, via selenium).

One JupyterLab (free local port, a token, no browser of its own) serves a throw-away git repository set up as a
user's clone: `.gitattributes` and the output filter of `make git-filter`, and 01_baseline prepared for the ci
profile by papermill's prepare-only mode (its runs and ledger go to the pytest tmp dir, not to the project), plus
a last cell that prints the kernel's sys.prefix. Through the user interface the test opens the notebook, runs all
cells from the Run menu, watches the progress bar while it trains, picks a class in the failure explorer, saves,
closes and shuts the notebook down; then it checks what the page showed, what the saved file holds and what
`git status` says. A second test opens a notebook executed headless by `run-notebooks` and looks for the explorer's
picture. Screenshots go to <tmp>/shots (or BROWSER_SHOTS=DIR) and are named in every failure message.

Needs Debian's `chromium` and `chromium-driver` (apt-get install chromium chromium-driver); .ci/run installs them.
With CI=true a missing browser fails the tests instead of skipping them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest

from helpers.base import progress
from helpers.course import widgets

pytestmark = pytest.mark.slow  # JupyterLab in a real browser, and the executed course
ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "01_baseline"
KERNEL = "food101"
PREFIX_MARK = "kernel sys.prefix: "


# ------------------------------------------------------------------------------------------------------------------
# Set-up: the browser, a user's clone, JupyterLab


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    missing = " and ".join(n for n, p in (("chromium", chromium), ("chromedriver", driver)) if not p)
    message = (f"{missing} not found: the browser tests need Debian's Chromium and its driver. Install them with "
               "`sudo apt-get install chromium chromium-driver` (Ubuntu: the chromium snap, or Google Chrome with a "
               "matching chromedriver on PATH).")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message} In CI, .ci/run installs them.")
    pytest.skip(message)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ["BROWSER_SHOTS"]) if os.environ.get("BROWSER_SHOTS") else \
        tmp_path_factory.mktemp("browser") / "shots"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"browser screenshots in {folder}")
    return folder


def _kernelspec() -> dict:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        pytest.fail(f"The {KERNEL!r} Jupyter kernel is not registered in this environment. The install step (make) "
                    f"registers it; by hand: python -m ipykernel install --sys-prefix --name {KERNEL} "
                    "--display-name 'Food-101 workbook (.venv)'")
    return {"name": KERNEL, "display_name": spec.display_name, "language": spec.language}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def _make_clone(base: Path) -> Path:
    """A git repository holding the prepared notebook (and its jupytext pair, if it has one), committed through the
    project's output filter and checked out again as a clone has it."""
    import papermill

    repo = base / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "test@example.com")
    _git(repo, "config", "user.name", "browser test")
    subprocess.run(["make", "-s", "-C", str(ROOT), "git-filter", f"REPO={repo}", f"PY={sys.executable}"], check=True,
                   capture_output=True)
    for name in (".gitattributes", ".gitignore"):
        shutil.copyfile(ROOT / name, repo / name)
    target = repo / f"{NOTEBOOK}.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / f"{NOTEBOOK}.ipynb"), str(target), prepare_only=True,
                               parameters={"profile": "ci"}, progress_bar=False)
    nb = nbformat.read(target, as_version=4)
    nb.metadata.kernelspec = _kernelspec()  # the notebooks' contract; explicit for a notebook that still says python3
    nb.cells.append(nbformat.v4.new_code_cell(f"import sys\nprint({PREFIX_MARK!r} + sys.prefix)"))
    nbformat.write(nb, target)
    files = [target]
    if "py:percent" in nb.metadata.get("jupytext", {}).get("formats", ""):  # a paired notebook: JupyterLab saves both
        import jupytext

        jupytext.write(nb, repo / f"{NOTEBOOK}.py", fmt="py:percent")
        files.append(repo / f"{NOTEBOOK}.py")
        # the pair as JupyterLab's jupytext saves it (the injected cell's source and metadata normalised), as the
        # repository's notebooks are: otherwise the first save in JupyterLab would be a real change
        subprocess.run([sys.executable, "-m", "jupytext", "--to", "ipynb", "--update", "-q", str(files[-1])],
                       check=True)
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "notebook")
    for file in files:  # a fresh checkout, as a clone has it (the smudge filter runs)
        file.unlink()
    _git(repo, "checkout", "--", *[f.name for f in files])
    return repo


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    return _make_clone(tmp_path_factory.mktemp("clone"))


def test_the_output_filter_keeps_outputs_and_kernel_metadata_out_of_git(tmp_path):
    """Without a browser: what JupyterLab saves after a run (outputs, counts, the kernel's language_info) is
    invisible to git, the stored notebook keeps its cell ids, and a checkout carries this kernel's language_info."""
    from ipykernel.ipkernel import IPythonKernel

    repo = _make_clone(tmp_path)
    file = repo / f"{NOTEBOOK}.ipynb"
    stored = nbformat.reads(_git(repo, "show", f"HEAD:{file.name}"), as_version=4)
    assert "language_info" not in stored.metadata  # git stores no Python version
    nb = nbformat.read(file, as_version=4)
    assert nb.metadata.language_info == IPythonKernel.language_info  # so JupyterLab finds nothing to change
    assert [c.id for c in nb.cells] == [c.id for c in stored.cells]
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        cell.execution_count = i + 1
        cell.outputs = [nbformat.v4.new_output("stream", text="trained\n"),
                        nbformat.v4.new_output("display_data", data={"text/plain": "a figure"})]
    nb.metadata.widgets = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2,
                                                                         "version_minor": 0}}
    nbformat.write(nb, file)
    assert _git(repo, "diff") == ""
    lab = _lab_module()
    lab.post_save({"type": "notebook"}, str(file))  # what JupyterLab calls after saving
    assert _git(repo, "status", "--porcelain") == ""
    cell = next(c for c in nb.cells if c.cell_type == "code")
    cell.source += "\n# an edit"  # a real change still shows, and the hook leaves it alone
    nbformat.write(nb, file)
    assert not lab.refresh_git(file)
    assert _git(repo, "status", "--porcelain").split() == ["M", file.name] and _git(repo, "diff", "--cached") == ""
    _git(repo, "add", file.name)
    stored = nbformat.reads(_git(repo, "show", f":{file.name}"), as_version=4)
    assert all(c.outputs == [] and c.execution_count is None for c in stored.cells if c.cell_type == "code")
    assert "widgets" not in stored.metadata and [c.id for c in stored.cells] == [c.id for c in nb.cells]


def _lab_module():
    """scripts/lab.py (what `make lab` runs: the post-save hook and the smudge filter)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lab", ROOT / "scripts" / "lab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(clone, tmp_path_factory):
    """JupyterLab serving the clone, with its own settings (no windowing: every cell stays in the page)."""
    _browser_paths()
    home = tmp_path_factory.mktemp("lab")
    settings = home / "settings"
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"}))
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(home / "ws"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "HELPERS_PROGRESS": "",
           # where the notebooks' runs and ledger go (Course reads them, as run-notebooks sets them for a kernel)
           "HELPERS_COURSE_DIR": str(clone.parent / "course"), "HELPERS_LEDGER": str(clone.parent / "ledger.csv"),
           "PYTHONPATH": os.pathsep.join([str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH")
                                                          else []))}
    log = open(home / "lab.log", "w")
    server = subprocess.Popen(  # as `make lab` starts it, on the clone
        [sys.executable, str(ROOT / "scripts" / "lab.py"), "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         "--allow-root", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={clone}"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def started() -> bool:
            if server.poll() is not None:
                raise AssertionError(f"JupyterLab exited with {server.returncode}: {(home / 'lab.log').read_text()[-2000:]}")
            return _get(f"{url}/api/status?token={token}") is not None

        _wait(started, 120, f"JupyterLab to start ({home}/lab.log)")
        yield {"url": url, "token": token, "root": clone, "log": home / "lab.log", "pid": server.pid}
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except OSError:
        return None


@pytest.fixture(scope="module")
def browser(lab):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    yield chrome
    chrome.quit()


def _wait(condition: Callable[[], object], timeout: float, what: str, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# ------------------------------------------------------------------------------------------------------------------
# The page


class Page:
    """The JupyterLab page, read and driven the way a user does (menus, toolbar, widgets), with screenshots."""

    def __init__(self, driver, lab: dict, shots: Path):
        self.driver, self.lab, self.shots = driver, lab, shots

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def open(self, name: str) -> None:
        self.driver.get(f"{self.lab['url']}/lab/tree/{name}?reset&token={self.lab['token']}")
        _wait(lambda: self.toolbar("kernelName") and "Idle" in self.toolbar("executionProgress"), 120,
              f"{name} to open with an idle kernel (screenshots in {self.shots})")

    def toolbar(self, item: str) -> str:
        return self.js("const e = document.querySelector(`.jp-NotebookPanel:not(.lm-mod-hidden) "
                       "[data-jp-item-name='${arguments[0]}']`); return e ? e.textContent.trim() : '';", item)

    def tab_classes(self, name: str) -> str:
        return self.js("const t = Array.from(document.querySelectorAll('.lm-TabBar-tab'))"
                       ".find(t => t.textContent.trim() === arguments[0]); return t ? t.className : '';", name)

    def command(self, menu: str, label: str) -> None:
        """Pick an entry of a menu of the menu bar by its label (as a user reads it)."""
        from selenium.webdriver.common.by import By

        items = self.driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item")
        next(i for i in items if i.text.strip() == menu).click()

        def entry():
            for item in self.driver.find_elements(By.CSS_SELECTOR, "li.lm-Menu-item"):
                labels = item.find_elements(By.CSS_SELECTOR, ".lm-Menu-itemLabel")
                if labels and labels[0].text.strip().rstrip("…") == label:
                    return item
            return None

        _wait(entry, 10, f"{label!r} in the {menu} menu").click()

    def run_all(self, tries: int = 6, wait: float = 5) -> None:
        """Run > Run All Cells, as a user does, until a cell has started: a click that lands while the kernel's
        info still reaches a just-opened notebook can be lost (the notebook then waits for nothing), and a user
        would click again. A click that is not lost marks the first cell [*] at once (the page queues it before the
        kernel answers), so `wait` seconds without a started cell is a lost click (it cost 20 s a time when the
        wait was 20 s)."""
        for attempt in range(tries):
            self.answer_dialog(f"run_all_{attempt}")
            self.command("Run", "Run All Cells")
            try:
                _wait(lambda: any(p == "[*]:" or re.fullmatch(r"\[\d+\]:", p) for p in self.prompts()), wait,
                      "a cell to start")
                return
            except AssertionError:
                print(f"Run All Cells started no cell in {wait:.0f} s (try {attempt + 1}; prompts {self.prompts()}, "
                      f"kernel {self.toolbar('executionProgress')!r}): clicking again")
        raise AssertionError(f"Run All Cells started no cell in {tries} tries (screenshots in {self.shots})")

    def answer_dialog(self, name: str) -> None:
        """A dialog left open (JupyterLab asked something while the click before was handled) would take the next
        click: its text is printed and screenshot, and its default button pressed, as a user would."""
        from selenium.webdriver.common.by import By

        for dialog in self.driver.find_elements(By.CSS_SELECTOR, ".jp-Dialog"):
            print(f"dialog before {name}: {dialog.text!r} (screenshot {self.shot('dialog_' + name)})")
            buttons = dialog.find_elements(By.CSS_SELECTOR, ".jp-mod-accept")
            if buttons:
                buttons[0].click()
                _wait(lambda: not self.driver.find_elements(By.CSS_SELECTOR, ".jp-Dialog"), 10, "the dialog to close")

    def all_ran(self) -> bool:
        """Every code cell shows its execution count and the kernel is idle."""
        prompts = self.prompts()
        return bool(prompts) and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts) and \
            "Idle" in self.toolbar("executionProgress")

    def run_to_the_end(self, timeout: float, what: str) -> list[str]:
        """Run All Cells, wait until every cell has run, and return the outputs that show a traceback (their first
        500 characters)."""
        self.run_all()
        _wait(self.all_ran, timeout, f"{what} to run (screenshots in {self.shots})", every=1)
        return self.js("return Array.from(document.querySelectorAll('.jp-OutputArea-output'))"
                       ".filter(e => /Traceback/.test(e.textContent)).map(e => e.textContent.slice(0, 500))")

    def prompts(self) -> list[str]:
        return self.js("return Array.from(document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) "
                       ".jp-CodeCell .jp-InputArea-prompt')).map(e => e.textContent.trim())")

    def progress(self) -> tuple[int, int] | None:
        """(done, total) of the visible progress bar, or None."""
        text = self.js("const b = Array.from(document.querySelectorAll(`.${arguments[0]}`))"
                       ".filter(e => e.offsetParent !== null).pop(); return b ? b.textContent : null;",
                       progress.CSS_CLASS)
        match = re.search(r"(\d+)/(\d+)", (text or "").replace("\u2007", " "))
        return (int(match.group(1)), int(match.group(2))) if match else None

    def explorer_image(self) -> dict | None:
        return self.js("const x = document.querySelector(`.${arguments[0]}`); if (!x) return null;"
                       "const i = x.querySelector('img'); if (!i) return null;"
                       "x.scrollIntoView(); return {src: i.src, width: i.naturalWidth, height: i.naturalHeight};",
                       widgets.FAILURE_CLASS)


@pytest.fixture(scope="module")
def page(browser, lab, shots) -> Page:
    return Page(browser, lab, shots)


# ------------------------------------------------------------------------------------------------------------------
# The run through the user interface (one run, several checks)


@pytest.fixture(scope="module")
def ui_run(page, lab) -> dict:
    """Open, run all, watch, pick, save, close; returns what was seen along the way."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    seen: dict = {"started": time.monotonic(), "bar": [], "shots": page.shots}
    name = f"{NOTEBOOK}.ipynb"
    file = lab["root"] / name
    committed = file.read_bytes()
    page.open(name)
    time.sleep(3)  # the kernel's info and spec reach the notebook's metadata right after it starts
    seen["kernel"] = page.toolbar("kernelName")
    seen["dirty_on_open"] = "jp-mod-dirty" in page.tab_classes(name)
    seen["file_unchanged_on_open"] = file.read_bytes() == committed
    page.shot("01_opened")

    page.run_all()
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:  # sample the bar until every cell has run
        bar = page.progress()
        if bar and (not seen["bar"] or bar != seen["bar"][-1][1:]):
            seen["bar"].append((round(time.monotonic() - seen["started"], 1), *bar))
            mid = [b for b in seen["bar"] if 0 < b[1] < b[2]]
            if len(mid) in (1, 2) and mid[-1] == seen["bar"][-1]:
                page.js("document.querySelector(`.${arguments[0]}`).scrollIntoView({block: 'center'})",
                        progress.CSS_CLASS)
                page.shot(f"02_bar_mid_epoch_{len(mid)}")
        if page.all_ran():
            break
        time.sleep(0.3)
    seen["prompts"] = page.prompts()
    seen["figures"] = page.js("return Array.from(document.querySelectorAll('.jp-RenderedImage img'))"
                              ".filter(i => i.naturalWidth > 0).length")
    seen["tracebacks"] = page.js("return Array.from(document.querySelectorAll('.jp-OutputArea-output'))"
                                 ".filter(e => /Traceback|Error\\b/.test(e.textContent)).map(e => e.textContent)")
    seen["prefix"] = page.js("const o = Array.from(document.querySelectorAll('.jp-OutputArea-output'))"
                             ".map(e => e.textContent).find(t => t.includes(arguments[0])); return o || '';",
                             PREFIX_MARK)
    seen["forked"] = _forked_kernels(lab["pid"])
    page.shot("03_all_cells_ran")

    seen["explorer_before"] = page.explorer_image()
    if seen["explorer_before"]:
        select = page.driver.find_element(By.CSS_SELECTOR, f".{widgets.FAILURE_CLASS} select")
        options = Select(select).options
        seen["picked"] = options[1].text if len(options) > 1 else None
        if seen["picked"]:
            Select(select).select_by_index(1)
            try:
                _wait(lambda: (page.explorer_image() or {}).get("src") not in (None, seen["explorer_before"]["src"]),
                      60, "the explorer's picture to change")
            except AssertionError:
                pass  # reported by the test that checks it
            time.sleep(0.5)
        seen["explorer_after"] = page.explorer_image()
        page.shot("04_explorer_after_pick")

    page.driver.find_element(By.CSS_SELECTOR, "jp-button[data-command='docmanager:save']").click()
    _wait(lambda: "jp-mod-dirty" not in page.tab_classes(name), 30, "the notebook to be saved")
    page.command("File", "Close and Shut Down Notebook")
    accept = _wait(lambda: page.driver.find_elements(By.CSS_SELECTOR, ".jp-Dialog .jp-mod-accept"), 10,
                   "the shut-down dialog")
    accept[0].click()
    _wait(lambda: not page.tab_classes(name), 30, "the notebook's tab to close")
    _wait(lambda: _get(f"{lab['url']}/api/sessions?token={lab['token']}") == [], 30, "the kernel to shut down")
    page.shot("05_closed")
    seen["saved"] = nbformat.read(file, as_version=4)
    seen["git_status"] = _git(lab["root"], "status", "--porcelain")
    seen["git_diff"] = _git(lab["root"], "diff")  # what git sees changed, for the failure message
    seen["seconds"] = time.monotonic() - seen["started"]
    print(f"browser run: {seen['seconds']:.0f} s, bar samples {seen['bar']}")
    return seen


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose parent is `pid` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if entry.name.isdigit() and ppid == pid:
                found.append((int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _forked_kernels(lab_pid: int) -> list[str]:
    """The command lines of the processes forked by JupyterLab's fork server (its child running zygote.py)."""
    servers = [pid for pid, cmd in _children(lab_pid) if "zygote.py" in cmd]
    return [cmd for server in servers for _, cmd in _children(server)]


@pytest.mark.skipif(sys.platform != "linux", reason="kernels are forked on Linux only (scripts/lab.py)")
def test_the_kernel_is_forked_from_the_server_that_started_with_jupyterlab(ui_run):
    """scripts/lab.py starts the fork server with JupyterLab (helpers/course/kernels.py), so even the first
    notebook's kernel is its child, with torch loaded before the first cell (the cells' results: the tests above)."""
    assert len(ui_run["forked"]) == 1, ui_run["forked"]


def test_the_notebook_runs_on_the_projects_kernel(ui_run):
    assert ui_run["kernel"] == _kernelspec()["display_name"], ui_run["kernel"]
    prefix = ui_run["prefix"].split(PREFIX_MARK, 1)[-1].strip()
    assert prefix and os.path.realpath(prefix) == os.path.realpath(sys.prefix), \
        f"the kernel runs in {prefix!r}, not in this environment ({sys.prefix})"


def test_every_cell_ran_without_an_error(ui_run):
    code = [c for c in ui_run["saved"].cells if c.cell_type == "code"]
    assert ui_run["prompts"] and all(re.fullmatch(r"\[\d+\]:", p) for p in ui_run["prompts"]), \
        f"{ui_run['prompts']} (screenshots in {ui_run['shots']})"
    assert all(c.execution_count for c in code) and len(ui_run["prompts"]) == len(code)
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors and not ui_run["tracebacks"], f"{errors or ui_run['tracebacks']} (see {ui_run['shots']})"


def test_the_progress_bar_moves_during_training(ui_run):
    samples = []  # (seconds since open, done, total) of the first bar: 01 trains a second run (BatchNorm) after it
    for sample in ui_run["bar"]:
        if samples and sample[1] < samples[-1][1]:
            break
        samples.append(sample)
    middle = sorted({done for _, done, total in samples if 0 < done < total})
    assert len(middle) >= 2, f"the bar showed {samples}: it did not move mid-epoch (see {ui_run['shots']})"
    assert [done for _, done, _ in samples] == sorted(done for _, done, _ in samples)
    assert (ui_run["shots"] / "02_bar_mid_epoch_2.png").is_file()


def test_a_figure_is_shown(ui_run):
    assert ui_run["figures"] >= 4, f"{ui_run['figures']} figures shown (see {ui_run['shots']})"


def test_the_failure_explorer_changes_its_picture_when_a_class_is_picked(ui_run):
    before, after = ui_run["explorer_before"], ui_run.get("explorer_after")
    assert before and before["width"] > 300, f"the explorer shows no picture: {before} (see {ui_run['shots']})"
    assert ui_run["picked"] and ui_run["picked"].startswith("class: "), ui_run["picked"]
    assert after and after["width"] > 300 and after["src"] != before["src"], \
        f"picking {ui_run['picked']!r} did not change the picture (see {ui_run['shots']})"


def test_opening_a_notebook_does_not_mark_it_changed(ui_run):
    assert not ui_run["dirty_on_open"] and ui_run["file_unchanged_on_open"], \
        f"the notebook was marked changed on opening (see {ui_run['shots']}/01_opened.png)"


def test_running_and_closing_a_notebook_leaves_git_clean(ui_run):
    saved = ui_run["saved"]
    assert sum(len(c.outputs) for c in saved.cells if c.cell_type == "code") > 5  # JupyterLab did save outputs
    assert ui_run["git_status"] == "", ui_run["git_status"] + ui_run["git_diff"][-3000:]


def test_an_executed_notebook_shows_the_explorers_picture_without_running(ui_run, page, lab, ci_course):
    """A notebook executed headless (run-notebooks, papermill: the session's course) and opened later shows the
    explorer's first page."""
    out, res = ci_course
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    executed = lab["root"] / "executed_01.ipynb"
    shutil.copyfile(out / "executed" / f"{NOTEBOOK}.ipynb", executed)
    nb = nbformat.read(executed, as_version=4)
    views = [o for c in nb.cells if c.cell_type == "code" and "failure_explorer(" in c.source for o in c.outputs
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(views) == 1 and "image/png" in views[0].data, "the explorer's output carries no picture"
    try:
        page.open(executed.name)
        # the output of the cell that calls the explorer: JupyterLab draws no widget in a notebook it did not run
        # (untrusted), so it shows the picture the explorer's display carries
        script = ("const cell = Array.from(document.querySelectorAll('.jp-CodeCell')).find(c => c.querySelector("
                  "'.jp-InputArea').textContent.includes('failure_explorer(')); if (!cell) return null;"
                  "const i = cell.querySelector('.jp-OutputArea img'); if (!i) return null;"
                  "i.scrollIntoView(); return i.naturalWidth;")
        image = _wait(lambda: page.js(script), 60, f"the explorer's picture in the executed notebook ({page.shots})")
        time.sleep(0.5)
        page.shot("06_executed_notebook_explorer")
        assert image > 300
        assert page.progress() is None  # no bar left over from training
        stale = page.js("return Array.from(document.querySelectorAll('.jp-OutputArea-output'))"
                        ".map(e => e.textContent).filter(t => /(^|[^0-9])0%\\|/.test(t))")
        assert not stale, stale
    finally:
        executed.unlink()
