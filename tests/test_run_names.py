"""Where a notebook's run trains (issue 23, part 3): the course's run keeps its name, other settings train beside it
in a folder named after the change, a run equal to one the course finished is reused, and cached features and
probes are keyed by every setting they depend on. No training: the folders a run would hold are made by hand."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from helpers.course import course, run_names

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = dict(backbone="tf_efficientnet_lite0", pretrained="offline", image_size=112, batch_size=32, epochs=4,
                warmup_epochs=0.5, augment="basic", lr=3e-3)


def _finish(folder: str | Path) -> None:
    """What a finished run leaves for the course to see: its summary.json (and a best.pt for `require`)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / "summary.json").write_text(json.dumps({"val_top1": 50.0, "test_top1": 50.0}))
    (Path(folder) / "best.pt").write_bytes(b"")


@pytest.fixture()
def courses(tmp_path):
    def make(notebook: str) -> course.Course:
        return course.Course(notebook, "demo", output_dir=str(tmp_path / "course"), ledger=str(tmp_path / "l.csv"))
    return make


def test_a_changed_setting_trains_beside_the_courses_run_and_finds_its_folder_again(courses, caplog):
    c = courses("01_baseline")
    home = c.config("baseline", SETTINGS)
    assert Path(home.output_dir) == c.output_dir / "models" / "01_baseline" / "baseline" and home.resume == "auto"
    assert c.config("baseline", SETTINGS).output_dir == home.output_dir  # the same settings: the same run
    _finish(home.output_dir)
    with caplog.at_level(logging.INFO, logger="helpers"):
        tried = c.config("baseline", {**SETTINGS, "lr": 3e-4})
    assert Path(tried.output_dir).name == "baseline~lr=0.0003" and tried.lr == 3e-4
    assert "the course's baseline (models/01_baseline/baseline) has other settings; these (lr 0.003 → 0.0003) train " \
           "in models/01_baseline/baseline~lr=0.0003" in caplog.text
    assert c.config("baseline", {**SETTINGS, "lr": 3e-4}).output_dir == tried.output_dir  # again: the same folder
    two = c.config("baseline", {**SETTINGS, "lr": 3e-4, "epochs": 8})
    assert Path(two.output_dir).name == "baseline~epochs=8~lr=0.0003"
    assert c.config("baseline", SETTINGS).output_dir == home.output_dir  # put back: the course's run
    assert c.require("01_baseline", "baseline") == Path(home.output_dir)  # what later notebooks read
    # a course folder from before the index: the run's config.yaml says what it holds
    (c.output_dir / run_names.INDEX).unlink()
    import yaml

    (Path(home.output_dir) / "config.yaml").write_text(yaml.safe_dump({**SETTINGS, "freeze_bn": True}))
    assert Path(c.config("baseline", {**SETTINGS, "lr": 1e-3}).output_dir).name == "baseline~lr=0.001"


def test_a_run_equal_to_a_finished_run_of_the_course_is_reused(courses, caplog):
    b3 = courses("02_b3_upgrade").config("b3", SETTINGS)
    c = courses("03_augmentations")
    assert c.config("early", SETTINGS).output_dir == b3.output_dir  # named by 02 already: trained once, there
    _finish(b3.output_dir)
    with caplog.at_level(logging.INFO, logger="helpers"):
        control = c.config("longer", SETTINGS)
    assert control.output_dir == b3.output_dir and control.resume == "auto"
    assert "03_augmentations/longer: the same settings, data and start as models/02_b3_upgrade/b3, which this course " \
           "trained already: it is that run, reused rather than trained twice" in caplog.text
    assert c.config("longer", {**SETTINGS, "scheduler": "cosine_restart"}).output_dir != b3.output_dir
    # another data folder is another run
    other = course.Course("03_augmentations", "demo", data_dir=str(ROOT / "data" / "food-101-thumbs"),
                          output_dir=str(c.output_dir))
    assert other.config("longer", SETTINGS).output_dir != b3.output_dir


def test_a_stage_started_from_another_run_is_named_after_that_run(courses, tmp_path):
    c = courses("05_two_stage")
    stage1 = c.config("stage1", {**SETTINGS, "freeze_backbone": True})
    stage2 = c.config("stage2", SETTINGS, start_from=stage1.output_dir)
    assert stage2.resume == str(Path(stage1.output_dir) / "best.pt")  # a new stage from stage 1's weights
    _finish(stage2.output_dir)
    other = c.config("stage2", SETTINGS, start_from=tmp_path / "elsewhere" / "stage1-long")
    assert Path(other.output_dir).name == "stage2~start_from=stage1-long"


def test_folder_names_are_short_readable_and_hashed_only_when_long():
    assert run_names.folder_name("baseline", {"lr": 3e-4}) == "baseline~lr=0.0003"
    assert run_names.folder_name("b3", {"freeze_bn": False, "augment": "light"}) == "b3~augment=light~freeze_bn=False"
    long = {"teacher": ["/a/models/07/hires", "/a/models/08/b4"], "kd_temperature": 1.0, "kd_alpha": 0.25,
            "mixup_alpha": 1.0, "cutmix_alpha": 0.5, "label_smoothing": 0.05}
    name = run_names.folder_name("student", long)
    assert len(name) <= run_names.MAX_NAME and name.startswith("student~cutmix_alpha=0.5~")
    assert name == run_names.folder_name("student", dict(reversed(long.items())))  # deterministic
    assert name != run_names.folder_name("student", {**long, "kd_alpha": 0.3})


def test_cached_features_and_probes_are_keyed_by_every_setting(courses):
    c = courses("10_beyond_95")
    one = c.features_dir("lite0", "tf_efficientnet_lite0", "offline", 112, 1)
    assert one.name.startswith("features-lite0-112px-1view-") and one.parent.name == "10_beyond_95"
    assert c.features_dir("lite0", "tf_efficientnet_lite0", "offline", 112, 1) == one
    changed = [c.features_dir("lite0", "tf_efficientnet_lite0", "offline", 112, 2),  # views (10's Try it)
               c.features_dir("lite0", "tf_efficientnet_lite0", "offline", 128, 1),  # size
               c.features_dir("lite0", "tf_efficientnet_lite0", "none", 112, 1),  # weights
               c.features_dir("lite0", "tf_efficientnet_lite1", "offline", 112, 1),  # backbone under the same label
               course.Course("10_beyond_95", "demo", data_dir=str(ROOT / "data" / "food-101-thumbs"),
                             output_dir=str(c.output_dir)).features_dir("lite0", "tf_efficientnet_lite0", "offline",
                                                                        112, 1)]  # data
    assert len({one, *changed}) == 6
    assert c.probe_dir("lite0", [one]) != c.probe_dir("lite0", [changed[0]])
    assert c.probe_dir("concat", [one, changed[1]]).name.startswith("probe-concat-")
