"""What `run-notebooks` runs and refuses, on tiny real notebook pairs in a temporary folder (a real kernel, a real
SIGINT): the file of a pair edited last runs, as `jupytext --sync` would choose it; parameters cells are read as
literal Python however the tag is quoted, or refused naming the line; flags that name nothing are refused."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import jupytext
import pytest

from helpers.base.errors import UserError
from helpers.course.parameters import parameters

from .conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
HEADER = """# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Food-101 workbook (.venv)
#     language: python
#     name: food101
# ---
"""


def _pair(folder: Path, name: str, body: str, *, tag: str = '["parameters"]') -> Path:
    """A notebook pair NN_name.py + NN_name.ipynb, both written now, in sync."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / f"{name}.py"
    script.write_text(HEADER + f"\n# %% tags={tag}\n" + body)
    jupytext.write(jupytext.read(script), folder / f"{name}.ipynb")
    return folder / f"{name}.ipynb"


def _later(path: Path, seconds: float = 5) -> None:
    os.utime(path, (time.time() + seconds, time.time() + seconds))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli(*args)  # in this process: the notebooks still run in their own kernels


WRITE = ("value = 1\n\n# %%\nimport os\nfrom pathlib import Path\n\n"
         "Path(os.environ['HELPERS_COURSE_DIR'], 'value.txt').write_text(str(value))\n")


def test_a_pair_out_of_sync_runs_the_file_edited_last_and_says_so(tmp_path):
    ipynb = _pair(tmp_path / "nb", "00_value", WRITE)
    script = ipynb.with_suffix(".py")
    script.write_text(script.read_text().replace("value = 1", "value = 2"))  # the learner edits the .py only
    _later(script)
    res = _cli("run-notebooks", "--notebooks", str(ipynb.parent), "--out", str(tmp_path / "a"))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert (tmp_path / "a" / "value.txt").read_text() == "2"
    assert f"jupytext --sync {script}" in res.stdout and "running 00_value.py" in res.stdout
    assert script.read_text().count("value = 2") == 1 and "value = 1" in ipynb.read_text()  # neither file touched

    nb = jupytext.read(ipynb)  # now the .ipynb is edited (as JupyterLab without jupytext would) and is newer
    nb.cells[0].source = "value = 3"
    jupytext.write(nb, ipynb)
    _later(ipynb, 10)
    res = _cli("run-notebooks", "--notebooks", str(ipynb.parent), "--out", str(tmp_path / "b"))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert (tmp_path / "b" / "value.txt").read_text() == "3" and "running 00_value.ipynb" in res.stdout


def test_the_requirements_check_reads_the_file_that_runs(tmp_path):
    ipynb = _pair(tmp_path / "nb", "03_needs", 'MEMBERS = {"demo": []}\n')
    nb = jupytext.read(ipynb)  # the .ipynb is edited (and newer): it now needs a model; its .py does not
    nb.cells[0].source = 'MEMBERS = {"demo": [("02_other", "best")]}'
    jupytext.write(nb, ipynb)
    _later(ipynb)
    res = _cli("run-notebooks", "--notebooks", str(ipynb.parent), "--out", str(tmp_path / "a"), "--kernel", "nope")
    assert res.returncode == 2 and "03_needs needs the 'best' model of 02_other" in res.stderr, res.stderr
    assert not (tmp_path / "a").exists()


def test_parameters_are_found_however_the_tag_is_quoted_and_in_every_tagged_cell(tmp_path):
    ipynb = _pair(tmp_path, "00_quotes", "epochs = 1\nsizes = dict(a=[1, 2], b=-3.5)\n\n"
                  "# %% tags=['parameters', 'runner']\nledger = None\n", tag="['parameters']")
    assert parameters(ipynb) == {"epochs": 1, "sizes": {"a": [1, 2], "b": -3.5}, "ledger": None}


def test_statements_that_set_nothing_in_a_parameters_cell_are_not_settings(tmp_path):
    ipynb = _pair(tmp_path, "00_pass", 'pass\n"a docstring"\nepochs = 2\n')
    assert parameters(ipynb) == {"epochs": 2}


def test_a_parameters_cell_that_is_not_literal_is_refused_naming_the_line(tmp_path):
    ipynb = _pair(tmp_path / "nb", "00_call", 'profile = "demo"\nepochs = int("1")\n')
    with pytest.raises(UserError, match=r'line 2 of its parameters cell, `epochs = int\("1"\)`, is not a literal'):
        parameters(ipynb)
    res = _cli("run-notebooks", "--notebooks", str(ipynb.parent), "--out", str(tmp_path / "a"))
    assert res.returncode == 2 and 'epochs = int("1")' in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("argv,needle", [
    (["-p", "overides", "{epochs: 2}"], "-p overides: no notebook to run has a parameter 'overides'; did you mean "
                                        "overrides"),
    (["--only", ","], "--only ',' names no notebook"),
    (["--only", " , "], "names no notebook"),
])
def test_runner_flags_that_name_nothing_are_refused(tmp_path, argv, needle):
    res = _cli("run-notebooks", "--profile", "ci", "--only", "01", "--kernel", "nope", "--out", str(tmp_path / "x"),
               *argv)
    assert res.returncode == 2 and needle in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "x").exists()


