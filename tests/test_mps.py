"""Apple MPS on a CPU machine: the check mode (helpers.base.mps_check), the MPS-specific settings, and the doctor."""

from __future__ import annotations

import importlib.util
import os
import pickle
import subprocess
import sys

import pytest
import torch

import helpers
from helpers.base import devices, distributed, io, mps_check
from helpers.base.config import TrainConfig
from helpers.base.errors import UserError
from helpers.commands import cli, doctor
from helpers.data import loaders
from helpers.training import engine, recipe
from helpers.training.metrics import Sums, topk_correct

from .conftest import FAST, ROOT, run_cli

SMALL = dict(FAST, image_size=64, batch_size=16, epochs=1, max_steps=1)


# ----------------------------------------------------------------------------------------------------------------
# The check mode


def _float64_forward(monkeypatch):
    """Every model the trainer builds gets a float64 round trip inside its forward pass (a forward hook)."""
    create = engine.create_model

    def create_with_float64(*args, **kwargs):
        model = create(*args, **kwargs)
        model.conv_stem.register_forward_hook(lambda module, inputs, output: output.double().float())
        return model

    monkeypatch.setattr(engine, "create_model", create_with_float64)


def test_float64_in_a_models_forward_fails_the_run_under_the_check(monkeypatch, tmp_path, check_mps):
    _float64_forward(monkeypatch)
    with pytest.raises(mps_check.MPSViolation) as caught:
        helpers.train(TrainConfig(**SMALL, output_dir=str(tmp_path / "run")))
    message = str(caught.value)
    assert "aten._to_copy" in message and "float64" in message
    assert "helpers.training.engine._forward" in message and "engine.train_one_epoch" in message


def test_float64_in_a_models_forward_passes_without_the_check(monkeypatch, tmp_path, no_check_mps):
    _float64_forward(monkeypatch)
    summary = helpers.train(TrainConfig(**SMALL, output_dir=str(tmp_path / "run")))
    assert summary["test_n"] == 150


def test_non_blocking_copy_of_unpinned_memory_is_refused(check_mps):
    batch = torch.arange(12, dtype=torch.uint8)
    with pytest.raises(mps_check.MPSViolation, match=r"Tensor.to\(non_blocking=True\).*not pinned"):
        with mps_check.watch("test"):
            batch.to("cpu", non_blocking=True)
    with mps_check.watch("test"):  # the package's copy: non_blocking only from pinned memory
        assert torch.equal(devices.to_device(batch, torch.device("cpu")), batch)


def test_a_violation_caught_by_the_code_still_stops_the_region(check_mps):
    with pytest.raises(mps_check.MPSViolation, match="float64"):
        with mps_check.watch("test"):
            try:
                torch.ones(2).double()
            except Exception:  # e.g. an out-of-memory handler that catches too much
                pass


