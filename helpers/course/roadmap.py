"""The plan's roadmap (one phase per technique, with what the plan expects), a published full-scale figure per phase,
and the results table that puts this course's measured numbers beside both (read from the ledger; 12_results shows
it, `plots.roadmap_table` draws it).

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


# In the order the course measures them: 3.5 before 3.4, whose test-time views average the 3.5 model's predictions
# (the plan's table lists 3.4 first; its cumulative top-1 column is the plan's, phase by phase).
ROADMAP: dict[str, Phase] = {
    "baseline": Phase("Baseline", "EfficientNet-B0, 50 epochs", "6h", "-", "75-80%", ""),
    "2.1": Phase("Larger backbone", "B3, 100 epochs", "+10h", "+6%", "82-86%", "baseline (01)"),
    "2.2": Phase("Alternative backbone", "ResNet-50, 100 epochs", "", "+4-6%", "80-85%", "baseline (01)", False),
    "3.1": Phase("Longer training, better scheduling", "B3, 150 epochs", "+6h", "+2%", "84-88%", "B3 (2.1)"),
    "3.2": Phase("Advanced augmentation", "B3, 150 epochs", "+0h", "+1.5%", "85.5-89.5%",
                 "better scheduling (3.1)"),
    "3.3": Phase("Mixup/CutMix", "B3, 150 epochs", "+0h", "+3%", "88.5-92.5%", "advanced augmentation (3.2)"),
    "3.5": Phase("Two-stage training (+3.6 discriminative LRs)", "B3, 10 + 100 epochs", "+2h", "+2%", "92-96%",
                 "one stage of the same length (05)"),
    "3.4": Phase("Test-time augmentation", "the 3.5 model", "+0h", "+1.5%", "90-94%", "the same model, one view"),
    "4.1": Phase("Higher resolution", "B3 at 384 px", "+8h", "+1.5%", "93.5-97.5%",
                 "the same fine-tune at 05's size (07)"),
    "4.2": Phase("Ensemble (3 models)", "B3 + B4 + ResNet-101", "+30h", "+2%", "95.5-99.5%",
                 "its best member by validation"),
    "4.3": Phase("Knowledge distillation (optional)", "student with a B4 teacher", "", "+1-2% (student)", "",
                 "the student trained alone", False),
    # Past the plan (notebook 10): stronger pretrained features; the plan has no figure, PUBLISHED has one.
    "5.1": Phase("Linear probes on strong features, ensembled", "SigLIP SO400M/384 + CLIP ViT-L/14@336 probes",
                 "features once", "", "", "its best probe by validation", False),
    "5.2": Phase("Fine-tune from the probe's head, layer decay (LP-FT)", "EVA-02-B/448 from its probe", "", "", "",
                 "its probe", False),
}


@dataclass(frozen=True)
class Published:
    """A published figure for a phase: what was measured, by whom, and where to read it."""

    figure: str  # e.g. "93.0%" or "+2.3 points"
    setting: str  # the model, data and schedule behind it
    source: str  # short citation with the table
    url: str


PUBLISHED: dict[str, Published] = {
    "baseline": Published("90.5%", "ResNet-50 fine-tuned on Food-101 with fastai (16 epochs, with TTA)",
                          "Redkar et al. 2019 (platform.ai)",
                          "https://platform.ai/blog/page/3/new-food-101-sota-with-fastai-and-platform-ais-fast-"
                          "augmentation-search/"),
    "2.1": Published("91.5%", "EfficientNet-B4 fine-tuned on Food-101 (B3 itself: plotted, no number)",
                     "Tan & Le 2019, Table 5", "https://arxiv.org/abs/1905.11946"),
    "2.2": Published("90.5%", "ResNet-50 fine-tuned on Food-101 with fastai", "Redkar et al. 2019 (platform.ai)",
                     "https://platform.ai/blog/page/3/new-food-101-sota-with-fastai-and-platform-ais-fast-"
                     "augmentation-search/"),
    "3.1": Published("–", "no Food-101 ablation published; warmup + cosine are part of every recipe above",
                     "He et al. 2019, Bag of Tricks (ImageNet)", "https://arxiv.org/abs/1812.01187"),
    "3.2": Published("–", "no Food-101 ablation published", "Cubuk et al. 2020, RandAugment (ImageNet)",
                     "https://arxiv.org/abs/1909.13719"),
    "3.3": Published("+2.3 points", "ImageNet, ResNet-50, 300 epochs: CutMix 78.6% against 76.3% (error 21.40 "
                     "against 23.68)", "Yun et al. 2019, CutMix, Table 3", "https://arxiv.org/abs/1905.04899"),
    "3.4": Published("–", "no isolated Food-101 figure; the fastai ResNet-50 above averages 9 views",
                     "Shanmugam et al. 2021, test-time augmentation", "https://arxiv.org/abs/2011.11156"),
    "3.5": Published("+1 point (in-distribution)", "LP-FT against a plain fine-tune, mean over 10 datasets "
                     "(Food-101 not among them)", "Kumar et al. 2022, LP-FT", "https://arxiv.org/abs/2202.10054"),
    "4.1": Published("79.8%", "ImageNet, ResNet-50 trained at 224 px, tested bigger after a cheap fine-tune",
                     "Touvron et al. 2019, FixRes", "https://arxiv.org/abs/1906.06423"),
    "4.2": Published("93.0%", "the ladder's ceiling: EfficientNet-B7 fine-tuned on Food-101, one model",
                     "Tan & Le 2019, Table 5", "https://arxiv.org/abs/1905.11946"),
    "4.3": Published("most of the ensemble's gain", "speech: one model distilled from an ensemble of 10",
                     "Hinton et al. 2015", "https://arxiv.org/abs/1503.02531"),
    "5.1": Published("95.9%", "CLIP ViT-L/14@336 frozen features + logistic regression on Food-101",
                     "Radford et al. 2021, Table 10", "https://arxiv.org/abs/2103.00020"),
    "5.2": Published("96.2%", "EfficientNet-L2 fine-tuned on Food-101 with SAM", "Foret et al. 2020, Table 3",
                     "https://arxiv.org/abs/2010.01412"),
}


class CourseRun(Protocol):
    """What the results table needs of a `Course` (the course imports this module, not the other way round)."""

    output_dir: Path
    ledger_path: Path
    profile: str


def results(course: CourseRun) -> pd.DataFrame:
    """The plan's roadmap with this course's measured numbers and their 95% intervals (for 12_results).

    One row per phase of the roadmap, then one per other phase in the ledger (e.g. a notebook added later).
    Takes the newest ledger row of each phase of this course run, from the course's own runs when it has one (a
    Try-it's run, in a folder named after its change, counts only where the course's run has no row); a phase it
    did not measure falls back to the newest row of the same profile from any course run, marked in `source`.
    Columns: the plan's recipe, gain and top-1; a published full-scale figure and its source; the measured top-1,
    its interval, its gain against `gain against` with the paired p and the verdict by the course's one rule
    (`analysis.paired_verdict`), what trained, and its training minutes on which machine.
    """
    import pandas as pd

    frame = ledger.read(course.ledger_path)
    if len(frame):  # the course's runs first: a Try-it's row (its run folder is named `run~change`) comes before them
        frame = frame.assign(_variant=frame["run"].astype(str).str.contains("~", regex=False))
        frame = frame.sort_values("_variant", ascending=False, kind="stable").drop(columns="_variant")
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
    """One row of the results table: the plan's expectation and a published figure beside the measured top-1, its
    95% interval, the gain and its paired test."""
    published = PUBLISHED.get(key)
    row: dict[str, Any] = {
        "phase": key, "technique": plan.technique if plan else measured["technique"],
        "plan: recipe": plan.plan_recipe if plan else "", "plan: gain": plan.plan_gain if plan else "",
        "plan: top-1": plan.plan_top1 if plan else "",
        "published: figure": published.figure if published else "–",
        "published: source": published.source if published else "",
        "measured: top-1": None, "95% low": None, "95% high": None,
        "measured: gain": None, "paired p": None, "gain is": "",
        "gain against": plan.reference if plan else measured["reference"],
        "trained": "", "train minutes": None, "machine": "", "source": source,
        "in plan table": plan.in_plan_table if plan else False,
    }
    if measured is None:
        return row
    low, high = analysis.wilson(measured["test_top1"], measured["test_n"])
    fixed, broken = measured.get("fixed"), measured.get("broken")
    has_gain = analysis.is_number(measured["gain"])
    paired = has_gain and analysis.is_number(fixed) and analysis.is_number(broken)
    row.update({"measured: top-1": measured["test_top1"], "95% low": low, "95% high": high,
                "measured: gain": measured["gain"],
                "paired p": analysis.mcnemar(int(fixed), int(broken)) if paired else None,
                "gain is": analysis.paired_verdict(fixed, broken) if has_gain else "",
                "trained": _trained_label(measured), "train minutes": measured["train_minutes"],
                "machine": measured.get("device") if isinstance(measured.get("device"), str) else ""})
    if not has_gain and plan is not None and plan.reference:
        row["gain against"] = f"{plan.reference}: not measured"
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
