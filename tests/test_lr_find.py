"""The learning-rate finder (helpers.lr_find, `python -m helpers lr-find`): the range test through the real train
step on the tiny real photos at 64 px, fastai's suggestion rules on hand-made curves, the folder rules, and that
nothing on disk changes."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import helpers
from helpers.base.errors import UserError
from helpers.commands.cli import main
from helpers.training import lr_find
from helpers.training.models import create_model
from helpers.training.recipe import hold_backbone, make_optimizer

from .conftest import FAST, cli_flags

SMALL = {**FAST, "image_size": 64, "batch_size": 16}


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _rows(folder: Path) -> list[dict]:
    with open(folder / "lr_find.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def found(check_mps_module, trained_run, tmp_path_factory):
    """One short test that starts from a trained run (--init-from) and distils from it (--teacher), with the
    digests of that run's files taken before it."""
    before = _digests(trained_run)
    out = tmp_path_factory.mktemp("finder") / "lr-find"
    cfg = helpers.TrainConfig(**SMALL, init_from=str(trained_run), teacher=(str(trained_run),), max_steps=5,
                              output_dir=str(trained_run))  # the run's folder is the config's, never written
    # max_steps=5: "epochs" of 5 steps, so the 12 steps go through the data three times
    result = helpers.lr_find(cfg, output_dir=str(out), steps=12, start_lr=1e-6, end_lr=1e-3)
    return result, out, trained_run, before


