"""A training run's output folder: before any work, whether the folder is free, holds this run to continue, or
a checkpoint to start a new stage from (`prepare_output`); when the run starts, its config.yaml and run_info.json
(`start_output`); and what it reports there (unreadable photos in bad_files.txt). `RUNTIME_FIELDS` are the
settings that may change between a run and its continuation without changing what it computes."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
import yaml

from ..base import distributed
from ..base.config import TrainConfig, config_from_dict, save_config
from ..base.devices import run_info
from ..base.errors import UserError
from ..base.io import atomic_write_text
from . import checkpoint
from .metrics import read_rows, truncate_rows

_logger = logging.getLogger(__name__)


# Settings that may change between a run and its resumption without changing what is computed.
RUNTIME_FIELDS = {"resume", "output_dir", "device", "num_workers", "log_interval", "checkpoint_every", "compile",
                  "download", "data_dir", "strict_data", "channels_last"}


def same_run(saved: TrainConfig, cfg: TrainConfig) -> bool:
    a, b = dataclasses.asdict(saved), dataclasses.asdict(cfg)
    return all(a[k] == b[k] for k in a if k not in RUNTIME_FIELDS)


def _same_run_started(out: Path, cfg: TrainConfig) -> bool:
    """Whether the config.yaml in `out` is that of `cfg`'s run (a run that stopped before its first checkpoint)."""
    try:
        saved = config_from_dict(yaml.safe_load((out / "config.yaml").read_text()) or {})
    except Exception:  # a torn or foreign config.yaml is not this run's
        return False
    return same_run(saved, cfg)


def prepare_output(cfg: TrainConfig) -> tuple[TrainConfig, dict | None, bool]:
    """Check the output folder and load the resume checkpoint, before any work starts.

    Returns:
        (config, resume state or None, continuing): `continuing` is an exact continuation of the same run;
        a resume checkpoint with other training settings starts a new stage from its weights.
    """
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir {out} is a file. Give a folder (it is created when missing).")
    resume = cfg.resume
    if resume == "auto" or (resume is not None and Path(resume).is_dir() and Path(resume).resolve() == out.resolve()):
        resume = str(out) if any((out / n).is_file() for n in (checkpoint.LAST, checkpoint.PREVIOUS)) else None
    if resume is None:
        if (out / checkpoint.LAST).exists() or (out / "config.yaml").exists():
            no_weights = not any((out / n).exists() for n in (checkpoint.LAST, checkpoint.PREVIOUS, checkpoint.BEST))
            if cfg.resume is not None and _same_run_started(out, cfg):
                pass
            elif no_weights and cfg.resume == "auto":  # e.g. a NaN at step 2: nothing to keep, start over as asked
                _logger.warning("%s holds a run that stopped before its first checkpoint, with other settings: "
                                "starting over with these settings", out)
            elif no_weights:
                raise UserError(
                    f"{out} holds a run that stopped before its first checkpoint. Add --resume auto to start it over "
                    "(with these settings), or choose another --output-dir."
                )
            else:
                raise UserError(
                    f"{out} already holds another run. Continue it with --resume {out} and its settings, or choose "
                    "another --output-dir."
                )
            if distributed.is_main():  # killed before its first checkpoint: start over, without that try's rows
                (out / "metrics.csv").unlink(missing_ok=True)
        if cfg.resume is not None:
            _logger.info("No checkpoint of this run in %s yet: starting it from the beginning", out)
        return dataclasses.replace(cfg, resume=None), None, False
    state, state_file = checkpoint.load_resume(resume)  # a damaged last.pt goes back to last.prev.pt (warning)
    if state_file.parent.resolve() == out.resolve():
        checkpoint.check_best(state, out)
    saved = config_from_dict(state["config"])
    if saved.backbone != cfg.backbone:
        raise UserError(
            f"--resume {resume} is a {saved.backbone} checkpoint, but --backbone is {cfg.backbone}. "
            f"Resume with --backbone {saved.backbone}, or start a new run from its weights with another backbone."
        )
    continuing = same_run(saved, cfg)
    if continuing and "optimizer" not in state:
        raise UserError(
            f"--resume {resume} holds the best weights only, not the training state that continuing needs. Give "
            "the run folder or its last.pt, or start a new run from these weights with --init-from."
        )
    source_dir = checkpoint.resolve(resume, checkpoint.LAST).parent.resolve()
    if continuing and (source_dir / "metrics.csv").is_file():
        read_rows(source_dir / "metrics.csv")  # a damaged log stops here, before any file is written
    if not continuing and source_dir == out.resolve():
        changed = [k for k, v in dataclasses.asdict(cfg).items()
                   if k not in RUNTIME_FIELDS and dataclasses.asdict(saved)[k] != v]
        raise UserError(
            f"The run in {out} was trained with other settings ({', '.join(changed)} differ). To continue it, "
            "repeat its settings; to start a new stage from its weights, give another --output-dir."
        )
    return dataclasses.replace(cfg, resume=resume), state, continuing


def start_output(cfg: TrainConfig, device: torch.device, dist_info, completed_epochs: int | None) -> Path:
    """Write config.yaml and run_info.json (rank 0); a continued run carries its metrics.csv over."""
    out = Path(cfg.output_dir)
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        info = {**run_info(device, cfg.seed), "world_size": dist_info.world_size}
        atomic_write_text(out / "run_info.json", json.dumps(info, indent=2))
        if completed_epochs is not None:
            _carry_metrics(cfg.resume, out, completed_epochs)
    return out


def config_dict(cfg: TrainConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["teacher"] = list(cfg.teacher)
    return d


def count_rows(path: Path) -> int:
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


def _carry_metrics(resume: str, out: Path, completed_epochs: int) -> None:
    """Keep metrics.csv consistent with the checkpoint: copy it from the resumed folder when the output folder
    differs, and drop rows of epochs after the checkpoint (written just before a crash)."""
    source = checkpoint.resolve(resume, checkpoint.LAST).parent / "metrics.csv"
    target = out / "metrics.csv"
    if source.exists() and source.resolve() != target.resolve():
        atomic_write_text(target, source.read_text(encoding="utf-8", errors="surrogateescape"))
    truncate_rows(target, completed_epochs)


def report_bad_files(paths: set[str], out: Path) -> None:
    """Add unreadable images to out/bad_files.txt, with one warning for those not listed there yet (so a bad
    file is announced once per run, not once per epoch or per file)."""
    log = out / "bad_files.txt"
    known = set(log.read_text(errors="surrogateescape").splitlines()) if log.exists() else set()
    new = sorted(set(paths) - known)
    if not new:
        return
    atomic_write_text(log, "\n".join(sorted(known | set(new))) + "\n")
    shown = ", ".join(new[:3]) + (f" and {len(new) - 3} more" if len(new) > 3 else "")
    _logger.warning("%d unreadable image(s) skipped, each replaced by the next readable one: %s. All %d are listed "
                    "in %s; --strict-data makes them an error, `python -m helpers check-data` lists every problem.",
                    len(new), shown, len(known) + len(new), log)