def test_out_naming_a_file_is_refused_and_the_file_kept(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    res = _cli("run-notebooks", "--profile", "ci", "--only", "00", "--out", str(target))
    assert res.returncode == 2 and f"--out {target} is a file" in res.stderr and "Traceback" not in res.stderr
    assert target.read_text() == "mine"


@pytest.mark.parametrize("argv,needle", [
    (["features", "--data-dir", "nowhere", "--backbone", "x", "--output-dir", "o", "--val-fraction", "1.5"],
     "--val-fraction must be between 0 and 0.5, got 1.5"),
    (["features", "--data-dir", "nowhere", "--backbone", "x", "--output-dir", "o", "--chunk-size", "0"],
     "--chunk-size must be a positive integer"),
    (["features", "--data-dir", "nowhere", "--backbone", "x", "--output-dir", "o", "--seed", "-1"],
     "--seed must be between 0"),
    (["probe", "--features", "f", "--output-dir", "o", "--max-iter", "0"], "--max-iter must be a positive integer"),
    (["probe", "--features", "f", "--output-dir", "o", "--max-iter", "-5"], "--max-iter must be a positive integer"),
])
def test_flags_shared_with_train_are_checked_the_same_way_by_every_command(tmp_path, argv, needle):
    res = _cli(*argv)
    assert res.returncode == 2 and needle in res.stderr and "Traceback" not in res.stderr, res.stderr


SLEEP = ("pass\n\n# %%\nimport os\nimport time\nfrom pathlib import Path\n\n"
         "mark = Path(os.environ['HELPERS_COURSE_DIR'], 'slept')\n"
         "if not mark.exists():\n    mark.touch()\n    time.sleep(120)\n")


def test_sigint_stops_run_notebooks_and_the_way_to_continue_it_works(tmp_path):
    ipynb = _pair(tmp_path / "nb", "00_sleep", SLEEP)
    out = tmp_path / "seq"
    proc = subprocess.Popen([sys.executable, "-m", "helpers", "run-notebooks", "--notebooks", str(ipynb.parent),
                             "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not (out / "slept").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert (out / "slept").exists(), proc.communicate(timeout=30)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout[-2000:] + stderr[-2000:]
    hint = stderr.split("Continue with: ", 1)[1].strip().splitlines()[0]
    assert "--resume auto" not in stderr and str(out) in hint
    argv = shlex.split(hint)
    assert argv[:3] == ["python", "-m", "helpers"]
    res = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert '"00_sleep": "done"' in res.stdout


TOLD = ("pass\n\n# %%\nimport json\nimport os\nfrom pathlib import Path\n\n"
        "told = {k: os.environ.get(k) for k in ('HELPERS_COURSE_DIR', 'HELPERS_LEDGER', 'HELPERS_REHEARSE')}\n"
        "Path(told['HELPERS_COURSE_DIR'], 'told.json').write_text(json.dumps(told))\n")


def test_the_run_folder_and_ledger_reach_the_kernel_without_a_parameter(tmp_path, monkeypatch):
    """run-notebooks tells the kernel the run folder and --ledger in its environment (Course reads them): no
    parameters cell carries them, and a rehearsal flag left in the shell does not leak into a plain run."""
    monkeypatch.setenv("HELPERS_REHEARSE", "1")
    ipynb = _pair(tmp_path / "nb", "00_told", TOLD)
    out, ledger = tmp_path / "seq", tmp_path / "my-ledger.csv"
    res = _cli("run-notebooks", "--notebooks", str(ipynb.parent), "--out", str(out), "--ledger", str(ledger))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    told = json.loads((out / "told.json").read_text())
    assert told == {"HELPERS_COURSE_DIR": str(out), "HELPERS_LEDGER": str(ledger), "HELPERS_REHEARSE": None}
    for path in sorted((ROOT / "notebooks").glob("[01]*.ipynb")):
        assert not {"output_dir", "ledger", "rehearse"} & set(parameters(path)), path.name


def test_a_sequence_started_with_the_old_parameters_resumes_with_them_as_runner_settings(tmp_path):
    """state.json of a sequence started when ledger/rehearse were notebook parameters: read as runner settings."""
    from helpers.course.runner import STATE, Sequence

    (tmp_path / STATE).write_text(json.dumps({
        "folder": str(tmp_path), "profile": "full", "notebooks": ["01_baseline"], "created": "2026-12-01 10:00:00",
        "parameters": {"ledger": "runs/l.csv", "rehearse": True, "output_dir": "x", "overrides": {"epochs": 1}},
        "status": {"01_baseline": {"state": "failed"}}}))
    sequence = Sequence.load(tmp_path)
    assert (sequence.ledger, sequence.rehearse, sequence.parameters) == ("runs/l.csv", True, {"overrides": {"epochs": 1}})
    assert sequence.environment() == {"HELPERS_COURSE_DIR": str(tmp_path), "HELPERS_LEDGER": "runs/l.csv",
                                      "HELPERS_REHEARSE": "1"}


SEEN = ("pass\n\n# %%\nimport json, os, sys, time\nfrom pathlib import Path\nimport psutil\n\n"
        "seen = {'loaded': 'helpers.use.runs' in sys.modules and 'torch' in sys.modules, 'bound': 'helpers' in dir(),\n"
        "        'told': os.environ.get('HELPERS_COURSE_DIR'), 'born': psutil.Process().create_time(), 'at': time.time()}\n"
        "Path(seen['told'], f'seen-{os.getpid()}.json').write_text(json.dumps(seen))\n")


def test_the_next_notebooks_kernel_is_warm_binds_no_name_and_is_shut_down_when_the_sequence_stops(tmp_path):
    """Each notebook after the first finds its kernel started while the one before it ran, with the course's
    modules loaded, nothing bound in its namespace and the sequence's environment; when a notebook fails, the
    kernel warmed for the next one is shut down with it."""
    import psutil

    folder = tmp_path / "nb"
    for name in ("00_first", "01_second"):
        _pair(folder, name, SEEN)
    _pair(folder, "02_fails", "pass\n\n# %%\nraise ValueError('stopped here')\n")
    _pair(folder, "03_never", "pass\n")
    kernels = {p.pid for p in psutil.Process().children(recursive=True)}
    out = tmp_path / "seq"
    res = _cli("run-notebooks", "--notebooks", str(folder), "--out", str(out))
    assert res.returncode == 2 and "02_fails failed in cell" in res.stderr, res.stdout[-2000:] + res.stderr[-2000:]
    seen = [json.loads(p.read_text()) for p in sorted(out.glob("seen-*.json"), key=lambda p: p.stat().st_mtime)]
    assert [s["loaded"] for s in seen] == [False, True], seen  # 00's kernel started in its turn, bare
    assert seen[1]["born"] < seen[0]["at"], seen  # 01's kernel was up before 00's cell ran
    assert not any(s["bound"] for s in seen) and {s["told"] for s in seen} == {str(out)}
    assert json.loads((out / "state.json").read_text())["status"]["03_never"]["state"] == "pending"
    from helpers.course import kernels as forking

    # the fork server serves this process's kernels until the process ends (tests/test_kernels.py)
    server = forking._server.process.pid if forking._server else None
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in kernels and p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE and p.pid != server]
    assert not left, [p.cmdline() for p in left]


def test_the_next_kernel_loads_its_imports_when_the_last_cells_begin(capsys):
    """The next notebook's imports load when this notebook's last TAIL_CELLS code cells begin (its figures, on one
    core), once, not while it trains; a notebook shorter than that loads them at its first code cell."""
    import io
    import logging

    from helpers.course.execute import TAIL_CELLS, _Echo

    def fed(cells: list[str]) -> list[int]:
        calls: list[int] = []
        echo = _Echo(io.StringIO(), cells, on_tail=lambda: calls.append(echo.code_seen))
        for i in range(1, len(cells) + 1):
            echo.emit(logging.makeLogRecord({"msg": f"Executing Cell {i}---------"}))
            echo.emit(logging.makeLogRecord({"msg": f"Ending Cell {i}---------"}))
        return calls

    code = [f"step_{i}()" for i in range(9)]
    assert fed(["", *code[:4], "", *code[4:]]) == [len(code) - TAIL_CELLS + 1]
    assert fed(["", code[0], "", code[1]]) == [1]
    assert "cell 1/2: step_0()" in capsys.readouterr().out


def test_a_warm_kernel_is_left_unused_when_the_package_was_saved_after_it_started(tmp_path):
    """A fix saved in helpers/ while the notebook before runs reaches the next notebook: its warm kernel, which
    imported the old code, is shut down and the notebook gets a fresh one."""
    from helpers.course.execute import WarmKernel, _shut_down

    project = tmp_path / "project"
    module = project / "helpers" / "fix.py"
    module.parent.mkdir(parents=True)
    module.write_text("")
    os.utime(module, (time.time() - 60, time.time() - 60))  # saved before the kernels start
    notebook = _pair(tmp_path / "nb", "00_x", "pass\n")
    kept = WarmKernel(notebook, tmp_path / "kept.log", cwd=project, kernel=None, preload=False)
    km = kept.take("food101")
    assert km is not None
    _shut_down(km, now=True)
    stale = WarmKernel(notebook, tmp_path / "stale.log", cwd=project, kernel=None, preload=False)
    module.write_text("FIXED = True\n")  # the fix, saved while the kernel waits
    assert stale.take("food101") is None and stale.taken
