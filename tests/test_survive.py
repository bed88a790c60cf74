"""Overnight runs that survive, part two: faults inflicted for real on real `python -m helpers train` processes.

- Two real processes on one output folder (the second stops with exit 2 naming the first), and a SIGKILLed
  holder whose lock is taken over.
- A real small tmpfs filled by the run's own checkpoints, then (after it is enlarged) filled by a file at the
  moment the run writes its metrics row; each time exit 2, no temporary file, the previous files kept, and the
  retry ends equal to an uninterrupted run.
- A real SIGINT while a checkpoint is being written: exit 130, no temporary file, the previous checkpoint kept.
- A truncated and a zeroed `last.pt`: the resume goes back to `last.prev.pt` and ends equal to the uninterrupted run.
- A real low `ulimit -n` (soft and hard) with loader workers.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers.base.lock import LOCK_NAME, FolderBusyError, run_lock
from helpers.commands.cli import main
from helpers.training import checkpoint
from helpers.training.engine import locked_output

from .conftest import ROOT, run_cli
from .test_faults import (
    FLAGS,
    Watch,
    _env,
    _error_lines,
    _position,
    _rows,
    _start,
    assert_same_run,
    finish_in_process,
    linux_only,
    train_until,
)


def _args(micro: Path, out: Path) -> list[str]:
    return [*FLAGS, "--data-dir", str(micro), "--output-dir", str(out)]


# ----------------------------------------------------------------------------------------------------------------
# One run per folder


@linux_only
@pytest.mark.slow
def test_a_second_run_into_a_busy_folder_stops_at_once_and_a_dead_holders_lock_is_taken_over(micro, tmp_path):
    out, log = tmp_path / "run", tmp_path / "first.log"
    first = _start(["train", *_args(micro, out), "--epochs", "20"], log)  # still running when the others come
    try:
        deadline = time.monotonic() + 300
        while not (out / LOCK_NAME).exists() or str(first.pid) not in (out / LOCK_NAME).read_text():
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-m", "helpers", "train", *_args(micro, out), "--epochs", "20",
                                 "--lr", "1e-4"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
        assert first.poll() is None, "the first run ended before the second came"
        assert second.returncode == 2, second.stderr[-3000:]
        error = _error_lines(second.stderr)
        assert len(error) == 1 and f"process {first.pid} on " in error[0] and "--output-dir" in error[0], error
        assert "Traceback" not in second.stderr and "Training" not in second.stderr  # stopped before any work

        # The holder dies without a chance to clean up: its lock file stays, the kernel has released the lock.
        while not (out / checkpoint.BEST).exists():
            assert first.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
    finally:
        first.kill()
        first.wait()
    assert (out / LOCK_NAME).exists() and "lr: 0.003" in (out / "config.yaml").read_text()
    epochs = [r["epoch"] for r in _rows(out / "metrics.csv")]
    assert epochs == [str(i) for i in range(1, len(epochs) + 1)]  # one run's rows, not two interleaved
    # the lock is taken over by the next command (in this process: a new process only adds its imports)
    again = run_cli("evaluate", "--checkpoint", str(out), "--data-dir", str(micro), "--num-workers", "0",
                    "--predictions", str(out / "predictions.csv"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "predictions.csv").exists() and not (out / LOCK_NAME).exists()


def test_the_lock_is_released_when_the_holder_returns_or_raises_in_the_same_process(tmp_path):
    folder = tmp_path / "run"
    with run_lock(folder):
        with pytest.raises(FolderBusyError, match=f"process {os.getpid()} on "):
            with run_lock(folder):  # a second writer in the same process (a notebook cell run twice at once)
                pass
    assert not folder.exists()  # created for nothing, removed again

    @locked_output
    def failing(cfg):
        (Path(cfg.output_dir) / "partial.txt").write_text("x")
        raise RuntimeError("boom")

    from helpers.base.config import TrainConfig

    cfg = TrainConfig(output_dir=str(folder))
    for _ in range(2):  # a cell re-run after a failure must not find its own stale lock
        with pytest.raises(RuntimeError, match="boom"):
            failing(cfg)
    assert sorted(p.name for p in folder.iterdir()) == ["partial.txt"]

    from helpers.training.metrics import write_predictions

    with run_lock(folder):  # a run trains into the folder: evaluate --predictions there is refused
        with pytest.raises(FolderBusyError, match="the folder of --predictions"):
            write_predictions(folder / "p.csv", [("a.jpg", 0)], torch.tensor([[0.7, 0.3]]), ["x", "y"])
    write_predictions(folder / "p.csv", [("a.jpg", 0)], torch.tensor([[0.7, 0.3]]), ["x", "y"])
    assert (folder / "p.csv").read_text().splitlines()[1] == "a.jpg,x,x,0.70000,0.70000,0.30000"


# ----------------------------------------------------------------------------------------------------------------
# A real full disk


def _mount_tmpfs(mount: Path, options: str) -> None:
    """Mount a real tmpfs (needs root: CI runs as root and must not skip; elsewhere the test is skipped)."""
    mount.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True, text=True)
    if res.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"mounting a tmpfs failed in CI: {res.stderr}")
        pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.strip()}")


@pytest.fixture()
def tmpfs(tmp_path):
    """A real tmpfs of 100 MB."""
    mount = tmp_path / "fs"
    _mount_tmpfs(mount, "size=100m")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@linux_only
def test_a_read_only_disk_is_exit_2_before_any_work(micro, baseline, tmp_path, capsys):
    mount = tmp_path / "ro"
    _mount_tmpfs(mount, "ro,size=1m")
    try:
        assert main(["train", *_args(micro, mount / "run")]) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and "Read-only file system" in err and "read-only" in err, err
        assert main(["evaluate", "--checkpoint", str(baseline.result()), "--data-dir", str(micro), "--num-workers",
                     "0", "--predictions", str(mount / "p.csv")]) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and "Read-only file system" in err, err
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _paused(proc: subprocess.Popen, action) -> subprocess.Popen:
    """Do `action` while `proc` is stopped (SIGSTOP ... SIGCONT), so the run cannot race past the moment the
    test chose (filling a disk takes longer than the two training steps left in the epoch)."""
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        action()
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    return proc


def _fill(folder: Path) -> Path:
    """Fill the file system of `folder` to the last byte, with a file the test can delete again."""
    filler = folder / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for block in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * block)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


@linux_only
@pytest.mark.slow
def test_a_real_full_disk_stops_with_exit_2_keeps_the_last_good_files_and_the_retry_equals_an_uninterrupted_run(
        micro, baseline, tmpfs, tmp_path):
    out = tmpfs / "run"
    args = _args(micro, out)
    log = tmp_path / "run.log"

    # 1. The run fills the 100 MB disk by itself: best.pt (14 MB) + last.pt and last.prev.pt (41 MB each) fit;
    #    the temporary file of the third checkpoint (step 6) does not.
    proc = _start(["train", *args, "--resume", "auto"], log)
    assert proc.wait(600) == 2, log.read_text()[-3000:]
    text = log.read_text()
    error = _error_lines(text)
    assert "Traceback" not in text and len(error) == 1, text[-3000:]
    assert "No space left on device" in error[0] and "last.pt" in error[0] and "previous" in error[0], error
    assert _position(out) == (0, 4) and checkpoint.load(out / checkpoint.PREVIOUS)["step"] == 2
    assert not list(out.glob(".*.tmp"))  # no torn temporary file keeps the disk full

    # 2. Space is freed (the tmpfs enlarged); the retry goes on. When the resumed run has written its checkpoint
    #    at step 8 of epoch 2 the disk is filled again, so the next write is the metrics row of epoch 2.
    subprocess.run(["mount", "-o", "remount,size=300m", str(tmpfs)], check=True)
    watch = Watch()
    watch.add(out, Watch.MOVED_TO)
    moves = {"n": 0}

    def epoch2_step8(path, mask, name) -> bool:  # resumed at step 4: saves at 6, 8, end of 1, then 2, 4, 6, 8
        moves["n"] += name == checkpoint.LAST
        return moves["n"] == 7

    filler: list[Path] = []
    try:
        code = train_until([*args, "--resume", "auto"], log, watch, epoch2_step8,
                           then=lambda p: _paused(p, lambda: filler.append(_fill(tmpfs))).wait(300))
    finally:
        watch.close()
    text = log.read_text()
    assert code == 2 and "Traceback" not in text, text[-3000:]
    assert "metrics.csv" in _error_lines(text)[-1] and "No space left on device" in _error_lines(text)[-1]
    assert [r["epoch"] for r in _rows(out / "metrics.csv")] == ["1"]  # the earlier row kept, with its header
    assert _position(out) == (1, 8) and not list(out.glob(".*.tmp"))

    # 3. Free the space again: the retry finishes equal to a run that never failed.
    filler[0].unlink()
    assert finish_in_process([*args, "--resume", "auto"], log) == 0, log.read_text()[-3000:]
    assert_same_run(baseline.result(), out)


# ----------------------------------------------------------------------------------------------------------------
# Ctrl-C during a write; damaged checkpoints


@linux_only
@pytest.mark.slow
def test_sigint_during_a_checkpoint_write_exits_130_without_a_temporary_file(micro, baseline, tmp_path):
    out, log = tmp_path / "run", tmp_path / "run.log"
    out.mkdir()
    args = _args(micro, out)
    watch = Watch()
    watch.add(out, Watch.OPEN)
    opens = {"n": 0}

    def second_write(path, mask, name) -> bool:
        opens["n"] += name == ".last.pt.tmp"
        return opens["n"] == 2

    def interrupt(proc):
        os.kill(proc.pid, signal.SIGINT)  # the moment the temporary file of the step-4 checkpoint is opened
        return proc.wait(120)

    try:
        code = train_until(args, log, watch, second_write, then=interrupt)
    finally:
        watch.close()
    text = log.read_text()
    assert code == 130 and "Traceback" not in text, text[-3000:]
    assert "interrupted" in text and not list(out.glob(".*.tmp"))
    assert _position(out) == (0, 2)  # the checkpoint being written never replaced the good one
    assert finish_in_process([*args, "--resume", "auto"], log) == 0, log.read_text()[-3000:]
    assert_same_run(baseline.result(), out)


@pytest.mark.parametrize("damage", ["truncated", "zeroed"])
def test_a_damaged_last_pt_goes_back_to_the_previous_checkpoint(micro, baseline, tmp_path, caplog, damage):
    out = tmp_path / "run"
    shutil.copytree(baseline.result(), out)
    last = out / checkpoint.LAST
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"\0" * len(data))
    caplog.set_level("WARNING")
    assert main(["train", *_args(micro, out), "--resume", "auto"]) == 0
    warning = [r.getMessage() for r in caplog.records if "Going back to the previous checkpoint" in r.getMessage()]
    assert warning and "at epoch 2, step 8" in warning[0] and "not a readable checkpoint" in warning[0], caplog.text
    assert (out / checkpoint.DAMAGED).read_bytes()[:16] == (data[:16] if damage == "truncated" else b"\0" * 16)
    assert_same_run(baseline.result(), out)  # step 9 of epoch 2 trained again: nothing lost


def test_no_readable_training_checkpoint_is_one_paragraph_naming_the_best_weights(micro, baseline, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(baseline.result(), out)
    for name in (checkpoint.LAST, checkpoint.PREVIOUS):
        (out / name).write_bytes(b"")
    assert main(["train", *_args(micro, out), "--resume", "auto"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    best_epoch = json.loads((out / "summary.json").read_text())["best_epoch"]
    assert f"best.pt, epoch {best_epoch})" in err and "--init-from" in err


# ----------------------------------------------------------------------------------------------------------------
# Open files


def _limited(soft: int, hard: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return apply


@linux_only
@pytest.mark.parametrize("soft, hard, workers, expect", [
    (64, 64, 8, "switched to torch's file_system sharing"),  # unpatched: "Too many open files", exit 1
    (64, 4096, 2, "Raised the limit of open files from 64 to 4096"),
])
def test_a_low_open_file_limit_with_workers(micro, tmp_path, soft, hard, workers, expect):
    out = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "helpers", "train", *_args(micro, out), "--epochs", "1", "--num-workers", str(workers),
         "--checkpoint-every", "0"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600, preexec_fn=_limited(soft, hard))
    assert res.returncode == 0, res.stderr[-3000:]
    assert expect in res.stderr and "Too many open files" not in res.stderr


# ----------------------------------------------------------------------------------------------------------------
# Resumes whose files or inputs changed since the crash


def test_a_damaged_metrics_log_on_resume_is_one_paragraph_and_changes_nothing(micro, baseline, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(baseline.result(), out)
    (out / "metrics.csv").write_bytes(b"\0\0\0garbage,\xff\n1,2\n")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["train", *_args(micro, out), "--resume", "auto"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "metrics.csv is damaged" in err and "move metrics.csv away" in err, err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_a_resume_on_changed_images_is_refused(micro, baseline, tmp_path, capsys):
    out, data = tmp_path / "run", tmp_path / "data"
    shutil.copytree(baseline.result(), out)
    shutil.copytree(micro, data)
    (out / checkpoint.LAST).unlink()  # back to the mid-epoch checkpoint (last.prev.pt), so the run continues
    train = (data / "meta" / "train.txt").read_text().split()
    (data / "meta" / "train.txt").write_text("\n".join(train[1:]) + "\n")  # one training photo fewer
    assert main(["train", *_args(data, out), "--resume", str(out / checkpoint.PREVIOUS)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "changed since" in err, err


def test_a_run_whose_best_checkpoint_disappeared_writes_a_new_one(micro, baseline, tmp_path, caplog):
    out = tmp_path / "run"
    shutil.copytree(baseline.result(), out)
    (out / checkpoint.BEST).unlink()
    (out / checkpoint.LAST).write_bytes(b"")  # back to epoch 2, step 8
    caplog.set_level("WARNING")
    assert main(["train", *_args(micro, out), "--resume", "auto"]) == 0
    assert "best.pt of epoch" in caplog.text and "is missing" in caplog.text
    assert checkpoint.load(out / checkpoint.BEST)["epoch"] == 2  # the final test names the weights it used
    assert json.loads((out / "summary.json").read_text())["best_epoch"] == 2


def test_a_folder_left_by_a_nan_before_the_first_checkpoint_can_be_rerun_with_resume_auto(micro, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *_args(micro, out), "--epochs", "1", "--lr", "1e30", "--checkpoint-every", "0"]) == 2
    assert "The loss became" in capsys.readouterr().err and not (out / checkpoint.LAST).exists()
    assert main(["train", *_args(micro, out), "--epochs", "1", "--checkpoint-every", "0"]) == 2
    assert "stopped before its first checkpoint. Add --resume auto" in capsys.readouterr().err
    assert main(["train", *_args(micro, out), "--epochs", "1", "--checkpoint-every", "0", "--resume", "auto"]) == 0
    assert "lr: 0.003" in (out / "config.yaml").read_text()
