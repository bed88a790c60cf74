"""Figures, prediction analysis and its intervals, the results ledger, the course layer and the explorers, without
training: real photos of the tiny set with predictions whose confusions are known."""

from __future__ import annotations

import csv
import itertools
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers.base.errors import UserError
from helpers.course import analysis, comparison, course, failures, ledger, plots, previews, roadmap, runner, widgets
from helpers.data import loaders, splits
from helpers.training import engine, recipe

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "data" / "food-101-tiny"
A, B, C = "apple_pie", "baby_back_ribs", "baklava"
# (true, predicted, confidence of the prediction): five mistakes, A -> B twice.
CASES = [(A, A, 0.8), (A, A, 0.7), (A, B, 0.9), (A, B, 0.6), (B, B, 0.9), (B, B, 0.8), (B, B, 0.7), (B, A, 0.7),
         (C, C, 0.9), (C, A, 0.55), (C, B, 0.8), (C, C, 0.6)]


@pytest.fixture()
def predictions(tmp_path) -> Path:
    """A predictions CSV in the format of helpers.evaluate, over real photos of the three classes."""
    photos = {name: sorted((TINY / "images" / name).glob("*.jpg")) for name in (A, B, C)}
    counters = {name: itertools.count() for name in photos}
    path = tmp_path / "predictions.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "true", "pred", "confidence", f"p_{A}", f"p_{B}", f"p_{C}"])
        for true, pred, confidence in CASES:
            probs = {name: (1 - confidence) / 2 for name in (A, B, C)}
            probs[pred] = confidence
            writer.writerow([photos[true][next(counters[true])], true, pred, confidence] + list(probs.values()))
    return path


@pytest.fixture()
def run_dir(tmp_path) -> Path:
    """A run folder with the metrics.csv the trainer writes (five epochs)."""
    folder = tmp_path / "run"
    folder.mkdir()
    epochs = np.arange(1, 6)
    pd.DataFrame({"epoch": epochs, "train_loss": 2.3 / epochs, "train_top1": 20 + 10 * epochs,
                  "val_loss": 2.0 / epochs, "val_top1": [30, 45, 52, 50, 55], "val_top5": [70, 80, 85, 88, 90],
                  "lr": [1e-3, 9e-4, 6e-4, 3e-4, 1e-5], "images_per_s": 50.0, "epoch_seconds": 7.0,
                  "peak_mem_mb": 0.0}).to_csv(folder / "metrics.csv", index=False)
    return folder


def _png(path: Path, min_side: int = 300) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as image:
        width, height = image.size
        extrema = image.convert("L").getextrema()
    assert min(width, height) >= min_side and max(width, height) <= 6000, (path, width, height)
    assert extrema[1] - extrema[0] > 100, f"{path} is blank"
    assert 3_000 < path.stat().st_size < 8_000_000, path
    return width, height


def _texts_overlap(fig, texts) -> list[tuple[str, str]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # a figure closed in pyplot keeps a bare canvas
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_text().strip() and t.get_visible()]
    return [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2) if ba.overlaps(bb)]


# ------------------------------------------------------------------------------------------------------------------
# What the figures are computed from


def test_failures_are_the_most_confident_mistakes_first(predictions):
    wrong = analysis.failures(predictions)
    assert list(zip(wrong["true"], wrong["pred"], wrong["confidence"])) == [
        (A, B, 0.9), (C, B, 0.8), (B, A, 0.7), (A, B, 0.6), (C, A, 0.55)]
    assert wrong["true_prob"].iloc[0] == pytest.approx(0.05)
    assert len(analysis.failures(predictions, true_class=C)) == 2
    assert len(analysis.failures(predictions, true_class=A, pred_class=B)) == 2


def test_confused_pairs_and_confusion_counts(predictions):
    pairs = analysis.confused_pairs(predictions)
    assert (pairs.iloc[0]["true"], pairs.iloc[0]["pred"], pairs.iloc[0]["count"]) == (A, B, 2)
    assert pairs.iloc[0]["share"] == pytest.approx(0.5) and len(pairs) == 4
    counts, names = analysis.confusion_counts(predictions)
    assert names == [A, B, C] and counts.sum() == len(CASES) and np.trace(counts) == 7
    assert analysis.accuracy(predictions) == pytest.approx(100 * 7 / 12)


