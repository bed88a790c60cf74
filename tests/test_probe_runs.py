"""Probe runs that carry their backbone and weights that must fit (issue 19, cases 2, 3 and 5): a probe over
random-weight features evaluated twice, a relative `--pretrained` file used from another folder and then
replaced, a lite0 weights file given to lite1, two probes started at once into one folder."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.training.models import create_model

from .conftest import ROOT, run_cli
from .test_features import _features_args, _small_set


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m helpers ...` run from another working folder than the repository."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "helpers", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)


def _predicted(path: Path) -> dict[str, str]:
    with open(path, newline="") as f:
        return {Path(row["path"]).name: row["pred"] for row in csv.DictReader(f)}


def _evaluate(run: Path, data: Path, predictions: Path) -> subprocess.CompletedProcess:
    return run_cli("evaluate", "--checkpoint", str(run), "--data-dir", str(data), "--num-workers", "0", "--device",
                   "cpu", "--predictions", str(predictions))


def _agree(a: dict[str, str], b: dict[str, str]) -> int:
    assert a.keys() == b.keys()
    return sum(a[k] == b[k] for k in a)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return _small_set(tmp_path_factory.mktemp("data") / "small")


@pytest.fixture()
def lite0_file(tmp_path) -> Path:
    """The offline lite0 ImageNet weights as a plain state dict with its 1000-class head (adapted on load)."""
    path = tmp_path / "weights" / "lite0.pth"
    path.parent.mkdir()
    torch.save(create_model("tf_efficientnet_lite0", 1000, pretrained="offline").state_dict(), path)
    return path


def test_a_probe_over_random_weights_gives_its_own_predictions_at_every_load(small, tmp_path):
    feats, run = tmp_path / "feats", tmp_path / "probe"
    done = run_cli(*[a if a != "offline" else "none" for a in _features_args(small, feats)])
    assert done.returncode == 0, done.stderr[-2000:]
    done = run_cli("probe", "--features", str(feats), "--output-dir", str(run), "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    own = _predicted(run / "test_predictions.csv")
    for i in range(2):
        res = _evaluate(run, small, tmp_path / f"eval{i}.csv")
        assert res.returncode == 0, res.stderr[-2000:]
        assert _agree(_predicted(tmp_path / f"eval{i}.csv"), own) >= len(own) - 1  # float16 cache: a near tie


def test_a_relative_weights_file_works_from_another_folder_and_a_replaced_one_is_named(small, lite0_file,
                                                                                         tmp_path):
    feats, run = tmp_path / "feats", tmp_path / "probe"
    args = _features_args(small, feats)
    args[args.index("offline")] = "lite0.pth"  # relative to the working folder of this command only
    done = _cli(*args, cwd=lite0_file.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    done = run_cli("probe", "--features", str(feats), "--output-dir", str(run), "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    res = _evaluate(run, small, tmp_path / "eval.csv")  # from the repository's folder
    assert res.returncode == 0, res.stderr[-2000:]
    own = _predicted(run / "test_predictions.csv")
    assert _agree(_predicted(tmp_path / "eval.csv"), own) >= len(own) - 1
    state = torch.load(lite0_file)
    state["blocks.3.0.conv_pw.weight"] = state["blocks.3.0.conv_pw.weight"] * 1.5  # the file replaced after
    torch.save(state, lite0_file)
    res = _evaluate(run, small, tmp_path / "eval2.csv")
    assert res.returncode == 2 and "other weights" in res.stderr and str(lite0_file) in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    train = run_cli("train", "--data-dir", str(small), "--backbone", "tf_efficientnet_lite0", "--init-from", str(run),
                    "--image-size", "64", "--epochs", "1", "--max-steps", "1", "--batch-size", "8", "--num-workers",
                    "0", "--device", "cpu", "--output-dir", str(tmp_path / "lpft"))
    assert train.returncode == 2 and "other weights" in train.stderr, train.stderr[-2000:]


def test_a_weights_file_of_another_architecture_is_refused_naming_it(small, lite0_file, tmp_path):
    args = _features_args(small, tmp_path / "feats")
    args[args.index("offline")] = str(lite0_file)
    args[args.index("tf_efficientnet_lite0")] = "tf_efficientnet_lite1"
    done = run_cli(*args)
    assert done.returncode == 2 and "does not fit tf_efficientnet_lite1" in done.stderr, done.stderr[-2000:]
    assert "seems to be for tf_efficientnet_lite0" in done.stderr and "blocks." in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "feats").exists()
    train = run_cli("train", "--data-dir", str(small), "--backbone", "tf_efficientnet_lite1", "--pretrained",
                    str(lite0_file), "--image-size", "64", "--epochs", "1", "--max-steps", "1", "--batch-size", "8",
                    "--num-workers", "0", "--device", "cpu", "--output-dir", str(tmp_path / "run"))
    assert train.returncode == 2 and "seems to be for tf_efficientnet_lite0" in train.stderr, train.stderr[-2000:]


def test_two_probes_into_one_folder_the_second_exits_2(small, tmp_path):
    feats, run = tmp_path / "feats", tmp_path / "probe"
    done = run_cli(*_features_args(small, feats))
    assert done.returncode == 0, done.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "helpers", "probe", "--features", str(feats), "--output-dir", str(run), "--device",
            "cpu"]
    procs = [subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=600), p.communicate()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], [err[-1500:] for _, (_, err) in results]
    refused = next(err for code, (_, err) in results if code == 2)
    assert "is in use by process" in refused or "not an empty folder" in refused
    assert "Traceback" not in refused
