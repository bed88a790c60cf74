"""`check-data` on a really damaged copy of the tiny set: every kind of problem is found, nothing else is."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from helpers.commands.cli import main
from helpers.data.check_data import check_dataset

from .conftest import TINY, run_cli


def _damage(root):
    """Break a copy of the tiny set in every way check-data knows; returns what it must report."""
    meta = root / "meta"
    train = meta.joinpath("train.txt").read_text().split()
    test = meta.joinpath("test.txt").read_text().split()
    img = lambda image_id: root / "images" / f"{image_id}.jpg"  # noqa: E731
    img(train[0]).unlink()  # listed, but gone
    data = img(train[1]).read_bytes()
    img(train[1]).write_bytes(data[: len(data) // 2])  # truncated JPEG
    img(train[2]).write_bytes(b"")  # zero bytes
    img(test[0]).write_text("<html>not a photo</html>\n")  # text with an image name
    shutil.copy(img(train[10]), img(test[5]))  # a training photo also in the test set
    meta.joinpath("classes.txt").write_text(meta.joinpath("classes.txt").read_text() + "ghost_soup\n")  # no images
    with open(meta / "test.txt", "a") as f:
        f.write("unknown_dish/123\n")  # a class that classes.txt does not have
    # convertible, not problems: CMYK, grayscale, EXIF-rotated, alpha (a PNG under a .jpg name)
    photo = Image.open(img(train[20])).convert("RGB")
    photo.convert("CMYK").save(img(train[21]))
    photo.convert("L").save(img(train[22]))
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(img(train[23]), exif=exif.tobytes())
    photo.convert("RGBA").save(img(train[24]), format="PNG")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(root / "images" / "apple_pie" / "stray.jpg")  # unlisted
    return {
        "missing": [str(img(train[0]))],
        "unreadable": {str(img(i)) for i in (train[1], train[2], test[0])},
        "leak": [str(img(train[10])), str(img(test[5]))],
    }


def test_check_data_finds_every_problem(tiny_copy):
    expected = _damage(tiny_copy)
    report = check_dataset("food-101", tiny_copy, workers=0)
    assert report["missing"] == expected["missing"]
    assert {u["path"] for u in report["unreadable"]} == expected["unreadable"]
    reasons = " ".join(u["error"] for u in report["unreadable"])
    assert "empty file" in reasons and "truncated" in reasons and "cannot identify" in reasons
    assert report["empty_classes"] == [{"class": "ghost_soup", "train": 0, "test": 0}]
    assert report["train_test_duplicates"] == [expected["leak"]]
    assert report["unknown_class_lines"] == ["meta/test.txt line 151: unknown_dish/123"]
    assert report["problems"] == 1 + 3 + 1 + 1 + 1 and not report["ok"]
    notes = report["notes"]
    assert (notes["cmyk"], notes["grayscale"], notes["exif_rotated"], notes["alpha"]) == (1, 1, 1, 1)
    assert notes["unlisted_files"] == 1 and notes["unlisted_examples"][0].endswith("stray.jpg")


def test_check_data_cli_json_strict_and_clean_set(tiny_copy, capsys):
    res = run_cli("check-data", "--dataset", "food-101", "--data-dir", str(TINY), "--workers", "2")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["ok"] and report["checked"] == 550 and report["problems"] == 0  # the shipped set is clean

    _damage(tiny_copy)
    assert main(["check-data", "--data-dir", str(tiny_copy), "--workers", "0"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["problems"] == 7
    assert main(["check-data", "--data-dir", str(tiny_copy), "--workers", "0", "--strict"]) == 2
    err = capsys.readouterr().err
    assert "7 problem(s)" in err and "1 missing, 1 unknown class lines, 3 unreadable" in err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["check-data", "--data-dir", "/nonexistent"], "does not exist"),
        (["check-data", "--data-dir", str(TINY / "images")], "meta/classes.txt is missing"),
        (["check-data", "--data-dir", str(TINY), "--workers", "-3"], "--workers must be"),
    ],
)
def test_check_data_bad_input(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_check_data_imagefolder(tmp_path):
    for split, n in (("train", 3), ("test", 1)):
        for cls in ("a", "b"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                source = sorted((TINY / "images" / "apple_pie").iterdir())[
                    i + (3 if split == "test" else 0) + (5 if cls == "b" else 0)
                ]
                shutil.copy(source, folder / f"{i}.jpg")
    (tmp_path / "train" / "b" / "0.jpg").write_bytes(b"\xff\xd8\xff")  # a JPEG header and nothing else
    report = check_dataset("imagefolder", tmp_path, workers=0)
    assert [u["path"] for u in report["unreadable"]] == [str(tmp_path / "train" / "b" / "0.jpg")]
    assert report["problems"] == 1 and report["empty_classes"] == []
