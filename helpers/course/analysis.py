"""Analysis for the notebooks: accuracy with its 95% interval, confusion counts, confused pairs, failures,
averaged probabilities, a model's trainable parameters and optimizer groups, and the formatting of result
tables. `helpers.plots` draws these; the notebooks and `12_results` show them.

    from helpers.course import analysis
    analysis.wilson(71.3, 150)                 # (63.6, 78.0): the 95% interval of a top-1 measured on 150 photos
    analysis.confused_pairs("runs/x/test_predictions.csv", k=10)
    analysis.mcnemar(10, 2)                    # 0.0386: 10 photos fixed, 2 broken is unlikely to be chance

Predictions are the CSV files written by `helpers.evaluate(..., predictions=...)` (path, true, pred, confidence,
p_<class>...).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def is_number(value: Any) -> bool:
    """Whether `value` is a finite number (not None, NaN or text)."""
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def wilson(top1: float, n: int | float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of an accuracy measured on `n` photos (95% by default), in percent.

    On 150 test photos one photo is 0.67 points and the interval of 70% is about 62-77%: how precisely one accuracy
    is known. Whether two results on the same photos differ is the paired test's question (`paired_verdict`), not
    the intervals'. (nan, nan) when `top1` or `n` is not a number, or n is 0.

    Args:
        top1: the accuracy in percent.
        n: the photos it was measured on.
    """
    if not is_number(top1) or not is_number(n) or float(n) <= 0:
        return float("nan"), float("nan")
    n, p = float(n), float(top1) / 100.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def mcnemar(fixed: int, broken: int) -> float:
    """The exact McNemar test of a paired comparison: the two-sided binomial p-value of the photos a change
    fixed against those it broke.

    Two models measured on the same photos differ only on the photos one gets right and the other wrong. If the
    change did nothing, each such photo is as likely to be fixed as broken: the smaller count is Binomial(n,
    1/2) with n = fixed + broken, and p is twice its lower tail (at most 1). 10 fixed and 2 broken give
    p = 2 * (1 + 12 + 66) / 2**12 = 0.0386; no changed photo gives 1.0.

    Args:
        fixed: photos wrong before and right after.
        broken: photos right before and wrong after.
    Returns:
        p in [0, 1]; below 0.05 the difference is unlikely to be chance on these photos.
    """
    fixed, broken = int(fixed), int(broken)
    if fixed < 0 or broken < 0:
        raise ValueError(f"fixed and broken are counts of photos, got {fixed} and {broken}")
    n, k = fixed + broken, min(fixed, broken)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1))  # exact integers: no rounding even for thousands of photos
    return min(1.0, 2 * tail / 2**n)


def paired_changes(before: str | Path | pd.DataFrame, after: str | Path | pd.DataFrame) -> dict[str, Any]:
    """What changed between two predictions of the same photos: the fixed and broken photos and McNemar's p.

    Returns:
        {"fixed": DataFrame, "broken": DataFrame (path, true, pred_a, confidence_a, pred_b, confidence_b, each
        sorted by the second model's confidence), "p": mcnemar(len(fixed), len(broken)), "n": shared photos}.
    """
    a, _ = read_predictions(before)
    b, _ = read_predictions(after)
    merged = a[["path", "true", "pred", "confidence"]].merge(b[["path", "pred", "confidence"]], on="path",
                                                             suffixes=("_a", "_b"))
    fixed = merged[(merged["pred_a"] != merged["true"]) & (merged["pred_b"] == merged["true"])]
    broken = merged[(merged["pred_a"] == merged["true"]) & (merged["pred_b"] != merged["true"])]
    return {"fixed": fixed.sort_values("confidence_b", ascending=False),
            "broken": broken.sort_values("confidence_b", ascending=False),
            "p": mcnemar(len(fixed), len(broken)), "n": len(merged)}


def paired_verdict(fixed: Any, broken: Any) -> str:
    """The course's one rule for a comparison on the same test photos: "real" when the exact McNemar p of the photos
    fixed and broken is below 0.05, "within noise" otherwise, "no paired test" when a count is missing (two results
    without predictions of the same photos: an interval overlap is never a verdict)."""
    if not (is_number(fixed) and is_number(broken)):
        return "no paired test"
    return "real" if mcnemar(int(fixed), int(broken)) < 0.05 else "within noise"


