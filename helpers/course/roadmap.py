"""The plan's roadmap (one phase per technique, with what the plan expects) and the results table that puts this
course's measured numbers beside it (read from the ledger; 12_results shows it, `plots.roadmap_table` draws it).

    from helpers.course import roadmap
    table = roadmap.results(c)          # c: the Course of 12_results
    roadmap.save_results(c, table)      # results.csv and results.md in the course run folder
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from . import analysis, ledger

if TYPE_CHECKING:
    import pandas as pd



@dataclass(frozen=True)
class Phase:
    """One row of the plan's roadmap: what it measures and what the plan expects."""

    technique: str  # what the phase measures, in words
    plan_recipe: str  # the plan's model and schedule for it (a profile may train something smaller)
    plan_time: str  # the plan's extra training time
    plan_gain: str  # the plan's expected gain in top-1
    plan_top1: str  # the plan's expected cumulative top-1
    reference: str  # what the gain is measured against, in words
    in_plan_table: bool = True  # False: from the plan's text, not its Quick Reference table


ROADMAP: dict[str, Phase] = {
    "baseline": Phase("Baseline", "EfficientNet-B0, 50 epochs", "6h", "-", "75-80%", ""),
    "2.1": Phase("Larger backbone", "B3, 100 epochs", "+10h", "+6%", "82-86%", "baseline (01)"),
    "2.2": Phase("Alternative backbone", "ResNet-50, 100 epochs", "", "+4-6%", "80-85%", "baseline (01)", False),
    "3.1": Phase("Longer training, better scheduling", "B3, 150 epochs", "+6h", "+2%", "84-88%", "B3 (2.1)"),
    "3.2": Phase("Advanced augmentation", "B3, 150 epochs", "+0h", "+1.5%", "85.5-89.5%",
                 "better scheduling (3.1)"),
    "3.3": Phase("Mixup/CutMix", "B3, 150 epochs", "+0h", "+3%", "88.5-92.5%", "advanced augmentation (3.2)"),
    "3.4": Phase("Test-time augmentation", "the 3.5 model", "+0h", "+1.5%", "90-94%", "the same model, one view"),
    "3.5": Phase("Two-stage training (+3.6 discriminative LRs)", "B3, 10 + 100 epochs", "+2h", "+2%", "92-96%",
                 "one stage of the same length (05)"),
    "4.1": Phase("Higher resolution", "B3 at 384 px", "+8h", "+1.5%", "93.5-97.5%",
                 "the same fine-tune at 05's size (07)"),
    "4.2": Phase("Ensemble (3 models)", "B3 + B4 + ResNet-101", "+30h", "+2%", "95.5-99.5%",
                 "its best member by validation"),
    "4.3": Phase("Knowledge distillation (optional)", "student with a B4 teacher", "", "+1-2% (student)", "",
                 "the student trained alone", False),
    # Past the plan (notebook 10): stronger pretrained features, published numbers in place of the plan's.
    "5.1": Phase("Linear probes on strong features, ensembled", "SigLIP SO400M/384 + CLIP ViT-L/14@336 probes",
                 "features once", "",
                 "95.9% published for a CLIP ViT-L probe, not for these models", "its best probe", False),
    "5.2": Phase("Fine-tune from the probe's head, layer decay (LP-FT)", "EVA-02-B/448 from its probe", "", "", "",
                 "its probe", False),
}


class CourseRun(Protocol):
    """What the results table needs of a `Course` (the course imports this module, not the other way round)."""

    output_dir: Path
    ledger_path: Path
    profile: str


def results(course: CourseRun) -> pd.DataFrame:
    """The plan's roadmap with this course's measured numbers and their 95% intervals (for 12_results).

    One row per phase of the roadmap, then one per other phase in the ledger (e.g. a notebook added later).
    Takes the newest ledger row of each phase of this course run; a phase it did not measure falls back to
    the newest row of the same profile from any course run, marked in the `source` column.
    """
    import pandas as pd

    frame = ledger.read(course.ledger_path)
    own = ledger.latest(frame, course=str(course.output_dir))
    other = ledger.latest(frame, profile=str(own["profile"].iloc[0]) if len(own) else course.profile)
    extra = [p for p in dict.fromkeys([*own["phase"], *other["phase"]]) if p not in ROADMAP]
    rows = []
    for key in [*ROADMAP, *extra]:
        hit, source = own[own["phase"] == key], "this course run"
        if hit.empty:
            hit, source = other[other["phase"] == key], "an earlier course run"
        rows.append(_result_row(key, ROADMAP.get(key), None if hit.empty else hit.iloc[-1],
                                source if not hit.empty else "not measured"))
    return pd.DataFrame(rows)

def save_results(course: CourseRun, table: pd.DataFrame) -> dict[str, Path]:
    """Write the results table as CSV and Markdown into the course run folder."""
    course.output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": course.output_dir / "results.csv", "markdown": course.output_dir / "results.md"}
    table.to_csv(paths["csv"], index=False)
    paths["markdown"].write_text(analysis.markdown_table(table))
    return paths


def _result_row(key: str, plan: Phase | None, measured: Any, source: str) -> dict[str, Any]:
    """One row of the results table: the plan's expectation beside the measured top-1, its 95% interval, the
    gain and whether that gain is outside the noise."""
    row: dict[str, Any] = {
        "phase": key, "technique": plan.technique if plan else measured["technique"],
        "plan: recipe": plan.plan_recipe if plan else "", "plan: gain": plan.plan_gain if plan else "",
        "plan: top-1": plan.plan_top1 if plan else "", "measured: top-1": None, "95% low": None, "95% high": None,
        "measured: gain": None, "paired p": None, "gain is": "",
        "gain against": plan.reference if plan else measured["reference"],
        "trained": "", "train min": None, "source": source, "in plan table": plan.in_plan_table if plan else False,
    }
    if measured is None:
        return row
    low, high = analysis.wilson(measured["test_top1"], measured["test_n"])
    fixed, broken = measured.get("fixed"), measured.get("broken")
    paired = analysis.is_number(fixed) and analysis.is_number(broken) and analysis.is_number(measured["gain"])
    row.update({"measured: top-1": measured["test_top1"], "95% low": low, "95% high": high,
                "measured: gain": measured["gain"],
                "paired p": analysis.mcnemar(int(fixed), int(broken)) if paired else None,
                # McNemar on the photos fixed and broken when the ledger has them, else the interval rule
                "gain is": analysis.paired_verdict(fixed, broken) if paired else
                analysis.gain_verdict(measured["gain"], measured["reference_top1"], low, high),
                "trained": _trained_label(measured), "train min": measured["train_minutes"]})
    return row


def _trained_label(row: Any) -> str:
    """What a ledger row's run trained, e.g. "lite0 @112 px, 4 epochs" (timm's tf_efficientnet_lite0)."""
    backbone, size, epochs = row.get("backbone"), row.get("image_size"), row.get("epochs")
    if not isinstance(backbone, str):
        return ""
    if backbone.startswith("ensemble"):
        return backbone
    text = backbone.removeprefix("tf_efficientnet_")
    if analysis.is_number(size):
        text += f" @{int(size)} px"
    if analysis.is_number(epochs):
        text += f", {int(epochs)} epoch" + ("s" if int(epochs) != 1 else "")
    return text
