"""The course's notebooks: each its own source (paired with a jupytext script), committed clean and thin, edited as
JupyterLab saves them, and executed headless with papermill.

The headless run uses the ci profile (64 px, one epoch) on a five-class subset of the tiny real set, so the whole
course runs in a few minutes on 2 CPU cores; it checks every notebook's figures (real PNG files of a sane size)
and ledger rows, and that a failing notebook is named with its cell and its sequence can be resumed.
"""

from __future__ import annotations

import ast
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml
from PIL import Image

from helpers.base.errors import UserError
from helpers.course import course, roadmap
from helpers.course.runner import parse_value, select

from .conftest import SUBSET_CLASSES, SUBSET_TEST, copy_course, run_cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "data" / "food-101-tiny"
NOTEBOOK_DIR = ROOT / "notebooks"

# The figures each notebook must save (without .png), and the ledger phases it must append.
FIGURES = {
    "00_setup": ["00_class_samples"],
    "01_baseline": ["01_training_curves", "01_confusion_matrix", "01_top_confusions", "01_failures",
                    "01_batchnorm_curves", "01_batchnorm", "01_batchnorm_changes"],
    "02_b3_upgrade": ["02_training_curves", "02_compare", "02_confusion_matrix", "02_top_confusions", "02_failures"],
    "03_augmentations": ["03_augmentation_preview", "03_advanced_steps", "03_training_curves", "03_compare",
                         "03_changes", "03_confusion_matrix", "03_top_confusions", "03_failures"],
    "04_mixup_cutmix": ["04_mix_preview", "04_training_curves", "04_compare", "04_changes", "04_confusion_matrix",
                        "04_top_confusions", "04_failures"],
    "05_two_stage": ["05_training_curves", "05_one_stage_curves", "05_compare", "05_changes", "05_confusion_matrix",
                     "05_top_confusions", "05_failures"],
    "06_tta": ["06_tta_views", "06_tta_gain", "06_changes", "06_confusion_matrix", "06_top_confusions",
               "06_failures"],
    "07_high_resolution": ["07_training_curves", "07_compare", "07_changes", "07_confusion_matrix",
                           "07_top_confusions", "07_failures"],
    "08_ensemble": ["08_ensemble_vs_members", "08_changes", "08_confusion_matrix", "08_top_confusions",
                    "08_failures"],
    "09_distillation": ["09_training_curves", "09_student_vs_teacher", "09_changes", "09_confusion_matrix",
                        "09_top_confusions", "09_failures"],
    "10_beyond_95": ["10_probe_l2_sweep", "10_probe_batch", "10_members_vs_ensemble", "10_routes", "10_failures"],

    "11_use_your_model": ["11_test_photos", "11_my_photos", "11_pytorch_vs_onnx"],
    "12_results": ["12_roadmap_table", "12_roadmap"],
}
PHASES = {"01_baseline": ["baseline"], "02_b3_upgrade": ["2.1", "2.2"], "03_augmentations": ["3.1", "3.2"],
          "04_mixup_cutmix": ["3.3"], "05_two_stage": ["3.5"], "06_tta": ["3.4"], "07_high_resolution": ["4.1"],
          "08_ensemble": ["4.2"], "09_distillation": ["4.3"], "10_beyond_95": ["5.1", "5.2"]}
CLASSES, TEST_PER_CLASS = SUBSET_CLASSES, SUBSET_TEST


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))


def _code_cells(path: Path) -> list:
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return run_cli(*args)  # in this process: the notebooks still run in their own kernels


@pytest.fixture(scope="module")
def course_run(ci_course) -> tuple[Path, subprocess.CompletedProcess]:
    """The whole course in the ci profile on the five-class subset: the session's one run (conftest.ci_course)."""
    return ci_course


# ------------------------------------------------------------------------------------------------------------------
# The committed notebooks


KERNELSPEC = {"name": "food101", "display_name": "Food-101 workbook (.venv)", "language": "python"}


def test_the_course_has_every_notebook_in_order():
    assert [p.stem for p in _notebooks()] == course.notebooks() == list(FIGURES)


