"""Faults inflicted for real on real training runs, and what must survive them.

- SIGKILL of a real `python -m helpers train` process: during its first checkpoint write, during a later one,
  at a random moment mid-epoch, during evaluation and during the best-checkpoint write; each time it is
  restarted with --resume, and the finished run must equal an uninterrupted one (weights, metrics, test). The last
  restart, which meets no fault, runs in the test's own process (`finish_in_process`).
  The moments are observed from outside with Linux inotify (the trainer has no test hook): the creation of
  `.last.pt.tmp` is a checkpoint write starting, an open() of a validation image is evaluation running.
- A full disk: `.last.pt.tmp` is made a link to /dev/full, so the next checkpoint write gets a real ENOSPC.
- Broken photos (truncated, empty, text, CMYK, grayscale, alpha, EXIF-rotated, 6000 x 4000) in train, val, test.
- NaN losses (a real one from lr=1e30, and an injected one under --nan-policy skip).
- Bad input and crafted pickles through the command line: exit 2, one paragraph, nothing written, no code run.
"""

from __future__ import annotations

import csv
import ctypes
import errno
import json
import logging
import os
import pickle
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import helpers
from helpers.base.config import TrainConfig
from helpers.base.errors import UserError
from helpers.commands.cli import main
from helpers.data.images import BadImageError, read_image
from helpers.data.splits import load_splits
from helpers.training import checkpoint, engine, recipe, weights

from .conftest import ROOT, TINY, cli_flags, run_cli

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify and /dev/full are Linux-only")

SEED = 7
# 8 train photos of each class (70 train, 10 val), 2 test ones: 9 steps of 8 images per epoch, a checkpoint every 2.
CONFIG = dict(
    dataset="food-101",
    backbone="tf_efficientnet_lite0",
    pretrained="offline",
    image_size=64,
    num_workers=0,
    batch_size=8,
    epochs=2,
    warmup_epochs=0.5,
    lr=3e-3,
    checkpoint_every=2,
    device="cpu",
    seed=SEED,
)
FLAGS = cli_flags(CONFIG)


def make_micro(dst: Path, n_train: int = 8, n_test: int = 2) -> Path:
    """A small copy of the tiny set (real photos, copied so a test may break them): n per class per split."""
    classes = (TINY / "meta" / "classes.txt").read_text().split()
    (dst / "meta").mkdir(parents=True)
    (dst / "meta" / "classes.txt").write_text("\n".join(classes) + "\n")
    for split, n in (("train", n_train), ("test", n_test)):
        ids = (TINY / "meta" / f"{split}.txt").read_text().split()
        keep = [i for c in classes for i in [x for x in ids if x.split("/")[0] == c][:n]]
        (dst / "meta" / f"{split}.txt").write_text("\n".join(keep) + "\n")
        for image_id in keep:
            (dst / "images" / image_id).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(TINY / "images" / f"{image_id}.jpg", dst / "images" / f"{image_id}.jpg")
    return dst


def _env() -> dict:
    # One thread per process: two training processes share 2 cores, and oversubscribed OpenMP is 10x slower.
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "helpers", *args], cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT
        )