# ------------------------------------------------------------------------------------------------------------------
# The figures: real PNG files, readable


def test_every_figure_function_returns_a_figure_and_saves_a_real_png(tmp_path, predictions, run_dir):
    photos = [(str(p), p.parent.name) for p in sorted(TINY.glob("images/*/*.jpg"))[::60]][:6]
    out = tmp_path / "figures"
    calls = {
        "curves": lambda: plots.training_curves({"a": run_dir, "b": run_dir}, sequential=True, folder=out, name="curves"),
        "cm": lambda: failures.confusion_matrix(predictions, folder=out, name="cm"),
        "top": lambda: failures.top_confusions(predictions, folder=out, name="top"),
        "gallery": lambda: failures.failure_gallery(predictions, n=4, folder=out, name="gallery"),
        "changes": lambda: failures.prediction_changes(predictions, predictions, folder=out, name="changes"),
        "samples": lambda: previews.class_samples(photos, folder=out, name="samples"),
        "augment": lambda: previews.augmentation_preview(photos[0][0], size=96, n=3, folder=out, name="augment"),
        "steps": lambda: previews.transform_steps(photos[1][0], size=96, folder=out, name="steps"),
        "mix": lambda: previews.mixed_batch(*_mixed(), folder=out, name="mix"),
        "compare": lambda: plots.compare_top1({"a": {"top1": 50.0, "n": 150}, "b": 55.5, "c": float("nan")}, folder=out,
                                              name="compare"),
        "tta": lambda: plots.tta_gain({1: {"top1": 50.0, "n": 150}, 2: {"top1": 51.0, "n": 150}}, folder=out,
                                      name="tta"),
        "views": lambda: previews.tta_views(photos[2][0], views=4, size=96, folder=out, name="views"),
        "ensemble": lambda: plots.ensemble_vs_members(
            {"top1": 60.0, "members": [{"backbone": "x", "image_size": 96, "top1": 55.0},
                                       {"backbone": "y", "image_size": 64, "top1": 50.0}]}, folder=out, name="ensemble"),
        "kd": lambda: plots.student_vs_teacher({"t": 70.0}, ("s", 50.0), ("s", 52.0), folder=out, name="kd"),
    }
    for name, call in calls.items():
        fig = call()
        assert fig.__class__.__name__ == "Figure", name
        _png(out / f"{name}.png")
    assert plots.save_figure(fig, "unsaved", None) is None


def test_a_notebook_shows_a_saved_figure_from_its_png_and_draws_a_changed_one_again(tmp_path, predictions,
                                                                                      monkeypatch):
    """In a kernel, a saved figure is shown from the PNG in figures/ (not drawn a second time), at the size the
    inline backend would draw it; a figure changed after saving is drawn again, so it never shows a stale picture."""
    import base64

    from IPython.core.interactiveshell import InteractiveShell
    from IPython.core.pylabtools import select_figure_formats

    shell = InteractiveShell.instance()
    try:
        select_figure_formats(shell, {"png"})  # what matplotlib's inline backend registers in a kernel
        monkeypatch.setattr(plots, "_in_kernel", lambda: True)
        fig = failures.top_confusions(predictions, folder=tmp_path, name="top")
        saved = (tmp_path / "top.png").read_bytes()
        data, meta = shell.display_formatter.format(fig)
        assert base64.b64decode(data["image/png"]) == saved
        assert meta["image/png"]["width"] == round(Image.open(tmp_path / "top.png").width * fig.dpi / plots.DPI)
        fig.axes[0].set_title("changed after saving")
        data, _ = shell.display_formatter.format(fig)
        assert base64.b64decode(data["image/png"]) != saved  # drawn again, with the new title
        other = failures.top_confusions(predictions)  # not saved: drawn as usual
        assert shell.display_formatter.format(other)[0]["image/png"]
    finally:
        InteractiveShell.clear_instance()


