"""`prepare`: a resized copy of a real dataset keeps the layout and the ids, at the asked size."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from helpers.base.errors import UserError
from helpers.commands.cli import main
from helpers.data.images import read_image
from helpers.data.prepare import MANIFEST, prepare_dataset
from helpers.data.splits import load_splits

from .conftest import TINY

SHORT = 128  # the tiny set's photos are 224 px on the long side, 134-224 on the short one


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("prepared") / "food-101-tiny-128"
    return out, prepare_dataset(TINY, out, short_side=SHORT, workers=1)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_same_layout_and_same_ids(prepared):
    out, summary = prepared
    assert _files(out) == _files(TINY) | {MANIFEST}
    assert (out / "meta" / "train.txt").read_text() == (TINY / "meta" / "train.txt").read_text()
    original, copy = load_splits("food-101", TINY), load_splits("food-101", out)
    assert copy.class_names == original.class_names
    for split in ("train", "val", "test"):
        ids = [(str(Path(p).relative_to(TINY)), label) for p, label in original.get(split)]
        assert [(str(Path(p).relative_to(out)), label) for p, label in copy.get(split)] == ids
    assert summary["images"] == 550 and summary["resized"] + summary["copied"] == 550
    assert json.loads((out / MANIFEST).read_text())["short_side"] == SHORT


def test_sizes_as_asked_and_pixels_kept(prepared):
    out, _ = prepared
    for src in sorted((TINY / "images").rglob("*.jpg"))[::25]:
        dst = out / src.relative_to(TINY)
        w, h = Image.open(src).size
        small_w, small_h = Image.open(dst).size
        if min(w, h) <= SHORT:  # already small enough: the very same bytes
            assert dst.read_bytes() == src.read_bytes()
            continue
        assert min(small_w, small_h) == SHORT
        assert abs(small_w / small_h - w / h) < 0.02  # aspect ratio kept
        expected = cv2.resize(read_image(str(src)), (small_w, small_h), interpolation=cv2.INTER_AREA)
        mse = ((read_image(str(dst)).astype(float) - expected) ** 2).mean()
        assert 10 * np.log10(255**2 / mse) > 30  # PSNR in dB: only the JPEG q90 re-encoding error


def test_exif_orientation_is_applied(tmp_path):
    src = tmp_path / "src" / "images" / "apple_pie"
    src.mkdir(parents=True)
    photo = Image.open(TINY / "images/apple_pie/1005649.jpg").convert("RGB")  # 224 x 224 or landscape
    photo = photo.resize((300, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees: portrait
    photo.save(src / "rotated.jpg", exif=exif.tobytes())
    prepare_dataset(tmp_path / "src", tmp_path / "out", short_side=100, workers=1)
    out = Image.open(tmp_path / "out" / "images" / "apple_pie" / "rotated.jpg")
    assert out.size == (100, 150)  # portrait, as a viewer shows it, and no orientation tag left to apply twice
    assert out.getexif().get(0x0112) in (None, 1)


def test_interrupted_copy_continues_and_settings_are_checked(prepared, tmp_path):
    out, _ = prepared
    again = prepare_dataset(TINY, out, short_side=SHORT, workers=1)
    assert again["already_done"] == 550 and again["resized"] == 0
    with pytest.raises(UserError, match="prepared with --short-side 128"):
        prepare_dataset(TINY, out, short_side=160, workers=1)
    with pytest.raises(UserError, match="overlaps"):
        prepare_dataset(TINY, TINY / "images" / "copy", short_side=SHORT, workers=1)


def test_cli_reports_bad_input_in_one_paragraph(tmp_path, capsys):
    assert main(["prepare", "--data-dir", str(TINY), "--out", str(tmp_path / "x"), "--short-side", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --short-side must be at least 32") and err.count("\n") == 1
    assert main(["prepare", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y"),
                 "--short-side", "64"]) == 2


META = Path(__file__).resolve().parents[2] / "shared" / "data" / "food-101-meta"


@pytest.mark.skipif(not (META / "train.txt").is_file(), reason="the full official lists are in ../shared/data")
def test_the_medium_subset_is_a_fixed_tenth_of_every_class_of_the_official_lists():
    from helpers.data.prepare import official_subset

    chosen = official_subset(META, 75, 25)
    assert (len(chosen["train"]), len(chosen["test"])) == (7575, 2525)  # 101 classes x (75 + 25)
    for split, per_class in (("train", 75), ("test", 25)):
        official = (META / f"{split}.txt").read_text().split()
        classes = {}
        for i in chosen[split]:
            classes.setdefault(i.split("/")[0], []).append(i)
        assert len(classes) == 101 and {len(v) for v in classes.values()} == {per_class}
        assert set(chosen[split]) <= set(official)
        for c, ids in classes.items():  # the first ids of the class in sorted order: the same for everyone
            assert ids == sorted(i for i in official if i.startswith(c + "/"))[:per_class]
    assert chosen["train"][0] == "apple_pie/1005649" and official_subset(META, 75, 25) == chosen
    assert not set(chosen["train"]) & set(chosen["test"])


def test_prepare_per_class_copies_only_the_chosen_photos_with_their_lists(tmp_path):
    out = tmp_path / "medium"
    summary = prepare_dataset(TINY, out, short_side=SHORT, workers=1, per_class=(6, 2))
    splits = load_splits("food-101", out)
    train = (out / "meta" / "train.txt").read_text().split()
    assert len(splits.class_names) == 10 and len(train) == 60 and len(splits.test) == 20
    assert summary["images"] == 80 and len(list((out / "images").rglob("*.jpg"))) == 80
    assert train[:6] == sorted(i for i in (TINY / "meta" / "train.txt").read_text().split()
                               if i.startswith("apple_pie/"))[:6]
    with pytest.raises(UserError, match="per-class"):
        prepare_dataset(TINY, out, short_side=SHORT, workers=1, per_class=(5, 2))  # other settings, same --out
    with pytest.raises(UserError, match="fewer than 500 train ids"):
        prepare_dataset(TINY, tmp_path / "too-many", short_side=SHORT, workers=1, per_class=(500, 2))
