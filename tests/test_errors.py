"""Bad input ends with one paragraph on stderr and exit code 2, never a traceback, and writes nothing."""

from __future__ import annotations

import pickle

import pytest

from helpers.base.errors import UserError
from helpers.training import checkpoint

from .conftest import TINY, run_cli

TRAIN = ["train", "--dataset", "food-101", "--backbone", "tf_efficientnet_lite0", "--pretrained", "offline",
         "--epochs", "1", "--image-size", "64", "--num-workers", "0"]


def _assert_clean_error(res, needle: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    error_lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, res.stderr
    assert needle in error_lines[0], error_lines[0]


@pytest.mark.parametrize("extra, needle", [
    (["--data-dir", "/nonexistent/food"], "does not exist"),
    (["--data-dir", str(TINY / "images")], "meta/classes.txt is missing"),
    (["--data-dir", str(TINY), "--backbone", "efficientnet_b9x"], "Close matches: efficientnet_b"),
    (["--data-dir", str(TINY), "--image-size", "0"], "--image-size must be"),
    (["--data-dir", str(TINY), "--patience", "3"], "without --early-stopping"),
    (["--data-dir", str(TINY), "--mixup", "--mixup-alpha", "0"], "--mixup-alpha must be > 0"),
    (["--data-dir", str(TINY), "--device", "cuda"], "--device cuda"),
    (["--data-dir", str(TINY), "--batch-size", "0"], "--batch-size must be"),
])
def test_bad_train_input_is_one_paragraph_and_exit_2(tmp_path, extra, needle):
    out = tmp_path / "out"
    res = run_cli(*TRAIN, "--output-dir", str(out), *extra)
    _assert_clean_error(res, needle)
    assert not out.exists(), "nothing may be written for bad input"


def test_missing_meta_file_names_the_file(tiny_copy, tmp_path):
    (tiny_copy / "meta" / "test.txt").unlink()
    res = run_cli(*TRAIN, "--data-dir", str(tiny_copy), "--output-dir", str(tmp_path / "out"))
    _assert_clean_error(res, "test.txt is missing")


def test_checkpoint_from_another_backbone(trained_run, tmp_path):
    res = run_cli(*TRAIN, "--data-dir", str(TINY), "--backbone", "tf_efficientnet_lite1", "--resume", str(trained_run),
                  "--output-dir", str(tmp_path / "out"))
    _assert_clean_error(res, "is a tf_efficientnet_lite0 checkpoint")
    res = run_cli(*TRAIN, "--data-dir", str(TINY), "--backbone", "resnet18", "--pretrained", str(trained_run / "best.pt"),
                  "--output-dir", str(tmp_path / "out2"))
    _assert_clean_error(res, "does not fit resnet18")
    assert "It is a checkpoint of tf_efficientnet_lite0" in res.stderr


def test_unknown_flag_is_an_argparse_error():
    res = run_cli("train", "--batchsize", "16")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "--batchsize" in res.stderr


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"model": _Evil(marker), "config": {}}, f)
    with pytest.raises(UserError, match="Refused to load"):
        checkpoint.load(bad)
    assert not marker.exists()
    res = run_cli("evaluate", "--checkpoint", str(bad), "--dataset", "food-101", "--data-dir", str(TINY))
    _assert_clean_error(res, "Refused to load")
    assert not marker.exists()
    # the same file unpickled without protection does run code: the test's file is really malicious
    with open(bad, "rb") as f:
        pickle.load(f)
    assert marker.exists()


def test_damaged_checkpoint_is_a_clear_error(tmp_path, trained_run):
    broken = tmp_path / "broken.pt"
    broken.write_bytes((trained_run / "best.pt").read_bytes()[:5000])
    with pytest.raises(UserError, match="not a readable checkpoint"):
        checkpoint.load(broken)
