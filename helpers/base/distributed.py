"""Multi-process training under torchrun: one process per device, NCCL on CUDA, gloo on CPU.

    # one machine with 4 GPUs (the global batch stays --batch-size: each process takes 64 / 4 = 16 images a step)
    torchrun --standalone --nproc_per_node 4 -m helpers train --dataset food-101 --data-dir DIR --batch-size 64 ...
    # CPU processes (what the test suite runs): gloo instead of NCCL
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 -m helpers train --device cpu ...

Every process builds the same model and reads its own shard of every global batch (`data.EpochSampler`);
DistributedDataParallel averages the gradients, so a step sees the same batch as one process with the whole
global batch. Metrics are summed across processes with `all_sum`. Only rank 0 writes (checkpoints, metrics.csv,
config.yaml, bad_files.txt, summary.json) and logs at INFO level; the other ranks log warnings and errors only.
BatchNorm statistics stay per process (torch's SyncBatchNorm is CUDA-only); see docs/robustness.md.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import UserError
from .mps_check import device_code, host


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device_name: str) -> DistInfo:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); a no-op otherwise.

    Args:
        device_name: the --device setting: NCCL when it resolves to CUDA, gloo otherwise (CPU, MPS).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    mps = device_name == "mps" or (device_name == "auto" and not torch.cuda.is_available()
                                   and torch.backends.mps.is_available())
    if mps:  # gloo reduces CPU tensors, NCCL CUDA ones: no backend reduces MPS tensors
        raise UserError(f"torchrun started {world} processes on an MPS device, but no distributed backend "
                        "reduces MPS tensors (and a Mac has one GPU). Run `python -m helpers train` without "
                        "torchrun on the Mac, or torchrun with --device cpu.")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)  # before the group, so NCCL binds each rank to its own GPU
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if rank != 0:  # one copy of the logs: the other ranks only report problems
        logging.getLogger("helpers").setLevel(logging.WARNING)
    return DistInfo(rank, world, local_rank)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main() -> bool:
    """True in the process that writes and logs: rank 0, or the only process."""
    return not _active() or dist.get_rank() == 0


def _tensor_device(device: torch.device) -> torch.device:
    return device if device.type == "cuda" else torch.device("cpu")  # gloo reduces CPU tensors


@device_code
def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum numbers across processes (identity when not distributed): in float64 on the host (gloo), in float32
    on CUDA (NCCL; device code stays float32, exact for counts below 2^24)."""
    if not _active():
        return values
    reduce_on = _tensor_device(device)
    with host() if reduce_on.type == "cpu" else contextlib.nullcontext():
        t = torch.tensor(values, dtype=torch.float64 if reduce_on.type == "cpu" else torch.float32, device=reduce_on)
        dist.all_reduce(t)
        return t.tolist()


@device_code
def all_true(flag: bool | torch.Tensor, device: torch.device) -> bool:
    """True when `flag` is true in every process. All processes must call it at the same point, so that they
    all take the same branch (one rank skipping a backward pass that the others run would hang DDP)."""
    if not _active():
        return bool(flag)
    t = torch.as_tensor(flag, dtype=torch.int32, device=_tensor_device(device)).reshape(1)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def all_gather_object(obj: Any) -> list[Any]:
    """Every process's `obj` (picklable), in rank order; `[obj]` when not distributed."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` in every process (`obj` itself when not distributed)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if _active():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group. What of it is caught in reference cycles is freed now, while the interpreter is
    whole: freed at exit instead, gloo's threads aborted the process in about 1 of 10 runs under HELPERS_CHECK_MPS
    ("terminate called without an active exception"; 0 of 60 with the collection, tests/test_distributed.py)."""
    if _active():
        dist.destroy_process_group()
        gc.collect()
