"""DistributedDataParallel on CPU: 2 gloo processes under torchrun train exactly like 1 process with the same
global batch, and only rank 0 writes and logs.

BatchNorm: each DDP process normalises its own half of the batch, so batch statistics differ from one process
with the whole batch, and torch's SyncBatchNorm runs on CUDA only (it raises on CPU tensors). The equality run
therefore uses --freeze-bn (BatchNorm in eval mode: the pretrained statistics, no batch statistics), and no
dropout or stochastic depth, whose masks depend on the batch shape. Per-sample augmentation needs nothing:
it is seeded by (seed, epoch, image index), whichever process reads the image. The optimizer is SGD: AdamW
divides each update by the gradient's own scale, so it would hide a gradient that is off by a constant factor
(summed instead of averaged across ranks), and it turns float noise on near-zero gradients into whole steps.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from helpers.base import distributed

from .conftest import ROOT, cli_flags

# Heavy imports (timm, OpenCV) go inside the DDP test: the spawned processes of the collectives test import
# this module, and should start in seconds.

SEED = 11
FLAGS = cli_flags(dict(
    dataset="food-101", backbone="tf_efficientnet_lite0", pretrained="offline", image_size=64, num_workers=0,
    batch_size=16, epochs=1, warmup_epochs=0.3, lr=0.003, optimizer="sgd", checkpoint_every=2, device="cpu",
    seed=SEED, freeze_bn=True, drop_rate=0, drop_path_rate=0,
))


def _run(cmd: list[str], log: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log.write_text(res.stdout + res.stderr)
    assert res.returncode == 0, res.stderr[-4000:]
    return res


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    from helpers.data.loaders import EpochSampler
    from helpers.data.splits import load_splits
    from helpers.training import checkpoint
    from helpers.training.models import create_model

    from .test_faults import make_micro

    data = make_micro(tmp_path / "data")
    train = load_splits("food-101", data, seed=SEED).train
    # One unreadable photo in each rank's shard of epoch 1: bad_files.txt must gather both ranks' findings.
    shards = [[i for i, _ in EpochSampler(len(train), shuffle=True, seed=SEED, rank=r, world_size=2)] for r in (0, 1)]
    broken = sorted({train[shards[0][1]][0], train[shards[1][1]][0]})
    for path in broken:
        Path(path).write_bytes(b"")

    ddp, single = tmp_path / "ddp", tmp_path / "single"
    res = _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "helpers",
            "train",
            *FLAGS,
            "--data-dir",
            str(data),
            "--output-dir",
            str(ddp),
        ],
        tmp_path / "ddp.log",
    )
    _run(
        [sys.executable, "-m", "helpers", "train", *FLAGS, "--data-dir", str(data), "--output-dir", str(single)],
        tmp_path / "single.log",
    )

    # Same weights: the DDP/single difference is float noise, far below what one epoch of training changed.
    start = create_model("tf_efficientnet_lite0", 10, pretrained="offline").state_dict()
    a, b = (checkpoint.load(d, prefer=checkpoint.LAST)["model"] for d in (single, ddp))
    moved = max(
        float((a[k] - start[k]).abs().max()) for k in a if k != "classifier.weight" and a[k].is_floating_point()
    )
    differ = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert differ < 0.01 * moved, (differ, moved)  # measured: ~5e-7 against ~8e-4
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    # Same metrics: the train ones are summed over both ranks (70 images), as are val and test.
    (ra,), (rb,) = _rows(single / "metrics.csv"), _rows(ddp / "metrics.csv")  # one row: rank 1 appended none
    for k in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5"):
        assert float(rb[k]) == pytest.approx(float(ra[k]), rel=1e-5, abs=1e-6), k
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (single, ddp))
    for k in ("test_top1", "test_top5", "test_n", "best_epoch"):
        assert sb[k] == sa[k], k
    assert sb["test_loss"] == pytest.approx(sa["test_loss"], rel=1e-5)

    # Only rank 0 writes and logs; every rank returns rank 0's summary.
    assert (ddp / "bad_files.txt").read_text().split() == broken == (single / "bad_files.txt").read_text().split()
    log = res.stderr
    assert log.count("Training tf_efficientnet_lite0 on 70 images") == 1 and log.count("epoch 1/1") == 1
    assert log.count("2 unreadable image(s) skipped") == 1
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1 and lines[0]["test_top1"] == sb["test_top1"]  # the JSON line, printed by rank 0 only
    assert json.loads((ddp / "run_info.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in ddp.iterdir()) == [
        "bad_files.txt",
        "best.pt",
        "config.yaml",
        "last.prev.pt",  # the checkpoint before last.pt, the way back from a damaged last.pt
        "last.pt",
        "metrics.csv",
        "run_info.json",
        "summary.json",
        "test_predictions.pt",  # the final test's softmax (rank 0's), read by a later evaluation of best.pt
    ]
    kept = [torch.load(d / "test_predictions.pt", weights_only=True)["entries"]["model"]["probs"] for d in (single, ddp)]
    torch.testing.assert_close(kept[1], kept[0], rtol=1e-4, atol=1e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _collectives(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    info = distributed.setup("cpu")
    cpu = torch.device("cpu")
    result = {
        "rank": info.rank,
        "is_main": distributed.is_main(),
        "sum": distributed.all_sum([1.0, rank], cpu),
        "all_finite": distributed.all_true(torch.isfinite(torch.tensor(float("nan") if rank == 1 else 1.0)), cpu),
        "all_true": distributed.all_true(True, cpu),
        "gathered": distributed.all_gather_object({f"r{rank}.jpg"}),
        "broadcast": distributed.broadcast_object(f"from {rank}"),
        "log_level": logging.getLogger("helpers").level,
    }
    distributed.barrier()
    distributed.cleanup()
    Path(out, f"{rank}.json").write_text(json.dumps(result, default=sorted))


def test_collectives_agree_across_processes(tmp_path):
    mp.spawn(_collectives, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    assert (r0["is_main"], r1["is_main"]) == (True, False)
    assert r0["sum"] == r1["sum"] == [2.0, 1.0]
    # A NaN on rank 1 only: both ranks must take the NaN branch, or DDP's next all-reduce would hang.
    assert r0["all_finite"] is False and r1["all_finite"] is False and r0["all_true"] is True
    assert r0["gathered"] == r1["gathered"] == [["r0.jpg"], ["r1.jpg"]]
    assert r0["broadcast"] == r1["broadcast"] == "from 0"
    assert r1["log_level"] == logging.WARNING and r0["log_level"] != logging.WARNING  # one copy of the logs