def _committed(path: Path) -> str:
    """The notebook as git would commit it: the staged version (after any clean filter, e.g. nbstripout), so a
    notebook a learner ran and saved on disk does not fail this test; the file itself outside a git checkout."""
    res = subprocess.run(["git", "show", f":{path.relative_to(ROOT).as_posix()}"], cwd=ROOT, capture_output=True,
                         text=True)
    return res.stdout if res.returncode == 0 else path.read_text()


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs_and_valid(path):
    nb = nbformat.reads(_committed(path), as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs: clear them"
    assert "widgets" not in nb.metadata and "papermill" not in nb.metadata
    assert nb.metadata["kernelspec"] == KERNELSPEC


def _cells(nb) -> list[tuple[str, str, list]]:
    return [(c.cell_type, c.source.strip(), c.metadata.get("tags", [])) for c in nb.cells]


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_notebook_and_its_script_are_a_pair_in_sync(path):
    script = path.with_suffix(".py")
    assert script.is_file(), f"{path.name} has no paired script: jupytext --set-formats ipynb,py:percent {path}"
    assert "formats: ipynb,py:percent" in script.read_text()
    nb, py = jupytext.read(path), jupytext.read(script)
    assert _cells(nb) == _cells(py), f"{path.name} and {script.name} differ: jupytext --sync {path}"
    assert py.metadata["kernelspec"] == KERNELSPEC


def test_ruff_lints_the_notebook_scripts():
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "notebooks"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "notebooks/04_mixup_cutmix.py" in subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--show-files", "notebooks"], cwd=ROOT, capture_output=True,
        text=True, timeout=120).stdout  # the scripts are linted (the .ipynb through their scripts)


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_notebook_opens_with_an_explanation_and_a_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith(f"# {path.stem[:2]} ·")
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].metadata.get("tags") == ["parameters"]
    assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1
    targets = [t for node in ast.parse(code[0].source).body if isinstance(node, ast.Assign) for t in node.targets]
    names = {n.id for t in targets for n in (t.elts if isinstance(t, ast.Tuple) else [t])}
    assert {"profile", "data_dir", "device"} <= names
    # only what a learner sets: the run folder, ledger and rehearsal reach Course from run-notebooks another way,
    # and the ci profile's settings live in tests/ci_profile.yaml
    assert not names & {"output_dir", "ledger", "rehearse"}, path.name
    dicts = [node for node in ast.walk(ast.parse(code[0].source)) if isinstance(node, ast.Dict)]
    assert not [k.value for d in dicts for k in d.keys if isinstance(k, ast.Constant) and k.value == "ci"], path.name


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_notebook_imports_only_helpers_and_defines_no_code_of_its_own(path):
    for cell in _code_cells(path):
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] == "helpers" for a in node.names), ast.unparse(node)
            if isinstance(node, ast.ImportFrom):
                assert node.module.split(".")[0] in ("helpers", "IPython"), ast.unparse(node)
            assert not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.While)), \
                f"{path.name} defines code: {ast.unparse(node)[:80]}"
        for banned in ("DataLoader", "Dataset(", ".backward(", ".step(", "A.Compose", "import torch", "nn.Module"):
            assert banned not in cell.source, f"{path.name} does {banned} itself: it belongs in helpers"


def test_parameters_cells_hold_the_settings_and_the_technique_as_literals():
    from helpers.course.parameters import parameters

    p = parameters(NOTEBOOK_DIR / "04_mixup_cutmix.ipynb")
    assert p["TECHNIQUE"] == dict(mixup=True, mixup_alpha=0.2, cutmix=True, cutmix_alpha=1.0)
    assert set(p["SETTINGS"]) == {"full", "medium", "demo"}
    assert p["SETTINGS"]["full"]["backbone"] == "efficientnet_b3"
    source = _code_cells(NOTEBOOK_DIR / "04_mixup_cutmix.ipynb")[0].source
    assert "TECHNIQUE = dict(mixup=True, mixup_alpha=0.2, cutmix=True, cutmix_alpha=1.0)" in source
    # a dependency on another notebook's run is one explicit line, e.g. in 07:
    assert 'source = c.require("05_two_stage", "stage2")' in (NOTEBOOK_DIR / "07_high_resolution.py").read_text()


