"""A run's output folder: before any work, whether the folder is free, holds this run to continue, or a checkpoint
to start a new stage from (`prepare_output`); when the run starts, its config.yaml and run_info.json
(`start_output`); and what it reports there (unreadable photos in bad_files.txt). `RUNTIME_FIELDS` are the
settings that may change between a run and its continuation without changing what it computes.

It also says what a run folder is and which files in it a run owns (`run_kind`, `check_output_path`), so that no
other command's output lands on them, and records and checks which weights a finished run wrote
(`weights_record`, `check_run_weights`)."""

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
from ..base.lock import LOCK_NAME
from . import checkpoint
from .metrics import read_rows, truncate_rows

_logger = logging.getLogger(__name__)


# Settings that may change between a run and its resumption without changing what is computed.
RUNTIME_FIELDS = {"resume", "output_dir", "device", "num_workers", "log_interval", "checkpoint_every", "compile",
                  "download", "data_dir", "strict_data", "channels_last"}


def same_run(saved: TrainConfig, cfg: TrainConfig) -> bool:
    return not changed_settings(saved, cfg)


def changed_settings(saved: TrainConfig, cfg: TrainConfig) -> list[str]:
    """The settings (other than `RUNTIME_FIELDS`) in which `cfg` differs from `saved`."""
    a, b = dataclasses.asdict(saved), dataclasses.asdict(cfg)
    return [k for k in a if k not in RUNTIME_FIELDS and a[k] != b[k]]


def _same_run_started(out: Path, cfg: TrainConfig) -> bool:
    """Whether the config.yaml in `out` is that of `cfg`'s run (a run that stopped before its first checkpoint)."""
    saved = _folder_config(out)
    return saved is not None and same_run(saved, cfg)


def _folder_config(folder: Path) -> TrainConfig | None:
    """The settings in `folder`'s config.yaml; None when it has none (or a torn or foreign one)."""
    try:
        return config_from_dict(yaml.safe_load((folder / "config.yaml").read_text()) or {})
    except Exception:  # a missing, torn or foreign config.yaml is no run's
        return None


def continue_in_place(cfg: TrainConfig) -> TrainConfig:
    """Where a run continues: in its checkpoint's folder. When `cfg.resume` names a run folder (or a checkpoint in
    one) whose config.yaml has `cfg`'s settings, `cfg` is returned with that folder as `output_dir`, whatever
    `output_dir` says: a config.yaml copied with its run names the folder it was copied from, and continuing the
    copy must not write there. Other settings make a new stage, which keeps `output_dir` (`prepare_output`
    checks that it holds no other run). Nothing is written."""
    if cfg.resume in (None, "auto"):
        return cfg
    path = Path(cfg.resume).expanduser()
    folder = path if path.is_dir() else path.parent
    if folder.resolve() == Path(cfg.output_dir).expanduser().resolve() or not _same_run_started(folder, cfg):
        return cfg
    _logger.warning("--resume %s continues that run in its own folder %s; --output-dir %s is not written (a run "
                    "folder is written only by its run; a new stage from these weights needs other settings)",
                    cfg.resume, folder, cfg.output_dir)
    return dataclasses.replace(cfg, output_dir=str(folder))


def prepare_output(cfg: TrainConfig) -> tuple[TrainConfig, dict | None, bool]:
    """Check the output folder and load the resume checkpoint, before any work starts.

    A run writes only into its own folder: a continuation into its checkpoint's (`continue_in_place` moved
    `output_dir` there), a new run or a new stage into a folder that holds no other run (`_check_free`), and
    never into a folder or file another kind of run owns (`check_output_path`).

    Returns:
        (config, resume state or None, continuing): `continuing` is an exact continuation of the same run;
        a resume checkpoint with other training settings starts a new stage from its weights.
    """
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir {out} is a file. Give a folder (it is created when missing).")
    check_output_path(out, "--output-dir")
    kind = run_kind(out)
    if kind in (PROBE_RUN, FEATURES, SEQUENCE):
        raise UserError(f"--output-dir {out} holds a {kind}, not a training run: a run folder is written only by "
                        "its run. Give another --output-dir.")
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
        raise UserError(
            f"The run in {out} was trained with other settings ({', '.join(changed_settings(saved, cfg))} differ). "
            "To continue it, repeat its settings; to start a new stage from its weights, give another --output-dir."
        )
    if source_dir != out.resolve():  # a new stage (or a checkpoint outside any run folder) in another folder
        _check_free(out, cfg, resume)
    return dataclasses.replace(cfg, resume=resume), state, continuing