def finish_in_process(args: list[str], log: Path) -> int:
    """Run `python -m helpers train ARGS` to its end in this process (`cli.main`), its output appended to `log`:
    for the fault-free run that ends a fault test. The fault needed a real process (a signal, a full disk), the
    resume that follows only reads what the killed process left on disk, so a new Python (3 s of imports) adds
    nothing; one thread, as the processes of these tests have (`_env`), so its sums are theirs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = run_cli("train", *args)
    finally:
        torch.set_num_threads(threads)
    with open(log, "a") as f:
        f.write(res.stdout + res.stderr)
    return res.returncode


class Baseline:
    """An uninterrupted run, started in the background so that it runs beside the faulty ones."""

    def __init__(self, data: Path, out: Path):
        self.out, self.log = out, out.with_suffix(".log")
        self.proc = _start(["train", *FLAGS, "--data-dir", str(data), "--output-dir", str(out)], self.log)

    def result(self) -> Path:
        assert self.proc.wait(600) == 0, self.log.read_text()[-3000:]
        return self.out


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def assert_same_run(a: Path, b: Path) -> None:
    """Same weights (last and best), same metrics rows, same test result: nothing was lost."""
    for name in (checkpoint.LAST, checkpoint.BEST):
        wa, wb = checkpoint.load(a / name)["model"], checkpoint.load(b / name)["model"]
        for key in wa:
            torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6, msg=f"{name} {key}")
    ra, rb = _rows(a / "metrics.csv"), _rows(b / "metrics.csv")
    assert [r["epoch"] for r in ra] == [r["epoch"] for r in rb] == ["1", "2"]
    for x, y in zip(ra, rb):
        for k in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5"):
            assert float(x[k]) == pytest.approx(float(y[k]), rel=1e-5, abs=1e-6), (k, x, y)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    for k in ("best_epoch", "val_top1", "test_top1", "test_top5", "test_n", "epochs_run"):
        assert sa[k] == pytest.approx(sb[k], rel=1e-5), k
    assert sa["test_loss"] == pytest.approx(sb["test_loss"], rel=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# Watching another process's files: Linux inotify through ctypes


class Watch:
    """inotify events of other processes as they happen: file creations, renames, opens."""

    OPEN, MOVED_TO = 0x20, 0x80

    def __init__(self):
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        self.paths: dict[int, Path] = {}

    def add(self, path: Path, mask: int) -> None:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(str(path)), mask)
        assert wd >= 0, os.strerror(ctypes.get_errno())
        self.paths[wd] = Path(path)

    def events(self, timeout: float) -> list[tuple[Path, int, str]]:
        if not select.select([self.fd], [], [], timeout)[0]:
            return []
        try:
            buf = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        out, i = [], 0
        while i < len(buf):
            wd, mask, _, n = struct.unpack_from("iIII", buf, i)
            out.append((self.paths.get(wd), mask, buf[i + 16 : i + 16 + n].rstrip(b"\0").decode()))
            i += 16 + n
        return out

    def drain(self) -> None:
        while self.events(0):
            pass

    def close(self) -> None:
        os.close(self.fd)


def nth(n: int, test):
    """A trigger that fires on the n-th event passing `test`."""
    seen = {"n": 0}

    def trigger(path, mask, name) -> bool:
        if test(path, mask, name):
            seen["n"] += 1
        return seen["n"] == n

    return trigger


def train_until(args: list[str], log: Path, watch: Watch, trigger, *, then=None, timeout: float = 300) -> None:
    """Run `python -m helpers train ARGS` until `trigger(path, mask, name)` fires on a file event; then call
    `then(proc)` (default: SIGKILL, and check that the signal is what ended the process)."""
    watch.drain()
    proc = _start(["train", *args], log)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for event in watch.events(0.05):
                if trigger(*event):
                    if then is not None:
                        return then(proc)
                    os.kill(proc.pid, signal.SIGKILL)
                    assert proc.wait(60) == -signal.SIGKILL, (
                        f"the run ended by itself first:\n{log.read_text()[-3000:]}"
                    )
                    return None
            if proc.poll() is not None:
                pytest.fail(f"the run ended (exit {proc.returncode}) before its fault:\n{log.read_text()[-3000:]}")
        pytest.fail(f"no fault within {timeout} s:\n{log.read_text()[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _error_lines(text: str) -> list[str]:
    # A failure inside an epoch prints its error right after the progress bar, on the bar's line.
    return [line[line.index("error: ") :] for line in text.splitlines() if "error: " in line]


def _position(run: Path) -> tuple[int, int]:
    state = checkpoint.load(run, prefer=checkpoint.LAST)  # loads: the file `last` points to is complete
    return state["epoch"], state["step"]


# ----------------------------------------------------------------------------------------------------------------
# Killed


@linux_only
@pytest.mark.slow
def test_sigkill_at_five_moments_then_resume_equals_an_uninterrupted_run(baseline, tmp_path):
    data = make_micro(tmp_path / "data")  # its own copy: the baseline's evaluation must not trigger our kills
    out, log = tmp_path / "run", tmp_path / "run.log"
    out.mkdir()  # watched from the start; an empty folder is a fresh run
    args = [*FLAGS, "--data-dir", str(data), "--output-dir", str(out)]
    val_images = {Path(p) for p, _ in load_splits("food-101", data, seed=SEED).val}
    watch = Watch()
    watch.add(out, Watch.OPEN | Watch.MOVED_TO)  # open(): a write starts, even over a torn leftover file
    for path in val_images:
        watch.add(path, Watch.OPEN)
    tmp_last = lambda p, m, n: p == out and n == ".last.pt.tmp" and m & Watch.OPEN  # noqa: E731
    last_done = lambda p, m, n: p == out and n == checkpoint.LAST and m & Watch.MOVED_TO  # noqa: E731
    moments = []
    try:
        # 1. During the very first checkpoint write: there is no last.pt yet, only a torn temporary file.
        train_until([*args, "--resume", "auto"], log, watch, nth(1, tmp_last))
        assert (out / ".last.pt.tmp").exists() and not (out / checkpoint.LAST).exists()
        moments.append("first checkpoint write (no last.pt yet)")

        # 2. `--resume auto` starts it over; killed during its second write: the first (step 2) stays whole.
        train_until([*args, "--resume", "auto"], log, watch, nth(2, tmp_last))
        assert (out / ".last.pt.tmp").exists() and _position(out) == (0, 2)
        moments.append("checkpoint write over a complete one")

        # 3. At a random moment of the epoch, 0-0.3 s after the resumed run's first checkpoint.
        delay = random.uniform(0.0, 0.3)

        def kill_later(proc):
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(60) == -signal.SIGKILL

        train_until([*args, "--resume", str(out)], log, watch, nth(1, last_done), then=kill_later)
        epoch, step = _position(out)
        assert epoch == 0 and step in (4, 6, 8), (delay, epoch, step)
        moments.append(f"mid-epoch, {delay:.2f} s after a checkpoint (resumed at step {step})")

        # 4. During evaluation: the moment the process opens a validation photo.
        train_until([*args, "--resume", "auto"], log, watch, lambda p, m, n: p in val_images and m & Watch.OPEN)
        assert _position(out) == (0, 8) and not (out / "metrics.csv").exists()
        moments.append("evaluation of epoch 1")

        # 5. During the best-checkpoint write at the end of epoch 1: its metrics row is already written, but
        #    last.pt is still mid-epoch, so the resumed run must drop that row and write it again.
        train_until(
            [*args, "--resume", str(out)],
            log,
            watch,
            lambda p, m, n: p == out and n == ".best.pt.tmp" and m & Watch.OPEN,
        )
        assert [r["epoch"] for r in _rows(out / "metrics.csv")] == ["1"] and _position(out) == (0, 8)
        moments.append("best.pt write after the epoch's metrics row")
    finally:
        watch.close()

    # 6. The last restart runs to the end.
    assert finish_in_process([*args, "--resume", str(out)], log) == 0, log.read_text()[-3000:]
    assert log.read_text().count("Resuming") == 4, moments  # restarts 3, 4, 5 and 6 continued a checkpoint
    assert_same_run(baseline.result(), out)


@linux_only
@pytest.mark.slow
def test_disk_full_keeps_the_previous_checkpoint_and_resumes(micro, baseline, tmp_path):
    out, log = tmp_path / "run", tmp_path / "run.log"
    out.mkdir()
    args = [*FLAGS, "--data-dir", str(micro), "--output-dir", str(out)]
    watch = Watch()
    watch.add(out, Watch.MOVED_TO)

    def fill_disk(proc):  # the step-2 checkpoint is complete: the next write (step 4) goes to /dev/full
        os.symlink("/dev/full", out / ".last.pt.tmp")
        return proc.wait(300)

    try:
        code = train_until(args, log, watch, lambda p, m, n: n == checkpoint.LAST, then=fill_disk)
    finally:
        watch.close()
    text = log.read_text()
    assert code == 2 and "Traceback" not in text, text[-3000:]
    error = _error_lines(text)
    assert len(error) == 1 and "No space left on device" in error[0] and "previous checkpoint is kept" in error[0]
    assert _position(out) == (0, 2) and not os.path.lexists(out / ".last.pt.tmp")
    assert Path("/dev/full").is_char_device()  # the link was removed, not its target

    assert finish_in_process([*args, "--resume", str(out)], log) == 0, log.read_text()[-3000:]
    assert_same_run(baseline.result(), out)


def test_failed_replace_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / checkpoint.LAST
    checkpoint.save_atomic({"model": {"w": torch.ones(2)}, "config": {}}, path)

    def no_space(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.os, "replace", no_space)
    with pytest.raises(checkpoint.CheckpointWriteError, match="No space left on device.*previous checkpoint is kept"):
        checkpoint.save_atomic({"model": {"w": torch.zeros(2)}, "config": {}}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.LAST]  # no temporary file left
    torch.testing.assert_close(checkpoint.load(path)["model"]["w"], torch.ones(2))


# ----------------------------------------------------------------------------------------------------------------
# Bad data


def _exif_rotated(src: Path, dst: Path) -> np.ndarray:
    """Save src's pixels with EXIF orientation 6 (display rotated 90 degrees clockwise); returns the pixels
    as they must come out."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(src).convert("RGB").save(dst, exif=exif.tobytes(), quality=95)
    stored = cv2.imdecode(np.fromfile(dst, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return np.rot90(cv2.cvtColor(stored, cv2.COLOR_BGR2RGB), k=-1)


def test_read_image_converts_what_it_can_and_refuses_the_rest(tmp_path):
    src = TINY / "images" / "apple_pie" / "1005649.jpg"
    photo = np.asarray(Image.open(src).convert("RGB"))
    expected = _exif_rotated(src, tmp_path / "exif.jpg")
    rotated = read_image(str(tmp_path / "exif.jpg"))
    assert rotated.shape == expected.shape != photo.shape and np.abs(rotated.astype(int) - expected).mean() < 1
    Image.fromarray(photo).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert np.abs(read_image(str(tmp_path / "cmyk.jpg")).astype(int) - photo).mean() < 4  # colours, not a negative
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    rgba[:20, :, 3] = 0  # transparent band over black-ish pixels
    rgba[:20, :, :3] = 0
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    out = read_image(str(tmp_path / "alpha.png"))
    assert out.shape == photo.shape and (out[:20] == 255).all()  # composited on white, not left black
    Image.fromarray(photo).convert("L").save(tmp_path / "gray.jpg")
    assert read_image(str(tmp_path / "gray.jpg")).shape == photo.shape
    Image.fromarray(photo).resize((6000, 4000)).save(tmp_path / "large.jpg", quality=85)
    assert read_image(str(tmp_path / "large.jpg")).shape == (4000, 6000, 3)
    data = src.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not a photo\n")
    for name, reason in (("truncated", "truncated"), ("empty", "empty file"), ("text", "cannot identify")):
        with pytest.raises(BadImageError, match=reason):
            read_image(str(tmp_path / f"{name}.jpg"))


def _break_photos(root: Path) -> dict[str, list[str]]:
    """Damage a micro copy: unreadable files in train, val and test; convertible oddities in train."""
    splits = load_splits("food-101", root, seed=SEED)
    train, val, test = ([p for p, _ in s] for s in (splits.train, splits.val, splits.test))
    data = Path(train[0]).read_bytes()
    Path(train[0]).write_bytes(data[: len(data) // 3])  # truncated JPEG
    Path(train[1]).write_bytes(b"")  # zero bytes
    Path(train[2]).write_text("GIF89a? no: plain text with a .jpg name\n")
    Path(val[0]).write_bytes(b"")
    Path(test[0]).write_bytes(data[:300])  # a JPEG header only
    photo = Image.open(train[10]).convert("RGB")
    photo.convert("CMYK").save(train[11])
    photo.convert("L").save(train[12])
    photo.convert("RGBA").save(train[13], format="PNG")  # a PNG with alpha under a .jpg name
    photo.resize((6000, 4000)).save(train[14], quality=80)
    _exif_rotated(Path(train[10]), Path(train[15]))
    return {"train": train[:3], "val": val[:1], "test": test[:1]}


def test_broken_photos_are_skipped_with_one_warning_per_discovery(tmp_path, caplog):
    data = make_micro(tmp_path / "data")
    bad = _break_photos(data)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="helpers"):
        summary = helpers.train(TrainConfig(**CONFIG, data_dir=str(data), output_dir=str(out)))
    assert summary["epochs_run"] == 2 and summary["test_n"] == 20  # the night goes on; test still has 20 rows
    listed = (out / "bad_files.txt").read_text().split()
    assert listed == sorted(bad["train"] + bad["val"] + bad["test"])  # the convertible ones are not listed
    warnings = [r.getMessage() for r in caplog.records if "unreadable image" in r.getMessage()]
    # one warning when train+val's bad files are first met (epoch 1), none in epoch 2, one for the test split
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("4 unreadable image(s)") and "bad_files.txt" in warnings[0]
    assert warnings[1].startswith("1 unreadable image(s)") and "All 5" in warnings[1]


@pytest.mark.parametrize("workers", ["0", "1"])  # from a worker process the error comes back re-raised
def test_strict_data_stops_with_one_paragraph(tmp_path, capsys, workers):
    data = make_micro(tmp_path / "data", n_train=4, n_test=1)
    splits = load_splits("food-101", data, seed=SEED)
    Path(splits.train[3][0]).write_bytes(b"")
    code = main(
        [
            "train",
            *FLAGS,
            "--data-dir",
            str(data),
            "--output-dir",
            str(tmp_path / "run"),
            "--strict-data",
            "--epochs",
            "1",
            "--num-workers",
            workers,
        ]
    )
    err = capsys.readouterr().err
    _clean_error(code, err, f"error: {splits.train[3][0]}: empty file (run without --strict-data")


# ----------------------------------------------------------------------------------------------------------------
# Numerical faults


def test_real_nan_stops_naming_epoch_and_step_and_keeps_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig(
        **dict(CONFIG, lr=1e30, backbone_lr_ratio=1.0, warmup_epochs=0.0, head_warmup_epochs=0, epochs=1,
               checkpoint_every=1),
        data_dir=str(make_micro(tmp_path / "data", n_train=4, n_test=1)),
        output_dir=str(out),
    )
    with pytest.raises(
        engine.NonFiniteLossError, match=r"loss became (nan|inf) at epoch 1, step 2\. The last good checkpoint"
    ):
        helpers.train(cfg)
    state = checkpoint.load(out, prefer=checkpoint.LAST)
    assert (state["epoch"], state["step"]) == (0, 1)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_nan_policy_skip_drops_only_the_bad_step(tmp_path, monkeypatch, caplog):
    real = recipe.make_criterion

    def make_criterion(mixing, smoothing):
        criterion, calls = real(mixing, smoothing), {"n": 0}

        def loss(logits, target):
            calls["n"] += 1
            value = criterion(logits, target)
            return value * float("nan") if calls["n"] == 5 else value

        return loss

    monkeypatch.setattr(engine, "make_criterion", make_criterion)
    out = tmp_path / "run"
    cfg = TrainConfig(
        **dict(CONFIG, epochs=1, nan_policy="skip"),
        data_dir=str(make_micro(tmp_path / "data", n_train=8, n_test=1)),
        output_dir=str(out),
    )
    with caplog.at_level(logging.WARNING, logger="helpers"):
        helpers.train(cfg)
    assert any("Skipping step 5 of epoch 1: loss is nan" in r.getMessage() for r in caplog.records)
    state = checkpoint.load(out, prefer=checkpoint.LAST)
    assert state["num_updates"] == 8  # 9 steps, one skipped
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


# ----------------------------------------------------------------------------------------------------------------
# Bad input and untrusted files


def _snapshot(folder: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def _clean_error(code: int, err: str, needle: str) -> None:
    assert code == 2 and "Traceback" not in err, err[-2000:]
    lines = _error_lines(err)
    assert len(lines) == 1 and needle in lines[0], err[-2000:]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--epochs", "0"], "--epochs must be a positive integer"),
        (["--grad-accum-steps", "3"], "--batch-size 8 must be divisible by --grad-accum-steps"),
        (["--lr", "-1"], "--lr must be positive"),
        (["--val-fraction", "0.7"], "--val-fraction must be between"),
        (["--checkpoint-every", "-1"], "--checkpoint-every must be >= 0"),
        (["--num-workers", "-4"], "--num-workers must be >= 0"),
        (["--warmup-epochs", "5"], "--warmup-epochs (5.0) must be >= 0 and at most --epochs"),
        (["--resume", "runs/other", "--init-from", "x"], "give only one"),
        (["--resume", "/nonexistent/run"], "does not exist"),
        (["--image-size", "16"], "--image-size must be an integer of at least 32"),
    ],
)
def test_bad_flags_exit_2_and_write_nothing(micro, tmp_path, capsys, extra, needle):
    out = tmp_path / "out"
    code = main(["train", *FLAGS, "--data-dir", str(micro), "--output-dir", str(out), *extra])
    _clean_error(code, capsys.readouterr().err, needle)
    assert not out.exists()


def test_bad_resumes_and_occupied_folders_exit_2_and_change_nothing(micro, baseline, tmp_path, capsys):
    done = baseline.result()
    before = _snapshot(done)
    nine = tmp_path / "nine"
    shutil.copytree(micro / "meta", nine / "meta")
    (nine / "images").symlink_to(micro / "images")
    classes = (nine / "meta" / "classes.txt").read_text().split()
    (nine / "meta" / "classes.txt").write_text("\n".join(classes[:9]) + "\n")
    for split in ("train", "test"):
        ids = (nine / "meta" / f"{split}.txt").read_text().split()
        (nine / "meta" / f"{split}.txt").write_text("\n".join(i for i in ids if i.split("/")[0] in classes[:9]) + "\n")
    new = tmp_path / "new"
    (tmp_path / "a_file").write_text("")
    cases = [
        (["--data-dir", str(micro), "--output-dir", str(done)], "already holds another run"),
        (
            ["--data-dir", str(micro), "--output-dir", str(done), "--resume", str(done), "--lr", "0.1"],
            "trained with other settings (lr differ)",
        ),
        (
            ["--data-dir", str(micro), "--output-dir", str(done), "--resume", "auto", "--seed", "8"],
            "trained with other settings (seed differ)",
        ),
        (["--data-dir", str(nine), "--output-dir", str(new), "--resume", str(done)], "was trained on 10 classes"),
        (
            ["--data-dir", str(micro), "--output-dir", str(new), "--resume", str(done / checkpoint.BEST)],
            "holds the best weights only",
        ),
        (["--data-dir", str(micro), "--output-dir", str(tmp_path / "a_file")], "is a file"),
    ]
    for extra, needle in cases:
        code = main(["train", *FLAGS, *extra])
        _clean_error(code, capsys.readouterr().err, needle)
        assert not new.exists() and _snapshot(done) == before, extra


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickles_run_no_code_anywhere_a_file_is_loaded(micro, tmp_path, capsys):
    marker = tmp_path / "pwned"
    plain, zipped = tmp_path / "evil.pt", tmp_path / "evil_zip.pt"
    with open(plain, "wb") as f:
        pickle.dump({"model": _Evil(marker), "config": {}}, f)
    torch.save({"model": {"w": _Evil(marker)}, "config": {}}, zipped)  # torch's own zip format, same payload
    for evil in (plain, zipped):
        for extra in (
            ["--resume", str(evil)],
            ["--init-from", str(evil)],
            ["--pretrained", str(evil)],
            ["--teacher", str(evil)],
        ):
            out = tmp_path / "out"
            code = main(["train", *FLAGS, "--data-dir", str(micro), "--output-dir", str(out), *extra])
            _clean_error(code, capsys.readouterr().err, "Refused to load")
            assert not marker.exists() and not out.exists(), extra
        code = main(["evaluate", "--checkpoint", str(evil), "--data-dir", str(micro), "--num-workers", "0"])
        _clean_error(code, capsys.readouterr().err, "Refused to load")
    assert not marker.exists()
    with pytest.raises(UserError, match="Refused"):
        weights.load_state_dict_file(zipped)
    torch.load(zipped, weights_only=False)  # unprotected loading does run the payload: the files are real
    assert marker.exists()


def test_safetensors_weights_load_without_pickle(tmp_path):
    from safetensors.torch import save_file

    tensors = {"classifier.weight": torch.randn(10, 1280), "classifier.bias": torch.zeros(10)}
    save_file(tensors, str(tmp_path / "w.safetensors"))
    loaded = weights.load_state_dict_file(tmp_path / "w.safetensors")
    torch.testing.assert_close(loaded["classifier.weight"], tensors["classifier.weight"])


def test_run_records_seed_versions_device_and_commit(baseline):
    import albumentations
    import timm

    info = json.loads((baseline.result() / "run_info.json").read_text())
    assert info["seed"] == SEED and info["device"] == "cpu" and info["world_size"] == 1
    assert (info["torch"], info["timm"], info["albumentations"]) == (
        torch.__version__,
        timm.__version__,
        albumentations.__version__,
    )
    assert "git_commit" in info