def test_parent_commits_float64_totals_are_caught_and_the_new_totals_are_exact(check_mps):
    with pytest.raises(mps_check.MPSViolation, match="lift_fresh.*float64"):
        with mps_check.watch("engine.train_one_epoch"):  # what train_one_epoch did before
            torch.tensor(Sums().state(), dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(37, 10, generator=generator), torch.randint(0, 10, (37,), generator=generator)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    with mps_check.watch("engine.train_one_epoch"):
        totals = engine.DeviceTotals(Sums(), torch.device("cpu"))
        for _ in range(3):
            totals.add(logits, labels, loss)
        n, loss_sum, top1, top5 = totals.state()
    assert totals.counts.dtype == torch.int64 and totals.loss.dtype == torch.float32
    hits1, hits5 = topk_correct(logits, labels)
    assert (n, top1, top5) == (111, 3 * hits1, 3 * hits5)
    assert loss_sum == pytest.approx(3 * 37 * float(loss), rel=1e-6)


def test_the_check_is_off_without_the_variable(no_check_mps):
    with mps_check.watch("test"):
        assert torch.ones(2).double().dtype == torch.float64


def test_cli_violation_is_exit_1_naming_the_operator_and_function(tmp_path):
    script = ("import sys, torch; from helpers.commands import cli; from helpers.training import engine\n"
              "engine.DeviceTotals.add = lambda self, l, y, loss: self.loss.add_(loss.double().sum())\n"
              "sys.exit(cli.main(sys.argv[1:]))\n")
    import subprocess

    flags = ["train", "--dataset", "food-101", "--data-dir", str(ROOT / "data" / "food-101-tiny"), "--backbone",
             "tf_efficientnet_lite0", "--pretrained", "none", "--image-size", "64", "--batch-size", "16", "--epochs",
             "1", "--max-steps", "1", "--num-workers", "0", "--output-dir", str(tmp_path / "run")]
    proc = subprocess.run([sys.executable, "-c", script, *flags], capture_output=True, text=True, timeout=600,
                          cwd=ROOT, env={**os.environ, "HELPERS_CHECK_MPS": "1"})
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "aten._to_copy" in proc.stderr and "float64" in proc.stderr and "train_step" in proc.stderr


def test_cli_training_paths_pass_under_the_check(tmp_path, check_mps):
    """The CLI's device paths that other tests reach only through their error checks or formulas, under the
    check (inherited by the subprocesses): mixup + cutmix, EMA and layer decay in one run (--batch-size auto:
    tests/test_train.py);
    a second run from its weights (--init-from, frozen backbone: stage 1 of two-stage) distilled from it
    (--teacher); evaluate with TTA; an ensemble of both."""
    data = ["--dataset", "food-101", "--data-dir", str(ROOT / "data" / "food-101-tiny")]
    common = [*data, "--backbone", "tf_efficientnet_lite0", "--pretrained", "offline", "--image-size", "64",
              "--epochs", "1", "--max-steps", "2", "--num-workers", "0"]
    first, second = tmp_path / "first", tmp_path / "second"
    done = run_cli("train", *common, "--mixup", "--cutmix", "--model-ema", "--layer-decay", "0.75", "--batch-size",
                   "16", "--output-dir", str(first))
    assert done.returncode == 0, done.stderr[-3000:]
    done = run_cli("train", *common, "--batch-size", "16", "--init-from", str(first), "--freeze-backbone",
                   "--teacher", str(first), "--output-dir", str(second))
    assert done.returncode == 0, done.stderr[-3000:]
    done = run_cli("evaluate", "--checkpoint", str(first), *data, "--tta", "2", "--num-workers", "0")
    assert done.returncode == 0 and '"n": 150' in done.stdout.splitlines()[-1], done.stderr[-3000:]
    done = run_cli("ensemble", "--models", str(first), str(second), *data, "--num-workers", "0")
    assert done.returncode == 0 and '"members"' in done.stdout.splitlines()[-1], done.stderr[-3000:]


# ----------------------------------------------------------------------------------------------------------------
# MPS-specific settings


def test_fused_adamw_only_on_cuda():
    import timm

    model = timm.create_model("test_efficientnet", num_classes=3)
    for kind, fused in (("cpu", False), ("mps", False), ("cuda", True)):
        assert devices.fused_adamw(torch.device(kind)) is fused
    optimizer = recipe.make_optimizer(model, TrainConfig(), torch.device("mps"))
    assert not optimizer.defaults["fused"]


def test_channels_last_off_by_default_on_mps_and_compile_warns(caplog):
    assert not devices.channels_last_for(torch.device("mps"))
    assert devices.channels_last_for(torch.device("cpu")) and devices.channels_last_for(torch.device("cuda"))
    assert devices.channels_last_for(torch.device("mps"), True)  # asked for: as asked
    assert TrainConfig().channels_last is None
    parser = cli.build_parser()
    assert parser.parse_args(["train", "--no-channels-last"]).channels_last is False
    assert devices.compile_for(torch.device("cpu"), True)
    assert not devices.compile_for(torch.device("mps"), True)
    assert "--compile on MPS" in caplog.text


def test_torchrun_with_mps_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match="no distributed backend reduces MPS tensors"):
        distributed.setup("mps")


def test_bench_device_decode_on_mps_is_refused(monkeypatch):
    from helpers.commands.bench import run_bench

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    with pytest.raises(UserError, match="--device-decode"):
        run_bench(device="mps", device_decode=True, sections=["input"])


def test_feature_throughput_syncs_mps_and_reads_ru_maxrss_per_platform(monkeypatch):
    spec = importlib.util.spec_from_file_location("feature_throughput", ROOT / "scripts" / "feature_throughput.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    calls = []
    monkeypatch.setattr(torch.mps, "synchronize", lambda: calls.append("mps"))
    devices.synchronize(torch.device("mps"))
    assert calls == ["mps"]
    import resource

    class Usage:
        ru_maxrss = 3 * 2**30  # 3 GiB: in bytes on macOS

    monkeypatch.setattr(resource, "getrusage", lambda who: Usage)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert script.peak_memory_gib(torch.device("cpu")) == (3.0, "process peak resident memory (CPU)")
    monkeypatch.setattr(sys, "platform", "linux")
    assert script.peak_memory_gib(torch.device("cpu"))[0] == 3 * 2**10  # the same number in KiB on Linux
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 2**30)
    assert script.peak_memory_gib(torch.device("mps")) == (1.0, "MPS driver allocation after the run (no peak counter)")


class _Threads(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, key):
        import cv2

        return cv2.getNumThreads()