def _check_free(out: Path, cfg: TrainConfig, resume: str) -> None:
    """A run that starts from another folder's checkpoint writes only into a folder that holds no other run: a
    new or empty one, or this run's own start that stopped before its first training checkpoint (started over).

    Raises:
        UserError: the folder holds another run, or this run with its training state (continue that instead).
    """
    if not any((out / name).exists() for name in OWNED_FILES - {LOCK_NAME}):
        return
    same = _same_run_started(out, cfg)
    if same and not any((out / n).is_file() for n in (checkpoint.LAST, checkpoint.PREVIOUS)):
        _logger.info("%s holds this run's start, stopped before its first checkpoint: starting it over from %s",
                     out, resume)
        if distributed.is_main():
            (out / "metrics.csv").unlink(missing_ok=True)
        return
    if same:
        raise UserError(f"--output-dir {out} already holds this run with its training state ({checkpoint.LAST}): "
                        f"continue it with --resume {out} (or --resume auto); starting it again from {resume} "
                        "would replace it. Or give another --output-dir.")
    raise UserError(f"--output-dir {out} already holds another run. A new stage from {resume} writes only into a "
                    f"folder that holds no other run: give another --output-dir (or move {out} away).")


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


# ----------------------------------------------------------------------------------------------------------------
# What a run owns

TRAINING_RUN, PROBE_RUN, FEATURES, SEQUENCE = "training run", "probe run", "features folder", "notebook sequence"
CHECKPOINTS = "folder of checkpoints"

# The files a run writes into its folder, of every kind of run (train; probe; features; run-notebooks; the lock
# of each), and the folders it fills. A name of one kind is kept free in the others, so that no folder ever
# looks like two runs.
OWNED_FILES = frozenset({
    "config.yaml", "run_info.json", checkpoint.LAST, checkpoint.PREVIOUS, checkpoint.DAMAGED, checkpoint.BEST,
    "metrics.csv", "summary.json", "bad_files.txt", "test_predictions.pt",
    "sweep.csv", "test_predictions.csv",
    "features.json", "train.safetensors", "val.safetensors", "test.safetensors", "backbone.safetensors",
    "state.json",
    LOCK_NAME,
})
OWNED_FOLDERS = frozenset({".chunks", "executed", "logs", "sources"})  # features' chunks; run-notebooks' own


