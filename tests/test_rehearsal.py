"""`run-notebooks --rehearse`: the full profile's exact chain (the plan's backbones, every cross-notebook
dependency, the ensemble of models with different input sizes, the teacher) with random weights, one epoch of
two steps per run and small images, on the 101-class thumbnails in the repo: what would break an overnight run
breaks here in minutes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from helpers.course import course

from .conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
THUMBS = ROOT / "data" / "food-101-thumbs"
# The full profile's runs and the backbones the plan gives them (the rehearsal keeps both).
FULL_RUNS = {
    "01_baseline/baseline": "efficientnet_b0", "02_b3_upgrade/b3": "efficientnet_b3",
    "02_b3_upgrade/resnet50": "resnet50", "03_augmentations/schedule": "efficientnet_b3",
    "03_augmentations/advanced": "efficientnet_b3", "04_mixup_cutmix/mixup": "efficientnet_b3",
    "05_two_stage/stage1": "efficientnet_b3", "05_two_stage/stage2": "efficientnet_b3",
    "07_high_resolution/hires": "efficientnet_b3", "08_ensemble/b4": "efficientnet_b4",
    "08_ensemble/resnet101": "resnet101", "09_distillation/student": "efficientnet_b3",
}


def test_the_thumbnail_set_has_101_classes_in_the_official_layout_and_is_small():
    classes = (THUMBS / "meta" / "classes.txt").read_text().split()
    assert len(classes) == 101
    for split, per_class in (("train", 3), ("test", 1)):
        ids = (THUMBS / "meta" / f"{split}.txt").read_text().split()
        assert len(ids) == 101 * per_class and {i.split("/")[0] for i in ids} == set(classes)
        assert all((THUMBS / "images" / f"{i}.jpg").is_file() for i in ids)
    assert sum(p.stat().st_size for p in THUMBS.rglob("*") if p.is_file()) < 2_000_000


@pytest.mark.slow
def test_rehearsal_runs_the_full_profiles_chain(tmp_path):
    out = tmp_path / "rehearsal"
    # 10_beyond_95's rehearsal computes features of SigLIP SO400M, CLIP ViT-L and EVA-02 with random weights and
    # fine-tunes EVA-02: 9 minutes on 2 CPU cores, too long for CI. It ran by hand (README); 00-10 run here.
    plan = ",".join(n for n in course.notebooks() if n != "10_beyond_95")
    res = run_cli("run-notebooks", "--rehearse", "--out", str(out), "--only", plan, "--ledger", str(out / "ledger.csv"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    state = json.loads((out / "state.json").read_text())
    assert state["profile"] == "full" and state["rehearse"] is True
    assert all(s["state"] == "done" for s in state["status"].values()) and len(state["status"]) >= 11
    for run, backbone in FULL_RUNS.items():
        cfg = yaml.safe_load((out / "models" / run / "config.yaml").read_text())
        assert (cfg["backbone"], cfg["pretrained"], cfg["max_steps"]) == (backbone, "none", 2), run
        assert Path(cfg["data_dir"]) == THUMBS
    sizes = {run: yaml.safe_load((out / "models" / run / "config.yaml").read_text())["image_size"]
             for run in ("07_high_resolution/hires", "08_ensemble/b4", "08_ensemble/resnet101")}
    assert sizes == {"07_high_resolution/hires": 96, "08_ensemble/b4": 95, "08_ensemble/resnet101": 56}
    student = yaml.safe_load((out / "models" / "09_distillation" / "student" / "config.yaml").read_text())
    assert student["teacher"] == [str(out / "models" / n / r) for n, r in
                                  (("07_high_resolution", "hires"), ("08_ensemble", "b4"), ("08_ensemble", "resnet101"))]
    with open(out / "ledger.csv") as f:
        rows = {r["phase"]: r for r in csv.DictReader(f)}
    assert set(rows) >= {"baseline", "2.1", "2.2", "3.1", "3.2", "3.3", "3.4", "3.5", "4.1", "4.2", "4.3"}
    assert rows["4.2"]["backbone"] == "ensemble of 3" and rows["baseline"]["profile"] == "full-rehearsal"
    assert all(int(float(r["test_n"])) == 101 for r in rows.values())


def _configured_runs(notebook: Path) -> set[str]:
    """The run names a notebook trains: the literal first arguments of its `c.config("name", ...)` calls."""
    import ast

    tree = ast.parse(notebook.with_suffix(".py").read_text())
    return {node.args[0].value for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "attr", None) == "config" and node.args and isinstance(node.args[0], ast.Constant)}


@pytest.mark.parametrize("profile", ["medium", "full"])
def test_the_profiles_plan_is_complete_and_valid_in_every_notebook(profile):
    """Every notebook has settings for the profile that make valid configs, in the rehearsal and as they are
    (medium: with the offline lite weights), and every run a notebook needs is trained by an earlier notebook:
    the static half of a rehearsal, in seconds."""
    from helpers.base.config import TrainConfig, make_config
    from helpers.course.parameters import parameters
    from helpers.course.runner import required_runs

    made: set[tuple[str, str]] = set()
    for name in course.notebooks():
        path = ROOT / "notebooks" / f"{name}.ipynb"
        p = parameters(path)
        for key, value in p.items():
            if isinstance(value, dict) and "demo" in value:
                assert profile in value, f"{name}: {key} has no {profile} entry"
        fields = set(TrainConfig.__dataclass_fields__)
        extras = {}  # the notebook's technique literals (TECHNIQUE, RECIPE, SCHEDULE, STAGE2, ...) over the settings
        for key, value in p.items():
            if key.isupper() and isinstance(value, dict) and value and set(value) <= fields:
                extras.update(value)
        settings = p.get("SETTINGS", {}).get(profile, {})
        runs = settings if all(isinstance(v, dict) for v in settings.values()) else {"run": settings}
        for values in runs.values():
            if not values:
                continue
            if profile == "medium":
                assert values["pretrained"] == "offline" and values["backbone"].startswith("tf_efficientnet_lite")
            make_config({**values, **extras, "dataset": "food-101", "data_dir": str(THUMBS)})
            make_config({**course.rehearsal({**values, **extras}), "dataset": "food-101", "data_dir": str(THUMBS)})
        for needed in required_runs(path, profile):
            assert needed in made, f"{name} needs {needed}, which no earlier notebook trains in {profile}"
        made |= {(name, run) for run in _configured_runs(path) | set(runs if profile == "full" else ())}


@pytest.mark.slow
def test_medium_rehearses_with_random_weights_on_the_thumbnails(tmp_path):
    out = tmp_path / "rehearsal-medium"
    res = run_cli("run-notebooks", "--rehearse", "--profile", "medium", "--out", str(out), "--only", "01",
                  "--ledger", str(out / "ledger.csv"))  # in this process: the notebook's kernel is the process
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    state = json.loads((out / "state.json").read_text())
    assert state["profile"] == "medium" and state["rehearse"] is True
    cfg = yaml.safe_load((out / "models" / "01_baseline" / "baseline" / "config.yaml").read_text())
    assert (cfg["backbone"], cfg["pretrained"], cfg["max_steps"], cfg["image_size"]) == \
        ("tf_efficientnet_lite0", "none", 2, 56)  # medium's 224 px, a quarter of it
    assert Path(cfg["data_dir"]) == THUMBS
    with open(out / "ledger.csv") as f:
        assert [r["profile"] for r in csv.DictReader(f)] == ["medium-rehearsal"]
    res = run_cli("run-notebooks", "--rehearse", "--profile", "demo")
    assert res.returncode == 2 and "--rehearse rehearses the full profile" in res.stderr