def test_figure_text_does_not_overlap(predictions, run_dir):
    fig = failures.failure_gallery(predictions, n=5, cols=3)
    texts = [t for ax in fig.axes for t in (ax.title, ax._left_title, ax.xaxis.label) if t.get_text()]
    assert len(texts) == 10 and _texts_overlap(fig, texts) == []
    fig = plots.training_curves(run_dir)
    assert _texts_overlap(fig, [ax.title for ax in fig.axes] + [ax.xaxis.label for ax in fig.axes]) == []


def test_confusion_matrix_of_101_classes_shows_every_name_whole(tmp_path):
    names = [f"class_{i:03d}_{'long_dish_name' if i % 7 == 0 else 'dish'}" for i in range(101)]
    rng = np.random.default_rng(0)
    rows = []
    for i in range(505):
        probs = rng.dirichlet(np.ones(101))
        true = i % 101
        probs[true] += 0.6
        probs /= probs.sum()
        pred = int(probs.argmax())
        rows.append([f"x{i}.jpg", names[true], names[pred], probs[pred], *probs])
    frame = pd.DataFrame(rows, columns=["path", "true", "pred", "confidence", *[f"p_{n}" for n in names]])
    fig = failures.confusion_matrix(frame, folder=tmp_path, name="cm101")
    width, height = _png(tmp_path / "cm101.png", min_side=1500)
    ax = fig.axes[0]
    labels = ax.get_yticklabels()
    assert [t.get_text() for t in labels] == [splits.pretty(n) for n in names]
    assert _texts_overlap(fig, labels) == [] and _texts_overlap(fig, ax.get_xticklabels()) == []
    assert min(t.get_fontsize() for t in labels) >= 6


def test_compact_copy_is_smaller_and_keeps_the_picture(tmp_path, predictions):
    failures.failure_gallery(predictions, n=4, folder=tmp_path, name="gallery")
    small = runner.compact_copy(tmp_path / "gallery.png", tmp_path / "small" / "gallery.png", max_width=600)
    assert small.stat().st_size < (tmp_path / "gallery.png").stat().st_size
    with Image.open(small) as image:
        assert image.width == 600


def _mixed():
    """A real batch of the tiny set through the trainer's own Mixup/CutMix."""
    from helpers.base.config import TrainConfig

    cfg = TrainConfig(data_dir=str(TINY), image_size=64, mixup=True, cutmix=True, label_smoothing=0.1)
    images, labels, names = loaders.sample_batch(cfg, n=6)
    mixed, targets = recipe.make_mixup(cfg, len(names))(images.float() / 255, labels)
    return images, mixed, targets, names


def test_the_mix_preview_uses_the_trainers_mixup_at_a_fixed_weight_on_a_batch_of_different_classes():
    import torch

    from helpers.base.config import TrainConfig

    cfg = TrainConfig(data_dir=str(TINY), image_size=64, mixup=True, cutmix=True, label_smoothing=0.1)
    images, labels, names = loaders.sample_batch(cfg, n=4, train=False, one_per_class=True)
    assert labels.tolist() == [0, 1, 2, 3]  # one photo of each class, no augmentation
    x = images.float() / 255
    mixed, targets = recipe.mix_fixed(cfg, images, labels, len(names), lam=0.6, cutmix=False)
    assert torch.allclose(mixed, 0.6 * x + 0.4 * x.flip(0), atol=1e-6)  # image i with image N-1-i
    on, off = 0.9 + 0.1 / 10, 0.1 / 10  # label smoothing 0.1 over 10 classes
    assert targets[0, 0].item() == pytest.approx(0.6 * on + 0.4 * off) and targets[0, 3].item() == pytest.approx(
        0.4 * on + 0.6 * off)
    cut, cut_targets = recipe.mix_fixed(cfg, images, labels, len(names), lam=0.6, cutmix=True)
    pasted = (cut != x).any(dim=1)[0].float().mean().item()  # image 0 covered by image 3: at most 40%, the box is clipped
    assert 0.0 < pasted <= 0.4 + 1e-6 and cut_targets[0, 3].item() == pytest.approx(pasted * on + (1 - pasted) * off,
                                                                              abs=0.02)
    fig = previews.mixed_batch(images, {"mixup": (mixed, targets), "CutMix": (cut, cut_targets)}, class_names=names)
    assert len(fig.axes) == 12 and "55% Apple pie" in fig.axes[4].xaxis.label.get_text()