def paired_text(fixed: int, broken: int) -> str:
    """"10 fixed, 2 broken: McNemar p = 0.039 (real)": the line printed under a comparison."""
    p = mcnemar(fixed, broken)
    return (f"{fixed} fixed, {broken} broken: exact McNemar p = {p:.3g} "
            f"({paired_verdict(fixed, broken)} at the 5% level, paired on the same photos)")


def with_interval(top1: float, n: int) -> str:
    """"71.3% (63.6-78.0)": a top-1 and its 95% Wilson interval, as figures and tables print it."""
    if not is_number(top1):
        return "–"
    low, high = wilson(top1, n)
    return f"{top1:.1f}%" + (f" ({low:.1f}-{high:.1f})" if is_number(low) else "")


def format_value(value: Any, column: str = "") -> str:
    """One table cell as text: "–" for missing values, one decimal for numbers, a sign for gains."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (float, np.floating)):
        if column.endswith(" p"):  # a p-value: three significant digits (0.0386)
            return "<0.001" if value < 0.001 else f"{value:.3g}"
        return f"{value:+.1f}" if "gain" in column else f"{value:.1f}"
    return str(value)


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """A results table with every cell formatted by `format_value` (no NaN, one decimal)."""
    return table.apply(lambda col: col.map(lambda v: format_value(v, str(col.name))))


def markdown_table(table: pd.DataFrame) -> str:
    """A table as Markdown, its cells formatted by `format_value`."""
    shown = format_table(table)
    lines = ["| " + " | ".join(map(str, shown.columns)) + " |", "|" + "---|" * len(shown.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in shown.itertuples(index=False)]) + "\n"


def val_top1(run: str | Path | None) -> float:
    """The best validation top-1 of a trained or probe run (its summary.json), NaN when unknown. What the course
    chooses by (a best member, a route to highlight): the test split never chooses."""
    import json

    summary = Path(run) / "summary.json" if run else None
    if summary is None or not summary.is_file():
        return float("nan")
    value = json.loads(summary.read_text()).get("val_top1")
    return float(value) if is_number(value) else float("nan")


def best_by_val(runs: dict[str, str | Path]) -> str:
    """The label of the run with the highest validation top-1 (the first one on a tie or when none is known)."""
    scores = {label: val_top1(run) for label, run in runs.items()}
    known = [label for label in runs if is_number(scores[label])]
    return max(known, key=lambda label: scores[label]) if known else next(iter(runs))


def read_predictions(predictions: str | Path | pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """A predictions CSV (or its DataFrame) and its class names, in the model's class order."""
    import pandas as pd

    frame = predictions if isinstance(predictions, pd.DataFrame) else pd.read_csv(predictions)
    class_names = [c[2:] for c in frame.columns if c.startswith("p_")]
    return frame, class_names


def accuracy(predictions: str | Path | pd.DataFrame) -> float:
    """Top-1 of a predictions CSV, in percent."""
    frame, _ = read_predictions(predictions)
    return 100.0 * float((frame["true"] == frame["pred"]).mean()) if len(frame) else float("nan")


