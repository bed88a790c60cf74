"""The results ledger survives what happens to a CSV file: a spreadsheet re-saving it (`;` separators, decimal
commas, a BOM, CRLF), a write cut off mid-row, an older version's columns, a file that is not a ledger. It is
only ever appended to; anything else goes to a new file and the old one is kept beside it."""

from __future__ import annotations

import csv
import io
import logging
import os

import pytest

from helpers.base.errors import UserError
from helpers.course import ledger

ROWS = [{"course": "c1", "profile": "ci", "notebook": "01_baseline", "phase": "baseline", "technique": "a, b",
         "test_top1": 60.5, "reference_top1": 55.0},
        {"course": "c1", "profile": "ci", "notebook": "02_b3_upgrade", "phase": "2.1", "test_top1": 70.25}]


def _written(path):
    for row in ROWS:
        ledger.append(path, row)
    return ledger.read(path)


def _as_a_spreadsheet_saves_it(path, *, delimiter=";", bom=True, decimal_comma=True, line_end="\r\n"):
    """Re-save the ledger as a spreadsheet in a German or French locale does: `;`, 60,5, a BOM."""
    records = list(csv.reader(io.StringIO(path.read_text(), newline="")))
    out = io.StringIO(newline="")
    writer = csv.writer(out, delimiter=delimiter, lineterminator=line_end)
    for record in records:
        writer.writerow([f.replace(".", ",") if decimal_comma and f.replace(".", "", 1).isdigit() else f
                         for f in record])
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + out.getvalue().encode("utf-8"))


def _same_rows(before, after):
    for column in ("time", "course", "phase", "technique", "test_top1", "gain"):
        assert after[column].iloc[:len(before)].fillna("").tolist() == before[column].fillna("").tolist(), column


def test_a_ledger_resaved_by_a_spreadsheet_with_semicolons_keeps_every_row(tmp_path):
    path = tmp_path / "ledger.csv"
    before = _written(path)
    _as_a_spreadsheet_saves_it(path)
    saved = path.read_bytes()
    ledger.append(path, {"course": "c1", "profile": "ci", "phase": "3.1", "test_top1": 80.0})
    assert path.read_bytes().startswith(saved)  # appended, not rewritten
    after = ledger.read(path)
    assert len(after) == 3 and after["test_top1"].tolist() == [60.5, 70.25, 80.0]
    _same_rows(before, after)
    assert list(tmp_path.iterdir()) == [path]  # nothing to keep: nothing was replaced
    assert path.read_text(encoding="utf-8-sig").splitlines()[-1].count(";") == len(ledger.COLUMNS) - 1


@pytest.mark.parametrize("delimiter,line_end", [(",", "\r\n"), (",", "\n"), ("\t", "\n")])
def test_a_ledger_saved_with_a_bom_tabs_or_lf_keeps_its_time_column(tmp_path, delimiter, line_end):
    path = tmp_path / "ledger.csv"
    before = _written(path)
    _as_a_spreadsheet_saves_it(path, delimiter=delimiter, decimal_comma=False, line_end=line_end)
    saved = path.read_bytes()
    ledger.append(path, {"course": "c1", "profile": "ci", "phase": "3.1", "test_top1": 80.0})
    assert path.read_bytes().startswith(saved) and path.read_bytes().endswith(line_end.encode())
    after = ledger.read(path)
    _same_rows(before, after)
    assert after["time"].notna().all() and len(after) == 3


def test_a_cut_off_last_row_never_gets_the_next_row_glued_onto_it(tmp_path, caplog):
    path = tmp_path / "ledger.csv"
    before = _written(path)
    ledger.append(path, {"course": "c1", "profile": "ci", "phase": "2.2", "test_top1": 71.0})
    data = path.read_bytes()
    os.truncate(path, len(data) - 30)  # a write killed mid-row: the row's end and its line end are gone
    cut = path.read_bytes()
    with caplog.at_level(logging.WARNING, logger="helpers.course.ledger"):
        assert len(ledger.read(path)) == 2  # the cut-off row is left out, never read with a wrong number
        ledger.append(path, {"course": "c1", "profile": "ci", "phase": "3.1", "test_top1": 80.0})
    after = ledger.read(path)
    assert after["phase"].tolist() == ["baseline", "2.1", "3.1"] and after["test_top1"].tolist()[-1] == 80.0
    _same_rows(before, after)
    kept = [p for p in tmp_path.iterdir() if p != path]
    assert len(kept) == 1 and kept[0].name.startswith("ledger.before-") and kept[0].read_bytes() == cut
    assert "cut off" in caplog.text and str(kept[0]) in caplog.text


def test_rows_run_together_by_an_older_version_are_read_without_them_and_no_parser_error(tmp_path, caplog):
    path = tmp_path / "ledger.csv"
    _written(path)
    header, first, second, _ = path.read_bytes().decode().split("\r\n")
    glued = "\r\n".join([header, first, second[:-20] + second, ""])  # a cut-off row, the next one glued onto it
    path.write_bytes(glued.encode())
    with caplog.at_level(logging.WARNING, logger="helpers.course.ledger"):
        frame = ledger.read(path)
    assert frame["phase"].tolist() == ["baseline"] and "more fields than its header" in caplog.text


def test_a_ledger_of_an_older_version_continues_in_a_new_file_and_the_old_is_kept(tmp_path):
    path = tmp_path / "ledger.csv"
    path.write_text("phase;test_top1;notes\nbaseline;60,5;first try\n")
    old = path.read_bytes()
    ledger.append(path, {"phase": "2.1", "test_top1": 70.0})
    frame = ledger.read(path)
    assert frame["phase"].tolist() == ["baseline", "2.1"] and frame["test_top1"].tolist() == [60.5, 70.0]
    kept = [p for p in tmp_path.iterdir() if p != path]
    assert len(kept) == 1 and kept[0].read_bytes() == old
    assert "notes" in path.read_text().splitlines()[0]  # a column the user added is kept too
    ledger.append(path, {"phase": "3.1", "test_top1": 80.0})  # from now on appended
    assert len(list(tmp_path.iterdir())) == 2 and len(ledger.read(path)) == 3


@pytest.mark.parametrize("content", [b"phase,test_top1\nbaseline,60.5\nr\xe9sum\xe9,1\n", b"name,value\na,1\n"])
def test_a_file_that_is_no_ledger_is_refused_naming_it_and_left_as_it_is(tmp_path, content):
    path = tmp_path / "ledger.csv"
    path.write_bytes(content)
    for call in (lambda: ledger.read(path), lambda: ledger.append(path, {"phase": "x", "test_top1": 1.0})):
        with pytest.raises(UserError, match=str(path)) as info:
            call()
        assert "nothing was written" in str(info.value) or "Save it again" in str(info.value)
    assert path.read_bytes() == content and list(tmp_path.iterdir()) == [path]
