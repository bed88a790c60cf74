"""Shared fixtures: the tiny real Food-101 set shipped in the repo, and one short trained run reused by tests."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import helpers  # first: its import-time settings (helpers/__init__.py) before a test module imports nbformat

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


def run_process(*args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python -m helpers ...` in a new Python process, as a user would: for what only a process shows
    (signals, locks between processes, environment inheritance, a process without torch, the entry point)."""
    return subprocess.run([sys.executable, "-m", "helpers", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def run_cli(*args: str, cwd: Path = ROOT, timeout: int | None = None) -> subprocess.CompletedProcess:
    """Run `python -m helpers ...` in this process (`cli.main(argv)`): the same exit code, stdout and stderr as
    `run_process`, without 5-15 s of a new Python importing torch. Logging goes to the captured stderr as
    `main`'s basicConfig sends it in a process; what `main` changes in the process (the SIGTERM handler, the
    open-file limit, the working directory, logging) is put back. `timeout` is accepted and ignored."""
    from helpers.commands import cli

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    package, root = logging.getLogger("helpers"), logging.getLogger()
    saved = (package.level, package.propagate, signal.getsignal(signal.SIGTERM),
             resource.getrlimit(resource.RLIMIT_NOFILE), os.getcwd(), root.handlers[:], root.level)
    package.addHandler(handler)
    package.setLevel(logging.DEBUG if "-v" in args or "--verbose" in args else logging.INFO)
    package.propagate = False  # as in a process: once to stderr, not again through pytest's root handlers
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(list(args))
            except SystemExit as exc:  # argparse: --help is 0, a bad flag 2
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        package.removeHandler(handler)
        package.setLevel(saved[0])
        package.propagate = saved[1]
        signal.signal(signal.SIGTERM, saved[2])
        resource.setrlimit(resource.RLIMIT_NOFILE, saved[3])
        os.chdir(saved[4])
        root.handlers[:], root.level = saved[5], saved[6]  # main's basicConfig, when pytest left root bare
    return subprocess.CompletedProcess(["python", "-m", "helpers", *args], code, out.getvalue(), err.getvalue())


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(items):
    """A test that reads the session's executed course (`ci_course`, minutes to make) is `slow`: `make test-fast`
    leaves it out; the other slow tests carry the mark themselves."""
    for item in items:
        if "ci_course" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A 3-epoch lite0 run on the tiny set (96 px): a real trained model for evaluation tests."""
    out = tmp_path_factory.mktemp("runs") / "lite0"
    helpers.train(helpers.TrainConfig(**FAST, epochs=3, output_dir=str(out)))
    return out


@pytest.fixture()
def tiny_copy(tmp_path) -> Path:
    """A writable copy of the tiny set (for tests that damage or change data)."""
    dst = tmp_path / "food-101-tiny"
    shutil.copytree(TINY, dst)
    return dst


# The course, executed once per test session (the ci profile on a five-class subset of the tiny set): every test
# that needs executed notebooks reads this one run; a test that runs a notebook again works on `copy_course`.
SUBSET_CLASSES, SUBSET_TRAIN, SUBSET_TEST = 5, 10, 4


def make_subset(dst: Path) -> Path:
    """A five-class copy of the tiny set (10 train and 4 test photos per class) in the official layout."""
    classes = (TINY / "meta" / "classes.txt").read_text().split()[:SUBSET_CLASSES]
    (dst / "meta").mkdir(parents=True)
    (dst / "meta" / "classes.txt").write_text("\n".join(classes) + "\n")
    for split, per_class in (("train", SUBSET_TRAIN), ("test", SUBSET_TEST)):
        ids = []
        for name in classes:
            ids += [i for i in (TINY / "meta" / f"{split}.txt").read_text().split() if i.startswith(f"{name}/")][:per_class]
        (dst / "meta" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for image_id in ids:
            target = dst / "images" / f"{image_id}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(TINY / "images" / f"{image_id}.jpg", target)
    return dst


@pytest.fixture(scope="session")
def subset(tmp_path_factory) -> Path:
    return make_subset(tmp_path_factory.mktemp("data") / "food-101-subset")


@pytest.fixture(scope="session")
def ci_course(tmp_path_factory, subset) -> tuple[Path, subprocess.CompletedProcess]:
    """The whole course, executed headless once per session: `run-notebooks --profile ci` on the subset (the
    notebooks in their own papermill kernels). Returns (the run folder, the command's result)."""
    out = tmp_path_factory.mktemp("course") / "ci"
    res = run_cli("run-notebooks", "--profile", "ci", "--out", str(out), "-p", "data_dir", str(subset),
                  "--ledger", str(out / "ledger.csv"))
    return out, res


def copy_course(course: Path, dst: Path) -> Path:
    """A copy of a course run folder that a test may change (a notebook run again into it): checkpoints and cached
    features hard-linked (they are only ever replaced, never written in place), the rest copied (the ledger is
    appended to in place); the sequence's state.json is left out, so run-notebooks may start a new sequence there."""
    def link_or_copy(src: str, dst_file: str) -> None:
        if Path(src).suffix in (".pt", ".safetensors", ".onnx"):
            os.link(src, dst_file)
        else:
            shutil.copy2(src, dst_file)

    shutil.copytree(course, dst, copy_function=link_or_copy, ignore=shutil.ignore_patterns("state.json"))
    return dst


def course_environment(folder: Path) -> dict[str, str]:
    """What run-notebooks tells a kernel that runs the course in `folder`: the run folder and the ledger."""
    return {"HELPERS_COURSE_DIR": str(folder), "HELPERS_LEDGER": str(folder / "ledger.csv")}


class KernelQueue:
    """Kernels for tests that each run a notebook in their own copy of the course (the Try-its): the next test's
    kernel starts while this test's notebook runs and loads its imports in that notebook's last cells
    (`execute(on_tail=queue.load_next)`), as run-notebooks does (`execute.WarmKernel`). A kernel is bound to its
    course folder (the kernel's HELPERS_COURSE_DIR), so `take` hands out the folder to copy the course into with it."""

    def __init__(self, root: Path):
        self.root, self.count, self.next = root, 0, None

    def _start(self) -> tuple[Path, Any]:
        from helpers.course.execute import WarmKernel

        self.count += 1
        folder = self.root / f"course-{self.count}"
        return folder, WarmKernel(ROOT / "notebooks" / "01_baseline.ipynb", self.root / f"kernel-{self.count}.log",
                                  cwd=ROOT, kernel=None, env=course_environment(folder), preload=False)

    def take(self) -> tuple[Path, Any]:
        """(a course folder that does not exist yet, a kernel started for it); the next one starts now."""
        mine = self.next or self._start()
        self.next = self._start()
        return mine

    def load_next(self) -> None:
        """The next test's kernel loads its imports now."""
        if self.next:
            self.next[1].load()

    def close(self) -> None:
        if self.next:
            self.next[1].discard()


@pytest.fixture(scope="session")
def kernel_queue(tmp_path_factory):
    queue = KernelQueue(tmp_path_factory.mktemp("kernels"))
    yield queue
    queue.close()


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
