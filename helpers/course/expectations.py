"""Honest expectations: for each phase of the plan, the plan's figure, a published full-scale figure and this
run's figure side by side, so a learner knows early what the demo's numbers can and cannot say.

    from helpers.course import expectations
    expectations.table(c)                   # every phase (00_setup, 12_results)
    expectations.table(c, phases=["3.3"])   # one notebook's rows (its "What we saw" section)

The published figures are the closest ones in print: Food-101 itself where a paper reports the technique there,
otherwise the technique's own paper on ImageNet (said in the row). They are full-scale numbers (75,750 training
photos, 101 classes, tens to hundreds of epochs); the demo trains stand-in models for a few epochs on 400 photos of
10 classes, so its numbers are neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import analysis, comparison, roadmap
from .roadmap import PUBLISHED, ROADMAP, Published

if TYPE_CHECKING:
    import pandas as pd

    from .course import Course


def plan_figure(phase: str) -> str:
    """The plan's figure for a phase in words: its expected gain and cumulative top-1 (on full Food-101)."""
    plan = ROADMAP.get(phase)
    if plan is None or phase.startswith("5."):
        return "past the plan"
    parts = [p for p in (plan.plan_gain if plan.plan_gain not in ("", "-") else "", plan.plan_top1) if p]
    return " → ".join(parts) or "–"


def table(course: Course | None = None, phases: list[str] | None = None) -> pd.DataFrame:
    """Per phase: the plan's figure, a published full-scale figure with its source, and this run's figure.

    Args:
        course: the notebook's Course; its ledger gives "this run" (the course run's newest row of the phase, else
            the newest of the same profile, as `12_results` shows). None: the two expectations only.
        phases: the phases to show (default: every phase of the roadmap).

    Returns:
        One row per phase: phase, technique, plan (Food-101), published (full scale), published setting, source,
        this run (top-1 with its 95% interval; the column names the profile), gain (against what, its paired p and
        the verdict: real, within noise or no paired test).
    """
    import pandas as pd

    phases = list(phases or ROADMAP)
    measured = roadmap.results(course).set_index("phase") if course is not None else None
    rows = []
    for phase in phases:
        published = PUBLISHED.get(phase)
        plan = ROADMAP.get(phase)
        row = {"phase": phase, "technique": plan.technique if plan else phase, "plan (Food-101)": plan_figure(phase),
               "published (full scale)": published.figure if published else "–",
               "published setting": published.setting if published else "",
               "source": f"{published.source} {published.url}" if published else "",
               "this run": "not measured yet", "gain": ""}
        hit = measured.loc[phase] if measured is not None and phase in measured.index else None
        if hit is not None and analysis.is_number(hit["measured: top-1"]):
            row["this run"] = (f"{hit['measured: top-1']:.1f}% ({hit['95% low']:.1f}-{hit['95% high']:.1f})"
                               + (" (earlier run)" if hit["source"] != "this course run" else ""))
            if analysis.is_number(hit["measured: gain"]):  # the verdict by the course's one rule (paired test)
                p = f", {comparison.p_text(hit['paired p'])}" if analysis.is_number(hit["paired p"]) else ""
                row["gain"] = f"{hit['measured: gain']:+.1f} against {hit['gain against']}{p}, {hit['gain is']}"
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.rename(columns={"this run": f"this run ({course.profile})"}) if course is not None else frame


__all__ = ["PUBLISHED", "Published", "plan_figure", "table"]