def test_mixed_batch_shows_the_trainers_soft_targets():
    images, mixed, targets, names = _mixed()
    assert images.dtype.is_floating_point is False and mixed.shape == images.shape
    assert targets.sum(dim=1).tolist() == pytest.approx([1.0] * len(images))
    fig = previews.mixed_batch(images, mixed, targets, names, n=6)
    labels = [ax.xaxis.label.get_text() for ax in fig.axes[6:]]
    assert len(labels) == 6
    for label, row in zip(labels, targets):
        shares = [int(x) for x in re.findall(r"(\d+)%", label)]
        top = sorted(row.tolist(), reverse=True)[:2]
        assert shares == [round(100 * t) for t in top], (label, top)


# ------------------------------------------------------------------------------------------------------------------
# Intervals and tables


def test_wilson_interval_matches_the_formula_and_its_edges():
    low, high = analysis.wilson(50.0, 100)
    assert (low, high) == (pytest.approx(40.383, abs=1e-3), pytest.approx(59.617, abs=1e-3))
    assert analysis.wilson(0.0, 10)[0] == 0.0 and analysis.wilson(0.0, 10)[1] == pytest.approx(27.75, abs=0.01)
    assert analysis.wilson(100.0, 10)[1] == pytest.approx(100.0)
    narrow, wide = analysis.wilson(70.0, 25_250), analysis.wilson(70.0, 150)
    assert narrow[1] - narrow[0] < 1.2 < 14 < wide[1] - wide[0] < 16  # Food-101's test set against the demo's
    assert all(v != v for v in analysis.wilson(float("nan"), 150)) and all(v != v for v in analysis.wilson(50, 0))
    assert analysis.with_interval(70.0, 150) == "70.0% (62.2-76.8)"


def test_a_gain_is_judged_by_the_paired_test_alone_never_by_the_intervals(predictions, tmp_path):
    """The course's one rule: McNemar on the same photos decides; without paired predictions there is no verdict."""
    frame = pd.read_csv(predictions)
    after = frame.copy()
    after.loc[[2, 3, 7, 9, 10], "pred"] = after.loc[[2, 3, 7, 9, 10], "true"]  # every mistake fixed, none broken
    after.to_csv(tmp_path / "after.csv", index=False)
    before = {"top1": 100 * 7 / 12, "n": 12, "predictions": str(predictions)}
    fixed = comparison.compare(before, {"top1": 100.0, "n": 12, "predictions": str(tmp_path / "after.csv")},
                               "five mistakes fixed", labels=("before", "after"))
    assert (fixed.fixed, fixed.broken, fixed.p, fixed.verdict) == (5, 0, 2 / 32, "within noise")  # 5 of 12: chance
    text = str(fixed)
    assert text.splitlines()[0] == "What differs: five mistakes fixed"
    assert "58.3% (32.0-80.7) on 12 test photos" in text and "100.0% (75.8-100.0)" in text
    assert "+41.7 points: 5 photos fixed, 0 broken; exact McNemar p = 0.0625: within noise (p >= 0.05" in text
    # far apart, intervals disjoint, but no predictions of the same photos: no verdict at all
    bare = comparison.compare({"top1": 30.0, "n": 150}, {"top1": 90.0, "n": 150}, "other photos")
    assert bare.p is None and bare.verdict == "no paired test" and "no paired test" in str(bare)
    # a ledger row carries its own counts against its reference
    row = pd.Series({"test_top1": 70.0, "test_n": 150, "fixed": 12, "broken": 2})
    assert comparison.compare({"test_top1": 63.3, "test_n": 150}, row, "ledger").verdict == "real"
    assert list(comparison.table([fixed, bare])["verdict"]) == ["within noise", "no paired test"]
    # the figure says the same
    fig = plots.compare_top1({"before": before, "after": {"top1": 100.0, "n": 12, "predictions": str(tmp_path /
                                                                                                   "after.csv")},
                              "bare": 90.0})
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert any("(+41.7, p=0.0625, within noise)" in t for t in labels), labels
    assert any("no paired test" in t for t in labels), labels


