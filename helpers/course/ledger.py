"""The results ledger: one CSV file with a row per measured result of every course run.

Each notebook appends its final numbers with `append`; `12_results` reads them back with `read` and `latest`.

    from helpers.course import ledger
    ledger.append("runs/ledger.csv", {"phase": "baseline", "test_top1": 78.2, ...})
    frame = ledger.latest(ledger.read("runs/ledger.csv"), course="runs/notebooks/demo-20250101-120000")
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import logging
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base.errors import UserError

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

NUMBERS = ("image_size", "epochs", "test_top1", "test_top5", "test_n", "val_top1", "reference_top1", "gain",
           "train_minutes", "fixed", "broken")

DELIMITERS = (",", ";", "\t", "|")  # what spreadsheets save CSV with, by locale


def append(path: str | Path, row: dict[str, Any]) -> dict[str, Any]:
    """Append one result to the ledger, creating the file (and its folder) with a header when it is new.

    The ledger is append-only: a row is added at its end, in the file's own dialect (the separator, quoting and
    line ends a spreadsheet saved it with; a BOM stays where it is). A ledger this function cannot append to
    as it is (other columns, a cut-off last row) is never rewritten: the current rows go to a new file at `path`
    and the old one is kept beside it as `<name>.before-<time>.csv`.

    Args:
        path: the ledger CSV file.
        row: column -> value. Missing columns are written empty; `time` defaults to now and `gain` to
            `test_top1 - reference_top1` when both are numbers.

    Returns:
        The row as written (every column).

    Raises:
        ValueError: `row` has a key that is not a ledger column.
        UserError: the file is not a ledger this version can read (naming it and what to do).
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
    found = _open(path)
    if found is None:
        found = _Ledger(list(COLUMNS), "utf-8", ",", "\r\n", [], complete=True)
        _write_new(path, found.header, [])
    elif not found.appendable:
        found = _start_new_file(path, found)
    with open(path, "a", newline="", encoding="utf-8") as f:
        if not found.complete:  # a last line without its line end, but whole: end it before the new row
            f.write(found.line_end)
        writer = csv.DictWriter(f, fieldnames=found.header, delimiter=found.delimiter,
                                lineterminator=found.line_end, restval="")
        writer.writerow(full)
    _logger.info("Ledger %s: %s %s test top-1 %s", path, full["notebook"], full["phase"], full["test_top1"])
    return full


def read(path: str | Path) -> pd.DataFrame:
    """The whole ledger as a DataFrame (every column, numbers as floats); empty when the file does not exist.

    Reads the file as it is: any separator a spreadsheet uses (`,` `;` tab `|`), a BOM, CRLF line ends, decimal
    commas. A cut-off last row (a write interrupted mid-line) is left out with a warning.

    Raises:
        UserError: the file cannot be read as a ledger, naming it and what to do.
    """
    import pandas as pd

    path = Path(path)
    found = _open(path)
    if found is None:
        return pd.DataFrame(columns=list(COLUMNS))
    frame = pd.DataFrame([{k: r.get(k, "") for k in found.header} for r in found.rows], columns=found.header,
                         dtype=object)
    for column in COLUMNS:
        if column not in frame:
            frame[column] = float("nan")
    for column in NUMBERS:
        frame[column] = pd.to_numeric(frame[column].map(_number_text), errors="coerce")
    frame["phase"] = frame["phase"].map(_number_text)  # "2,1": a phase key a spreadsheet took for a number
    for column in set(COLUMNS) - set(NUMBERS):
        frame[column] = frame[column].map(lambda v: float("nan") if v in ("", None) else v)
    return frame[list(COLUMNS)].reset_index(drop=True)


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


# ------------------------------------------------------------------------------------------------------------------
# The file as it is


@dataclasses.dataclass
class _Ledger:
    """A ledger file as found: its header, how it is written and its whole rows."""

    header: list[str]
    encoding: str  # utf-8, utf-8-sig (a BOM) or utf-16
    delimiter: str
    line_end: str
    rows: list[dict[str, str]]
    complete: bool  # the file ends with a line end
    cut: list[str] | None = None  # the cut-off last row's fields, left out of `rows`

    @property
    def appendable(self) -> bool:
        """A row can be added at the end as it is: UTF-8, every current column, no cut-off row."""
        return self.encoding != "utf-16" and set(COLUMNS) <= set(self.header) and self.cut is None