def test_the_runner_reads_each_notebooks_dependencies_per_profile():
    from helpers.course.runner import required_runs

    assert required_runs(NOTEBOOK_DIR / "06_tta.ipynb", "demo") == [("05_two_stage", "stage2")]
    assert required_runs(NOTEBOOK_DIR / "08_ensemble.ipynb", "full") == [("07_high_resolution", "hires")]
    assert ("04_mixup_cutmix", "mixup") in required_runs(NOTEBOOK_DIR / "08_ensemble.ipynb", "demo")
    assert required_runs(NOTEBOOK_DIR / "09_distillation.ipynb", "full") == [
        ("07_high_resolution", "hires"), ("08_ensemble", "b4"), ("08_ensemble", "resnet101")]  # 08's ensemble
    assert required_runs(NOTEBOOK_DIR / "02_b3_upgrade.ipynb", "demo") == [("01_baseline", "baseline")]
    # a control with an earlier run's settings (04's run without mixing, 09's student alone) is that run when it is
    # trained, reused by its settings (helpers.course.run_names), not a requirement
    assert required_runs(NOTEBOOK_DIR / "04_mixup_cutmix.ipynb", "medium") == []
    assert required_runs(NOTEBOOK_DIR / "01_baseline.ipynb", "demo") == []


# ------------------------------------------------------------------------------------------------------------------
# The runner without a kernel


def test_only_selects_by_number_or_name_and_rejects_unknown():
    names = course.notebooks()
    assert select(names, "1,06_tta") == ["01_baseline", "06_tta"]
    assert select(names, None) == names
    with pytest.raises(UserError, match="matches no notebook"):
        select(names, "01,13")
    assert parse_value("1") == 1 and parse_value("true") is True and parse_value("[1, 2]") == [1, 2]
    assert parse_value("runs/x") == "runs/x" and parse_value("null") is None


def test_a_notebook_whose_inputs_are_missing_is_refused_before_running(tmp_path):
    res = _run("run-notebooks", "--profile", "ci", "--only", "06", "--out", str(tmp_path / "seq"))
    assert res.returncode == 2, res.stderr
    assert "06_tta needs the 'stage2' model of 05_two_stage" in res.stderr and "Traceback" not in res.stderr
    for name, flag in (("output_dir", "--out"), ("ledger", "--ledger"), ("rehearse", "--rehearse")):
        res = _run("run-notebooks", "--profile", "ci", "-p", name, "x")
        assert res.returncode == 2 and f"use {flag}" in res.stderr, res.stderr


def test_a_missing_kernel_is_one_clear_paragraph(tmp_path):
    res = _run("run-notebooks", "--profile", "ci", "--only", "00", "--out", str(tmp_path / "seq"), "--kernel", "nope")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "The Jupyter kernel 'nope' is not installed" in res.stderr and "ipykernel install" in res.stderr
    assert not (tmp_path / "seq").exists()  # nothing written


# ------------------------------------------------------------------------------------------------------------------
# The headless course (one run, several checks)


