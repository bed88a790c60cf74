"""The results ledger: one CSV file with a row per measured result of every course run.

Each notebook appends its final numbers with `append`; `12_results` reads them back with `read` and `latest`.

    from helpers import ledger
    ledger.append("runs/ledger.csv", {"phase": "baseline", "test_top1": 78.2, ...})
    frame = ledger.latest(ledger.read("runs/ledger.csv"), course="runs/notebooks/demo-20250101-120000")
"""

from __future__ import annotations

import csv
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

_logger = logging.getLogger(__name__)

# The columns in file order. A row may leave any of them empty; unknown keys are an error.
COLUMNS: tuple[str, ...] = (
    "time",  # when the row was written, local time, YYYY-mm-dd HH:MM:SS
    "course",  # the course run folder (the notebooks' output_dir)
    "profile",  # demo | full | ci
    "notebook",  # e.g. 02_b3_upgrade
    "phase",  # the plan's phase key: baseline, 2.1, 2.2, 3.1, ... 4.3
    "technique",  # what the phase measures, in words
    "run",  # the trained run folder (or the model that was evaluated)
    "backbone",
    "image_size",
    "epochs",  # epochs actually run (early stopping may end a run sooner)
    "test_top1",  # percent
    "test_top5",  # percent
    "test_n",  # test images
    "val_top1",  # best validation top-1 of the run, percent
    "reference",  # what the gain is measured against, in words
    "reference_top1",  # its test top-1, percent
    "gain",  # test_top1 - reference_top1, percentage points
    "train_minutes",  # training time of this run (0 for evaluation-only phases)
    "device",
    "fixed",  # test photos the reference got wrong and this run right (the paired test's counts)
    "broken",  # test photos the reference got right and this run wrong
)


def append(path: str | Path, row: dict[str, Any]) -> dict[str, Any]:
    """Append one result to the ledger, creating the file (and its folder) with a header when it is new.

    Args:
        path: the ledger CSV file.
        row: column -> value. Missing columns are written empty; `time` defaults to now and `gain` to
            `test_top1 - reference_top1` when both are numbers.

    Returns:
        The row as written (every column).

    Raises:
        ValueError: `row` has a key that is not a ledger column.
    """
    unknown = sorted(set(row) - set(COLUMNS))
    if unknown:
        raise ValueError(f"unknown ledger column(s) {', '.join(unknown)}; the columns are {', '.join(COLUMNS)}")
    full = {column: row.get(column, "") for column in COLUMNS}
    if not full["time"]:
        full["time"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if full["gain"] in ("", None) and _is_number(full["test_top1"]) and _is_number(full["reference_top1"]):
        full["gain"] = float(full["test_top1"]) - float(full["reference_top1"])
    full = {k: _format(v) for k, v in full.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _upgrade_header(path)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        if new:
            writer.writeheader()
        writer.writerow(full)
    _logger.info("Ledger %s: %s %s test top-1 %s", path, full["notebook"], full["phase"], full["test_top1"])
    return full


def read(path: str | Path) -> pd.DataFrame:
    """The whole ledger as a DataFrame (every column, numbers as floats); empty when the file does not exist."""
    import pandas as pd

    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=list(COLUMNS))
    frame = pd.read_csv(path, dtype={"phase": str, "course": str, "run": str})
    for column in COLUMNS:
        if column not in frame:
            frame[column] = float("nan")
    for column in ("image_size", "epochs", "test_top1", "test_top5", "test_n", "val_top1", "reference_top1", "gain",
                   "train_minutes", "fixed", "broken"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame[list(COLUMNS)]


def latest(frame: pd.DataFrame, *, course: str | None = None, profile: str | None = None) -> pd.DataFrame:
    """The last row of each phase, optionally only of one course run folder and/or one profile.

    A notebook that is re-run appends a new row; the newest one counts.
    """
    rows = frame
    if course is not None:
        rows = rows[rows["course"].astype(str) == str(course)]
    if profile is not None:
        rows = rows[rows["profile"].astype(str) == str(profile)]
    return rows.drop_duplicates(subset="phase", keep="last").reset_index(drop=True)


def _is_number(value: Any) -> bool:
    try:
        return not math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def _format(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else round(value, 4)
    return "" if value is None else value


def _upgrade_header(path: Path) -> None:
    """Rewrite a ledger written by an older version (other columns) with the current columns."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, newline="") as f:
        header = next(csv.reader(f), [])
    if tuple(header) == COLUMNS:
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    _logger.info("Ledger %s: upgraded its header to the current columns", path)
