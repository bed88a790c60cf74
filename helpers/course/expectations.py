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

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import analysis, roadmap
from .roadmap import ROADMAP

if TYPE_CHECKING:
    import pandas as pd

    from .course import Course



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
        this run (top-1 with its 95% interval; the column names the profile), gain (against what, and whether it
        is outside the noise).
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
            if analysis.is_number(hit["measured: gain"]):
                verdict = f", {hit['gain is']}" if hit["gain is"] else ""
                row["gain"] = f"{hit['measured: gain']:+.1f} against {hit['gain against']}{verdict}"
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.rename(columns={"this run": f"this run ({course.profile})"}) if course is not None else frame


__all__ = ["PUBLISHED", "Published", "plan_figure", "table"]
