"""Features folders that check themselves (issue 19, case 6 and the `features` bugs): real SIGKILLs mid-run,
truncated and zeroed chunks and splits, a split copied in from another folder, a photo replaced between the kill
and the resume, a truncated `features.json`, two identical `features` commands at once, unreadable photos."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.data.splits import load_splits

from .conftest import ROOT, TINY, run_cli
from .test_features import _features_args, _files, _small_set


def _copied_set(root: Path, n_train: int = 4, n_test: int = 2) -> Path:
    """`_small_set` with its photos copied (not linked), so that a test may replace one."""
    linked = _small_set(root.with_name(root.name + "-linked"), n_train, n_test)
    shutil.copytree(linked / "meta", root / "meta")
    for split in ("train", "test"):
        for image_id in (linked / "meta" / f"{split}.txt").read_text().split():
            dst = root / "images" / f"{image_id}.jpg"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(TINY / "images" / f"{image_id}.jpg", dst)
    return root


def _popen(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "helpers", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _kill_after_chunks(args: list[str], out: Path, n: int = 2) -> None:
    """Start `features`, SIGKILL it once `n` train chunks are written."""
    proc = _popen(args)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((out / ".chunks").glob("train-*.safetensors"))) < n:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL and not (out / "test.safetensors").exists()


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return _small_set(tmp_path_factory.mktemp("data") / "small")


@pytest.fixture(scope="module")
def whole(small, tmp_path_factory) -> Path:
    """An uninterrupted run: the reference every repaired folder must equal byte for byte."""
    out = tmp_path_factory.mktemp("whole") / "feats"
    done = run_cli(*_features_args(small, out))
    assert done.returncode == 0, done.stderr
    return out


def test_truncated_and_zeroed_chunks_after_a_kill_are_computed_again(small, whole, tmp_path):
    out = tmp_path / "killed"
    _kill_after_chunks(_features_args(small, out), out, n=3)
    chunks = sorted((out / ".chunks").glob("train-*.safetensors"))
    data = chunks[0].read_bytes()
    chunks[0].write_bytes(data[: len(data) // 3])  # truncated
    chunks[1].write_bytes(bytes(len(chunks[1].read_bytes())))  # zeroed
    again = run_cli(*_features_args(small, out))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "is damaged" in again.stderr and "computed again" in again.stderr
    assert _files(out) == _files(whole)


def test_damaged_final_splits_and_manifest_are_repaired_or_named(small, whole, tmp_path):
    out = tmp_path / "feats"
    shutil.copytree(whole, out)
    (out / "val.safetensors").write_bytes(bytes((out / "val.safetensors").stat().st_size))  # zeroed
    data = (out / "test.safetensors").read_bytes()
    (out / "test.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    manifest = (out / "features.json").read_bytes()
    (out / "features.json").write_bytes(manifest[: len(manifest) // 2])  # truncated
    probe = run_cli("probe", "--features", str(out), "--output-dir", str(tmp_path / "probe"), "--device", "cpu")
    assert probe.returncode == 2 and "features.json is damaged" in probe.stderr, probe.stderr[-2000:]
    assert "Traceback" not in probe.stderr and not (tmp_path / "probe").exists()
    again = run_cli(*_features_args(small, out))
    assert again.returncode == 0, again.stderr[-2000:]
    assert _files(out) == _files(whole)


def test_a_split_copied_from_another_folder_is_refused_then_repaired(small, whole, tmp_path):
    """The split of a random-weights lite0 (same width, same photos) copied over this folder's test split."""
    other, out = tmp_path / "random", tmp_path / "feats"
    done = run_cli(*[a if a != "offline" else "none" for a in _features_args(small, other)])
    assert done.returncode == 0, done.stderr[-2000:]
    shutil.copytree(whole, out)
    shutil.copy(other / "test.safetensors", out / "test.safetensors")
    probe = run_cli("probe", "--features", str(out), "--output-dir", str(tmp_path / "probe"), "--device", "cpu")
    assert probe.returncode == 2 and "was not computed with the settings" in probe.stderr, probe.stderr[-2000:]
    assert not (tmp_path / "probe").exists()
    again = run_cli(*_features_args(small, out))
    assert again.returncode == 0 and "computed again" in again.stderr, again.stderr[-2000:]
    assert _files(out) == _files(whole)


def test_a_photo_replaced_between_the_kill_and_the_resume_is_computed_again(tmp_path):
    data = _copied_set(tmp_path / "data")
    out, reference = tmp_path / "killed", tmp_path / "reference"
    _kill_after_chunks(_features_args(data, out), out, n=2)
    first = load_splits("food-101", data).train[0][0]  # in train chunk 0, which the killed run finished
    other = load_splits("food-101", data).test[-1][0]  # a photo of another class
    shutil.copy(other, first)
    again = run_cli(*_features_args(data, out))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "changed since" in again.stderr and Path(first).name in again.stderr
    done = run_cli(*_features_args(data, reference))  # an uninterrupted run on the photos as they are now
    assert done.returncode == 0, done.stderr[-2000:]
    assert _files(out) == _files(reference)


def _lock_names_its_holder(folder):
    """The lock is taken and its holder's pid written (between the two, a refusal cannot name the holder yet)."""
    try:
        return '"pid"' in (folder / ".lock").read_text()
    except OSError:
        return False


def test_two_identical_features_commands_at_once_the_second_exits_2(small, whole, tmp_path):
    out = tmp_path / "feats"
    first = _popen(_features_args(small, out))
    deadline = time.time() + 120
    while time.time() < deadline and not _lock_names_its_holder(out) and first.poll() is None:
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # frozen while it holds the lock: the second surely starts "at once"
    try:
        assert first.poll() is None and _lock_names_its_holder(out), "the first command ended before it was frozen"
        second = run_cli(*_features_args(small, out))
    finally:
        first.send_signal(signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-2000:]
    assert second.returncode == 2 and "is in use by process" in second.stderr, second.stderr[-2000:]
    assert f"process {first.pid} " in second.stderr and "Traceback" not in second.stderr
    assert _files(out) == _files(whole)


def test_unreadable_photos_are_skipped_and_listed_or_refused_with_strict_data(tmp_path):
    data = _copied_set(tmp_path / "data")
    bad = load_splits("food-101", data).test[3][0]
    Path(bad).write_bytes(b"")
    out = tmp_path / "feats"
    done = run_cli(*_features_args(data, out))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    rel = os.path.relpath(bad, data)
    assert result["skipped"] == [rel] and rel in done.stderr
    from helpers.use.features import read_split

    features, labels, meta = read_split(out, "test")
    assert features.shape[0] == len(labels) == 19 and meta["skipped"] == [rel] and rel not in meta["paths"]
    strict = run_cli(*_features_args(data, tmp_path / "strict"), "--strict-data")
    assert strict.returncode == 2 and "empty file" in strict.stderr and "Traceback" not in strict.stderr
