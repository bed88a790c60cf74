"""Odd photos (issue 19): a real 40000 x 40000 PNG (7 MB on disk, 4.8 GB decoded) in the data of `check-data`,
`train` and `features`; a 20000 x 20000 one is refused from its header without decoding; photo formats the
loader skips are named by `check-data`."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

from PIL import Image

from helpers.data.check_data import check_dataset
from helpers.data.splits import load_splits

from .conftest import ROOT, TINY, run_cli
from .test_features import _features_args
from .test_features_checks import _copied_set


def huge_png(path: Path, side: int) -> Path:
    """A real, valid PNG of side x side grey pixels (8-bit grayscale), written without holding it in memory:
    every 500 rows compress to the same deflate block after a full flush, so one block is repeated."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    assert side % 500 == 0
    rows = (b"\x00" + b"\x80" * side) * 500  # filter byte 0, then one row of grey
    comp = zlib.compressobj(1)
    head = comp.compress(rows) + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(rows) + comp.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(side // 500):
        adler = zlib.adler32(rows, adler)
    tail = comp.flush(zlib.Z_FINISH)[:-4] + struct.pack(">I", adler)  # the checksum of all rows, not of two
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)))
        f.write(chunk(b"IDAT", head + block * (side // 500 - 1) + tail) + chunk(b"IEND", b""))
    return path


def test_the_png_writer_makes_real_pngs(tmp_path):
    path = huge_png(tmp_path / "grey.png", 1500)
    with Image.open(path) as im:
        pixels = im.getextrema(), im.size
    assert pixels == ((128, 128), (1500, 1500))


def test_a_40000_px_png_is_skipped_and_named_by_check_data_train_and_features(tmp_path):
    data = _copied_set(tmp_path / "data")
    victim = load_splits("food-101", data).val[0][0]  # read in epoch 1's validation, before any checkpoint
    huge_png(Path(victim), 40000)
    check = run_cli("check-data", "--data-dir", str(data), "--workers", "0")
    assert check.returncode == 0, check.stderr[-2000:]
    report = json.loads(check.stdout.strip().splitlines()[-1])
    assert [u["path"] for u in report["unreadable"]] == [victim]
    assert "40000 x 40000 px" in report["unreadable"][0]["error"] and "limit of 150 Mpx" in report["unreadable"][0]["error"]
    run = tmp_path / "run"
    train = run_cli("train", "--data-dir", str(data), "--backbone", "tf_efficientnet_lite0", "--pretrained", "offline",
                    "--image-size", "64", "--epochs", "1", "--batch-size", "8", "--num-workers", "0", "--device",
                    "cpu", "--output-dir", str(run))
    assert train.returncode == 0, train.stderr[-2000:]
    assert victim in (run / "bad_files.txt").read_text() and "40000 x 40000 px" in train.stderr
    feats = run_cli(*_features_args(data, tmp_path / "feats"))
    assert feats.returncode == 0, feats.stderr[-2000:]
    assert json.loads(feats.stdout.strip().splitlines()[-1])["skipped"] == [str(Path(victim).relative_to(data))]


def test_a_20000_px_png_is_refused_without_decoding(tmp_path):
    path = huge_png(tmp_path / "big.png", 20000)
    code = ("import resource, sys; from helpers.data.images import BadImageError, read_image\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n    read_image(sys.argv[1]); print('decoded')\n"
            "except BadImageError as exc:\n    print(exc)\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    res = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    message, grown_mb = res.stdout.strip().splitlines()
    assert "20000 x 20000 px (400 Mpx) is over the limit" in message, res.stdout + res.stderr
    assert int(grown_mb) < 100  # decoded it would take 1.2 GB (gray) to 3.6 GB (RGB)


def test_check_data_names_photo_formats_the_loader_skips(tmp_path):
    for cls in ("a", "b"):
        folder = tmp_path / cls
        folder.mkdir()
        for i, source in enumerate(sorted((TINY / "images" / "apple_pie").iterdir())[:4]):
            shutil.copy(source, folder / f"{i}.jpg")
    photo = Image.open(tmp_path / "a" / "0.jpg")
    photo.save(tmp_path / "a" / "party.gif")
    photo.save(tmp_path / "b" / "scan.tiff")
    photo.save(tmp_path / "b" / "scan2.TIF")
    report = check_dataset("imagefolder", tmp_path, workers=0)
    assert report["notes"]["skipped_formats"] == {".gif": 1, ".tiff": 1, ".tif": 1}
    assert report["notes"]["skipped_format_examples"] == sorted(
        str(tmp_path / p) for p in ("a/party.gif", "b/scan.tiff", "b/scan2.TIF"))
    res = run_cli("check-data", "--dataset", "imagefolder", "--data-dir", str(tmp_path), "--workers", "0")
    assert res.returncode == 0 and "3 photo(s) in formats the loader skips" in res.stderr and "party.gif" in res.stderr
