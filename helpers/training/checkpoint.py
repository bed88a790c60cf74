"""Checkpoints: atomic writes of plain data, safe loads, and the way back from a damaged `last.pt`.

A checkpoint is a dict of state dicts, numbers, strings and tensors only: it loads with
`torch.load(weights_only=True)`, which refuses pickled code. Writes go through `helpers.base.io.atomic_path` (a
temporary file in the same folder, flushed, then renamed over the old file), so `last.pt` is always a complete
checkpoint; a full disk or Ctrl-C during the write removes the temporary file and keeps the old one. The
`last.pt` being replaced is kept as `last.prev.pt` (a hard link, no copy): if `last.pt` is damaged later (a
truncated copy, a disk fault), `load_resume` goes back to it with a warning naming its epoch and step.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..base.errors import UserError
from ..base.io import WriteError, atomic_open, temp_name
from .weights import BEST, LAST, PREVIOUS, DamagedCheckpointError, resolve, torch_load

_logger = logging.getLogger(__name__)

VERSION = 1

DAMAGED = "last.damaged.pt"  # a damaged `last.pt`, set aside (not deleted) when a resume goes back to PREVIOUS


class CheckpointWriteError(WriteError):
    """Writing a checkpoint failed (disk full, permissions); the previous checkpoint is untouched."""


def save_atomic(state: dict[str, Any], path: str | Path, *, keep_previous: bool | None = None) -> None:
    """Write `state` to `path` so that `path` is either the old complete file or the new complete file.

    Args:
        keep_previous: keep the file being replaced as `last.prev.pt` (default: for `last.pt` only). The old
            file is hard-linked, not copied, and only once the new one is completely on disk.

    Raises:
        CheckpointWriteError: disk full, read-only, permissions (also torch's RuntimeError for ENOSPC); no
            temporary file is left and the previous checkpoint is kept.
    """
    path = Path(path)
    keep_previous = path.name == LAST if keep_previous is None else keep_previous
    try:
        with atomic_open(path) as f:
            torch.save({**state, "version": VERSION}, f)
            if keep_previous and path.is_file():
                _keep_previous(path)
    except WriteError as exc:
        raise CheckpointWriteError(str(exc).replace("previous version of the file", "previous checkpoint")) \
            from exc.__cause__


def _keep_previous(path: Path) -> None:
    """Hard-link the current `path` as `last.prev.pt` (atomically, through a temporary link)."""
    prev = path.with_name(PREVIOUS)
    link = temp_name(prev)
    try:
        link.unlink(missing_ok=True)
        os.link(path, link)
        os.replace(link, prev)
    except OSError as exc:  # file systems without hard links: no way back, but the write itself is fine
        link.unlink(missing_ok=True)
        _logger.debug("Could not keep %s as %s: %s", path, prev, exc)


def load(path: str | Path, prefer: str = BEST) -> dict[str, Any]:
    """Load a checkpoint of this project safely (no code runs).

    Raises:
        UserError: the file is missing, damaged, not a checkpoint of this project, or holds pickled code.
    """
    file = resolve(path, prefer)
    return _check_state(torch_load(file), file)


def _check_state(state: Any, file: Path) -> dict[str, Any]:
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or "config" not in state:
        raise DamagedCheckpointError(f"{file} is not a checkpoint of this project (no model/config entries).")
    if not isinstance(state["config"], dict) or not isinstance(state.get("class_names", []), (list, tuple)):
        raise DamagedCheckpointError(f"{file} is not a checkpoint of this project (malformed config).")
    return state


def describe_position(state: dict[str, Any]) -> str:
    """Where a training checkpoint stands, in the log's words: "epoch 2, step 8" or "the end of epoch 1"."""
    epoch, step = int(state.get("epoch", 0)), int(state.get("step", 0))
    return f"epoch {epoch + 1}, step {step}" if step else f"the end of epoch {epoch}"


def load_resume(path: str | Path) -> tuple[dict[str, Any], Path]:
    """Load the checkpoint to continue a run from: `last.pt`, or, when it is damaged, `last.pt`'s previous
    version `last.prev.pt`, with a warning naming the epoch and step it goes back to.

    Returns:
        (state, the file it came from)

    Raises:
        UserError: no readable training checkpoint (the message names `best.pt`'s epoch, if there is one).
    """
    path = Path(path)
    if path.is_dir() and not (path / LAST).is_file() and (path / PREVIOUS).is_file():
        file = path / PREVIOUS  # a damaged last.pt was set aside by an earlier resume
    else:
        file = resolve(path, LAST)
    if file.name not in (LAST, PREVIOUS):
        return load(file), file
    try:
        return load(file), file
    except DamagedCheckpointError as damaged:
        prev = file.with_name(PREVIOUS)
        if file.name == LAST and prev.is_file():
            try:
                state = load(prev)
            except DamagedCheckpointError:
                pass
            else:
                kept = file.with_name(DAMAGED)
                if os.environ.get("RANK", "0") == "0":  # set aside, so the next save cannot rotate it over prev
                    os.replace(file, kept)
                _logger.warning("%s Going back to the previous checkpoint %s, at %s (the steps after it are "
                                "trained again; the damaged file is kept as %s).", damaged, prev,
                                describe_position(state), kept.name)
                return state, prev
        best = file.with_name(BEST)
        hint = ""
        if best.is_file():
            try:
                hint = (f" The best weights ({BEST}, epoch {load(best).get('epoch')}) are readable: start a new run "
                        f"from them with --init-from {best} and another --output-dir.")
            except UserError:
                hint = f" {BEST} is damaged too."
        raise UserError(f"{damaged} There is no readable earlier training checkpoint ({PREVIOUS}) to go back "
                        f"to.{hint} Or move {file.parent} away to start the run again.") from damaged


def check_best(state: dict[str, Any], folder: Path) -> None:
    """Before continuing a run in `folder`: if the `best.pt` that `state` counts on is missing or damaged, warn
    and forget the recorded best (in `state`), so that the next epoch writes a new `best.pt` and the final test
    never silently uses other weights than the ones it names."""
    best = state.get("best") or {}
    if not best.get("epoch"):
        return
    file = folder / BEST
    try:
        load(file)
        return
    except UserError as exc:
        reason = "is missing" if not file.exists() else f"is damaged ({str(exc)[:80]})"
    _logger.warning("%s of epoch %d %s: the next epoch's weights become the new best (val top-1 %.2f of epoch %d "
                    "is forgotten).", file, best["epoch"], reason, best.get("top1", float("nan")), best["epoch"])
    state["best"] = {"top1": -1.0, "epoch": 0, "since": 0}
