"""Checkpoints: atomic writes of plain data, safe loads.

A checkpoint is a dict of state dicts, numbers, strings and tensors only: it loads with
`torch.load(weights_only=True)`, which refuses pickled code. Writes go to a temporary file in the same folder,
are flushed to disk, then `os.replace`d over the old file, so `last.pt` is always a complete checkpoint.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from .config import UserError

_logger = logging.getLogger(__name__)

VERSION = 1
LAST, BEST = "last.pt", "best.pt"


class CheckpointWriteError(UserError):
    """Writing a checkpoint failed (disk full, permissions); the previous checkpoint is untouched."""


def save_atomic(state: dict[str, Any], path: str | Path) -> None:
    """Write `state` to `path` so that `path` is either the old complete file or the new complete file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({**state, "version": VERSION}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CheckpointWriteError(
            f"Could not write checkpoint {path} ({exc.strerror or exc}). The previous checkpoint is kept; "
            "free disk space or fix permissions, then continue with --resume."
        ) from exc


def _fsync_folder(folder: Path) -> None:
    """Flush the folder entry too, so the rename survives a power cut, not only a killed process."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its os.replace is durable enough
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def resolve(path: str | Path, prefer: str = BEST) -> Path:
    """A checkpoint file from a file or run-folder path (a folder gives `prefer`, else the other one)."""
    path = Path(path)
    if path.is_dir():
        for name in (prefer, LAST, BEST):
            if (path / name).is_file():
                return path / name
        raise UserError(f"{path} holds no checkpoint ({BEST} or {LAST}). Give a run folder of `helpers train`.")
    if not path.is_file():
        raise UserError(f"Checkpoint {path} does not exist.")
    return path


def load(path: str | Path, prefer: str = BEST) -> dict[str, Any]:
    """Load a checkpoint of this project safely (no code runs).

    Raises:
        UserError: the file is missing, damaged, not a checkpoint of this project, or holds pickled code.
    """
    file = resolve(path, prefer)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"Refused to load {file}: it holds pickled Python objects other than weights, which could run code "
            "when loaded. Only load checkpoints you trust; this project's own checkpoints never contain code."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError(f"{file} is not a readable checkpoint ({type(exc).__name__}: {exc}). Is it damaged?") from exc
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"{file} is not a checkpoint of this project (no model/config entries).")
    return state


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from this project's checkpoint, a plain state dict (.pt/.pth) or a .safetensors file."""
    file = resolve(path)
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"Refused to load {file}: it holds pickled objects that could run code.") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError(f"{file} is not a readable weights file ({type(exc).__name__}: {exc}).") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{file} is not a state dict of tensors.")
    return state
