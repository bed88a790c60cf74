"""`run-notebooks --rehearse`: the full profile's exact chain (the plan's backbones, every cross-notebook
dependency, the ensemble of models with different input sizes, the teacher) with random weights, one epoch of
two steps per run and small images, on the 101-class thumbnails in the repo: what would break an overnight run
breaks here in minutes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import yaml

from helpers import course

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


def test_rehearsal_runs_the_full_profiles_chain(tmp_path):
    out = tmp_path / "rehearsal"
    # 10_beyond_95's rehearsal computes features of SigLIP SO400M, CLIP ViT-L and EVA-02 with random weights and
    # fine-tunes EVA-02: 9 minutes on 2 CPU cores, too long for CI. It ran by hand (README); 00-10 run here.
    plan = ",".join(n for n in course.notebooks() if n != "10_beyond_95")
    res = subprocess.run([sys.executable, "-m", "helpers", "run-notebooks", "--rehearse", "--out", str(out),
                          "--only", plan, "-p", "ledger", str(out / "ledger.csv")], cwd=ROOT, capture_output=True,
                         text=True, timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    state = json.loads((out / "state.json").read_text())
    assert state["profile"] == "full" and state["parameters"]["rehearse"] is True
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