def test_the_settings_that_differ_are_read_from_the_two_runs(tmp_path):
    from helpers.base.config import TrainConfig, save_config

    for name, lr in (("a", 3e-3), ("b", 3e-4)):
        (tmp_path / name).mkdir()
        save_config(TrainConfig(lr=lr, output_dir=str(tmp_path / name), device="cpu"), tmp_path / name / "config.yaml")
    assert comparison.setting_changes(tmp_path / "a", tmp_path / "b") == "lr 0.003 → 0.0003"  # not the folders
    assert comparison.setting_changes(tmp_path / "a", tmp_path / "a") == "none"
    assert comparison.setting_changes(tmp_path / "a", tmp_path / "missing") == ""


def test_mcnemar_is_the_exact_two_sided_binomial_test_of_fixed_against_broken():
    from math import comb

    # by hand: 10 fixed, 2 broken -> n = 12, twice the lower tail P(X <= 2) of Binomial(12, 1/2)
    assert 2 * (comb(12, 0) + comb(12, 1) + comb(12, 2)) / 2**12 == pytest.approx(0.0386, abs=5e-5)
    assert analysis.mcnemar(10, 2) == pytest.approx(0.038574, abs=1e-6)
    assert analysis.mcnemar(2, 10) == analysis.mcnemar(10, 2)  # two-sided: symmetric
    assert analysis.mcnemar(0, 0) == 1.0 and analysis.mcnemar(3, 3) == 1.0  # nothing changed / a tie: capped at 1
    assert analysis.mcnemar(5, 0) == pytest.approx(2 / 32) and analysis.mcnemar(6, 0) == pytest.approx(2 / 64)
    assert analysis.mcnemar(1000, 950) == pytest.approx(0.2676, abs=5e-4)  # exact on thousands of photos
    with pytest.raises(ValueError, match="counts of photos"):
        analysis.mcnemar(-1, 2)
    assert analysis.paired_verdict(10, 2) == "real" and analysis.paired_verdict(6, 2) == "within noise"
    assert analysis.paired_verdict(float("nan"), 2) == "no paired test"
    assert "p = 0.0386 (real" in analysis.paired_text(10, 2)


def test_paired_changes_count_the_photos_fixed_and_broken(predictions, tmp_path, capsys):
    frame = pd.read_csv(predictions)
    after = frame.copy()
    after.loc[[2, 3, 7], "pred"] = after.loc[[2, 3, 7], "true"]  # three mistakes fixed
    after.loc[0, "pred"] = B  # one right answer broken
    after.to_csv(tmp_path / "after.csv", index=False)
    changes = analysis.paired_changes(predictions, tmp_path / "after.csv")
    assert (len(changes["fixed"]), len(changes["broken"]), changes["n"]) == (3, 1, 12)
    assert changes["p"] == analysis.mcnemar(3, 1) == pytest.approx(0.625)
    failures.prediction_changes(predictions, tmp_path / "after.csv", labels=("a", "b"), folder=tmp_path, name="ch")
    assert "a → b: 3 fixed, 1 broken: exact McNemar p = 0.625 (within noise" in capsys.readouterr().out


def test_the_best_member_is_chosen_by_validation_never_by_test(tmp_path):
    import json

    runs = {}
    for name, val in (("a", 80.0), ("b", 90.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"val_top1": val}))
        runs[name] = tmp_path / name
    assert analysis.best_by_val(runs) == "b" and analysis.val_top1(tmp_path / "missing") != 0
    # member a is better on test, b on validation: the deltas are taken against b
    fig = plots.ensemble_vs_members({"top1": 70.0, "n": 150, "members": [
        {"backbone": "a", "image_size": 96, "top1": 68.0, "model": str(runs["a"])},
        {"backbone": "b", "image_size": 96, "top1": 60.0, "model": str(runs["b"])}]})
    assert "+10.0 points against its best member by validation" in fig.axes[0].get_title(loc="left")