def confusion_counts(predictions: str | Path | pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """The confusion matrix of a predictions CSV: counts[true, predicted], and the class names."""
    frame, names = read_predictions(predictions)
    index = {c: i for i, c in enumerate(names)}
    counts = np.zeros((len(names), len(names)), dtype=int)
    np.add.at(counts, (frame["true"].map(index).to_numpy(), frame["pred"].map(index).to_numpy()), 1)
    return counts, names


def confused_pairs(predictions: str | Path | pd.DataFrame, k: int | None = None) -> pd.DataFrame:
    """The (true, predicted) class pairs that are mistaken most often.

    Returns:
        DataFrame with columns true, pred, count, share (of the true class's test photos), most frequent first.
    """
    import pandas as pd

    counts, names = confusion_counts(predictions)
    totals = counts.sum(axis=1)
    rows = [(names[t], names[p], int(counts[t, p]), counts[t, p] / max(totals[t], 1))
            for t, p in zip(*np.nonzero(counts)) if t != p]
    frame = pd.DataFrame(rows, columns=["true", "pred", "count", "share"])
    frame = frame.sort_values(["count", "share", "true"], ascending=[False, False, True]).reset_index(drop=True)
    return frame.head(k) if k else frame


def failures(predictions: str | Path | pd.DataFrame, *, true_class: str | None = None,
             pred_class: str | None = None) -> pd.DataFrame:
    """The misclassified photos, the most confident mistakes first.

    Args:
        true_class: keep only photos of this class.
        pred_class: keep only photos predicted as this class.
    Returns:
        DataFrame with path, true, pred, confidence (of the wrong prediction) and true_prob.
    """
    frame, _ = read_predictions(predictions)
    wrong = frame[frame["true"] != frame["pred"]].copy()
    if true_class is not None:
        wrong = wrong[wrong["true"] == true_class]
    if pred_class is not None:
        wrong = wrong[wrong["pred"] == pred_class]
    wrong["true_prob"] = [row[f"p_{row['true']}"] for _, row in wrong.iterrows()]
    wrong = wrong.sort_values("confidence", ascending=False, kind="stable")
    return wrong[["path", "true", "pred", "confidence", "true_prob"]].reset_index(drop=True)


def averaged(members: dict[str, str | Path | pd.DataFrame], mean: str | Path | pd.DataFrame, photo: int = 0,
             top: int = 3, label: str = "mean") -> pd.DataFrame:
    """How an average of softmax outputs decides one photo: each member's probabilities of the classes the
    mean ranks highest, and the mean itself (an ensemble's CSV, or TTA views' CSVs and the TTA result).

    Args:
        members: {label: predictions of one member (or view)} on the same photos.
        mean: the predictions of the average.
        photo: which photo (row of `mean`).
        top: how many classes to show.
        label: the row name of the average.
    Returns:
        DataFrame: a row per member and one for the mean, a column per class (percent), plus "true class".
    """
    import pandas as pd

    frame, names = read_predictions(mean)
    row = frame.iloc[photo]
    classes = sorted(names, key=lambda c: -row[f"p_{c}"])[:top]
    table = {}
    for name, member in members.items():
        m, _ = read_predictions(member)
        hit = m[m["path"] == row["path"]].iloc[0]
        table[name] = {c: 100.0 * hit[f"p_{c}"] for c in classes}
    table[label] = {c: 100.0 * row[f"p_{c}"] for c in classes}
    out = pd.DataFrame(table).T.round(1)
    out.attrs.update(path=row["path"], true=row["true"])
    out.columns.name = f"true class: {row['true']}"
    return out


def parameter_table(model: Any) -> pd.DataFrame:
    """Tensors and parameters of a model's backbone and head, and how many of them are trainable (stage 1 of
    two-stage training freezes the backbone)."""
    import pandas as pd

    from ..training.models import head_parameters

    head = {id(p) for p in head_parameters(model)}
    rows: dict[str, dict[str, int]] = {}
    for p in model.parameters():
        row = rows.setdefault("head" if id(p) in head else "backbone", {"tensors": 0, "parameters": 0, "trainable": 0})
        row["tensors"] += 1
        row["parameters"] += p.numel()
        row["trainable"] += p.numel() if p.requires_grad else 0
    return pd.DataFrame(rows).T


def optimizer_groups(optimizer: Any) -> pd.DataFrame:
    """An optimizer's parameter groups: name, tensors, parameters, learning rate (and its share of the
    scheduled rate, `lr_scale`) and weight decay."""
    import pandas as pd

    return pd.DataFrame([{"group": g.get("name", str(i)), "tensors": len(g["params"]),
                          "parameters": sum(p.numel() for p in g["params"]), "lr": g["lr"],
                          "lr_scale": g.get("lr_scale", 1.0), "weight_decay": g["weight_decay"]}
                         for i, g in enumerate(optimizer.param_groups)]).set_index("group")


__all__ = ["wilson", "mcnemar", "paired_changes", "paired_verdict", "paired_text", "val_top1", "best_by_val", "with_interval", "format_value", "format_table", "markdown_table", "is_number",
           "read_predictions", "accuracy", "confusion_counts", "confused_pairs", "failures", "averaged",
           "parameter_table", "optimizer_groups"]