@pytest.fixture(scope="module")
def check_mps_module():
    """The module's finder runs under Apple MPS's limits (helpers.mps_check), whatever the environment."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HELPERS_CHECK_MPS", "1")
        yield


def test_the_curve_has_a_row_per_step_at_growing_rates(found):
    result, out, _, _ = found
    rows = _rows(out)
    assert result.stopped == "steps" and len(result.rates) == len(rows) == 12
    rates = [float(r["rate"]) for r in rows]
    assert rates[0] == pytest.approx(1e-6) and rates[-1] == pytest.approx(1e-3)
    assert np.allclose(np.diff(np.log(rates)), math.log(1e3) / 11)  # exponential: a constant ratio per step
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    assert [float(r["smoothed"]) for r in rows] == pytest.approx(lr_find.smooth([float(r["loss"]) for r in rows]),
                                                                 rel=1e-5)
    assert result.backbone_held  # head_warmup_epochs=1 (the default): the first epoch's phase


def test_it_writes_only_its_files_and_changes_nothing_on_disk(found):
    result, out, run, before = found
    assert sorted(p.name for p in out.iterdir()) == ["lr_find.csv", "lr_find.json", "lr_find.png"]
    assert _digests(run) == before  # the --init-from and --teacher run: same files, same bytes
    saved = json.loads((out / "lr_find.json").read_text())
    assert saved["suggestion"] == result.suggestion == result.suggestions["valley"] and saved["rule"] == "valley"
    assert set(saved["suggestions"]) == {"valley", "steep", "minimum"} and saved["backbone_held"] is True
    assert 1e-6 <= saved["suggestions"]["valley"] <= 1e-3 and saved["config"]["init_from"] == str(run)
    assert saved["figure"] == str(out / "lr_find.png")


def test_each_group_gets_the_rate_times_its_scale():
    """The range test's schedule sets the head at the rate and the backbone at rate x backbone_lr_ratio, or 0
    while the backbone is held (the trainer's `hold_backbone`)."""
    model = create_model("tf_efficientnet_lite0", 10, pretrained="none")
    cfg = helpers.TrainConfig(backbone="tf_efficientnet_lite0", backbone_lr_ratio=0.1)
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    schedule = lr_find.RangeSchedule(optimizer, [1e-4, 1e-3, 1e-2])
    for held, backbone_scale in ((False, 0.1), (True, 0.0)):
        hold_backbone(optimizer, held)
        schedule.step_update(1)
        by_name = {g["name"]: g["lr"] for g in optimizer.param_groups}
        heads = [lr for name, lr in by_name.items() if name.startswith("head")]
        backbones = [lr for name, lr in by_name.items() if name.startswith("backbone")]
        assert heads and backbones
        assert heads == pytest.approx([1e-3] * len(heads))
        assert backbones == pytest.approx([1e-3 * backbone_scale] * len(backbones))


def test_the_cli_stops_at_divergence_and_prints_json_last(trained_run, tmp_path, capsys, check_mps):
    """A huge end rate with the whole network training, from a trained run's weights (--resume: a new stage):
    the smoothed loss passes 4x its best and the test stops before its steps; the last line of stdout is the
    JSON of lr_find.json; the run's files are unchanged."""
    before = _digests(trained_run)
    out = tmp_path / "finder"
    code = main(["lr-find", *cli_flags(SMALL), "--resume", str(trained_run), "--head-warmup-epochs", "0",
                 "--steps", "30", "--start-lr", "1e-5", "--end-lr", "1e4", "--output-dir", str(out)])
    assert code == 0 and _digests(trained_run) == before
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == json.loads((out / "lr_find.json").read_text())
    assert last["stopped"] == "diverged" and last["backbone_held"] is False
    rows = _rows(out)
    assert len(rows) == last["steps_run"] < 30
    smoothed = [float(r["smoothed"]) for r in rows]
    assert smoothed[-1] > 4 * min(smoothed) and all(s <= 4 * min(smoothed[: i + 1]) for i, s in enumerate(smoothed[:-1]))
    assert last["suggestion"] is not None and 1e-5 <= last["suggestion"] <= float(rows[-1]["rate"])


# ----------------------------------------------------------------------------------------------------------------
# fastai's rules on hand-made curves


def test_smoothing_is_fastais_debiased_moving_average():
    assert lr_find.smooth([2.0] * 5) == pytest.approx([2.0] * 5)  # debiasing: a constant stays itself
    s = lr_find.smooth([1.0, 3.0])
    assert s[1] == pytest.approx((0.98 * 0.02 * 1.0 + 0.02 * 3.0) / (1 - 0.98**2))


def test_the_rules_on_a_curve_with_a_known_valley():
    """Flat at 3 for 10 rows, down by 0.1 a row for 20 rows (rows 10-29) with one drop of 0.5 (rows 19 to 20),
    then up by 1 a row. valley: the longest decreasing run is rows 9-29 (21 rows: fastai's start is 29 - 21 = 8),
    L = 21, the point 8 + 7 + 3 = row 18; steep: the 0.5 drop at row 19; minimum: row 29's rate / 10."""
    rates = np.geomspace(1e-5, 1.0, 40)
    losses = [3.0] * 10
    for i in range(10, 30):
        losses.append(losses[-1] - (0.5 if i == 20 else 0.1))
    losses += [losses[-1] + (i + 1) for i in range(10)]
    losses = np.array(losses)
    assert lr_find.valley(rates, losses) == (pytest.approx(rates[18]), 18)
    assert lr_find.steep(rates, losses) == (pytest.approx(rates[19]), 19)
    assert lr_find.minimum(rates, losses) == (pytest.approx(rates[29] / 10), 29)


def test_suggest_leaves_out_the_ends_and_stops_at_nan():
    """As fastai's lr_find: rows steps // 10 to -5 only (a dip in the first tenth or the last 5 is not the
    minimum), and nothing from the first NaN on."""
    rates = list(np.geomspace(1e-6, 1.0, 30))
    losses = [0.1, 0.1, 0.1] + [2.0 - 0.05 * i for i in range(22)] + [0.01] * 5  # rows 0-2 and 25-29 left out
    suggestions, points = lr_find.suggest(rates, losses, 30)
    assert suggestions["minimum"] == pytest.approx(rates[24] / 10) and points["minimum"] == (rates[24], losses[24])
    with_nan = losses[:15] + [math.nan] + losses[16:]
    suggestions, _ = lr_find.suggest(rates, with_nan, 30)
    assert suggestions["minimum"] == pytest.approx(rates[14] / 10)
    assert lr_find.suggest(rates[:7], losses[:7], 30) == ({}, {})  # diverged at once: no suggestion


# ----------------------------------------------------------------------------------------------------------------
# The folder rules


def test_a_run_folder_is_refused_with_exit_2(trained_run, capsys):
    before = _digests(trained_run)
    code = main(["lr-find", *cli_flags(SMALL), "--steps", "10", "--output-dir", str(trained_run)])
    err = capsys.readouterr().err
    assert code == 2 and str(trained_run) in err and "holds a training run" in err and "never writes into a run" in err
    assert _digests(trained_run) == before


def test_a_folder_of_other_files_is_refused_and_an_earlier_finders_is_reused(tmp_path, capsys):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code = main(["lr-find", *cli_flags(SMALL), "--steps", "10", "--output-dir", str(other)])
    err = capsys.readouterr().err
    assert code == 2 and "notes.txt" in err and str(other) in err
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    started = tmp_path / "started-run"  # a run that has written only its config so far
    started.mkdir()
    (started / "config.yaml").write_text("epochs: 1\n")
    with pytest.raises(UserError, match="config.yaml"):
        lr_find.check_output(started)
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    for name in ("lr_find.csv", "lr_find.json", "lr_find.png"):
        (earlier / name).write_text("")
    assert lr_find.check_output(earlier) == earlier
    assert lr_find.check_output(tmp_path / "new") == tmp_path / "new"


def test_bad_ranges_are_refused(tmp_path):
    cfg = helpers.TrainConfig(**SMALL)
    with pytest.raises(UserError, match="start < end"):
        helpers.lr_find(cfg, output_dir=str(tmp_path / "a"), start_lr=1.0, end_lr=1e-3)
    with pytest.raises(UserError, match="--steps must be at least"):
        helpers.lr_find(cfg, output_dir=str(tmp_path / "b"), steps=3)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
