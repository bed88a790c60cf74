"""The course's teaching text: every technique notebook (01-10) ends with "What we saw", "Questions", "Try it" and
"Further reading"; every "Try it" names a literal of the notebook's parameters cell, and one per notebook is run
for real in the ci profile; the solutions notebook answers every question; the expectations table puts the plan's
figure, a published one and this run's side by side.

A "Try it" item starts with the change in backticks, e.g. `TECHNIQUE["mixup_alpha"] = 1.0` (from `0.2`); the
one marked "run by the tests" is executed with papermill, chained in course order so each notebook finds the runs it
needs, on a five-class subset of the tiny set.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any

import jupytext
import nbformat
import pytest
import yaml

from helpers.base.config import TrainConfig
from helpers.course import course, expectations, ledger, roadmap
from helpers.course.execute import WarmKernel, execute
from helpers.course.parameters import parameters
from helpers.course.runner import find_notebooks

from .conftest import copy_course, course_environment

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
SOLUTIONS = NOTEBOOK_DIR / "solutions" / "solutions.ipynb"
SECTIONS = ["## What we saw", "## Questions", "## Try it", "## Further reading"]
TECHNIQUE_NOTEBOOKS = [p for p in sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")) if "01" <= p.name[:2] <= "10"]
FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
CHANGE = re.compile(r"`([A-Za-z_]\w*)((?:\[[^\]]+\])*) = ([^`]+)`")
FROM = re.compile(r"\(from `([^`]+)`")


def _markdown(path: Path) -> list[str]:
    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"]


def _section(path: Path, heading: str) -> str:
    """The markdown cell that starts with `heading`."""
    hits = [m for m in _markdown(path) if m.startswith(heading)]
    assert len(hits) == 1, f"{path.name}: {len(hits)} cells start with {heading!r}"
    return hits[0]


def _items(text: str) -> list[str]:
    """The numbered items of a markdown list, each with its continuation lines."""
    items: list[str] = []
    for line in text.splitlines():
        if re.match(r"^\d+\. ", line):
            items.append(line)
        elif items and line.startswith("   "):
            items[-1] += " " + line.strip()
    return items


@dataclasses.dataclass
class TryIt:
    name: str  # the parameters-cell variable
    keys: list[Any]  # the keys into it, e.g. ["demo", "b3", "image_size"]
    value: Any
    was: Any  # the value the text says it replaces (None when not said)
    tested: bool


def _try_its(path: Path) -> list[TryIt]:
    found = []
    for item in _items(_section(path, "## Try it")):
        match = CHANGE.search(item)
        assert match, f"{path.name}: a Try it without a `NAME[...] = VALUE` change: {item[:80]}"
        keys = [ast.literal_eval(k) for k in re.findall(r"\[([^\]]+)\]", match.group(2))]
        was = FROM.search(item[match.end():])
        found.append(TryIt(match.group(1), keys, ast.literal_eval(match.group(3)),
                           ast.literal_eval(was.group(1)) if was else None, "run by the tests" in item))
    return found


def _changed(path: Path, change: TryIt) -> Any:
    """The parameter's new value: the notebook's literal with the change applied (a demo Try it runs in ci too:
    the ci profile reads the demo's literals)."""
    value = parameters(path)[change.name]
    keys = change.keys
    if not keys:
        return _plain(change.value)
    root = value = _plain(copy.deepcopy(value))
    for key in keys[:-1]:
        value = value[key]
    value[keys[-1]] = _plain(change.value)
    return root


def _plain(value: Any) -> Any:
    """Tuples as lists: papermill writes a tuple inside a list or dict as its text (and YAML has no tuples)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ------------------------------------------------------------------------------------------------------------------
# The four sections


@pytest.mark.parametrize("path", TECHNIQUE_NOTEBOOKS, ids=lambda p: p.stem)
def test_technique_notebook_ends_with_the_four_sections_in_order(path):
    cells = nbformat.read(path, as_version=4).cells
    headings = [(i, line) for i, c in enumerate(cells) if c.cell_type == "markdown"
                for line in c.source.splitlines() if line.startswith("## ")]
    names = [h for _, h in headings]
    start = names.index(SECTIONS[0])
    assert names[start:start + 4] == SECTIONS, f"{path.name}: {names[start:]}"
    after = names[start + 4:]
    assert all(h.startswith("## Next") for h in after) and len(after) <= 1, f"{path.name} continues with {after}"
    questions_cell = headings[start + 1][0]
    assert all(c.cell_type == "markdown" for c in cells[questions_cell:]), "no code after the questions"
    assert 5 <= len(_items(_section(path, "## Questions"))) <= 10
    assert 2 <= len(_try_its(path)) <= 4
    links = re.findall(r"\]\((https?://[^)\s]+)\)", _section(path, "## Further reading"))
    assert len(links) >= 2, f"{path.name}: further reading needs links"


def test_the_use_your_model_notebook_ends_like_the_technique_notebooks():
    """11 trains nothing, so it has no phase and no tested Try it; it ends with what we saw, questions, experiments
    that name a literal of its parameters cell, and further reading."""
    path = NOTEBOOK_DIR / "11_use_your_model.ipynb"
    cells = nbformat.read(path, as_version=4).cells
    names = [line for c in cells if c.cell_type == "markdown" for line in c.source.splitlines()
             if line.startswith("## ")]
    assert names[-4:] == SECTIONS, names
    assert 5 <= len(_items(_section(path, "## Questions"))) <= 10
    params = parameters(path)
    changes = _try_its(path)
    assert 1 <= len(changes) <= 4 and not any(c.tested for c in changes)
    for change in changes:
        assert change.name in params and change.was in (None, params[change.name]), change
    assert len(re.findall(r"\]\((https?://[^)\s]+)\)", _section(path, "## Further reading"))) >= 2


@pytest.mark.parametrize("path", TECHNIQUE_NOTEBOOKS, ids=lambda p: p.stem)
def test_what_we_saw_shows_this_notebooks_phases_beside_the_plan_and_print(path):
    """The section's table is `expectations.table` of the phases this notebook records in the ledger."""
    cells = nbformat.read(path, as_version=4).cells
    start = next(i for i, c in enumerate(cells) if c.cell_type == "markdown" and c.source.startswith("## What we saw"))
    code = [c.source for c in cells[start:] if c.cell_type == "code"]
    assert len(code) == 1, f"{path.name}: one code cell in What we saw"
    call = re.search(r"expectations\.table\(c, phases=(\[[^\]]*\])\)", code[0])
    assert call, code[0]
    recorded = re.findall(r'c\.record\("([^"]+)"', path.with_suffix(".py").read_text())
    assert set(ast.literal_eval(call.group(1))) == set(recorded), (call.group(1), recorded)
    text = "\n".join(c.source for c in cells[start:] if c.cell_type == "markdown").split("## Questions")[0]
    assert "McNemar" in text or "paired" in text, f"{path.name}: say which paired test reads the comparison"


# ------------------------------------------------------------------------------------------------------------------
# Try it: the literals exist, and one per notebook runs


@pytest.mark.parametrize("path", TECHNIQUE_NOTEBOOKS, ids=lambda p: p.stem)
def test_every_try_it_changes_a_literal_of_the_parameters_cell(path):
    params = parameters(path)
    changes = _try_its(path)
    assert sum(c.tested for c in changes) == 1, f"{path.name}: mark exactly one Try it 'run by the tests'"
    for change in changes:
        assert change.name in params, f"{path.name}: {change.name} is not in the parameters cell"
        value = params[change.name]
        for depth, key in enumerate(change.keys):
            last = depth == len(change.keys) - 1
            if last and key not in value:  # a new setting added to a dict of TrainConfig settings
                assert key in FIELDS, f"{path.name}: {change.name}{change.keys} names no setting"
                break
            assert key in value, f"{path.name}: {change.name} has no key {key!r}"
            value = value[key]
        else:
            if change.was is not None:
                assert value == change.was, f"{path.name}: {change.name}{change.keys} is {value!r}, the text says " \
                                            f"{change.was!r}"
        if change.name == "overrides":
            assert set(change.value) <= FIELDS, change.value
        assert "ci" not in change.keys, f"{path.name}: the ci profile runs the demo's literals"


def _check_06(out: Path, since: float) -> None:
    names = sorted(p.name for p in (out / "predictions").glob("06_tta-*") if p.stat().st_mtime >= since)
    assert any(n.endswith("-tta4.csv") for n in names) and not any("tta2" in n for n in names), names


def _check_08(out: Path, since: float) -> None:
    rows = ledger.read(out / "ledger.csv")
    row = rows[rows["phase"] == "4.2"].iloc[-1]
    members = row["run"].split(" + ")
    assert row["backbone"] == "ensemble of 2" and "02_b3" not in row["run"]
    assert str(out / "models" / "04_mixup_cutmix" / "mixup") in members  # the course's run, not 04's Try it


# The effect of a tested change that is not a training setting in a run's config.yaml.
SPECIAL = {"06_tta": _check_06, "08_ensemble": _check_08}
# Notebooks whose Try it is checked to train beside the course's run (its folder named after the change, the
# course's weights untouched): notebook -> the run the change touches.
FIRST_AS_WRITTEN = {"01_baseline": "baseline", "04_mixup_cutmix": "mixup"}


def _config_values(out: Path, notebook: str, key: str) -> list[Any]:
    return [yaml.safe_load(p.read_text()).get(key) for p in sorted((out / "models" / notebook).glob("*/config.yaml"))]


def _config(folder: Path) -> dict:
    return yaml.safe_load((folder / "config.yaml").read_text())


def _check_try_it_beside(out: Path, notebook: str, run: str, key: str, course_value: Any, changed: Any) -> None:
    """The course's run kept its settings and weights; the Try it trained in `run~key=value` beside it."""
    home = out / "models" / notebook / run
    assert _config(home)[key] == course_value, (notebook, _config(home)[key])
    beside = [p.parent for p in sorted(home.parent.glob(f"{run}~*/config.yaml")) if _config(p.parent)[key] == changed]
    assert [p.name.split("~", 1)[1] for p in beside] == [f"{key}={changed:g}"], sorted(home.parent.iterdir())
    assert (beside[0] / "best.pt").is_file() and (beside[0] / "summary.json").is_file()


@pytest.mark.parametrize("path", TECHNIQUE_NOTEBOOKS, ids=lambda p: p.stem)
def test_the_tested_try_it_runs_as_written_and_takes_effect(path, ci_course, subset, kernel_queue, monkeypatch):
    """A learner's Try it, as written: the notebook run again with its tested change, in a copy of the session's
    course (ci profile, five-class subset) where every notebook ran as written before. It trains only what the
    change changes, in a folder named after it beside the course's run (01 and 04: checked, the course's weights
    untouched); after 01's, 02 runs as written and still reads the course's baseline."""
    out, warm = kernel_queue.take()  # this copy's kernel, started while the test before ran
    copy_course(ci_course[0], out)
    for key, value in course_environment(out).items():  # as run-notebooks tells the kernel
        monkeypatch.setenv(key, value)
    change = next(c for c in _try_its(path) if c.tested)
    key = change.keys[-1] if change.keys else change.name
    t0, started = time.perf_counter(), time.time() - 1
    nb02 = NOTEBOOK_DIR / "02_b3_upgrade.ipynb"
    warm02 = WarmKernel(nb02, out / "logs" / "again-02.log", cwd=ROOT, kernel=None, env=course_environment(out),
                        preload=False) if path.stem == "01_baseline" else None
    try:
        _run_try_it(path, change, key, out, subset, started, warm, warm02, kernel_queue.load_next)
    finally:
        if warm02:
            warm02.discard()  # when the Try it failed before 02 ran
    print(f"{path.stem} Try it: {time.perf_counter() - t0:.0f} s")


def _run_try_it(path, change, key, out, subset, started, warm, warm02, load_next) -> None:
    run = FIRST_AS_WRITTEN.get(path.stem)
    before = (out / "models" / path.stem / run / "best.pt").stat().st_ino if run else None
    execute(path, out / "executed" / f"try-{path.name}", out / "logs" / f"try-{path.stem}.log", cwd=ROOT,
            parameters={"profile": "ci", "data_dir": str(subset), change.name: _changed(path, change)}, warm=warm,
            on_tail=warm02.load if warm02 else load_next)
    injected = next(c.source for c in nbformat.read(out / "executed" / f"try-{path.name}", as_version=4).cells
                    if "injected-parameters" in c.metadata.get("tags", []))
    assert f"{change.name} = " in injected, injected
    if run:
        _check_try_it_beside(out, path.stem, run, key, change.was, change.value)
        assert (out / "models" / path.stem / run / "best.pt").stat().st_ino == before  # nothing overwritten
    if path.stem in SPECIAL:
        SPECIAL[path.stem](out, started)
    else:
        assert key in FIELDS, f"{path.stem}: say how to check {change.name}{change.keys}"
        assert change.value in _config_values(out, path.stem, key), (path.stem, key, change.value)
    if path.stem == "01_baseline":  # a later notebook still runs, on the course's runs
        execute(NOTEBOOK_DIR / "02_b3_upgrade.ipynb", out / "executed" / "again-02.ipynb", out / "logs" / "again-02.log",
                cwd=ROOT, parameters={"profile": "ci", "data_dir": str(subset)}, warm=warm02, on_tail=load_next)
        rows = ledger.read(out / "ledger.csv").drop_duplicates("phase", keep="last").set_index("phase")
        baseline = json.loads((out / "models" / "01_baseline" / "baseline" / "summary.json").read_text())
        assert rows.loc["2.1", "reference_top1"] == pytest.approx(baseline["test_top1"], abs=1e-3)


# ------------------------------------------------------------------------------------------------------------------
# The solutions notebook


def _answers(text: str) -> dict[str, int]:
    """Number of answers under each `## NN · title` section."""
    found: dict[str, int] = {}
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        found[section[:2]] = len(_items(section))
    return found


def test_the_solutions_notebook_answers_every_question_and_is_no_course_notebook():
    script = SOLUTIONS.with_suffix(".py")
    nb, py = jupytext.read(SOLUTIONS), jupytext.read(script)
    assert [(c.cell_type, c.source.strip()) for c in nb.cells] == [(c.cell_type, c.source.strip()) for c in py.cells]
    assert "formats: ipynb,py:percent" in script.read_text()
    assert all(c.cell_type == "markdown" for c in nb.cells), "the solutions are markdown only (nothing to execute)"
    answers = _answers("\n".join(c.source for c in nb.cells))
    for path in [*TECHNIQUE_NOTEBOOKS, NOTEBOOK_DIR / "11_use_your_model.ipynb"]:
        questions = len(_items(_section(path, "## Questions")))
        assert answers.get(path.name[:2]) == questions, f"{path.stem}: {questions} questions, " \
                                                         f"{answers.get(path.name[:2])} answers"
    assert "solutions" not in [p.stem for p in find_notebooks(NOTEBOOK_DIR)]
    assert "solutions" not in course.notebooks()


# ------------------------------------------------------------------------------------------------------------------
# The expectations table (00_setup and 12_results)


def test_expectations_put_the_plan_a_published_figure_and_this_run_side_by_side(tmp_path):
    c = course.Course("12_results", "demo", output_dir=str(tmp_path / "run"), ledger=str(tmp_path / "ledger.csv"))
    # An earlier demo run's mixup result: 82 of 150 photos, against 3.2's 70.0%, 8 photos fixed and 31 broken.
    ledger.append(c.ledger_path, dict(course=str(c.output_dir), profile="demo", notebook="04_mixup_cutmix",
                                      phase="3.3", technique="Mixup/CutMix", test_top1=100 * 82 / 150, test_n=150,
                                      reference_top1=70.0, fixed=8, broken=31))
    # a gain without the photos fixed and broken: no paired test, whatever the intervals say
    ledger.append(c.ledger_path, dict(course=str(c.output_dir), profile="demo", notebook="05_two_stage",
                                      phase="3.5", test_top1=80.0, test_n=150, reference_top1=60.0))
    table = expectations.table(c).set_index("phase")
    assert list(table.index) == list(roadmap.ROADMAP)
    mix = table.loc["3.3"]
    assert mix["plan (Food-101)"] == "+3% → 88.5-92.5%"
    assert mix["this run (demo)"] == "54.7% (46.7-62.4)"  # the Wilson interval the demo's figure shows
    assert mix["gain"] == "-15.3 against advanced augmentation (3.2), p<0.001, real"  # McNemar p = 0.0003
    assert table.loc["3.5", "gain"] == "+20.0 against one stage of the same length (05), no paired test"
    assert table.loc["2.1", "this run (demo)"] == "not measured yet"
    assert table.loc["4.2", "published (full scale)"] == "93.0%" and "Tan & Le 2019" in table.loc["4.2", "source"]
    assert table.loc["5.1", "published (full scale)"] == "95.9%" and table.loc["5.1", "plan (Food-101)"] == \
        "past the plan"
    for phase, row in table.iterrows():
        assert "https://" in row["source"], f"{phase} has no source"
    assert list(expectations.table(phases=["4.2"])["this run"]) == ["not measured yet"]  # no course: no ledger
    for name in ("00_setup", "12_results"):
        assert "expectations.table(c)" in (NOTEBOOK_DIR / f"{name}.py").read_text()


# ------------------------------------------------------------------------------------------------------------------
# Times per profile (docs/times.csv)


def test_every_notebook_states_its_time_in_each_profile_with_the_machine_and_how():
    from helpers.course import times

    table = times.read(ROOT)
    names = [p.stem for p in sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))]
    assert sorted(set(table["notebook"])) == names
    for name in names:
        rows = table[table["notebook"] == name]
        assert sorted(rows["profile"]) == sorted(times.PROFILES), name
        assert rows["machine"].str.len().gt(0).all() and rows["how"].str.len().gt(0).all(), name
        how = dict(zip(rows["profile"], rows["how"]))
        assert how["demo"].startswith("measured ") and re.search(r"\d{4}-\d\d-\d\d", how["demo"]), how
        assert how["medium"].startswith(("estimated: scripts/medium_estimate.py", "not estimated")), how
        assert how["full"].startswith(("the plan", "not in the plan", "past the plan")), how
        minutes = dict(zip(rows["profile"], rows["minutes"]))
        assert minutes["demo"] > 0 and all(m != m or m > 0 for m in minutes.values()), minutes
        source = (NOTEBOOK_DIR / f"{name}.py").read_text()
        assert "c.times()" in source or "times.overview(c.root)" in source, f"{name} does not print its time"
    shown = times.table(ROOT, "02_b3_upgrade")
    assert list(shown.index) == list(times.PROFILES) and shown.loc["full", "time"] == "10:00:00"