def test_tables_are_formatted_without_nan_or_four_decimals():
    table = pd.DataFrame({"phase": ["a", "b"], "measured: top-1": [71.33333, float("nan")],
                          "measured: gain": [2.25, None], "trained": ["x @112, 4 epochs", None]})
    shown = analysis.format_table(table)
    assert shown.values.tolist() == [["a", "71.3", "+2.2", "x @112, 4 epochs"], ["b", "–", "–", "–"]]


# ------------------------------------------------------------------------------------------------------------------
# The results ledger


def test_ledger_appends_rows_reads_them_back_and_keeps_the_latest(tmp_path):
    path = tmp_path / "sub" / "ledger.csv"
    ledger.append(path, {"course": "c1", "profile": "demo", "phase": "2.1", "test_top1": 70.0, "reference_top1": 65.5})
    ledger.append(path, {"course": "c1", "profile": "demo", "phase": "2.1", "test_top1": 72.0})
    ledger.append(path, {"course": "c2", "profile": "full", "phase": "3.1", "test_top1": 80.0})
    frame = ledger.read(path)
    assert list(frame.columns) == list(ledger.COLUMNS) and len(frame) == 3
    assert frame["gain"].iloc[0] == pytest.approx(4.5) and frame["time"].iloc[0]
    latest = ledger.latest(frame, course="c1")
    assert len(latest) == 1 and latest["test_top1"].iloc[0] == 72.0
    assert list(ledger.latest(frame, profile="full")["phase"]) == ["3.1"]
    assert ledger.read(tmp_path / "missing.csv").empty
    with pytest.raises(ValueError, match="unknown ledger column"):
        ledger.append(path, {"phase": "x", "accuracy": 1})


def test_ledger_written_by_an_older_version_is_upgraded(tmp_path):
    path = tmp_path / "ledger.csv"
    path.write_text("phase,test_top1\nbaseline,60.5\n")
    ledger.append(path, {"phase": "2.1", "test_top1": 70.0})
    frame = ledger.read(path)
    assert list(frame["phase"]) == ["baseline", "2.1"] and list(frame["test_top1"]) == [60.5, 70.0]


# ------------------------------------------------------------------------------------------------------------------
# The course layer


def test_course_config_takes_the_notebooks_settings_and_resumes_automatically(tmp_path):
    c = course.Course("01_baseline", "demo", output_dir=str(tmp_path / "course"), ledger=str(tmp_path / "l.csv"))
    cfg = c.config("baseline", dict(backbone="tf_efficientnet_lite0", pretrained="offline", image_size=112, epochs=2))
    assert (cfg.epochs, cfg.image_size, cfg.num_workers) == (2, 112, 0)  # the demo profile's machine: no workers
    assert cfg.resume == "auto" and Path(cfg.output_dir) == tmp_path / "course" / "models" / "01_baseline" / "baseline"
    assert Path(cfg.data_dir) == TINY
    with pytest.raises(UserError, match="Did you mean epochs"):
        c.config("baseline", {"epoch": 3})
    with pytest.raises(UserError, match="--epochs must be a positive integer"):
        c.config("baseline", {"epochs": 0})
    stage = c.config("stage2", {"epochs": 2}, start_from=tmp_path / "stage1")
    assert stage.resume == str(tmp_path / "stage1" / "best.pt")  # a new stage from another run's weights


def test_rehearsal_settings_keep_the_chain_and_shrink_the_work(tmp_path):
    c = course.Course("08_ensemble", "full", output_dir=str(tmp_path), rehearse=True)
    cfg = c.config("b4", dict(backbone="efficientnet_b4", pretrained="hub", image_size=380, batch_size=12, epochs=150,
                              warmup_epochs=5, scheduler="cosine_restart", restart_epochs=3, seed=123))
    assert (cfg.backbone, cfg.pretrained, cfg.image_size, cfg.epochs, cfg.max_steps, cfg.seed) == \
        ("efficientnet_b4", "none", 95, 1, 2, 123)
    assert (cfg.batch_size, cfg.warmup_epochs, cfg.restart_epochs) == (8, 0.5, 1)
    assert Path(cfg.data_dir) == ROOT / "data" / "food-101-thumbs"
    assert len(c.class_names()) == 101


