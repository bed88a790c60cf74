"""`python -m helpers export`: the ONNX graph and its reference preprocessing FILE.py agree with `predict` from photo
files (fine-tuned run, probe, an ensemble of two input sizes), FILE.py runs without helpers and torch, the sidecar's
words are enough to prepare a photo, the check needs 8 readable photos, and no output lands on a run's file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

import helpers
from helpers.commands import cli
from helpers.data.augment import eval_transform
from helpers.data.images import read_image
from helpers.data.splits import load_splits
from helpers.use import export
from helpers.use.runs import load_trained

from .conftest import TINY
from .test_predict import probe_run  # noqa: F401 - the module's fixture: a lite0 probe at 64 px

MY_PHOTOS = Path(__file__).resolve().parents[1] / "data" / "my-photos"
KINDS = {"fine-tuned": ("trained_run",), "probe": ("probe_run",), "ensemble": ("trained_run", "probe_run")}

# Runs FILE.py in a fresh interpreter (-I) that refuses helpers and torch, and saves its inputs for each photo.
ISOLATED = r"""
import importlib.abc, importlib.machinery, importlib.util, json, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("helpers", "torch"):
            raise ImportError(name)
sys.meta_path.insert(0, Refuse())
import numpy as np
loader = importlib.machinery.SourceFileLoader("ref", sys.argv[1])
ref = importlib.util.module_from_spec(importlib.util.spec_from_loader("ref", loader))
loader.exec_module(ref)
feeds = [ref.inputs(p) for p in json.loads(sys.argv[2])]
np.savez(sys.argv[3], **{n: np.concatenate([f[n] for f in feeds]) for n in ref.INPUTS})
assert "torch" not in sys.modules and "helpers" not in sys.modules
"""


@pytest.fixture(scope="module")
def exported(request, tmp_path_factory):
    """export(kind) -> (runs, FILE.onnx, the export's result): each kind exported once, in-process."""
    done = {}

    def make(kind: str):
        if kind not in done:
            runs = [request.getfixturevalue(name) for name in KINDS[kind]]
            out = tmp_path_factory.mktemp(f"export-{kind}") / "model.onnx"
            assert cli.main(["export", "--model", *map(str, runs), "--output", str(out)]) == 0
            done[kind] = runs, out, json.loads(out.with_suffix(".json").read_text())["check"]
        return done[kind]

    return make


def _other_photos() -> list[str]:
    """Photos the check did not read: 30 test photos of the tiny set and the phone-style photos."""
    return [p for p, _ in load_splits("food-101", TINY).test[1::5]] + sorted(map(str, MY_PHOTOS.iterdir()))


@pytest.mark.parametrize("kind", list(KINDS))
def test_export_checks_itself_from_photo_files(kind, exported):
    """The check ran FILE.py + onnxruntime against `predict` on 16 test photos and data/my-photos (the EXIF JPEG
    and the transparent PNG among them): every top-1 the same, probabilities within 1e-3. The ensemble (96 px run
    + 64 px probe) gets one input per size."""
    runs, out, check = exported(kind)
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.json", "model.onnx", "model.py"]
    assert check["photos"] == 16 + len(list(MY_PHOTOS.iterdir())) and check["top1_agreement"] == "22/22"
    assert check["max_abs_diff"] <= export.TOLERANCE and check["graph_max_abs_diff"] <= export.TOLERANCE
    sidecar = json.loads(out.with_suffix(".json").read_text())
    sizes = {"fine-tuned": [96], "probe": [64], "ensemble": [96, 64]}[kind]
    assert [i["image_size"] for i in sidecar["inputs"]] == sizes
    assert [i["name"] for i in sidecar["inputs"]] == (["images"] if len(sizes) == 1 else ["images_96", "images_64"])
    assert all(i["short_side"] == int(i["image_size"] / i["crop_pct"]) for i in sidecar["inputs"])
    assert sidecar["classes"] == load_splits("food-101", TINY).class_names and sidecar["labels"][0] == "Apple pie"
    assert [m["test_top1"] for m in sidecar["members"]] == [
        json.loads((Path(r) / "summary.json").read_text())["test_top1"] for r in runs]
    from helpers.use import reference  # imported here, so that this file runs on the commit before it existed

    ref = reference.load(out.with_suffix(".py"))
    assert ref.INPUTS == {i["name"]: (i["image_size"], i["short_side"], i["interpolation"]) for i in sidecar["inputs"]}


@pytest.mark.parametrize("kind", list(KINDS))
def test_reference_runs_without_helpers_or_torch_and_agrees_with_predict(kind, exported, tmp_path):
    """Other photos than the check's: `predict_onnx` (the upload widget's) gives `predict`'s top-1 on every photo
    and its probabilities within 1e-3 (for the ensemble of a 96 px run and a 64 px probe too), and so does
    onnxruntime on FILE.py's arrays computed in a process where helpers and torch cannot be imported; the graph
    takes a batch of any size."""
    import onnxruntime as ort

    runs, out, _ = exported(kind)
    photos = _other_photos()
    ours = helpers.predict(list(map(str, runs)), photos, top_k=10, num_workers=0, device="cpu")
    classes = json.loads(out.with_suffix(".json").read_text())["classes"]

    def matrix(table) -> np.ndarray:
        return np.array([[{p["class"]: p["probability"] for p in row}[c] for c in classes]
                         for row in table["predictions"]])

    table = export.predict_onnx(out, photos, top_k=10)  # as the upload widget calls it
    assert list(table["class"]) == list(ours["class"])
    assert np.abs(matrix(table) - matrix(ours)).max() <= export.TOLERANCE
    arrays = tmp_path / "inputs.npz"
    done = subprocess.run([sys.executable, "-I", "-c", ISOLATED, str(out.with_suffix(".py")), json.dumps(photos),
                           str(arrays)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    feeds = dict(np.load(arrays))
    assert all(a.dtype == np.float32 and a.shape == (len(photos), 3, a.shape[2], a.shape[2]) for a in feeds.values())
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    theirs = session.run(["probabilities"], feeds)[0]
    assert (matrix(ours).argmax(1) == theirs.argmax(1)).all()
    assert np.abs(matrix(ours) - theirs).max() <= export.TOLERANCE
    for n in (1, 3):  # dynamic batch
        assert session.run(["probabilities"], {k: v[:n] for k, v in feeds.items()})[0].shape == (n, 10)


def _read_as_the_sidecar_says(path: str, size: int, short_side: int, interpolation: str) -> np.ndarray:
    """A photo prepared from the sidecar's words alone (its "preprocessing" steps), not from FILE.py."""
    if path.endswith(".heic"):
        import pillow_heif

        pillow_heif.register_heif_opener()
    data = np.fromfile(path, dtype=np.uint8)
    head = data[:32].tobytes()
    alpha = head.startswith(b"\x89PNG\r\n\x1a\n") and (data[25] in (4, 6) or b"tRNS" in data[: 1 << 16].tobytes())
    image = None if alpha or head[8:12] == b"WEBP" else cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        im = ImageOps.exif_transpose(Image.open(path))
        if im.mode in ("RGBA", "LA", "P", "PA") or "transparency" in im.info:
            im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
        rgb = np.asarray(im.convert("RGB"))
    else:
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]
    scale = short_side / min(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    rgb = cv2.resize(rgb, (new_w, new_h), interpolation=getattr(cv2, interpolation))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return (rgb[top:top + size, left:left + size].astype(np.float32) / 255).transpose(2, 0, 1)[None]


def test_the_sidecars_words_are_enough_to_prepare_a_photo(exported):
    """Followed literally, the sidecar prepares each photo (an EXIF-rotated JPEG, a transparent PNG, WebP,
    HEIC, JPEGs) exactly as `predict` does: it names the decoder per file type, the orientation, the alpha on
    white, the colour order, OpenCV's INTER_CUBIC without antialiasing, the size rounding and the crop offsets."""
    runs, out, _ = exported("fine-tuned")
    sidecar = json.loads(out.with_suffix(".json").read_text())
    words = " ".join(str(v) for v in sidecar["preprocessing"].values())
    for needed in ("EXIF orientation", "alpha-composited onto opaque white", "cv2.imdecode", "BGR -> RGB",
                   "INTER_CUBIC", "without antialiasing", "round(H * scale)", "(new H - crop) // 2", "/ 255",
                   "no reduced JPEG decode", "pillow-heif"):
        assert needed in words, needed
    spec = sidecar["inputs"][0]
    photos = sorted(map(str, MY_PHOTOS.iterdir())) + [p for p, _ in load_splits("food-101", TINY).test[2::15]]
    feeds = np.concatenate([_read_as_the_sidecar_says(p, spec["image_size"], spec["short_side"],
                                                      spec["interpolation"]) for p in photos])
    d = load_trained(runs[0]).data_config
    transform = eval_transform(d["image_size"], d["mean"], d["std"], d["crop_pct"], d["interpolation"], uint8=True)
    package = np.stack([transform(image=read_image(p))["image"].numpy() for p in photos]).astype(np.float32) / 255
    assert np.array_equal(feeds, package)


def test_reference_preprocessing_is_the_packages_bit_for_bit(tmp_path):
    """FILE.py's arrays equal the package's reader + evaluation pipeline exactly, on every test photo of the tiny
    set and data/my-photos, at a size whose rounding of the long side matters (73 px short side) and at 224/256."""
    from helpers.use import reference

    configs = [{"image_size": 64, "crop_pct": 0.875, "interpolation": "bicubic"},
               {"image_size": 224, "crop_pct": 0.875, "interpolation": "bicubic"},
               {"image_size": 80, "crop_pct": 1.0, "interpolation": "bilinear"}]
    configs = [{**c, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)} for c in configs]
    inputs = reference.input_specs(configs)
    assert [(i["name"], i["short_side"], i["interpolation"]) for i in inputs] == [
        ("images_64", 73, "INTER_CUBIC"), ("images_224", 256, "INTER_CUBIC"), ("images_80", 80, "INTER_LINEAR")]
    source = tmp_path / "model.py"
    source.write_text(reference.reference_text("model.onnx", inputs))
    assert reference.is_reference(source)
    photos = [p for p, _ in load_splits("food-101", TINY).test] + sorted(map(str, MY_PHOTOS.iterdir()))
    arrays = reference.run_isolated(source, photos)
    for d, spec in zip(configs, inputs):
        transform = eval_transform(d["image_size"], d["mean"], d["std"], d["crop_pct"], d["interpolation"], uint8=True)
        package = np.stack([transform(image=read_image(p))["image"].numpy() for p in photos]).astype(np.float32) / 255
        assert np.array_equal(arrays[spec["name"]], package), spec


def test_the_isolated_run_refuses_helpers_and_torch(tmp_path):
    from helpers.use import reference

    source = tmp_path / "model.py"
    source.write_text(reference.reference_text("model.onnx", reference.input_specs([
        {"image_size": 64, "crop_pct": 0.875, "interpolation": "bicubic"}])) + "\nimport torch\n")
    with pytest.raises(RuntimeError, match="torch may not be imported"):
        reference.run_isolated(source, [str(MY_PHOTOS / "baklava.png")])


@pytest.mark.parametrize("photos", ["one 1x1 photo", "seven photos and a text file"])
def test_the_check_needs_eight_readable_photos(photos, trained_run, tmp_path, capsys):
    """One 1x1 photo (which any export would pass) or 7 real photos are too few: exit 2 naming the count, and
    nothing is written."""
    folder = tmp_path / "photos"
    folder.mkdir()
    if photos == "one 1x1 photo":
        Image.new("RGB", (1, 1), (200, 120, 40)).save(folder / "dot.png")
        count = 1
    else:
        for path, _ in load_splits("food-101", TINY).test[:7]:
            shutil.copy(path, folder)
        (folder / "notes.txt").write_text("not a photo\n")
        count = 7
    out = tmp_path / "out"
    out.mkdir()
    assert cli.main(["export", "--model", str(trained_run), "--output", str(out / "model.onnx"),
                     "--check-photos", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"needs at least 8 readable photos; --check-photos {folder} gives {count}" in err, err
    assert os.listdir(out) == []


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_no_output_lands_on_a_runs_file(trained_run, tmp_path, capsys):
    """--output RUN/summary.onnx would have replaced the run's summary.json with the sidecar: refused (exit 2)
    naming it (the rule of every command's output: `run_folder.check_output_path`), as is an output onto a .py or
    .json that export did not write."""
    before = _tree(trained_run)
    assert cli.main(["export", "--model", str(trained_run), "--output", str(trained_run / "summary.onnx")]) == 2
    err = capsys.readouterr().err
    assert f"writes summary.json beside it too, and that is a file that the training run in {trained_run}" in err, err
    assert _tree(trained_run) == before
    mine = tmp_path / "train.py"
    mine.write_text("print('my own code')\n")
    assert cli.main(["export", "--model", str(trained_run), "--output", str(tmp_path / "train.onnx")]) == 2
    assert f"would replace {mine}, which export did not write" in capsys.readouterr().err
    assert mine.read_text() == "print('my own code')\n" and sorted(os.listdir(tmp_path)) == ["train.py"]


def test_a_failed_check_writes_nothing_and_is_a_bug(trained_run, tmp_path, monkeypatch, capsys):
    """An export whose check fails (here: a tolerance below any float error) ends with exit code 1 and leaves
    no file; a bad --output is the user's (exit 2)."""
    monkeypatch.setattr(export, "TOLERANCE", -1.0)
    out = tmp_path / "model.onnx"
    assert cli.main(["export", "--model", str(trained_run), "--output", str(out)]) == 1
    assert "fails its check, the graph against its PyTorch module" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
    assert cli.main(["export", "--model", str(trained_run), "--output", str(tmp_path / "model.txt")]) == 2
    assert "must be a .onnx file" in capsys.readouterr().err


def test_speed_runs_both_engines_on_the_reference_inputs(exported):
    runs, out, _ = exported("fine-tuned")
    table = export.speed(runs[0], out, str(MY_PHOTOS), batch_size=4, repeats=1)
    assert list(table["engine"]) == ["PyTorch", "onnxruntime"] and (table["images/s"] > 0).all()
