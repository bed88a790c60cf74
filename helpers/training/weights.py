"""Reading weights files safely: a checkpoint or run folder of this project, a plain state dict (.pt/.pth) or a
.safetensors file, loaded with `weights_only=True` (a file holding pickled code is refused by name, a damaged one
named as damaged). `checkpoint` writes and resumes runs with these; `models` reads `--pretrained` files with them."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from ..base.errors import UserError

LAST, BEST = "last.pt", "best.pt"  # a run folder's checkpoints: the training state, and the best weights
PREVIOUS = "last.prev.pt"  # the checkpoint before `last.pt`: the way back if `last.pt` is ever damaged


def resolve(path: str | Path, prefer: str = BEST) -> Path:
    """A checkpoint file from a file or run-folder path (a folder gives `prefer`, else the other one)."""
    if not str(path).strip():
        raise UserError("The checkpoint path is empty. Give a run folder of `helpers train` or a .pt file.")
    path = Path(path).expanduser()
    if path.is_dir():
        for name in (prefer, LAST, BEST, PREVIOUS):
            if (path / name).is_file():
                return path / name
        raise UserError(f"{path} holds no checkpoint ({BEST} or {LAST}). Give a run folder of `helpers train`.")
    if not path.is_file():
        raise UserError(f"Checkpoint {path} does not exist.")
    return path


class DamagedCheckpointError(UserError):
    """A checkpoint file that cannot be read (truncated, zeroed, not a checkpoint)."""


def torch_load(file: Path) -> Any:
    """torch.load(weights_only=True), with its failures sorted into refused code and damaged files."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            raise UserError(
                f"Refused to load {file}: it holds pickled Python objects other than weights, which could run "
                "code when loaded. Only load checkpoints you trust; this project's own checkpoints never contain "
                "code."
            ) from exc
        raise DamagedCheckpointError(_damaged(file, exc)) from exc
    except IsADirectoryError as exc:
        raise UserError(f"{file} is a folder, not a checkpoint file.") from exc
    except PermissionError as exc:
        raise UserError(f"Cannot read {file}: permission denied. Fix its permissions.") from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, KeyError, ValueError... for damaged files
        raise DamagedCheckpointError(_damaged(file, exc)) from exc


def _damaged(file: Path, exc: BaseException) -> str:
    size = file.stat().st_size if file.exists() else 0
    with open(file, "rb") as f:
        head = f.read(1 << 16)
    if size == 0 or not head.strip(b"\0"):
        what = f"{size} bytes, all zero" if size else "an empty file"
    else:
        what = f"{size} bytes; {type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}"
    return (f"{file} is not a readable checkpoint ({what}). It is damaged (truncated or overwritten) or not a "
            "checkpoint.")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from this project's checkpoint, a plain state dict (.pt/.pth) or a .safetensors file."""
    file = resolve(path)
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(file))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{file} is not a readable .safetensors file ({exc}).") from exc
    state = torch_load(file)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{file} is not a state dict of tensors.")
    return state
