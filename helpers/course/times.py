"""How long each notebook takes in each profile, on which machine, and how the figure was obtained: one table in the
repository (`docs/times.csv`), printed by each notebook's first cell (`Course.times`), so that a re-measured demo
changes one file.

    notebook,profile,minutes,machine,how
    01_baseline,demo,1.9,"2-core CPU, this project's machine",measured 2026-12-03 (make demo)
    01_baseline,medium,17,"M1 (8-core GPU)",estimated: scripts/medium_estimate.py ...
    01_baseline,full,360,"Apple-silicon Mac (MPS)",the plan's hours (its time column: 6h)

The demo's minutes are measured (`run-notebooks` prints each notebook's time in its summary), the medium's are
estimated by arithmetic (`scripts/medium_estimate.py`, docs/profiles-and-data.md), the full's are the plan's hours.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..base.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

TIMES = "docs/times.csv"
COLUMNS = ("notebook", "profile", "minutes", "machine", "how")
PROFILES = ("demo", "medium", "full")


def read(root: Path) -> pd.DataFrame:
    """The whole table of times (minutes as numbers, empty where there is no figure).

    Raises:
        UserError: the file is missing or lacks a column.
    """
    import pandas as pd

    path = Path(root) / TIMES
    if not path.is_file():
        raise UserError(f"{path} is missing: it holds each notebook's time per profile (restore it from git).")
    frame = pd.read_csv(path, dtype={"minutes": float}, keep_default_na=False, na_values={"minutes": [""]})
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{path} has no column {', '.join(missing)}: its columns are {', '.join(COLUMNS)}.")
    return frame[list(COLUMNS)]


def table(root: Path, notebook: str) -> pd.DataFrame:
    """One notebook's rows, a profile each: minutes (h:mm), the machine and how the figure was obtained."""
    frame = read(root)
    rows = frame[frame["notebook"] == notebook].set_index("profile").reindex(list(PROFILES))
    rows["time"] = [_clock(m) for m in rows["minutes"]]
    return rows[["time", "machine", "how"]].fillna("–")


def overview(root: Path) -> pd.DataFrame:
    """Every notebook's time per profile (h:mm:ss; a column per profile), with the machine of each profile."""
    frame = read(root)
    frame = frame.assign(time=[_clock(m) for m in frame["minutes"]])
    table = frame.pivot(index="notebook", columns="profile", values="time").reindex(columns=list(PROFILES))
    machines = frame.groupby("profile")["machine"].agg(lambda m: " / ".join(dict.fromkeys(m)))
    table.columns = [f"{p} ({machines.get(p, '')})" for p in table.columns]
    return table.fillna("–")


def _clock(minutes: float) -> str:
    """12.5 -> "0:12:30"; 360 -> "6:00:00"; NaN -> "–"."""
    if minutes != minutes:  # NaN: no figure
        return "–"
    seconds = round(minutes * 60)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


__all__ = ["COLUMNS", "PROFILES", "TIMES", "overview", "read", "table"]
