"""Seeding, devices, mixed precision, and the facts a run records about where it ran."""

from __future__ import annotations

import contextlib
import logging
import platform
import random
import subprocess
from pathlib import Path

import numpy as np
import torch

from .config import UserError

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
    return info


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
