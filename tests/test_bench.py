"""The bench command and the two input pipelines it compares, on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.base.errors import UserError
from helpers.commands.bench import BaselineDataset, baseline_transform, format_table, run_bench
from helpers.commands.cli import main
from helpers.data import augment
from helpers.data.images import jpeg_size, read_image
from helpers.data.loaders import ImageDataset
from helpers.data.splits import load_splits

from .conftest import ROOT, TINY

MINI = ROOT.parent / "shared" / "data" / "food-101-mini"
PHOTOS = [TINY] + ([MINI] if MINI.is_dir() else [])  # mini: original 512 px Food-101 photos
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.parametrize("root", PHOTOS, ids=lambda p: p.name)
def test_opencv_decodes_the_same_pixels_as_pil(root):
    for path in sorted((root / "images").rglob("*.jpg"))[::50]:
        ours = read_image(str(path)).astype(int)
        pil = np.asarray(Image.open(path).convert("RGB")).astype(int)
        assert ours.shape == pil.shape
        diff = np.abs(ours - pil)
        assert diff.mean() < 0.25 and np.percentile(diff, 99.9) <= 1  # same libjpeg maths, within rounding


def test_reduced_size_decoding_matches_pil_draft():
    checked = 0
    for path in sorted((PHOTOS[-1] / "images").rglob("*.jpg"))[::30]:
        with Image.open(path) as im:
            w, h = im.size
            im.draft("RGB", (w // 2, h // 2))  # PIL's own reduced-size JPEG decoding (libjpeg DCT scaling)
            pil = np.asarray(im.convert("RGB")).astype(int)
        ours = read_image(str(path), min_side=min(w, h) // 2).astype(int)
        if ours.shape != pil.shape:  # read_image chose another scale for this file
            continue
        assert pil.shape[:2] == ((h + 1) // 2, (w + 1) // 2)
        assert np.abs(ours - pil).mean() < 0.25
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize("root", PHOTOS, ids=lambda p: p.name)
def test_jpeg_size_reads_the_header_of_every_photo(root):
    for path in sorted((root / "images").rglob("*.jpg")):
        with Image.open(path) as im:
            w, h = im.size
        assert jpeg_size(np.fromfile(path, dtype=np.uint8)) == (h, w), path


def test_jpeg_size_finds_the_frame_after_long_metadata(tmp_path):
    photo = next((TINY / "images").rglob("*.jpg")).read_bytes()
    app = b"\xff\xe2" + (65535).to_bytes(2, "big") + bytes(65533)  # a full-length APP2 block, twice
    padded = photo[:2] + app + app + photo[2:]
    path = tmp_path / "padded.jpg"
    path.write_bytes(padded)
    with Image.open(path) as im:
        w, h = im.size
    assert jpeg_size(padded) == (h, w)
    assert read_image(str(path), min_side=min(w, h) // 2).shape[:2] == ((h + 1) // 2, (w + 1) // 2)
    assert jpeg_size(b"\xff\xd8" + bytes(100)) is None and jpeg_size(b"GIF89a") is None


def test_both_pipelines_give_the_same_kind_of_tensor():
    samples = load_splits("food-101", TINY).train[:4]
    ours = ImageDataset(samples, augment.train_transform("basic", 96, MEAN, STD))
    base = BaselineDataset(samples, baseline_transform("basic", 96, MEAN, STD))
    for i in range(len(samples)):
        a, b = ours[(i, 7)], base[(i, 7)]
        assert a[0].shape == b[0].shape == (3, 96, 96) and a[0].dtype == b[0].dtype == torch.float32
        assert a[1:3] == b[1:3] == (samples[i][1], i)
        assert -3 < float(a[0].mean()) < 3 and -3 < float(b[0].mean()) < 3  # both normalised
    assert torch.equal(base[(0, 7)][0], base[(0, 7)][0])  # seeded per item, like the package's dataset
    with pytest.raises(UserError, match="no equivalent"):
        baseline_transform("advanced", 96, MEAN, STD)


def test_bench_measures_every_section(tiny_copy):
    result = run_bench(backbone="test_efficientnet", image_size=64, batch_size=8, device="cpu", data_dir=str(TINY),
                       extra_data_dirs=[str(tiny_copy)], workers=[0], trainer_workers=0, steps=2, warmup=1, images=16,
                       baseline=True, device_decode=True)
    assert result["ceiling"]["images_per_s"] > 0 and result["ceiling"]["peak_mb"] > 0
    rows = result["input"]
    assert [r["pipeline"].split(":")[0] for r in rows] == ["package", "baseline", "package", "baseline",
                                                           "device decode (torchvision.io) + crop/flip on cpu"]
    assert all(r["images_per_s"] > 0 for r in rows) and rows[1]["vs_baseline"] == 1.0
    trainer = result["trainer"]
    assert trainer["images_per_s"] > 0 and trainer["vs_ceiling"] == pytest.approx(
        trainer["images_per_s"] / result["ceiling"]["images_per_s"])
    table = format_table(result)
    assert table.count("| 2. input |") == 5 and "| 1. ceiling |" in table and "of ceiling" in table


def test_bench_cli_rejects_bad_settings(capsys):
    assert main(["bench", "--batch-size", "0", "--sections", "ceiling"]) == 2
    assert "--batch-size must be a positive integer or auto" in capsys.readouterr().err
    assert main(["bench", "--workers", "-1", "--sections", "input"]) == 2


@pytest.mark.parametrize("preset", ["light", "advanced"])
def test_uint8_batches_normalised_on_the_device_equal_the_float_pipeline(preset):
    """The trainer's loaders send uint8 batches; DeviceNormalize must give the model exactly the float pipeline's
    numbers (a quarter of the bytes through the loader, nothing else changes)."""
    samples = load_splits("food-101", TINY).train[:6]
    for mean, std in ((MEAN, STD), ((0.5,) * 3, (0.5,) * 3)):
        floats = ImageDataset(samples, augment.train_transform(preset, 96, mean, std))
        uint8 = ImageDataset(samples, augment.train_transform(preset, 96, mean, std, uint8=True))
        normalize = augment.DeviceNormalize(mean, std)
        batch = torch.stack([uint8[(i, 100 + i)][0] for i in range(6)])
        assert batch.dtype == torch.uint8 and batch.shape == (6, 3, 96, 96)
        expected = torch.stack([floats[(i, 100 + i)][0] for i in range(6)])
        assert torch.equal(normalize(batch), expected)
        assert normalize(expected) is expected  # float batches pass through
