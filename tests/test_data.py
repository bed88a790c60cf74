"""The data layer on the real tiny set: parsing, splits, imagefolder, image reading."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.base.errors import UserError
from helpers.data import augment
from helpers.data.check_data import check_dataset
from helpers.data.images import read_image
from helpers.data.loaders import EpochSampler, ImageDataset
from helpers.data.splits import load_splits, stratified_split

from .conftest import TINY


def test_food101_layout_is_read_with_official_split():
    s = load_splits("food-101", TINY)
    assert s.class_names[0] == "apple_pie" and len(s.class_names) == 10
    assert len(s.train) + len(s.val) == 400 and len(s.test) == 150
    assert all(Path(p).is_file() for p, _ in s.train + s.val + s.test)


def test_val_split_is_stratified_seeded_and_disjoint():
    a = load_splits("food-101", TINY, val_fraction=0.1, seed=1)
    b = load_splits("food-101", TINY, val_fraction=0.1, seed=1)
    c = load_splits("food-101", TINY, val_fraction=0.1, seed=2)
    train, val, test = ({p for p, _ in x} for x in (a.train, a.val, a.test))
    assert not train & val and not train & test and not val & test
    assert Counter(label for _, label in a.val) == {i: 4 for i in range(10)}  # 10% of 40 per class
    assert a.val == b.val and a.val != c.val
    assert len(load_splits("food-101", TINY, val_fraction=0.25).val) == 100


def test_stratified_split_keeps_one_of_every_class():
    samples = [(f"{i}", i % 3) for i in range(9)] + [("lonely", 3)]
    kept, held = stratified_split(samples, 0.5, seed=0)
    assert ("lonely", 3) in kept  # a class with one image stays in train
    assert Counter(label for _, label in held) == {0: 2, 1: 2, 2: 2}


def _imagefolder(root: Path, with_split: bool) -> Path:
    s = load_splits("food-101", TINY)
    for split, samples in (("train", s.train + s.val), ("test", s.test)):
        for path, label in samples:
            folder = root / (split if with_split else "") / s.class_names[label]
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, folder / Path(path).name)
    return root


def test_imagefolder_with_and_without_train_test(tmp_path):
    with_split = load_splits("imagefolder", _imagefolder(tmp_path / "a", True))
    assert len(with_split.test) == 150 and len(with_split.train) + len(with_split.val) == 400
    flat = load_splits("imagefolder", _imagefolder(tmp_path / "b", False), test_fraction=0.2, seed=3)
    assert len(flat.test) == 110 and Counter(label for _, label in flat.test) == {i: 11 for i in range(10)}
    assert not {p for p, _ in flat.test} & {p for p, _ in flat.train + flat.val}


@pytest.mark.parametrize("layout", ["missing", "no_meta", "no_train_list"])
def test_bad_dataset_folders_raise_user_errors(tmp_path, tiny_copy, layout):
    if layout == "missing":
        target, needle = tmp_path / "nowhere", "does not exist"
    elif layout == "no_meta":
        shutil.rmtree(tiny_copy / "meta")
        target, needle = tiny_copy, "meta/classes.txt is missing"
    else:
        (tiny_copy / "meta" / "train.txt").unlink()
        target, needle = tiny_copy, "train.txt is missing"
    with pytest.raises(UserError, match=needle):
        load_splits("food-101", target)


def test_read_image_handles_formats(tmp_path):
    src = TINY / "images/apple_pie/1005649.jpg"
    rgb = read_image(str(src))
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    pil = np.asarray(Image.open(src).convert("RGB"))
    assert rgb.shape == pil.shape and np.abs(rgb.astype(int) - pil).mean() < 2.0  # OpenCV vs PIL decoders
    gray = tmp_path / "gray.jpg"
    Image.open(src).convert("L").save(gray)
    assert read_image(str(gray)).shape == rgb.shape
    rgba = tmp_path / "alpha.png"
    Image.open(src).convert("RGBA").save(rgba)
    assert read_image(str(rgba)).shape == rgb.shape


def test_sampler_shards_cover_the_global_batches():
    single = [i for i, _ in EpochSampler(10, shuffle=True, seed=0)]
    ranks = [[i for i, _ in EpochSampler(10, shuffle=True, seed=0, rank=r, world_size=2)] for r in range(2)]
    assert sorted(single) == list(range(10))
    for step in range(2):  # global batch of 4 = 2 per rank
        assert sorted(ranks[0][step * 2:step * 2 + 2] + ranks[1][step * 2:step * 2 + 2]) == sorted(single[step * 4:step * 4 + 4])
    resumed = EpochSampler(10, shuffle=True, seed=0)
    resumed.set_epoch(0, start=4)
    assert [i for i, _ in resumed] == single[4:]


def test_augmentation_depends_only_on_the_sample_seed():
    s = load_splits("food-101", TINY)
    tf = augment.train_transform("advanced", 96, (0.5,) * 3, (0.5,) * 3)
    ds = ImageDataset(s.train[:3], tf)
    a, b, c = ds[(1, 123)][0], ds[(1, 123)][0], ds[(1, 124)][0]
    assert a.shape == (3, 96, 96) and (a == b).all() and not (a == c).all()


def test_truncate_rows_keeps_earlier_epochs_and_restarts_an_emptied_log(tmp_path):
    from helpers.training.metrics import append_row, truncate_rows

    log = tmp_path / "metrics.csv"
    for epoch in (1, 2, 3):
        append_row(log, {"epoch": epoch, "val_top1": 10.0 * epoch})
    truncate_rows(log, 2)
    assert log.read_text().splitlines() == ["epoch,val_top1", "1,10.0", "2,20.0"]
    assert not list(tmp_path.glob("*.tmp"))
    truncate_rows(log, 0)
    append_row(log, {"epoch": 1, "val_top1": 5.0})
    assert log.read_text().splitlines() == ["epoch,val_top1", "1,5.0"]


# ----------------------------------------------------------------------------------------------------------------
# Datasets as users have them: train and check-data read the lists with one parser


def _rewrite_lists(root: Path, edit) -> None:
    for name in ("classes.txt", "train.txt", "test.txt"):
        path = root / "meta" / name
        path.write_bytes(edit(name, path.read_text().split()))


def test_lists_as_editors_leave_them_give_the_same_splits(tiny_copy):
    reference = load_splits("food-101", TINY)

    def windows(name, lines):  # a BOM, CRLF, blank lines, trailing spaces, a .jpg suffix, Windows separators
        rows = [f"{x}.jpg" if i % 3 == 0 and name != "classes.txt" else x for i, x in enumerate(lines)]
        rows = [x.replace("/", "\\") if i % 5 == 1 else x for i, x in enumerate(rows)]
        return b"\xef\xbb\xbf" + "\r\n".join(f"{x}  " for x in rows[:5] + [""] + rows[5:] + ["", "   "]).encode()

    _rewrite_lists(tiny_copy, windows)
    got = load_splits("food-101", tiny_copy)
    strip = lambda samples: [(Path(p).relative_to(p.rsplit("/images/", 1)[0]).as_posix(), y) for p, y in samples]  # noqa: E731
    assert got.class_names == reference.class_names
    for split in ("train", "val", "test"):
        assert strip(got.get(split)) == strip(reference.get(split))
    report = check_dataset("food-101", tiny_copy, workers=0)
    assert report["ok"] and report["checked"] == 550 and report["notes"]["unlisted_files"] == 0


def test_duplicate_lines_are_used_once_and_named(tiny_copy, caplog):
    train = (tiny_copy / "meta" / "train.txt").read_text().split()
    (tiny_copy / "meta" / "train.txt").write_text("\n".join(train + train[:3]) + "\n")
    caplog.set_level("WARNING")
    splits = load_splits("food-101", tiny_copy)
    assert len(splits.train) + len(splits.val) == len(train)
    assert "3 duplicate line(s)" in caplog.text and f"{train[0]} (also line 1)" in caplog.text
    report = check_dataset("food-101", tiny_copy, workers=0)
    assert report["notes"]["duplicate_lines"] == 3 and report["ok"]


@pytest.mark.parametrize("fault, needle, problem", [
    ("overlap", "listed in both meta/train.txt and meta/test.txt", "list_overlaps"),
    ("class_without_train", "have no line in meta/train.txt (apple_pie)", "empty_classes"),
    ("unknown_class", "naming a class that is not in meta/classes.txt", "unknown_class_lines"),
])
def test_list_faults_stop_training_and_are_problems_for_check_data(tiny_copy, fault, needle, problem):
    meta = tiny_copy / "meta"
    train, test = meta.joinpath("train.txt").read_text().split(), meta.joinpath("test.txt").read_text().split()
    if fault == "overlap":
        meta.joinpath("test.txt").write_text("\n".join(test + train[:2]) + "\n")
    elif fault == "class_without_train":
        meta.joinpath("train.txt").write_text("\n".join(x for x in train if not x.startswith("apple_pie/")) + "\n")
    else:
        meta.joinpath("train.txt").write_text("\n".join(train + ["ghost/1"]) + "\n")
    with pytest.raises(UserError, match=re.escape(needle)):
        load_splits("food-101", tiny_copy)
    report = check_dataset("food-101", tiny_copy, workers=0)
    assert report[problem] and not report["ok"]


def test_one_class_and_empty_datasets_are_named(tmp_path):
    one = _imagefolder(tmp_path / "one", False)
    for folder in sorted(one.iterdir())[1:]:
        shutil.rmtree(folder)
    with pytest.raises(UserError, match="has 1 class .*a classifier needs at least two"):
        load_splits("imagefolder", one)
    lines = tmp_path / "food" / "meta"
    lines.mkdir(parents=True)
    for name in ("classes.txt", "train.txt", "test.txt"):
        (lines / name).write_text("apple_pie\n" if name == "classes.txt" else "apple_pie/1\n")
    with pytest.raises(UserError, match="listed in both"):
        load_splits("food-101", tmp_path / "food")


def test_junk_from_archives_and_operating_systems_is_never_a_class(tmp_path, caplog):
    root = _imagefolder(tmp_path / "photos", False)
    reference = load_splits("imagefolder", root)
    photo = next((root / "apple_pie").iterdir())
    for junk in ("__MACOSX/apple_pie", ".ipynb_checkpoints", ".hidden_class", "apple_pie/.ipynb_checkpoints",
                 "apple_pie/__MACOSX", "notes"):
        (root / junk).mkdir(parents=True, exist_ok=True)
    shutil.copy(photo, root / "__MACOSX" / "apple_pie" / "._0.jpg")  # AppleDouble copies of a zip made on a Mac
    shutil.copy(photo, root / "apple_pie" / "._x.jpg")
    shutil.copy(photo, root / "apple_pie" / ".ipynb_checkpoints" / "x-checkpoint.jpg")
    shutil.copy(photo, root / ".hidden_class" / "x.jpg")
    for name in (".DS_Store", "Thumbs.db", "apple_pie/.DS_Store", "apple_pie/Thumbs.db", "notes/readme.txt"):
        (root / name).write_bytes(b"\0\1junk")
    caplog.set_level("WARNING")
    got = load_splits("imagefolder", root)
    assert got.class_names == reference.class_names
    assert got.train == reference.train and got.test == reference.test
    assert "notes has no images" in caplog.text  # an image-less folder is named, not made a class
    assert check_dataset("imagefolder", root, workers=0)["ok"]