def _is_real_png(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    assert 5_000 < path.stat().st_size < 8_000_000, f"{path}: {path.stat().st_size} bytes"
    with Image.open(path) as image:
        image.load()
        width, height = image.size
        gray = image.convert("L")
        extrema = gray.getextrema()
    assert 300 <= width <= 4000 and 200 <= height <= 4000, f"{path}: {width}x{height}"
    assert extrema[1] - extrema[0] > 100, f"{path} is blank"
    return width, height


def test_the_course_runs_headless_and_every_notebook_saves_its_figures(course_run):
    out, res = course_run
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    state = json.loads((out / "state.json").read_text())
    assert {n: s["state"] for n, s in state["status"].items()} == {n: "done" for n in FIGURES}
    for name in FIGURES:  # progress a person can follow: one line when each notebook starts and ends
        assert f"{name:<20} started" in res.stdout and f"{name:<20} done in" in res.stdout
    for name, figures in FIGURES.items():
        for figure in figures:
            _is_real_png(out / "figures" / f"{figure}.png")
        assert (out / "executed" / f"{name}.ipynb").is_file() and (out / "logs" / f"{name}.log").is_file()
        saved = len(list((out / "figures").glob(f"{name[:2]}_*.png")))  # a notebook's figures carry its number
        assert state["status"][name]["figures"] == saved, name  # not the figures the one before saved last
        assert f"{name:<20} done in" in res.stdout and f"), {saved} figures" in res.stdout
        # its kernel's CPU, also when it was forked (its parent is then the fork server, not this process):
        # drawing its figures alone takes more than half a CPU second
        assert state["status"][name]["cpu_seconds"] > 0.5, (name, state["status"][name])
    assert json.loads(res.stdout.strip().splitlines()[-1])["notebooks"] == {n: "done" for n in FIGURES}


def test_executed_notebooks_show_their_figures_and_no_errors(course_run):
    out, _ = course_run
    for name in FIGURES:
        nb = nbformat.read(out / "executed" / f"{name}.ipynb", as_version=4)
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        assert not [o for o in outputs if o.output_type == "error"], name
        images = [o for o in outputs if "image/png" in o.get("data", {})]
        assert len(images) >= len(FIGURES[name]), f"{name} shows {len(images)} figures"


def test_executed_notebooks_render_as_jupyterlab_html(course_run):
    from nbconvert import HTMLExporter

    out, _ = course_run
    exporter = HTMLExporter(template_name="lab")
    for name in ("01_baseline", "03_augmentations", "12_results"):
        html, _ = exporter.from_notebook_node(nbformat.read(out / "executed" / f"{name}.ipynb", as_version=4))
        assert html.count("<img") >= len(FIGURES[name]) and "jp-Notebook" in html, name
        assert "application/vnd.jupyter.widget-view+json" in html or name == "12_results"


def test_every_notebook_appends_its_ledger_row(course_run, subset):
    out, _ = course_run
    with open(out / "ledger.csv") as f:
        rows = list(csv.DictReader(f))
    by_phase = {r["phase"]: r for r in rows}
    for name, phases in PHASES.items():
        for phase in phases:
            row = by_phase[phase]
            assert row["notebook"] == name and row["profile"] == "ci" and row["course"] == str(out)
            assert 0.0 <= float(row["test_top1"]) <= 100.0 and float(row["test_top1"]) <= float(row["test_top5"])
            assert int(float(row["test_n"])) == CLASSES * TEST_PER_CLASS
    for phase in ("2.1", "3.1", "3.4", "4.2", "4.3"):  # measured against a reference run of the same course
        row = by_phase[phase]
        assert float(row["gain"]) == pytest.approx(float(row["test_top1"]) - float(row["reference_top1"]), abs=1e-3)
    assert float(by_phase["2.1"]["train_minutes"]) > 0 and by_phase["2.1"]["backbone"] == "tf_efficientnet_lite2"
    results = list(csv.DictReader(open(out / "results.csv")))
    assert [r["phase"] for r in results] == list(roadmap.ROADMAP)
    assert all(r["source"] == "this course run" and r["measured: top-1"] and r["95% low"] for r in results)
    assert by_phase["baseline"]["technique"] == "Baseline" and by_phase["baseline"]["epochs"] == "1"
    assert by_phase["baseline"]["backbone"] == "tf_efficientnet_lite0"  # what trained, not the plan's B0


def test_a_run_with_other_settings_trains_beside_the_courses_run(course_run, subset, tmp_path):
    from helpers.course.parameters import parameters

    out = copy_course(course_run[0], tmp_path / "course")  # Course.config records run names in the folder
    p = parameters(NOTEBOOK_DIR / "01_baseline.ipynb")
    c = course.Course("01_baseline", "ci", data_dir=str(subset), output_dir=str(out))
    settings = {**c.pick(p["SETTINGS"]), **p["TECHNIQUE"]}  # the ci run reads the demo's literals
    home = out / "models" / "01_baseline" / "baseline"
    cfg = c.config("baseline", settings)
    assert (Path(cfg.output_dir), cfg.resume) == (home, "auto")  # same settings: a re-run continues (or re-tests) it
    changed = c.config("baseline", {**settings, "lr": 1e-3})  # a setting the ci profile does not shrink
    assert Path(changed.output_dir) == home.parent / "baseline~lr=0.001" and changed.lr == 1e-3
    assert c.require("01_baseline", "baseline") == home  # later notebooks keep reading the course's run
    # 03's control has the settings of 02's B3 in the ci profile too: the course trained it once
    b3 = yaml.safe_load((out / "models" / "02_b3_upgrade" / "b3" / "config.yaml").read_text())
    assert not (out / "models" / "03_augmentations" / "longer").exists() and b3["scheduler"] == "cosine"


def test_an_edited_notebook_fails_by_name_resumes_and_uses_the_edit(tmp_path, ci_course, subset):
    """Edit a literal of 01's parameters cell in the .ipynb and save both files through jupytext (what JupyterLab
    with jupytext does on save): the pair stays in sync and ruff stays clean. Run 00 and 01 into a copy of the
    session's course with a bad -p value: 01 fails, named with its cell, after 00 is done; resumed with a good value,
    00 is skipped, 01 runs green with the edit, and the course's runs are reused (nothing retrains)."""
    folder = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOK_DIR, folder, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    path = folder / "01_baseline.ipynb"
    nb = jupytext.read(path)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    old = '''LR_FIND_STEPS = {"full": 100, "medium": 100, "demo": 30}'''
    assert old in cell.source
    cell.source = cell.source.replace(old, old.replace('"demo": 30', '"demo": 20'))  # a demo literal ci keeps
    jupytext.write(nb, path)  # the .ipynb, as saved by JupyterLab
    jupytext.write(nb, path.with_suffix(".py"), fmt="py:percent")  # and its paired script
    assert _cells(jupytext.read(path)) == _cells(jupytext.read(path.with_suffix(".py")))
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "--stdin-filename", "notebooks/01_baseline.py", "-"],
                          input=path.with_suffix(".py").read_text(), cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # as the repository's ruff settings see that script
    assert lint.returncode == 0, lint.stdout
    out = copy_course(ci_course[0], tmp_path / "seq")
    weights = (out / "models" / "01_baseline" / "baseline" / "best.pt").stat().st_ino
    common = ["--profile", "ci", "--notebooks", str(folder), "-p", "data_dir", str(subset), "--ledger",
              str(out / "ledger.csv")]
    # (a setting the ci profile leaves alone: it sets the epochs of every run itself)
    res = _run("run-notebooks", *common, "--only", "00,01", "--out", str(out), "-p", "overrides", "{lr: 0}")
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr
    assert "01_baseline failed in cell" in errors[0] and "c.config(" in errors[0], errors[0]
    assert "--lr must be positive, got 0" in errors[0] and f"--resume {out}" in errors[0]
    assert "01_baseline          FAILED" in res.stdout and "00_setup             done" in res.stdout
    state = json.loads((out / "state.json").read_text())["status"]
    assert state["00_setup"]["state"] == "done" and state["01_baseline"]["state"] == "failed"

    assert f"--notebooks {folder}" in errors[0]  # the resume command it gives runs the same (edited) notebooks
    res = _run("run-notebooks", "--resume", str(out), "--notebooks", str(folder), "-p", "overrides", "{}")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "00_setup             done earlier, skipped" in res.stdout
    assert json.loads(res.stdout.strip().splitlines()[-1])["notebooks"] == {"00_setup": "done", "01_baseline": "done"}
    assert (out / "figures" / "01_failures.png").is_file()
    finder = json.loads(next((out / "lr-find" / "01_baseline").glob("*/lr_find.json")).read_text())
    assert finder["steps"] == 20  # the edit was used
    saved = yaml.safe_load((out / "models" / "01_baseline" / "baseline" / "config.yaml").read_text())
    assert saved["lr"] == 3e-3 and saved["image_size"] == 64 and saved["backbone"] == "tf_efficientnet_lite0"
    assert (out / "models" / "01_baseline" / "baseline" / "best.pt").stat().st_ino == weights  # reused, not retrained
    executed = nbformat.read(out / "executed" / "01_baseline.ipynb", as_version=4)
    assert executed.metadata["kernelspec"]["name"] == "food101"
    assert not [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
