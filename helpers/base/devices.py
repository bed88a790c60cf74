"""Devices and what depends on them: the device choice (cuda, then mps, then cpu), seeds, mixed precision
(autocast dtype per device), channels_last / torch.compile / fused AdamW per device type, uint8 batches onto the
device as model input, peak memory, and the facts a run records about where it ran (run_info.json)."""

from __future__ import annotations

import contextlib
import logging
import platform
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .errors import UserError

_logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """auto picks cuda, then mps, then cpu. Asking for a device that is not there is a UserError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda, but torch sees no CUDA GPU. Use --device auto or cpu.")
        return torch.device("cuda", local_rank)
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps, but MPS is not available (it needs Apple silicon and macOS 12.3+).")
    return torch.device(name)


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast dtype for a device: bf16 on CUDA that supports it, else fp16 (which needs a GradScaler);
    fp16 on MPS; None on CPU (CPU autocast is slower than fp32 on most machines) or when `enabled` is False.
    """
    if not enabled or device.type == "cpu":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16 if device.type == "mps" else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device`, copied without blocking only from pinned memory (the CUDA loaders pin): on MPS a
    non-blocking copy of unpinned memory can read the buffer after the loader freed it (pytorch issues 139550,
    189690), silently corrupting images and labels."""
    return t.to(device, non_blocking=device.type == "cuda" and t.device.type == "cpu" and t.is_pinned())


def channels_last_for(device: torch.device, setting: bool | None = None) -> bool:
    """Whether to train in channels_last: `setting` when given, else on except on MPS, where the convolutions'
    backward takes a slow path in that format (pytorch issues 193349, 192551); `bench --channels-last` measures it."""
    return device.type != "mps" if setting is None else setting


def fused_adamw(device: torch.device) -> bool:
    """Use the fused AdamW only on CUDA: elsewhere (MPS) the fp16 GradScaler's found-inf is not honoured by every
    fused kernel, so the unfused optimizer, which the scaler skips correctly, is used."""
    return device.type == "cuda"


def compile_for(device: torch.device, requested: bool) -> bool:
    """Whether to torch.compile: as requested, except on MPS (warned; the run stays eager), where the inductor
    backend is experimental."""
    if requested and device.type == "mps":
        _logger.warning("--compile on MPS: torch.compile's MPS backend is experimental in this torch; running eager.")
        return False
    return requested


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA, MPS), so that a clock read after it measures the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory this process allocated on the device since the last reset (CUDA), or current driver
    allocation (MPS, which has no peak counter); 0 on CPU.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    return 0.0


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def run_info(device: torch.device, seed: int) -> dict:
    """Versions, device, seed and git commit: what a run records to be reproducible."""
    import albumentations
    import timm

    info = {
        "seed": seed, "device": str(device), "torch": torch.__version__, "timm": timm.__version__,
        "albumentations": albumentations.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "git_commit": _git_commit(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info.update(apple_machine() or {})
    return info


def apple_machine() -> dict[str, str] | None:
    """On a Mac, {"macos": version, "chip": e.g. "Apple M2 Pro"}; None elsewhere. MPS's speed and its bugs
    depend on both, so runs and ledger rows record them."""
    if platform.system() != "Darwin":
        return None
    return {"macos": platform.mac_ver()[0] or "unknown",
            "chip": _sysctl("machdep.cpu.brand_string") or platform.processor() or platform.machine()}


def _sysctl(name: str) -> str | None:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def device_description(device: torch.device) -> str:
    """The device in words for tables and the ledger: "cuda:0 (NVIDIA ...)", "mps (Apple M2 Pro, macOS 14.5)"."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    mac = apple_machine()
    return f"{device} ({mac['chip']}, macOS {mac['macos']})" if mac else str(device)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def to_model_input(images: torch.Tensor, device: torch.device,
                   normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   memory_format: torch.memory_format = torch.channels_last) -> torch.Tensor:
    """A loader's batch on `device`, normalised (uint8 batches need `normalize`, e.g. `augment.DeviceNormalize`;
    float batches are normalised already) and in `memory_format`."""
    images = to_device(images, device)
    if normalize is not None:
        images = normalize(images)
    if images.dtype == torch.uint8:
        raise ValueError("uint8 images reached the model without `normalize`: pass augment.DeviceNormalize")
    return images.contiguous(memory_format=memory_format)
