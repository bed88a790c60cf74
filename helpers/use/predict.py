"""What is in these photos? Top-k classes of any photos (files, folders, glob patterns) from a trained run, a
probe run, or several runs averaged.

    python -m helpers predict --model runs/b0 my_photos/ lunch.heic --top-k 3
    python -m helpers predict --model runs/b0 runs/b3 --tta 2 'phone/**/*.jpg' --output predictions.csv

    import helpers
    table = helpers.predict("runs/b0", "my_photos/", top_k=5)   # one row per photo

Each photo goes through the run's own evaluation preprocessing (several runs: each its own), with `--tta`
views as `evaluate` uses them, so the top-1 of a labelled folder is `evaluate --predictions`'s. Several runs
average their softmax with their classes matched by name, as `ensemble` does. Folders are read recursively,
skipping what operating systems and archive tools leave (`.DS_Store`, `__MACOSX`, hidden files), as the data
loaders do. A file that is not a readable photo gets an error and the others go on. Every value of `--model`
must be a run (a missing one is an error, never taken for a photo), each model is checked to be its run's own
weights (`helpers.use.runs.load_trained`), and every prediction names the models that answered. Nothing is
written except `--output` (atomically), which may not be a file a run owns.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..base.config import CHOICES
from ..base.errors import UserError

if TYPE_CHECKING:  # the command line imports this module to build its parser: heavy imports wait for a call
    import pandas as pd
    import torch

    from ..training.trained import Trained


_logger = logging.getLogger(__name__)

HEIC_SUFFIXES = (".heic", ".heif")

OUTPUT_SUFFIXES = (".csv", ".jsonl")


def add_command(subparsers: argparse._SubParsersAction) -> None:
    """Add the `predict` sub-command."""
    p = subparsers.add_parser("predict", help="top-k classes of your photos (files, folders, globs): JSON lines")
    p.add_argument("--model", nargs="+", required=True, metavar="RUN",
                   help="a run folder or checkpoint (fine-tuned or probe); several: their softmax averaged. The "
                        "photos may follow: the first existing photo, folder or pattern starts them (a value that "
                        "is none of these is a missing model: exit 2)")
    p.add_argument("photos", nargs="*", help="photo files, folders (read recursively) or glob patterns")
    p.add_argument("--top-k", type=int, default=5, help="classes per photo (default 5)")
    p.add_argument("--tta", type=int, default=1, help="test-time augmentation views, 1-6 (1 = plain)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=-1)
    p.add_argument("--device", choices=CHOICES["device"], default="auto")
    p.add_argument("--output", help="write the predictions to FILE.csv or FILE.jsonl instead of printing them")
    p.set_defaults(func=_run)


def split_models(items: list[str]) -> tuple[list[str], list[str]]:
    """`--model A B photos/ x.jpg` -> ([A, B], [photos/, x.jpg]): the leading runs (a folder with best.pt or
    last.pt, or a .pt file) are the models; the photos start at the first existing photo, folder of photos or glob
    pattern. A value that is neither is never taken for a photo: it is a model that does not exist.

    Raises:
        UserError: naming a value of --model that is not a run (a typo), or a run given among the photos.
    """
    n = next((i for i, item in enumerate(items) if not _is_run(item)), len(items))
    if n < len(items) and not _names_photos(items[n]):
        raise UserError(f"--model {items[n]} is not a run folder (with best.pt) or a checkpoint file (.pt), nor an "
                        "existing photo, folder or pattern. Give a folder written by `python -m helpers train` or "
                        "`probe` (check the path), then the photos.")
    if n == 0:
        raise UserError(f"--model {items[0]} is not a run folder (with best.pt) or a checkpoint file (.pt). Give a "
                        "folder written by `python -m helpers train` or `probe`, then the photos.")
    late = [item for item in items[n:] if _is_run(item)]
    if late:
        raise UserError(f"{late[0]} is a run, given among the photos: name every model right after --model, before "
                        "the photos.")
    return items[:n], items[n:]


def _is_run(item: str) -> bool:
    path = Path(item).expanduser()
    return (path.is_dir() and any((path / n).is_file() for n in ("best.pt", "last.pt"))) or (
        path.is_file() and path.suffix == ".pt")


def _names_photos(item: str) -> bool:
    """Whether `item` names photos: an existing file or folder, or a glob pattern."""
    return Path(item).expanduser().exists() or any(c in item for c in "*?[")


def _run(args: argparse.Namespace) -> None:
    models, photos = split_models(args.model)
    photos += args.photos
    if not photos:
        raise UserError("Give the photos to predict: files, folders or glob patterns after the model(s).")
    table = predict(models, photos, top_k=args.top_k, tta=args.tta, batch_size=args.batch_size,
                    device=args.device, num_workers=args.num_workers, output=args.output)
    if not args.output:
        for record in records(table):
            print(json.dumps(record), flush=True)
    else:
        _logger.info("Predictions of %d photos written to %s", int(table["error"].isna().sum()), args.output)
    failed = table[table["error"].notna()]
    for path, error in zip(failed["path"], failed["error"]):
        _logger.warning("Not predicted: %s: %s", path, error)
    if len(failed) == len(table):
        raise UserError(f"None of the {len(table)} photo(s) could be read (each is named above with its error). "
                        "Give JPEG, PNG, WebP or HEIC photos.")


# ----------------------------------------------------------------------------------------------------------------
# Finding and checking photos


def find_photos(photos: str | Path | Sequence[str | Path]) -> list[tuple[str, str | None]]:
    """Expand files, folders (recursively, without OS and archive junk) and glob patterns.

    Returns:
        [(path, None), ...] for each file found, in the order given (a folder's files sorted), and
        (item, error) for an item that names nothing.
    """
    from ..data.splits import is_junk

    items = [photos] if isinstance(photos, (str, Path)) else list(photos)
    found: list[tuple[str, str | None]] = []
    for item in map(str, items):
        path = Path(item).expanduser()
        if path.is_dir():
            found += [(str(f), None) for f in _folder_files(path)]
        elif path.is_file():
            found.append((str(path), None))
        else:
            matches = sorted(glob.glob(str(path), recursive=True))
            files = [f for m in matches for f in (_folder_files(Path(m)) if Path(m).is_dir() else [Path(m)])
                     if not is_junk(Path(f).name)]
            found += [(str(f), None) for f in files] or [(item, "no such file or folder (and no file matches it)")]
    unique = dict.fromkeys(found)  # a photo named twice (a folder and a glob) is predicted once
    return list(unique)


def _folder_files(folder: Path) -> list[Path]:
    from ..data.splits import is_junk

    return sorted(f for f in folder.rglob("*")
                  if f.is_file() and not any(is_junk(part) for part in f.relative_to(folder).parts))


def read_error(path: str) -> str | None:
    """Why a file cannot be predicted (None when it decodes as a photo)."""
    from ..data.images import BadImageError, read_image

    try:
        read_image(path, min_side=32)  # a reduced JPEG decode: cheap, and it still finds truncated files
    except (BadImageError, OSError) as exc:
        text = str(exc).removeprefix(f"{path}: ")
        if path.lower().endswith(HEIC_SUFFIXES):
            text += (" (HEIC photos need pillow-heif: pip install pillow-heif, or convert them to JPEG, e.g. "
                     "`sips -s format jpeg IN.heic --out OUT.jpg` on a Mac)")
        return f"not a readable photo: {text}"
    return None


# ----------------------------------------------------------------------------------------------------------------
# Predicting


def load_models(model_or_run: Trained | str | Path | Sequence[Trained | str | Path], device: torch.device
                ) -> list[Trained]:
    """The models of `predict`: a loaded `Trained` (moved to `device`), a run folder or checkpoint, or several."""
    from ..training.trained import Trained
    from .runs import load_trained

    items = [model_or_run] if isinstance(model_or_run, (Trained, str, Path)) else list(model_or_run)
    if not items:
        raise UserError("Give at least one model (a run folder or checkpoint) to predict with.")
    loaded = [m if isinstance(m, Trained) else load_trained(m, device=device) for m in items]
    for m in loaded:
        m.model.to(device)  # a model loaded elsewhere (on the CPU, say) moves to the device asked for
    return loaded


def predict_probs(models: list[Trained], paths: list[str], *, tta: int = 1, batch_size: int = 32,
                  device: torch.device | None = None, num_workers: int = -1) -> tuple[torch.Tensor, list[str]]:
    """Softmax probabilities (N, C) of readable photos, averaged over the models (classes matched by name to
    the first model's, as `ensemble` does) and over `tta` views; and the class names of the columns."""
    from ..training.trained import check_classes
    from .inference import tta_probs

    class_names = models[0].class_names
    samples = [(p, 0) for p in paths]
    total = None
    for trained in models:
        columns = check_classes(trained, class_names, models[0].source, use="in an ensemble")
        probs, _ = tta_probs(trained, samples, tta=tta, batch_size=batch_size, device=device, num_workers=num_workers)
        if columns is not None:
            probs = probs[:, columns]
        total = probs if total is None else total + probs
    return total / len(models), class_names


def predict(model_or_run: Trained | str | Path | Sequence[Trained | str | Path],
            photos: str | Path | Sequence[str | Path], *, top_k: int = 5, tta: int = 1, batch_size: int = 32,
            device: str = "auto", num_workers: int = -1, output: str | Path | None = None) -> pd.DataFrame:
    """Top-k classes of photos.

    Args:
        model_or_run: a run folder or checkpoint (fine-tuned or probe), a `helpers.training.trained.Trained`, or several
            (their softmax averaged).
        photos: files, folders (recursively) and glob patterns.
        output: also write the table to this .csv or .jsonl file (atomically).

    Returns:
        One row per photo: path, class, label, probability (the top-1), predictions (the top-k as
        [{"class", "label", "probability"}, ...]), models (the runs that answered, averaged; None for a photo
        not predicted) and error (None, or why the photo could not be read).
    """
    from ..base.devices import get_device

    if not 1 <= tta <= 6:
        raise UserError(f"--tta takes 1 to 6 views (plain, mirrored, and two more scales with mirrors), got {tta}.")
    if top_k < 1:
        raise UserError(f"--top-k must be a positive integer, got {top_k}.")
    if output is not None:
        _check_output(Path(output))
    checked = check_photos(photos)
    readable = [p for p, e in checked if e is None]
    rows: dict[str, dict] = {}
    if readable:
        dev = get_device(device)
        models = load_models(model_or_run, dev)
        probs, class_names = predict_probs(models, readable, tta=tta, batch_size=batch_size, device=dev,
                                           num_workers=num_workers)
        answered = [m.source for m in models]
        rows = {p: {**top_row(p, prob, class_names, top_k), "models": answered} for p, prob in zip(readable, probs)}
    table = make_table(checked, rows)
    if output is not None:
        write_table(table, output)
    return table


def check_photos(photos: str | Path | Sequence[str | Path]) -> list[tuple[str, str | None]]:
    """`find_photos`, with each file checked to be a readable photo: [(path, None or the error), ...]."""
    found = find_photos(photos)
    if not found:
        raise UserError(f"No files in {photos}: give photo files, folders of photos or glob patterns.")
    return [(p, e or read_error(p)) for p, e in found]


def make_table(checked: list[tuple[str, str | None]], rows: dict[str, dict]) -> pd.DataFrame:
    """`predict`'s table: the row of each predicted photo (`top_row`), an error row for each other one."""
    import pandas as pd

    table = pd.DataFrame([rows.get(p) or {"path": p, "error": e} for p, e in checked],
                         columns=["path", "class", "label", "probability", "predictions", "models", "error"])
    table["error"] = table["error"].astype(object).where(table["error"].notna(), None)
    return table


def top_row(path: str, probs: torch.Tensor, class_names: list[str], top_k: int) -> dict:
    """One photo's row: its top-1 class, label and probability, and the top-k as a list of dicts."""
    from ..data.splits import pretty

    values, index = probs.topk(min(top_k, len(class_names)))
    top = [{"class": class_names[i], "label": pretty(class_names[i]), "probability": round(float(v), 6)}
           for v, i in zip(values.tolist(), index.tolist())]
    return {"path": path, **top[0], "predictions": top, "error": None}


# ----------------------------------------------------------------------------------------------------------------
# Output


def records(table: pd.DataFrame) -> list[dict]:
    """The JSON objects of `predict` (one per photo): {"path", "predictions": [...], "models": [the runs that
    answered]} or {"path", "error"}."""
    return [{"path": r.path, "error": r.error} if r.error else
            {"path": r.path, "predictions": r.predictions, "models": r.models} for r in table.itertuples()]


def _check_output(path: Path) -> None:
    from ..training.run_folder import check_output_path

    if path.suffix.lower() not in OUTPUT_SUFFIXES or path.is_dir():
        raise UserError(f"--output {path} must be a .csv or .jsonl file.")
    if not path.parent.is_dir():
        raise UserError(f"--output {path}: the folder {path.parent} does not exist. Create it or give another path.")
    check_output_path(path, "--output")


def write_table(table: pd.DataFrame, path: str | Path) -> None:
    """Write `predict`'s table as JSON lines (.jsonl) or CSV (.csv: path, error, models (the runs that answered,
    joined by " + "), then class_i, label_i, probability_i for each rank i), atomically."""
    from ..base.io import atomic_write_text

    path = Path(path)
    if path.suffix.lower() == ".jsonl":
        text = "".join(json.dumps(r) + "\n" for r in records(table))
    else:
        k = max((len(p) for p in table["predictions"] if isinstance(p, list)), default=0)
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer)
        writer.writerow(["path", "error", "models"] + [f"{f}_{i}" for i in range(1, k + 1)
                                                        for f in ("class", "label", "probability")])
        for r in table.itertuples():
            cells = [c for p in (r.predictions if isinstance(r.predictions, list) else [])
                     for c in (p["class"], p["label"], f"{p['probability']:.6f}")]
            writer.writerow([r.path, r.error or "", " + ".join(r.models) if isinstance(r.models, list) else ""] + cells)
        text = buffer.getvalue()
    atomic_write_text(path, text)
    _logger.debug("wrote %s (%d bytes)", path, len(text))
