"""`python -m helpers predict`: predictions of photos agree with `evaluate`, bad files are named and skipped, phone
formats read upright, ensembles average their members (the export's tests are in test_export.py)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import helpers
from helpers.data.images import read_image
from helpers.data.splits import load_splits
from helpers.use.features import extract_features
from helpers.use.probe import train_probe

from .conftest import TINY, run_cli

CLASSES = ("apple_pie", "baklava", "bibimbap")  # the test photos of three classes of the tiny set (45 photos)
MY_PHOTOS = Path(__file__).resolve().parents[1] / "data" / "my-photos"


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time (to show that nothing changed)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """Test photos in class folders, with a truncated JPEG, a text file and the junk an OS leaves."""
    root = tmp_path_factory.mktemp("photos") / "labelled"
    splits = load_splits("food-101", TINY)
    for path, label in splits.test:
        name = splits.class_names[label]
        if name in CLASSES:
            (root / name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, root / name / Path(path).name)
    whole = next((root / "apple_pie").iterdir()).read_bytes()
    (root / "apple_pie" / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    (root / "notes.txt").write_text("lunch photos from the trip\n")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "._x.jpg").write_bytes(b"\0")
    return root


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory) -> Path:
    """A linear probe on lite0 features at 64 px (offline ImageNet weights) of the tiny set."""
    root = tmp_path_factory.mktemp("probe")
    extract_features(dataset="food-101", data_dir=str(TINY), backbone="tf_efficientnet_lite0", pretrained="offline",
                     image_size=64, output_dir=root / "features", num_workers=0, device="cpu")
    train_probe([root / "features"], root / "run", device="cpu")
    return root / "run"


def test_predict_agrees_with_evaluate_and_names_unreadable_files(trained_run, photo_folder, tmp_path):
    before = _tree(photo_folder)
    evaluated = tmp_path / "evaluate.csv"
    helpers.evaluate(str(trained_run), dataset="food-101", data_dir=str(TINY), predictions=str(evaluated),
                     num_workers=0, device="cpu")
    expected = {Path(r["path"]).parts[-2:]: r for r in csv.DictReader(evaluated.open())}
    done = run_cli("predict", "--model", str(trained_run), str(photo_folder), "--top-k", "3", "--num-workers", "0",
                   "--device", "cpu")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    errors = {Path(r["path"]).name: r["error"] for r in lines if "error" in r}
    assert set(errors) == {"truncated.jpg", "notes.txt"}, errors  # OS junk is skipped, not an error
    assert "truncated" in errors["truncated.jpg"] and "cannot identify image file" in errors["notes.txt"]
    assert "truncated.jpg" in done.stderr and "notes.txt" in done.stderr
    predicted = [r for r in lines if "predictions" in r]
    assert len(predicted) == 45
    for r in predicted:  # top-1 and its probability are evaluate's, photo by photo
        row = expected[Path(r["path"]).parts[-2:]]
        top = r["predictions"][0]
        assert len(r["predictions"]) == 3 and top["class"] == row["pred"], r
        assert top["probability"] == pytest.approx(float(row["confidence"]), abs=2e-5)
        assert top["label"] == top["class"].replace("_", " ").capitalize()
    assert _tree(photo_folder) == before  # nothing written next to the photos


def test_predict_writes_only_its_output_and_exits_2_when_nothing_is_readable(trained_run, photo_folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    pattern = str(photo_folder / "bibimbap" / "*.jpg")
    done = run_cli("predict", "--model", str(trained_run), pattern, str(photo_folder / "notes.txt"), "--output",
                   str(out / "p.csv"), "--num-workers", "0", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["p.csv"]  # no temporary file left
    rows = list(csv.DictReader((out / "p.csv").open()))
    assert len(rows) == 16 and [r["path"] for r in rows if r["error"]] == [str(photo_folder / "notes.txt")]
    assert all(r["class_1"] and float(r["probability_1"]) >= float(r["probability_5"]) for r in rows if not r["error"])
    table = helpers.predict(str(trained_run), pattern, num_workers=0, device="cpu", output=out / "p.jsonl")
    assert [json.loads(line)["predictions"][0]["class"] for line in (out / "p.jsonl").open()] == list(table["class"])
    bad = run_cli("predict", "--model", str(trained_run), str(photo_folder / "notes.txt"),
                  str(photo_folder / "apple_pie" / "truncated.jpg"), "--device", "cpu")
    assert bad.returncode == 2 and "None of the 2 photo(s)" in bad.stderr, bad.stderr
    assert [json.loads(line)["error"] for line in bad.stdout.splitlines()][0].startswith("not a readable photo")
    missing = run_cli("predict", "--model", str(tmp_path / "no-run"), str(photo_folder))
    assert missing.returncode == 2 and "is not a run folder" in missing.stderr


def test_phone_formats_read_upright_and_predict_like_the_jpeg(trained_run, tmp_path):
    """A PNG and a lossless WebP of a real photo predict exactly as the photo; a JPEG stored turned with an EXIF
    orientation tag reads upright; the shipped HEIC reads (pillow-heif)."""
    source = load_splits("food-101", TINY).test[0][0]
    pixels = read_image(source)
    h, w = pixels.shape[:2]
    image = Image.fromarray(pixels[:, : w * 3 // 4])  # not square: a wrong orientation shows in the shape
    image.save(tmp_path / "photo.png")
    image.save(tmp_path / "photo.webp", lossless=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned left: display turned right
    image.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "turned.jpg", quality=95, exif=exif)
    upright = read_image(str(tmp_path / "turned.jpg"))
    assert upright.shape == (h, w * 3 // 4, 3)
    assert np.abs(upright.astype(int) - np.asarray(image).astype(int)).mean() < 4  # JPEG noise only
    assert read_image(str(MY_PHOTOS / "apple_pie_rotated_exif.jpg")).shape[:2] == (240, 320)
    assert read_image(str(MY_PHOTOS / "beignets.heic")).shape == (320, 191, 3)
    table = helpers.predict(str(trained_run), [tmp_path / "photo.png", tmp_path / "photo.webp", tmp_path / "turned.jpg",
                                               MY_PHOTOS], top_k=10, num_workers=0, device="cpu")
    assert table["error"].isna().all() and len(table) == 3 + 6
    png, webp, turned = ({p["class"]: p["probability"] for p in row} for row in table["predictions"][:3])
    assert png == pytest.approx(webp, abs=1e-5)
    assert max(turned, key=turned.get) == max(png, key=png.get)


def test_ensemble_predictions_average_members_matched_by_class_name(trained_run, probe_run, photo_folder):
    photos = sorted(str(p) for p in (photo_folder / "baklava").iterdir())
    one = helpers.predict(str(trained_run), photos, top_k=10, num_workers=0, device="cpu")
    other = helpers.predict(str(probe_run), photos, top_k=10, num_workers=0, device="cpu")
    both = helpers.predict([str(trained_run), str(probe_run)], photos, top_k=10, num_workers=0, device="cpu")
    for a, b, mean in zip(one["predictions"], other["predictions"], both["predictions"]):
        pa, pb = ({p["class"]: p["probability"] for p in x} for x in (a, b))
        for p in mean:
            assert p["probability"] == pytest.approx((pa[p["class"]] + pb[p["class"]]) / 2, abs=2e-6)


def test_a_cached_result_is_reused_only_for_the_same_weights_and_split_files(trained_run, tmp_path, monkeypatch):
    """A course evaluates the same run in several notebooks: with a cache folder the second evaluation (and an
    ensemble with it as a member) reuses the first one's softmax without loading the model, writing the same
    predictions; a replaced best.pt, a changed split file or a damaged entry is evaluated again."""
    from helpers.use import inference

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    data = tmp_path / "tiny"
    shutil.copytree(TINY / "meta", data / "meta")
    (data / "images").symlink_to(TINY / "images")
    cache, loads = tmp_path / "cache", []
    load = inference.load_trained
    monkeypatch.setattr(inference, "load_trained", lambda *a, **k: loads.append(a[0]) or load(*a, **k))
    args = dict(dataset="food-101", data_dir=str(data), device="cpu", num_workers=0, cache=cache)
    first = helpers.evaluate(str(run), predictions=str(tmp_path / "a.csv"), **args)
    again = helpers.evaluate(str(run), predictions=str(tmp_path / "b.csv"), **args)
    both = helpers.ensemble([str(run), str(run)], **args)
    assert len(loads) == 1 and first == again and both["top1"] == first["top1"] and first["n"] > 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    helpers.evaluate(str(run), tta=2, **args)  # another setting: computed
    assert len(loads) == 2
    shutil.copy2(run / "best.pt", run / "best.tmp")
    (run / "best.tmp").replace(run / "best.pt")  # the same bytes, a new file: as a retrained run replaces it
    helpers.evaluate(str(run), **args)
    assert len(loads) == 3
    test = data / "meta" / "test.txt"
    test.write_text("\n".join(test.read_text().split()[:-1]) + "\n")  # one test photo fewer
    assert helpers.evaluate(str(run), **args)["n"] == first["n"] - 1 and len(loads) == 4
    for entry in cache.glob("*.pt"):
        entry.write_bytes(b"\0" * 100)  # a damaged entry (a disk that failed mid-write): computed again, no error
    assert helpers.evaluate(str(run), **args)["n"] == first["n"] - 1 and len(loads) == 5


def test_evaluating_a_run_on_its_test_split_reads_the_predictions_of_its_final_test(trained_run, tmp_path, monkeypatch,
                                                                                     caplog):
    """Training ends with a test pass and keeps its softmax (test_predictions.pt): evaluating the same weights on
    the same test photos in the same way reads it, without loading the model, and equals predicting again; any
    difference (views, size, split, photos, a replaced best.pt, a damaged file) predicts again."""
    import logging
    import os

    import torch

    from helpers.training.metrics import metrics_from_probs
    from helpers.use import inference
    from helpers.use.runs import load_trained

    run = tmp_path / "run"  # the run's files hard-linked: the same weights file, as a course's copies have it
    shutil.copytree(trained_run, run, copy_function=os.link)
    assert (run / "test_predictions.pt").is_file()
    loads = []
    load = inference.load_trained
    monkeypatch.setattr(inference, "load_trained", lambda *a, **k: loads.append(a[0]) or load(*a, **k))
    args = dict(dataset="food-101", data_dir=str(TINY), device=torch.device("cpu"), num_workers=0)
    with caplog.at_level(logging.INFO, logger="helpers"):
        kept = inference.member_probs(run, **args)
    assert loads == [] and "the test predictions of its final test are used" in caplog.text
    summary = json.loads((run / "summary.json").read_text())
    assert metrics_from_probs(kept.probs, kept.labels)["top1"] == pytest.approx(summary["test_top1"])
    assert kept.samples == load_splits("food-101", TINY).test
    probs, labels = inference.tta_probs(load_trained(run, device=torch.device("cpu")), kept.samples, tta=1,
                                        batch_size=32, device=torch.device("cpu"), num_workers=0)
    torch.testing.assert_close(kept.probs, probs, rtol=1e-4, atol=1e-5)  # what evaluate would compute
    assert torch.equal(kept.labels, labels)
    assert helpers.evaluate(str(run), dataset="food-101", data_dir=str(TINY), device="cpu", num_workers=0)["top1"] \
        == pytest.approx(summary["test_top1"]) and loads == []

    for n, changed in enumerate((dict(tta=2), dict(image_size=64), dict(split="val")), start=1):
        inference.member_probs(run, **{**args, **changed})
        assert len(loads) == n, changed
    data = tmp_path / "tiny"  # the same photos under another folder are other files: predicted again
    shutil.copytree(TINY / "meta", data / "meta")
    (data / "images").symlink_to(TINY / "images")
    inference.member_probs(run, **{**args, "data_dir": str(data)})
    assert len(loads) == 4
    shutil.copy2(run / "best.pt", run / "best.tmp")
    (run / "best.tmp").replace(run / "best.pt")  # the same bytes, a new file: as a resumed run replaces it
    inference.member_probs(run, **args)
    assert len(loads) == 5
    shutil.copytree(trained_run, tmp_path / "again", copy_function=os.link)
    (tmp_path / "again" / "test_predictions.pt").unlink()
    (tmp_path / "again" / "test_predictions.pt").write_bytes(b"\0" * 100)  # damaged: predicted again, no error
    again = inference.member_probs(tmp_path / "again", **args)
    assert len(loads) == 6 and torch.equal(again.labels, kept.labels)


def test_the_kept_test_predictions_score_each_photo_against_its_own_label(tmp_path):
    """For an unreadable test photo the loader hands on the next readable one with that photo's label; evaluate
    scores the prediction against the unreadable photo's own label, so the kept file carries the split's labels."""
    import dataclasses

    import torch

    from helpers.data.splits import Splits
    from helpers.training import test_predictions

    (tmp_path / "best.pt").write_bytes(b"weights")  # only its file status is recorded here
    samples = [("a.jpg", 0), ("b.jpg", 1), ("c.jpg", 2)]
    cfg = dataclasses.make_dataclass("Cfg", ["val_fraction", "test_fraction", "seed"])(0.1, 0.2, 42)
    recorder = test_predictions.Recorder(tmp_path, cfg, Splits(["x", "y", "z"], [], [], samples),
                                         torch.device("cpu"), None)
    kept = recorder.keep("model", "tf_efficientnet_lite0", 96)
    # b.jpg unreadable: the loader gave c.jpg in its place (label 2), in a shuffled order of indices
    kept.update(logits=torch.tensor([[0.0, 0, 5], [5.0, 0, 0], [0.0, 0, 5]]), labels=torch.tensor([2, 0, 2]),
                index=torch.tensor([2, 0, 1]))
    recorder.write()
    read = test_predictions.read(tmp_path / "best.pt", use_ema=False, image_size=None, device=torch.device("cpu"),
                                 dtype=None)
    assert read["labels"].tolist() == [0, 1, 2] and read["samples"] == samples
    assert read["probs"].argmax(1).tolist() == [0, 2, 2]  # each row sorted back to its photo
    assert test_predictions.read(tmp_path / "best.pt", use_ema=False, image_size=64, device=torch.device("cpu"),
                                 dtype=None) is None  # another size: predicted again
