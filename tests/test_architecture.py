"""The package's shape: wings whose layers point down (import-linter's contracts in pyproject.toml), no import
cycles, no module over 600 lines, a wheel that carries every wing, every script importable, and the public
surface (`helpers.train` and friends, `python -m helpers <command>`)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import grimp
import pytest

import helpers

from .conftest import ROOT, TINY

WINGS = ("base", "data", "training", "use", "course", "commands")
MAX_LINES = 600


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    """import-linter's own command on the package found from `cwd` (its pyproject.toml holds the contracts)."""
    return subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache"], cwd=cwd, text=True,
                          capture_output=True, env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"}, timeout=120)


def test_every_import_linter_contract_is_kept():
    res = _lint_imports(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout and "3 kept" in res.stdout, res.stdout


def test_a_lower_wing_importing_a_higher_one_breaks_the_layers_contract(tmp_path):
    """The contracts catch what they promise: a copy of the package whose base imports the course fails."""
    shutil.copytree(ROOT / "helpers", tmp_path / "helpers", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    io = tmp_path / "helpers" / "base" / "io.py"
    io.write_text(io.read_text() + "\n\ndef _upward():\n    from ..course import plots  # noqa: F401\n")
    res = _lint_imports(tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Wings: commands > course > use > training > data > base BROKEN" in res.stdout
    assert "helpers.base.io -> helpers.course.plots" in res.stdout


def test_no_import_cycles_and_no_module_over_600_lines():
    graph = grimp.build_graph("helpers")
    cycles = sorted({(a, b) for a in graph.modules for b in graph.find_modules_directly_imported_by(a)
                     if graph.chain_exists(importer=b, imported=a)})
    assert not cycles, f"modules that import each other (directly or through others): {cycles}"
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in (ROOT / "helpers").rglob("*.py")}
    assert not {p: n for p, n in sizes.items() if n > MAX_LINES}, sorted(sizes.items(), key=lambda x: -x[1])[:3]
    assert sorted(p.name for p in (ROOT / "helpers").iterdir() if p.is_dir() and p.name != "__pycache__") == \
        sorted(WINGS)


def test_the_wheel_carries_every_module_of_every_wing(tmp_path):
    source_tree = tmp_path / "src"  # built from a copy: setuptools writes build/ beside the sources
    shutil.copytree(ROOT / "helpers", source_tree / "helpers", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source_tree)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source_tree), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("helpers/")}
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / "helpers").rglob("*.py")}
    assert source == shipped, f"missing from the wheel: {sorted(source - shipped)}"


def test_every_script_imports(monkeypatch):
    """The scripts use the package's current places (importing runs no work: each has a main guard)."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    for path in sorted((ROOT / "scripts").glob("*.py")):
        assert "if __name__ == \"__main__\":" in path.read_text(), f"{path.name} works when imported"
        spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


@pytest.mark.parametrize("setting, asks", [(None, False), ("0", True)])
def test_albumentations_asks_pypi_for_a_newer_release_only_when_the_user_keeps_its_check(setting, asks, monkeypatch):
    """Importing helpers turns off albumentations' web request at import (every kernel and worker made one);
    NO_ALBUMENTATIONS_UPDATE=0 keeps it. albumentations' own __init__ runs again here, with its request recorded."""
    import albumentations
    import albumentations.check_version as check

    monkeypatch.delenv("NO_ALBUMENTATIONS_UPDATE", raising=False)
    if setting is not None:
        monkeypatch.setenv("NO_ALBUMENTATIONS_UPDATE", setting)
    importlib.reload(helpers)  # as a fresh process importing the package
    asked = []
    monkeypatch.setattr(check, "fetch_version_info", lambda: asked.append(1) or "")
    importlib.reload(albumentations)
    assert bool(asked) is asks


def test_the_public_surface_works(trained_run, tmp_path):
    """`import helpers` gives train/evaluate/ensemble/predict and the config; the trained_run fixture itself
    trained through `helpers.train`."""
    assert {"TrainConfig", "UserError", "make_config", "train", "lr_find", "evaluate", "ensemble", "predict",
            "get_device", "seed_everything"} <= set(dir(helpers))
    assert helpers.make_config({"epochs": 2}) == helpers.TrainConfig(epochs=2)
    single = helpers.evaluate(str(trained_run), dataset="food-101", data_dir=str(TINY), num_workers=0, device="cpu")
    pair = helpers.ensemble([str(trained_run)] * 2, dataset="food-101", data_dir=str(TINY), num_workers=0,
                            device="cpu")
    assert single["n"] == 150 and pair["top1"] == pytest.approx(single["top1"])
    photos = sorted((TINY / "images" / "apple_pie").glob("*.jpg"))[:2]
    table = helpers.predict(str(trained_run), [str(p) for p in photos], top_k=3)
    assert len(table) == 2 and table["error"].isna().all()
    with pytest.raises(helpers.UserError, match="Unknown setting"):
        helpers.make_config({"epoch": 2})
    res = subprocess.run([sys.executable, "-m", "helpers", "--help"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    commands = ("train", "lr-find", "evaluate", "ensemble", "bench", "prepare", "check-data", "run-notebooks",
                "features", "probe", "doctor", "predict", "export")
    assert res.returncode == 0 and all(c in res.stdout for c in commands), res.stdout + res.stderr