def test_a_notebook_whose_input_run_is_missing_says_which_to_run(tmp_path):
    c = course.Course("06_tta", "demo", output_dir=str(tmp_path))
    with pytest.raises(UserError, match="needs the 'stage2' model of 05_two_stage.*--only 05,06"):
        c.require("05_two_stage", "stage2")


def test_results_put_measured_numbers_and_their_intervals_beside_the_plans(tmp_path):
    path = tmp_path / "ledger.csv"
    ledger.append(path, {"course": "old", "profile": "demo", "phase": "3.1", "test_top1": 61.0, "test_n": 150})
    ledger.append(path, {"course": str(tmp_path / "c"), "profile": "demo", "phase": "baseline", "test_top1": 60.0,
                         "test_n": 150, "backbone": "tf_efficientnet_lite0", "image_size": 112, "epochs": 4})
    ledger.append(path, {"course": str(tmp_path / "c"), "profile": "demo", "phase": "2.1", "test_top1": 66.0,
                         "test_n": 150, "reference_top1": 60.0})
    ledger.append(path, {"course": str(tmp_path / "c"), "profile": "demo", "phase": "6.1", "technique": "Linear probe",
                         "test_top1": 90.0, "test_n": 150, "reference_top1": 66.0})  # a notebook added later
    # 3.2 and 3.3: the ledger has the photos fixed and broken, so the paired test decides
    ledger.append(path, {"course": str(tmp_path / "c"), "profile": "demo", "phase": "3.2", "test_top1": 66.7,
                         "test_n": 150, "reference_top1": 60.0, "fixed": 12, "broken": 2})
    ledger.append(path, {"course": str(tmp_path / "c"), "profile": "demo", "phase": "3.3", "test_top1": 60.7,
                         "test_n": 150, "reference_top1": 60.0, "fixed": 5, "broken": 4})
    c = course.Course("12_results", "demo", output_dir=str(tmp_path / "c"), ledger=str(path))
    table = roadmap.results(c).set_index("phase")
    assert list(table.index) == [*roadmap.ROADMAP, "6.1"] and table.loc["6.1", "technique"] == "Linear probe"
    assert table.loc["2.1", "measured: top-1"] == 66.0 and table.loc["2.1", "measured: gain"] == pytest.approx(6.0)
    assert (table.loc["2.1", "95% low"], table.loc["2.1", "95% high"]) == pytest.approx(analysis.wilson(66.0, 150))
    # no photos fixed and broken in the ledger: no paired test, however far the reference is from the interval
    assert table.loc["2.1", "gain is"] == "no paired test" and table.loc["6.1", "gain is"] == "no paired test"
    assert table.loc["3.2", "paired p"] == pytest.approx(analysis.mcnemar(12, 2)) and table.loc["3.2", "gain is"] == "real"
    assert table.loc["3.3", "gain is"] == "within noise" and not analysis.is_number(table.loc["2.1", "paired p"])
    assert analysis.format_table(table.reset_index()).set_index("phase").loc["3.2", "paired p"] == "0.0129"
    assert table.loc["2.1", "plan: top-1"] == "82-86%"
    assert table.loc["baseline", "trained"] == "lite0 @112 px, 4 epochs"
    assert table.loc["baseline", "technique"] == "Baseline"  # the plan's B0 recipe is its own column
    assert table.loc["3.1", "source"] == "an earlier course run" and table.loc["4.2", "source"] == "not measured"
    paths = roadmap.save_results(c, roadmap.results(c))
    markdown = paths["markdown"].read_text()
    assert "| 2.1 | Larger backbone | B3, 100 epochs |" in markdown and "nan" not in markdown.lower()
    with pytest.raises(UserError, match="not in the plan's roadmap"):
        c.record("6.2", tmp_path, {"top1": 1.0})
    fig = plots.roadmap_table(roadmap.results(c), folder=tmp_path, name="table")
    _png(tmp_path / "table.png")
    plots.roadmap_chart(roadmap.results(c), folder=tmp_path, name="chart")
    _png(tmp_path / "chart.png")
    assert fig is not None


