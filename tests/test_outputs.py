"""A run folder is written only by its run, and every input that used to end in a traceback ends in exit 2.

- A continued run trains in its checkpoint's folder, whatever folder a copied config.yaml names; a new stage
  writes only into a folder that holds no other run.
- No output of predict, evaluate, ensemble, features, probe or train lands on a file (or folder) a run owns.
- A weights file is checked against its run (classes, SHA-256 of best.pt, settings) before it is used; every
  `--model` value is a run, never taken for a photo; predictions name the models that answered.
- run-notebooks checks -p values (YAML, the device, the kind of value) before any notebook runs and names the
  cell a --cell-timeout stopped; doctor refuses a batch of one and does not call a CPU ready for the night;
  prepare's interrupt says how prepare continues.

All on real runs of the micro set (lite0, 64 px, 2 steps an epoch) and real notebooks in a real kernel.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import helpers
from helpers.base.config import TrainConfig
from helpers.base.errors import UserError
from helpers.commands import doctor
from helpers.commands.cli import main
from helpers.data import prepare
from helpers.training import checkpoint
from helpers.use.features import extract_features

from .conftest import ROOT, TINY, cli_flags
from .test_runner_inputs import _pair

CONFIG = dict(dataset="food-101", backbone="tf_efficientnet_lite0", pretrained="offline", image_size=64,
              num_workers=0, batch_size=8, epochs=2, max_steps=2, warmup_epochs=0.5, checkpoint_every=0,
              device="cpu", seed=7)
FLAGS = cli_flags(CONFIG)


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with the SHA-256 of its bytes (to show that nothing in it changed)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _error(code: int, err: str, needle: str) -> None:
    assert code == 2 and "Traceback" not in err and needle in err, err[-3000:]


@pytest.fixture(scope="module")
def finished(micro, tmp_path_factory) -> Path:
    """A finished 2-epoch run of the micro set (10 classes)."""
    out = tmp_path_factory.mktemp("runs") / "a"
    helpers.train(TrainConfig(**CONFIG, data_dir=str(micro), output_dir=str(out)))
    return out


@pytest.fixture(scope="module")
def nine_run(micro, tmp_path_factory) -> Path:
    """A finished 1-epoch run of the micro set's first 9 classes: another run, another class set."""
    root = tmp_path_factory.mktemp("nine")
    data = root / "data"
    shutil.copytree(micro / "meta", data / "meta")
    (data / "images").symlink_to(micro / "images")
    classes = (data / "meta" / "classes.txt").read_text().split()[:9]
    (data / "meta" / "classes.txt").write_text("\n".join(classes) + "\n")
    for split in ("train", "test"):
        ids = (data / "meta" / f"{split}.txt").read_text().split()
        (data / "meta" / f"{split}.txt").write_text("\n".join(i for i in ids if i.split("/")[0] in classes) + "\n")
    helpers.train(TrainConfig(**{**CONFIG, "epochs": 1}, data_dir=str(data), output_dir=str(root / "run")))
    return root / "run"


@pytest.fixture(scope="module")
def features(micro, tmp_path_factory) -> Path:
    """lite0 features (64 px) of the micro set: a features folder."""
    out = tmp_path_factory.mktemp("features") / "lite0"
    extract_features(dataset="food-101", data_dir=str(micro), backbone="tf_efficientnet_lite0", pretrained="offline",
                     image_size=64, output_dir=out, num_workers=0, device="cpu")
    return out


@pytest.fixture()
def photos(micro) -> list[str]:
    ids = (micro / "meta" / "test.txt").read_text().split()[:3]
    return [str(micro / "images" / f"{i}.jpg") for i in ids]


# ----------------------------------------------------------------------------------------------------------------
# Training writes only into its own folder


