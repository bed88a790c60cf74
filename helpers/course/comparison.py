"""One comparison, stated one way everywhere: what changed, both top-1s with their 95% intervals, the difference in
points, the photos fixed and broken, the exact McNemar p and the verdict by the course's one rule.

    from helpers.course import comparison
    comparison.compare(test, bn_test, "BatchNorm statistics updated (freeze_bn=False) instead of frozen",
                       labels=("frozen", "updated"))

prints (a notebook shows the returned `Comparison` as this text; 01's run in the ci profile on the tiny set):

    What differs: BatchNorm statistics updated (freeze_bn=False) instead of frozen
      settings that differ: freeze_bn True → False
      frozen   34.7% (27.5-42.6) on 150 test photos
      updated  18.7% (13.2-25.7) on 150 test photos
      -16.0 points: 15 photos fixed, 39 broken; exact McNemar p = 0.0015: real (p < 0.05, paired on the same 150
      photos)

The rule, the only one the course uses (`analysis.paired_verdict`): two results on the same test photos differ only
on the photos one gets right and the other wrong; the exact McNemar test on those counts gives p, and p < 0.05 is
"real", p >= 0.05 "within noise". Two results without per-photo predictions of the same photos have "no paired
test": overlapping or separate 95% intervals are never a verdict.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base.config import TrainConfig
from . import analysis

if TYPE_CHECKING:
    import pandas as pd

NO_PAIRED_TEST = "no paired test"
RULE = ("exact McNemar p < 0.05 on the photos fixed and broken (the same test photos): real; p >= 0.05: within "
        "noise; no per-photo predictions of the same photos: no paired test")


@dataclass(frozen=True)
class Comparison:
    """Two results compared: `before` (the reference) and `after` (the one change), with the paired counts."""

    change: str  # what differs, in words (the notebook's line above the comparison)
    labels: tuple[str, str]
    top1: tuple[float, float]
    n: tuple[int, int]
    fixed: int | None = None  # photos wrong before and right after (None: no paired predictions)
    broken: int | None = None
    settings: str = ""  # the training settings that differ, read from the two runs' config.yaml

    @property
    def difference(self) -> float:
        """after - before, in points of top-1."""
        return self.top1[1] - self.top1[0]

    @property
    def p(self) -> float | None:
        """The exact McNemar p of the photos fixed and broken, None without paired predictions."""
        return None if self.fixed is None or self.broken is None else analysis.mcnemar(self.fixed, self.broken)

    @property
    def verdict(self) -> str:
        """"real", "within noise" or "no paired test", by the course's one rule."""
        return analysis.paired_verdict(self.fixed, self.broken)

    def short(self) -> str:
        """"+4.7, p=0.34, within noise": the label a figure puts beside a bar."""
        if self.p is None:
            return f"{self.difference:+.1f}, {NO_PAIRED_TEST}"
        return f"{self.difference:+.1f}, {p_text(self.p)}, {self.verdict}"

    def text(self) -> str:
        width = max(len(label) for label in self.labels)
        lines = [f"What differs: {self.change}"]
        if self.settings:
            lines.append(f"  settings that differ: {self.settings}")
        for label, top1, n in zip(self.labels, self.top1, self.n):
            lines.append(f"  {label:<{width}}  {analysis.with_interval(top1, n)} on {n} test photos")
        if self.p is None:
            lines.append(f"  {self.difference:+.1f} points: {NO_PAIRED_TEST} (the two results do not carry "
                         "predictions of the same photos; their intervals alone decide nothing)")
        else:
            rule = "p < 0.05" if self.p < 0.05 else "p >= 0.05"
            lines.append(f"  {self.difference:+.1f} points: {self.fixed} photos fixed, {self.broken} broken; exact "
                         f"McNemar p {'< 0.001' if self.p < 0.001 else '= ' + format_p(self.p)}: {self.verdict} "
                         f"({rule}, paired on the same "
                         f"{self.n[1]} photos)")
        return "\n".join(lines)

    def row(self) -> dict[str, Any]:
        """One row of a comparisons table (`table`)."""
        before, after = (f"{label}: {analysis.with_interval(t, n)}" for label, t, n in zip(self.labels, self.top1,
                                                                                             self.n))
        return {"what differs": self.change, "before": before, "after": after,
                "difference (points)": round(self.difference, 1),
                "fixed": self.fixed, "broken": self.broken,
                "McNemar p": None if self.p is None else format_p(self.p), "verdict": self.verdict}

    __str__ = text

    def __repr__(self) -> str:  # a notebook shows a returned comparison as its text
        return self.text()