# ------------------------------------------------------------------------------------------------------------------
# The explorers


def test_failure_explorer_pages_through_a_class_or_a_pair(predictions):
    box = widgets.failure_explorer(predictions, per_page=2)
    (choice, page, of, looked), image = box.children[0].children, box.children[1]
    assert looked.disabled  # "where it looked" needs the run (tests/test_cam.py)
    assert image.value[:8] == b"\x89PNG\r\n\x1a\n"
    labels = [label for label, _ in choice.options]
    assert labels[0] == "all failures (5)" and "pair: Apple pie → Baby back ribs (2)" in labels
    assert page.max == 3 and of.value == "of 3"
    first = image.value
    page.value = 2
    assert image.value != first
    choice.value = (C, None)
    assert page.max == 1 and page.value == 1


def test_augmentation_explorer_draws_each_choice(predictions):
    photos = [(str(p), p.parent.name) for p in sorted(TINY.glob("images/*/*.jpg"))[:2]]
    box = widgets.augmentation_explorer(photos, size=64)
    view, image = box.children[0].children[1], box.children[1]
    first = image.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    view.value = ("steps", "advanced")
    assert image.value != first
    with pytest.raises(UserError):
        widgets.augmentation_explorer([])


def test_lr_schedule_from_a_checkpoint_saved_mid_epoch(tmp_path):
    """last.pt after 2 whole epochs of 10 steps and 5 steps into the third: 10 steps per epoch, 3 epochs drawn."""
    import torch

    from helpers.base.config import TrainConfig
    from helpers.training.run_folder import config_dict

    cfg = TrainConfig(epochs=4, warmup_epochs=1, lr=1e-2)
    torch.save({"config": config_dict(cfg), "epoch": 2, "step": 5, "num_updates": 25}, tmp_path / "last.pt")
    x, lr = recipe.lr_schedule(tmp_path)
    assert len(x) == 31 and x[-1] == 3.0 and x[10] == 1.0
    assert int(np.argmax(lr)) == 9  # the warmup rises for exactly one epoch, steps 0-9


def test_averaged_shows_each_members_probabilities_and_their_mean(predictions):
    table = analysis.averaged({"view 1": predictions, "view 2": predictions}, predictions, photo=2, top=2)
    assert list(table.index) == ["view 1", "view 2", "mean"] and table.columns.name == f"true class: {A}"
    assert list(table.columns) == [B, A] and table.loc["mean", B] == pytest.approx(90.0)  # row 3: A -> B at 0.9
    assert (table.loc["view 1"] == table.loc["mean"]).all()


def test_stage_one_freezes_the_backbone_and_stage_two_splits_the_learning_rates():
    import torch

    from helpers.base.config import TrainConfig

    cfg = TrainConfig(backbone="tf_efficientnet_lite0", pretrained="none", freeze_backbone=True, lr=1e-2)
    model, _ = engine.build_model(cfg, [f"class {i}" for i in range(10)], None, torch.device("cpu"))
    params = analysis.parameter_table(model)
    assert params.loc["backbone", "trainable"] == 0 and params.loc["head", "trainable"] == 1280 * 10 + 10
    stage2 = TrainConfig(backbone="tf_efficientnet_lite0", pretrained="none", lr=1e-3, backbone_lr_ratio=0.1)
    model, _ = engine.build_model(stage2, [f"class {i}" for i in range(10)], None, torch.device("cpu"))
    groups = analysis.optimizer_groups(recipe.make_optimizer(model, stage2, torch.device("cpu")))
    assert groups.loc["head", "lr"] == pytest.approx(1e-3) and groups.loc["backbone", "lr"] == pytest.approx(1e-4)
    assert groups["parameters"].sum() == sum(p.numel() for p in model.parameters())