def run_kind(folder: str | Path) -> str | None:
    """What kind of run `folder` holds (None: none, or not a folder):

    - `SEQUENCE`, a notebook sequence of `run-notebooks`: it holds state.json;
    - `FEATURES`, a features folder of `features`: features.json;
    - `TRAINING_RUN`, a run of `train`: config.yaml with a checkpoint (last.pt, last.prev.pt or best.pt) or with
      run_info.json (a run that stopped before its first checkpoint);
    - `PROBE_RUN`, a run of `probe`: best.pt with sweep.csv;
    - `CHECKPOINTS`: best.pt, last.pt or last.prev.pt alone (a run's checkpoints copied without their config).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None

    def has(name: str) -> bool:
        return (folder / name).is_file()

    weights = any(has(n) for n in (checkpoint.LAST, checkpoint.PREVIOUS, checkpoint.BEST))
    if has("state.json"):
        return SEQUENCE
    if has("features.json"):
        return FEATURES
    if has("config.yaml") and (weights or has("run_info.json")):
        return TRAINING_RUN
    if weights:
        return PROBE_RUN if has("sweep.csv") else CHECKPOINTS
    return None


def _owned_name(name: str) -> bool:
    """A file name a run owns: one of `OWNED_FILES`, or the temporary `.NAME.tmp` it is written through."""
    if name.startswith(".") and name.endswith(".tmp"):
        name = name[1:-4]
    return name in OWNED_FILES


def check_output_path(path: str | Path, flag: str = "--output") -> None:
    """Refuse an output path (a command's file, or its --output-dir) that would land on what a run owns.

    A run folder is a folder that `run_kind` names. In it, a run owns the files named in `OWNED_FILES`, whichever
    kind of run it is (config.yaml, run_info.json, last.pt, last.prev.pt, last.damaged.pt, best.pt, metrics.csv,
    summary.json, bad_files.txt, test_predictions.pt, sweep.csv, test_predictions.csv, features.json, the split
    and backbone .safetensors, state.json, .lock), each with its temporary `.NAME.tmp`, and everything under the
    folders named in `OWNED_FOLDERS` (features' .chunks/, run-notebooks' executed/, logs/ and sources/). Anything
    else in a run folder is not the run's: a predictions file beside it, or what a notebook sequence's notebooks write
    (figures/, predictions/, the runs in models/, each a run folder of its own). The path is checked as it
    resolves (links followed), so another name for an owned file is refused too.

    Args:
        path: the file or folder about to be written (it need not exist).
        flag: how the command names it, for the message ("--output", "--predictions", "--output-dir").

    Raises:
        UserError: naming the flag, the path, the run that owns it and what to do.
    """
    target = Path(path).expanduser().resolve()
    child = target
    for folder in target.parents:
        owned = child.name in OWNED_FOLDERS or (child == target and _owned_name(child.name))
        kind = run_kind(folder) if owned else None
        if kind is not None:
            what = "a folder" if child.name in OWNED_FOLDERS else "a file"
            where = f"is {what}" if child == target else f"is inside {child}, {what}"
            raise UserError(
                f"{flag} {path} {where} that the {kind} in {folder} writes itself: a run folder is written only "
                "by its run. Give another name, or a path outside the run folder.")
        child = folder


# ----------------------------------------------------------------------------------------------------------------
# Which weights a run wrote


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def weights_record(best: str | Path, class_names: list[str]) -> dict:
    """What a finished run's summary.json records of its weights (under "weights"), so that `check_run_weights`
    can tell its own best.pt from another run's: {"best_sha256": the SHA-256 of best.pt, "class_names": its
    classes in order}; without a best.pt, the classes alone."""
    digest = {"best_sha256": file_digest(best)} if Path(best).is_file() else {}
    return {**digest, "class_names": list(class_names)}


def check_run_weights(file: str | Path, state: dict) -> None:
    """Check a loaded checkpoint `file` against the run folder it is in, before anything predicts, exports or
    evaluates with it: its classes must be those recorded in the folder's summary.json, best.pt must have the
    SHA-256 recorded there (`weights_record`), and a fine-tuned checkpoint's settings must be those of the folder's
    config.yaml (`same_run`). A run finished before summary.json recorded its weights is checked against
    config.yaml only, which a log line says; a file outside a run folder, or of a run still training (no
    summary.json yet), is checked as far as its folder allows.

    Raises:
        UserError: the file holds another run's weights (or changed since), naming what differs.
    """
    file = Path(file)
    folder = file.parent
    summary = _read_summary(folder / "summary.json")
    record = summary.get("weights") if isinstance(summary.get("weights"), dict) else {}
    fix = ("A run folder holds only its own weights: put that run's best.pt back, or use the run the file came "
           "from (its own folder).")
    classes, recorded = list(state.get("class_names") or []), record.get("class_names")
    if recorded is not None and list(recorded) != classes:
        raise UserError(
            f"{file} is a model of {len(classes)} classes ({_few(classes)}), but its run in {folder} was trained "
            f"on {len(recorded)} ({_few(recorded)}, in its summary.json): the file holds another run's weights. {fix}")
    digest = record.get("best_sha256")
    if digest and file.name == checkpoint.BEST:
        actual = file_digest(file)
        if actual != digest:
            raise UserError(
                f"{file} is not the best.pt its run wrote: its SHA-256 {actual[:12]}... is not the {digest[:12]}... "
                f"recorded in {folder / 'summary.json'} (another run's weights copied in, or the file changed "
                f"since), so that summary's accuracy is not this file's. {fix}")
    saved = _folder_config(folder) if "probe" not in state else None
    if saved is not None:
        changed = changed_settings(saved, config_from_dict(state["config"]))
        if changed:
            raise UserError(
                f"{file} was trained with other settings than the run in {folder} ({', '.join(changed)} differ from "
                f"its config.yaml): the file holds another run's weights. {fix}")
    if summary and not digest and file.name == checkpoint.BEST:
        _logger.info("%s was written before runs recorded the SHA-256 of their best.pt: %s is checked against %s",
                     folder / "summary.json", file, "config.yaml only" if saved is not None else "nothing")


def _read_summary(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")
