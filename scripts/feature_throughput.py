"""Feature throughput of backbones with random weights (speed does not depend on the weights), at their own
input size: images/s, the hours 101,000 Food-101 photos would take, and memory.

    PYTHONPATH=. python scripts/feature_throughput.py --device cpu --batch-size 2 --batches 2

Prints one JSON line per backbone. The time covers the model only (no JPEG decoding); the `features` command
adds decoding, which on CPU is small against these models. The clock is read after the device's queue is
drained (CUDA and MPS run asynchronously). `peak_memory_GiB` measures what `memory_kind` says: on CUDA the peak
allocated by tensors, on MPS the Metal driver's allocation after the run (MPS has no peak counter), on CPU the
process's peak resident memory (ru_maxrss: KiB on Linux, bytes on macOS).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import timm
import torch

from helpers.base.devices import amp_dtype, autocast, get_device, synchronize
from helpers.base.mps_check import watch

MODELS = ("vit_so400m_patch14_siglip_384", "vit_large_patch14_clip_quickgelu_336", "eva02_base_patch14_448",
          "tf_efficientnet_lite0")


def measure(name: str, device: torch.device, batch_size: int, batches: int) -> dict:
    started = time.perf_counter()
    model = timm.create_model(name, pretrained=False, num_classes=0).eval().to(device)
    built = time.perf_counter() - started
    size = timm.data.resolve_data_config({}, model=model)["input_size"][-1]
    x = torch.randn(batch_size, 3, size, size, device=device)
    dtype = amp_dtype(device, True)
    with watch("feature_throughput.measure"), torch.no_grad(), autocast(device, dtype):
        model(x)  # warm-up
        synchronize(device)
        started = time.perf_counter()
        for _ in range(batches):
            model(x)
        synchronize(device)
    per_s = batch_size * batches / (time.perf_counter() - started)
    memory, kind = peak_memory_gib(device)
    return {"model": name, "image_size": size, "device": str(device), "dtype": str(dtype), "batch_size": batch_size,
            "images_per_s": round(per_s, 2), "hours_for_101k": round(101_000 / per_s / 3600, 2),
            "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6),
            "peak_memory_GiB": round(memory, 2), "memory_kind": kind, "build_s": round(built, 1)}


def peak_memory_gib(device: torch.device) -> tuple[float, str]:
    """(GiB, what it measures) for the `peak_memory_GiB` column."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "CUDA peak allocated by tensors"
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**30, "MPS driver allocation after the run (no peak counter)"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB on Linux
    return rss / (2**30 if sys.platform == "darwin" else 2**20), "process peak resident memory (CPU)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    device = get_device(args.device)
    for name in args.models:
        print(json.dumps(measure(name, device, args.batch_size, args.batches)), flush=True)


if __name__ == "__main__":
    main()
