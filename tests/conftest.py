"""Shared fixtures: the tiny real Food-101 set shipped in the repo, and one short trained run reused by tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# The whole suite runs under Apple MPS's limits (helpers.base.mps_check): the variable is inherited by the CLI
# subprocesses and papermill kernels the tests start. HELPERS_CHECK_MPS=0 in the environment turns it off (to
# time it); a test turns it off with the `no_check_mps` fixture.
os.environ.setdefault("HELPERS_CHECK_MPS", "1")

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "data" / "food-101-tiny"

# Small, fast settings for lite0 on 2 CPU cores; the offline weights are real ImageNet weights.
FAST = dict(dataset="food-101", data_dir=str(TINY), backbone="tf_efficientnet_lite0", pretrained="offline",
            image_size=96, batch_size=32, num_workers=0, lr=3e-3, warmup_epochs=0.5)


def cli_flags(settings: dict) -> list[str]:
    """`python -m helpers train` flags for TrainConfig settings: {"image_size": 64, "freeze_bn": True} gives
    ["--image-size", "64", "--freeze-bn"]."""
    flags: list[str] = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    return flags


def run_cli(*args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python -m helpers ...` in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "helpers", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A 3-epoch lite0 run on the tiny set (96 px): a real trained model for evaluation tests."""
    import helpers

    out = tmp_path_factory.mktemp("runs") / "lite0"
    helpers.train(helpers.TrainConfig(**FAST, epochs=3, output_dir=str(out)))
    return out


@pytest.fixture()
def tiny_copy(tmp_path) -> Path:
    """A writable copy of the tiny set (for tests that damage or change data)."""
    dst = tmp_path / "food-101-tiny"
    shutil.copytree(TINY, dst)
    return dst


# The fault tests' shared fixtures (test_faults, test_survive): a micro dataset and an uninterrupted reference
# run, one per test module.
@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> Path:
    from .test_faults import make_micro

    return make_micro(tmp_path_factory.mktemp("data") / "micro")


@pytest.fixture(scope="module")
def baseline(micro, tmp_path_factory):
    from .test_faults import Baseline

    run = Baseline(micro, tmp_path_factory.mktemp("baseline") / "run")
    yield run
    if run.proc.poll() is None:
        run.proc.kill()
        run.proc.wait()


@pytest.fixture()
def check_mps(monkeypatch):
    """Device code in this test is checked against MPS's limits (helpers.base.mps_check), whatever the environment."""
    monkeypatch.setenv("HELPERS_CHECK_MPS", "1")


@pytest.fixture()
def no_check_mps(monkeypatch):
    """Device code in this test (and the processes it starts) runs without the MPS check."""
    monkeypatch.setenv("HELPERS_CHECK_MPS", "0")