def test_continuing_a_copied_run_trains_in_the_copy_not_where_its_config_points(finished, tmp_path, caplog):
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    os.replace(copy / checkpoint.PREVIOUS, copy / checkpoint.LAST)  # the copy was taken after epoch 1
    assert yaml.safe_load((copy / "config.yaml").read_text())["output_dir"] == str(finished)
    before = _snapshot(finished)
    assert main(["train", "--config", str(copy / "config.yaml"), "--resume", str(copy)]) == 0
    assert _snapshot(finished) == before  # the run the copied config names: not a byte changed
    assert f"continues that run in its own folder {copy}" in caplog.text
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["output_dir"] == str(copy) and summary["epochs_run"] == 2
    assert yaml.safe_load((copy / "config.yaml").read_text())["output_dir"] == str(copy)
    rows = list(csv.DictReader((copy / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]


def test_continuing_a_finished_run_keeps_its_test_result_unless_its_test_never_ran(finished, micro, tmp_path, caplog):
    """A finished run continued (a course's reused run, a second --resume) returns its summary without testing
    the same weights again: not a byte of the folder changes. Killed after its last checkpoint but before its
    test (no summary.json), it is tested then, with the same result."""
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    before = _snapshot(copy)
    cfg = TrainConfig(**CONFIG, data_dir=str(micro), output_dir=str(copy), resume=str(copy))
    with caplog.at_level(logging.INFO, logger="helpers"):
        summary = helpers.train(cfg)
    assert _snapshot(copy) == before and "finished earlier (2 epochs): its test result stands" in caplog.text
    saved = json.loads((copy / "summary.json").read_text())
    assert summary == {**{k: v for k, v in saved.items() if k != "weights"}, "output_dir": str(copy)}
    (copy / "summary.json").unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="helpers"):
        again = helpers.train(cfg)
    assert "finished earlier" not in caplog.text and "Test top-1" in caplog.text
    assert again["test_top1"] == summary["test_top1"] and again["test_n"] == summary["test_n"] > 0
    assert json.loads((copy / "summary.json").read_text())["weights"] == saved["weights"]


def test_a_new_stage_writes_only_into_a_folder_that_holds_no_other_run(finished, micro, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(finished, other)  # another finished run, in its own folder
    before = _snapshot(other)
    stage = ["train", *FLAGS, "--data-dir", str(micro), "--lr", "0.001", "--resume", str(finished / "best.pt")]
    code = main([*stage, "--output-dir", str(other)])
    _error(code, capsys.readouterr().err, f"--output-dir {other} already holds another run. A new stage from")
    assert _snapshot(other) == before


# ----------------------------------------------------------------------------------------------------------------
# No output lands on what a run owns


def test_no_output_lands_on_a_file_a_run_owns(finished, features, micro, photos, tmp_path, capsys):
    run = tmp_path / "a"
    shutil.copytree(finished, run)
    before = {run: _snapshot(run), features: _snapshot(features)}
    lite0 = ["--backbone", "tf_efficientnet_lite0", "--pretrained", "offline", "--image-size", "64"]
    cases = [
        (["predict", "--model", str(run), *photos, "--output", str(run / "metrics.csv")],
         f"--output {run / 'metrics.csv'} is a file that the training run in {run} writes itself"),
        (["evaluate", "--checkpoint", str(run), "--data-dir", str(micro), "--predictions", str(run / "best.pt")],
         f"--predictions {run / 'best.pt'} is a file that the training run"),
        (["ensemble", "--models", str(run), str(run), "--data-dir", str(micro), "--predictions",
          str(run / "summary.json")], "--predictions"),
        (["features", "--data-dir", str(micro), *lite0, "--output-dir", str(features / ".chunks")],
         f"is a folder that the features folder in {features} writes itself"),
        (["probe", "--features", str(features), "--output-dir", str(features / ".chunks" / "probe")],
         f"is inside {features / '.chunks'}, a folder that the features folder"),
        (["train", *FLAGS, "--data-dir", str(micro), "--output-dir", str(features)],
         f"--output-dir {features} holds a features folder, not a training run"),
    ]
    for argv, needle in cases:
        argv += ["--device", "cpu"] if argv[0] != "train" else []
        _error(main(argv), capsys.readouterr().err, needle)
        assert {folder: _snapshot(folder) for folder in before} == before, argv
    assert not (features / ".chunks").exists()


def test_what_a_run_owns_is_named_once(finished, features, tmp_path):
    """The definition behind every command's check: owned names in a run folder, free names beside them."""
    from helpers.training.run_folder import check_output_path, run_kind

    assert run_kind(finished) == "training run" and run_kind(features) == "features folder"
    assert run_kind(tmp_path) is None
    for name in ("config.yaml", "last.pt", ".last.pt.tmp", "metrics.csv", "summary.json", "bad_files.txt",
                 "test_predictions.pt"):
        with pytest.raises(UserError, match="a run folder is written only by its run"):
            check_output_path(finished / name, "--output")
    (tmp_path / "link.csv").symlink_to(finished / "metrics.csv")  # another name for an owned file
    with pytest.raises(UserError, match="training run"):
        check_output_path(tmp_path / "link.csv")
    check_output_path(finished / "predictions.csv")  # beside a run: the command's own file
    check_output_path(tmp_path / "metrics.csv")  # not a run folder


# ----------------------------------------------------------------------------------------------------------------
# A run's weights are its own


def test_weights_of_another_run_in_a_run_folder_are_refused_before_use(finished, nine_run, micro, photos,
                                                                       tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    run = tmp_path / "a"
    shutil.copytree(finished, run)
    shutil.copyfile(nine_run / "best.pt", run / "best.pt")  # another run's weights (9 classes) dropped in
    onnx = tmp_path / "a.onnx"
    for argv in (["predict", "--model", str(run), *photos, "--device", "cpu"],
                 ["evaluate", "--checkpoint", str(run), "--data-dir", str(micro), "--device", "cpu"],
                 ["export", "--model", str(run), "--output", str(onnx)]):
        _error(main(argv), capsys.readouterr().err, f"{run / 'best.pt'} is a model of 9 classes")
    assert not onnx.exists()
    # The same classes and settings, other weights (epoch 1's): the SHA-256 in summary.json tells them apart.
    shutil.copyfile(finished / checkpoint.PREVIOUS, run / "best.pt")
    _error(main(["predict", "--model", str(run), *photos, "--device", "cpu"]), capsys.readouterr().err,
           "is not the best.pt its run wrote")
    # A run finished before summary.json recorded its weights: checked against config.yaml, and said so.
    summary = json.loads((run / "summary.json").read_text())
    del summary["weights"]
    (run / "summary.json").write_text(json.dumps(summary))
    shutil.copyfile(nine_run / "best.pt", run / "best.pt")
    _error(main(["predict", "--model", str(run), *photos, "--device", "cpu"]), capsys.readouterr().err,
           "was trained with other settings than the run in")
    shutil.copyfile(finished / "best.pt", run / "best.pt")
    assert main(["predict", "--model", str(run), *photos, "--device", "cpu", "--num-workers", "0"]) == 0
    assert "written before runs recorded the SHA-256 of their best.pt" in caplog.text


def test_every_model_value_is_a_run_and_predictions_name_the_models(finished, photos, tmp_path, capsys):
    typo = f"{finished}_typo"
    flags = ["--device", "cpu", "--num-workers", "0"]
    _error(main(["predict", "--model", str(finished), typo, *photos, *flags]), capsys.readouterr().err,
           f"--model {typo} is not a run folder")
    _error(main(["predict", "--model", str(finished), photos[0], str(finished), *flags]), capsys.readouterr().err,
           f"{finished} is a run, given among the photos")
    assert main(["predict", "--model", str(finished), *photos, *flags]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3 and all(r["models"] == [str(finished)] for r in lines)
    out = tmp_path / "p.csv"
    assert main(["predict", "--model", str(finished), str(finished / "best.pt"), *photos, "--output", str(out),
                 *flags]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3 and {r["models"] for r in rows} == {f"{finished} + {finished / 'best.pt'}"}


# ----------------------------------------------------------------------------------------------------------------
# run-notebooks, doctor, prepare: exit 2 with the fix named, hints that hold


PARAMETERS = 'overrides = {}\ndevice = "auto"\n\n# %%\nsettings = {"epochs": 3, **overrides}\n'


@pytest.mark.parametrize("value,needle", [
    ("{epochs: 1", "-p overrides '{epochs: 1' is not valid YAML"),
    ("5", "-p overrides 5 is a number, but overrides is a mapping in the notebooks"),
])
def test_run_notebooks_checks_p_values_before_any_notebook_runs(value, needle, tmp_path, capsys):
    ipynb = _pair(tmp_path / "nb", "00_p", PARAMETERS)
    out = tmp_path / "seq"
    code = main(["run-notebooks", "--notebooks", str(ipynb.parent), "--out", str(out), "-p", "overrides", value])
    _error(code, capsys.readouterr().err, needle)
    assert not out.exists()


def test_run_notebooks_refuses_a_device_that_is_not_one(tmp_path, capsys):
    ipynb = _pair(tmp_path / "nb", "00_p", PARAMETERS)
    out = tmp_path / "seq"
    code = main(["run-notebooks", "--notebooks", str(ipynb.parent), "--out", str(out), "-p", "device", "gpu"])
    _error(code, capsys.readouterr().err, "-p device 'gpu' is not a device: give one of auto, cuda, mps, cpu")
    assert not out.exists()


def test_a_cell_timeout_names_the_cell_it_stopped(tmp_path):
    ipynb = _pair(tmp_path / "nb", "00_slow", "pause = 30\n\n# %%\nx = 1\n\n# %%\nimport time\ntime.sleep(pause)\n")
    res = subprocess.run([sys.executable, "-m", "helpers", "run-notebooks", "--notebooks", str(ipynb.parent), "--out",
                          str(tmp_path / "seq"), "--cell-timeout", "3"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    error = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "00_slow failed in cell 3 (In [" in error and "`import time`" in error, error
    assert "the cell ran longer than 3 s (--cell-timeout 3)" in error and "before any cell ran" not in error, error


def test_doctor_refuses_a_batch_of_one_before_any_work(capsys):
    code = main(["doctor", "--image-size", "32", "--batch-size", "1", "--data-dir", str(TINY)])
    _error(code, capsys.readouterr().err, "--batch-size must be at least 2, got 1")


def test_doctor_on_the_cpu_says_it_compared_the_cpu_with_itself(capsys):
    assert main(["doctor", "--device", "cpu", "--backbone", "tf_efficientnet_lite0", "--image-size", "32",
                 "--batch-size", "2", "--steps", "1", "--bench-steps", "0", "--data-dir", str(TINY)]) == 0
    out = capsys.readouterr().out
    assert "ready for a night" not in out and "the CPU was compared with itself" in out
    auto = doctor.verdict("auto", torch.device("cpu"), [], 5.0)  # `auto` on a machine without cuda or mps
    assert auto.startswith("No GPU found") and "ready" not in auto


def test_an_interrupted_prepare_says_how_prepare_continues(micro, tmp_path, monkeypatch, capsys):
    real, calls = prepare._prepare_one, []

    def stop_at_the_third(job):
        calls.append(job)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job)

    argv = ["prepare", "--data-dir", str(micro), "--out", str(tmp_path / "small"), "--short-side", "48",
            "--workers", "1"]
    monkeypatch.setattr(prepare, "_prepare_one", stop_at_the_third)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "--resume" not in err and "prepare stopped after 2 of 100 images" in err
    assert "Continue with the same command (without --overwrite)" in err
    monkeypatch.setattr(prepare, "_prepare_one", real)
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["already_done"] == 2