def _open(path: Path) -> _Ledger | None:
    """Read a ledger in whatever dialect it was saved; None when it does not exist or is empty.

    Raises:
        UserError: it is not text this can read, or its first line names no ledger column.
    """
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        return None
    what = "Move it away (the next run starts a new ledger) or give another ledger path; nothing was written to it."
    if not path.is_file():
        raise UserError(f"The results ledger {path} is not a file. {what}")
    data = path.read_bytes()
    if not data.strip():  # blank lines only: nothing to keep
        return None
    encoding = "utf-8-sig" if data.startswith(codecs.BOM_UTF8) else \
        "utf-16" if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "utf-8"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise UserError(f"The results ledger {path} is not UTF-8 text (byte {exc.start}): a spreadsheet saved it in "
                        f"another encoding. Save it again as 'CSV UTF-8 (comma delimited)', or: {what}") from None
    try:
        return _parse(path, text, encoding)
    except csv.Error as exc:
        raise UserError(f"The results ledger {path} is not a CSV file this can read ({exc}). {what}") from None


def _parse(path: Path, text: str, encoding: str) -> _Ledger:
    first = text.splitlines()[0] if text.strip() else ""
    delimiter = max(DELIMITERS, key=lambda d: len(set(_fields(first, d)) & set(COLUMNS)))
    header = [name.strip() for name in _fields(first, delimiter)]
    if "phase" not in header or len(set(header) & set(COLUMNS)) < 2:
        raise UserError(f"The results ledger {path} does not look like one: its first line {first[:80]!r} names "
                        f"no ledger columns (phase, test_top1, ...). Move it away (the next run starts a new "
                        "ledger) or give another ledger path; nothing was written to it.")
    line_end = next((end for end in ("\r\n", "\n", "\r") if end in text), "\r\n")
    records = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)][1:]
    complete = text.endswith(("\n", "\r"))
    cut = None
    if not complete and records and len(records[-1]) < len(header):
        cut = records.pop()
        _logger.warning("Ledger %s: its last row was cut off (%s...): left out (it stays in the file)", path,
                        delimiter.join(cut)[:60])
    rows, damaged = [], []
    for number, record in enumerate(records, start=2):
        if len(record) > len(header):
            damaged.append(number)
        elif any(field.strip() for field in record):
            rows.append(dict(zip(header, record)))
    if damaged:
        _logger.warning("Ledger %s: rows %s have more fields than its header (two rows run together?): left out",
                        path, ", ".join(map(str, damaged)))
    return _Ledger(header, encoding, delimiter, line_end, rows, complete, cut)


def _fields(line: str, delimiter: str) -> list[str]:
    return next(csv.reader([line], delimiter=delimiter), [])


def _number_text(value: Any) -> Any:
    """A number as a spreadsheet in many locales writes it (78,2) as Python reads it (78.2)."""
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+,\d+\s*", value):
        return value.replace(",", ".")
    return value


def _write_new(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    """Write a ledger file whole (a temporary file, then renamed): comma-separated UTF-8, CRLF like the csv module."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _start_new_file(path: Path, found: _Ledger) -> _Ledger:
    """Continue a ledger that cannot be appended to as it is in a new file at `path`, keeping the old one beside it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kept = path.with_name(f"{path.stem}.before-{stamp}{path.suffix}")
    number = 1
    while kept.exists():
        number += 1
        kept = path.with_name(f"{path.stem}.before-{stamp}-{number}{path.suffix}")
    shutil.copy2(path, kept)
    header = list(COLUMNS) + [name for name in found.header if name and name not in COLUMNS]
    _write_new(path, header, found.rows)
    why = ("its last row was cut off" if found.cut is not None else "it is UTF-16 text" if found.encoding == "utf-16"
           else "it has other columns (an older version)")
    _logger.warning("Ledger %s: %s, so its %d rows continue in a new file %s with the current columns; the old "
                    "file is kept as %s", path, why, len(found.rows), path, kept)
    return _Ledger(header, "utf-8", ",", "\r\n", found.rows, complete=True)