def format_p(p: float) -> str:
    """"<0.001" or three significant digits ("0.0386", "1")."""
    return "<0.001" if p < 0.001 else f"{p:.3g}"


def p_text(p: float) -> str:
    """"p=0.0386" or "p<0.001", as figures and tables label a gain."""
    return "p<0.001" if p < 0.001 else f"p={format_p(p)}"


def _fields(result: Any) -> dict[str, Any]:
    """top1, n, predictions, run, fixed, broken of an `evaluate` / `ensemble` result, a `test_result` or a ledger
    row (test_top1, test_n, fixed, broken), or a bare top-1."""
    if isinstance(result, (int, float)):
        return {"top1": float(result), "n": 0}
    data = dict(result.items()) if hasattr(result, "items") else dict(result)
    top1 = data.get("top1", data.get("test_top1"))
    n = data.get("n", data.get("test_n"))
    return {"top1": float(top1) if analysis.is_number(top1) else float("nan"),
            "n": int(float(n)) if analysis.is_number(n) else 0, "predictions": data.get("predictions") or None,
            "run": data.get("run") or None,
            "fixed": int(float(data["fixed"])) if analysis.is_number(data.get("fixed")) else None,
            "broken": int(float(data["broken"])) if analysis.is_number(data.get("broken")) else None}


def compare(before: Any, after: Any, change: str, *, labels: Sequence[str] = ("before", "after")) -> Comparison:
    """Compare two results of the same test photos by the course's one rule.

    Args:
        before: the reference: a result of `Course.evaluate` / `ensemble` / `test_result` ({"top1", "n",
            "predictions", "run"}), or a ledger row.
        after: the result with the change; a ledger row carries its own "fixed" and "broken" against its reference.
        change: what differs between the two, in words (printed first).
        labels: the two results' names.
    Returns:
        The Comparison; a notebook cell shows it as its text (`str(comparison)`).
    """
    a, b = _fields(before), _fields(after)
    fixed, broken = b["fixed"], b["broken"]
    if a["predictions"] and b["predictions"]:
        paired = analysis.paired_changes(a["predictions"], b["predictions"])
        fixed, broken = len(paired["fixed"]), len(paired["broken"])
    settings = setting_changes(a["run"], b["run"]) if a["run"] and b["run"] else ""
    return Comparison(change, (str(labels[0]), str(labels[1])), (a["top1"], b["top1"]), (a["n"], b["n"]), fixed,
                      broken, settings)


def table(comparisons: Sequence[Comparison] | Mapping[str, Comparison]) -> pd.DataFrame:
    """Several comparisons as one table: what differs, both results, the difference, the counts, p, the verdict."""
    import pandas as pd

    items = list(comparisons.values()) if isinstance(comparisons, Mapping) else list(comparisons)
    return pd.DataFrame([c.row() for c in items])


def setting_changes(before: str | Path, after: str | Path) -> str:
    """The training settings that differ between two run folders (their config.yaml; the runtime settings such as
    the device and the folders left out), e.g. "epochs 4 → 5, scheduler cosine → cosine_restart"; "none" when they
    trained the same settings, "" when a folder has no config.yaml (a probe, an ensemble)."""
    import yaml

    from ..training.run_folder import RUNTIME_FIELDS

    paths = [Path(before) / "config.yaml", Path(after) / "config.yaml"]
    if not all(p.is_file() for p in paths):
        return ""
    old, new = (yaml.safe_load(p.read_text()) or {} for p in paths)
    keys = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in RUNTIME_FIELDS]
    changed = [f"{k} {_shown(old.get(k))} → {_shown(new.get(k))}" for k in keys if old.get(k) != new.get(k)]
    return ", ".join(changed) or "none"


def _shown(value: Any) -> str:
    """A setting as the comparison line shows it: paths by their folder's name, lists by their items' names."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    if isinstance(value, str) and ("/" in value or "\\" in value):
        path = Path(value)
        return path.parent.name if path.name in ("best.pt", "last.pt") else path.name
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:g}"
    return str(value)


__all__ = ["Comparison", "NO_PAIRED_TEST", "RULE", "compare", "format_p", "p_text", "setting_changes", "table"]