def test_loader_workers_on_macos(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    evaluation = loaders.make_loader(_Threads(), batch_size=2, shuffle=False, seed=0, num_workers=4)
    training = loaders.make_loader(_Threads(), batch_size=2, shuffle=True, seed=0, num_workers=4)
    assert evaluation.num_workers == loaders.MAC_EVAL_WORKERS and not evaluation.persistent_workers
    assert training.num_workers == 4 and training.persistent_workers
    assert pickle.loads(pickle.dumps(training.worker_init_fn)) is loaders.worker_init  # spawn pickles it
    monkeypatch.setattr(sys, "platform", "linux")  # forked workers: no cv2.setNumThreads (it can hang after fork)
    forked = loaders.make_loader(_Threads(), batch_size=2, shuffle=False, seed=0, num_workers=1)
    assert forked.worker_init_fn is None and len([t for batch in forked for t in batch]) == 4
    code = "import cv2; from helpers.data.loaders import worker_init; worker_init(0); print(cv2.getNumThreads())"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert res.stdout.strip() == "1"  # what a spawned worker runs first


def test_atomic_writes_use_f_fullfsync_on_macos(monkeypatch, tmp_path):
    import fcntl

    calls = []
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(fcntl, "F_FULLFSYNC", 51, raising=False)
    monkeypatch.setattr(fcntl, "fcntl", lambda fd, command: calls.append(command))
    io.atomic_write_text(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").read_text() == "hello" and calls == [51, 51]  # the file, then its folder

    def refuse(fd, command):
        raise OSError(45, "Operation not supported")  # e.g. a network share

    synced = []
    monkeypatch.setattr(fcntl, "fcntl", refuse)
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    io.atomic_write_text(tmp_path / "b.txt", "world")
    assert (tmp_path / "b.txt").read_text() == "world" and len(synced) == 2


def test_user_error_lives_at_the_bottom():
    from helpers.base import errors

    assert errors.UserError is errors.UserError is io.UserError


def test_run_info_and_ledger_record_the_mac(monkeypatch):
    import platform

    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    monkeypatch.setattr(platform, "mac_ver", lambda: ("14.5", ("", "", ""), "arm64"))
    monkeypatch.setattr(devices, "_sysctl", lambda name: "Apple M2 Pro")
    info = devices.run_info(torch.device("cpu"), 42)
    assert info["macos"] == "14.5" and info["chip"] == "Apple M2 Pro"
    from helpers.course import course

    assert course._device_name("cpu") == "cpu (Apple M2 Pro, macOS 14.5)"  # the ledger's device column
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    assert "macos" not in devices.run_info(torch.device("cpu"), 42) and course._device_name("cpu") == f"cpu ({os.cpu_count()} cores)"


# ----------------------------------------------------------------------------------------------------------------
# The doctor

DOCTOR = ["doctor", "--device", "cpu", "--backbone", "tf_efficientnet_lite0", "--image-size", "64", "--batch-size",
          "4", "--steps", "2", "--bench-steps", "1"]


def test_doctor_cpu_against_cpu_agrees(capsys):
    assert cli.main(DOCTOR) == 0
    out = capsys.readouterr().out
    assert "| loss, step 2 |" in out and "| batches copied to the device intact | 2/2 |" in out
    assert "training images/s" in out and "NO |" not in out


def test_doctor_names_a_disagreeing_device_with_exit_2(monkeypatch, capsys):
    real = doctor.run_steps

    def faulty(*args, side="cpu", **kwargs):  # a device whose gradients and updates are off by 1%
        steps = real(*args, side=side, **kwargs)
        if side == "device":
            steps.gradients, steps.weights = steps.gradients * 1.01, steps.weights + 0.05 * steps.update / len(
                steps.weights) ** 0.5
        return steps

    monkeypatch.setattr(doctor, "run_steps", faulty)
    assert cli.main([*DOCTOR[:-1], "0"]) == 2  # no speed measurement
    captured = capsys.readouterr()
    assert "| gradients (last step), rel. L2 |" in captured.out and "| NO |" in captured.out
    assert "differ from the CPU's in: gradients (last step), rel. L2, updated weights" in captured.err
    assert "--no-channels-last avoids it" not in captured.err  # the contiguous format differs the same way


def test_doctor_catches_a_corrupting_copy(monkeypatch, capsys):
    def corrupting(t, device):
        out = t.clone()
        out.view(-1)[0] += 1  # one pixel (or label) changed on the way
        return out

    monkeypatch.setattr(devices, "to_device", corrupting)
    assert cli.main([*DOCTOR[:-1], "0"]) == 2
    captured = capsys.readouterr()
    assert "| batches copied to the device intact | 0/2 |" in captured.out
    assert "did not arrive intact" in captured.err
