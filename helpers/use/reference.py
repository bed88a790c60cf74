"""The reference preprocessing of an exported model: FILE.py, written beside FILE.onnx from `reference_template.py`
with the graph's inputs filled in, so that a user outside PyTorch prepares photos exactly as `predict` does.

    inputs = input_specs([data_config, ...])          # one input per distinct resize/crop of the members
    text = reference_text("b0.onnx", inputs)          # FILE.py's source
    arrays = run_isolated("b0.py", photos)            # its output, from a process without helpers and torch

`input_specs` reads the resize and crop from the package's own evaluation pipeline (`eval_transform`), so FILE.py
describes what `predict` runs; `run_isolated` runs FILE.py where `helpers` and `torch` cannot be imported, which
is how the export checks that FILE.py stands on its own.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

TEMPLATE = Path(__file__).with_name("reference_template.py")

HEADER = "# Written by `python -m helpers export` beside {onnx} (classes and labels in {sidecar}); edit freely.\n"

# Run by `python -I -c`: FILE.py's `inputs` on each photo, with `helpers` and `torch` refused at import.
_RUNNER = r"""
import importlib.abc, importlib.machinery, importlib.util, json, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("helpers", "torch"):
            raise ImportError(f"{name} may not be imported by the reference preprocessing")
        return None

sys.meta_path.insert(0, Refuse())
import numpy as np

source, photos, out = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3]
loader = importlib.machinery.SourceFileLoader("reference", source)
module = importlib.util.module_from_spec(importlib.util.spec_from_loader("reference", loader))
loader.exec_module(module)
feeds = [module.inputs(p) for p in photos]
np.savez(out, **{name: np.concatenate([f[name] for f in feeds]) for name in module.INPUTS})
"""


def input_specs(configs: Sequence[dict]) -> list[dict]:
    """The graph's inputs for the members' data configs, in order of first use: one per distinct resize and crop.

    Returns:
        [{"name", "image_size", "short_side", "crop_pct", "interpolation" (an OpenCV flag name)}, ...]; one input
        is named `images`, several `images_<S>` (`images_<S>_<short side>` where two share a size).
    """
    keys: list[tuple[int, int, str]] = []
    pcts: dict[tuple[int, int, str], float] = {}
    for d in configs:
        key = resize_of(d)
        if key not in keys:
            keys.append(key)
            pcts[key] = d["crop_pct"]
    sizes = [k[0] for k in keys]
    specs = []
    for key in keys:
        size, short, interpolation = key
        name = "images" if len(keys) == 1 else f"images_{size}" if sizes.count(size) == 1 else f"images_{size}_{short}"
        specs.append({"name": name, "image_size": size, "short_side": short, "crop_pct": pcts[key],
                      "interpolation": interpolation})
    return specs


def resize_of(d: dict) -> tuple[int, int, str]:
    """(crop size, short side, OpenCV interpolation name) of a data config's evaluation pipeline, read from
    `eval_transform` itself.

    Raises:
        RuntimeError: the pipeline is no longer a plain SmallestMaxSize + CenterCrop (FILE.py would not describe it).
    """
    import albumentations as A
    import cv2

    from ..data.augment import eval_transform

    pipeline = eval_transform(d["image_size"], (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), d["crop_pct"], d["interpolation"],
                              uint8=True)  # the mean and std are the graph's
    steps = list(pipeline.transforms)
    resize, crop = steps[0], steps[1]
    if not (isinstance(resize, A.SmallestMaxSize) and isinstance(crop, A.CenterCrop) and len(steps) == 3
            and resize.area_for_downscale is None and not crop.pad_if_needed and isinstance(resize.max_size, int)):
        raise RuntimeError(f"The evaluation pipeline is no longer resize + centre crop ({steps}): update "
                           "helpers/use/reference_template.py, which FILE.py is written from.")
    names = {getattr(cv2, n): n for n in ("INTER_NEAREST", "INTER_LINEAR", "INTER_CUBIC", "INTER_AREA",
                                          "INTER_LANCZOS4")}
    return crop.height, resize.max_size, names[resize.interpolation]


def reference_text(onnx_name: str, inputs: list[dict]) -> str:
    """FILE.py's source: the template with the graph's inputs, its name in the docstring, and a header."""
    stem = Path(onnx_name).stem
    template = TEMPLATE.read_text()
    line = next(x for x in template.splitlines() if x.startswith("INPUTS = "))
    table = ", ".join(f'"{i["name"]}": ({i["image_size"]}, {i["short_side"]}, "{i["interpolation"]}")' for i in inputs)
    text = template.replace(line, f"INPUTS = {{{table}}}").replace("FILE", stem)
    return HEADER.format(onnx=f"{stem}.onnx", sidecar=f"{stem}.json") + text


def is_reference(path: Path) -> bool:
    """Whether `path` is a FILE.py an export wrote (its first line is the export's header)."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError):
        return False
    return first.startswith(HEADER.split("beside")[0])


def steps(inputs: list[dict]) -> dict:
    """The sidecar's account of the preprocessing, step by step, in words a user outside PyTorch can follow."""
    import albumentations
    import cv2
    import PIL

    shorts = ", ".join(f"{i['name']}: short side {i['short_side']} px ({i['interpolation']}), crop {i['image_size']}"
                       for i in inputs)
    return {
        "libraries": f"numpy {np.__version__}, Pillow {PIL.__version__}, OpenCV {cv2.__version__} (what the check "
                     f"ran with; the sizes follow albumentations {albumentations.__version__})",
        "read": "The file's bytes. A PNG with an alpha channel (colour type 4 or 6) or a tRNS chunk in its first 64 "
                "KiB, a GIF, or a WebP: Pillow opens it, applies the EXIF orientation (ImageOps.exif_transpose), and "
                "an image of mode RGBA, LA, P or PA or with a transparency entry is converted to RGBA and "
                "alpha-composited onto opaque white (Image.alpha_composite), then converted to RGB. Any other file: "
                "cv2.imdecode(bytes, cv2.IMREAD_COLOR), which applies the EXIF orientation, then cv2.cvtColor "
                "BGR -> RGB; a file OpenCV cannot decode (HEIC/HEIF, through pillow-heif) or a JPEG without an "
                "end-of-image marker (FF D9) in its last 64 bytes goes through Pillow as above. Always at full "
                "size (no reduced JPEG decode). Result: RGB uint8 (H, W, 3), upright.",
        "resize": "scale = short_side / min(H, W) (a float64 division); new size (max(1, round(H * scale)), "
                  "max(1, round(W * scale))) with Python's round (half to even; albumentations' SmallestMaxSize), "
                  "so the short side is short_side and the long side rounded. Same size: unchanged; else "
                  "cv2.resize(image, (new W, new H), interpolation=the input's flag) on the uint8 image: OpenCV's "
                  "kernel (INTER_CUBIC: bicubic, a = -0.75) without antialiasing, uint8 out (rounded, saturated).",
        "crop": "top = (new H - crop) // 2, left = (new W - crop) // 2; rows top..top+crop, columns left..left+crop "
                "(albumentations' CenterCrop).",
        "tensor": "float32 / 255, HWC -> CHW, a batch axis: (1, 3, crop, crop), RGB in [0, 1]; the mean/std "
                  "normalisation, every member's own network and the softmax are inside the graph.",
        "inputs": shorts,
        "rule": "short side = floor(crop / crop_pct) of the run's data config: "
                + "; ".join(f"floor({i['image_size']} / {i['crop_pct']}) = {math.floor(i['image_size'] / i['crop_pct'])}"
                            for i in inputs),
    }


def run_isolated(source: str | Path, photos: Sequence[str], *, timeout: float = 600) -> dict[str, np.ndarray]:
    """FILE.py's `inputs` for each photo, computed in a fresh Python process (`-I`) where importing `helpers` or
    `torch` raises: {input name: float32 (N, 3, S, S)}.

    Raises:
        RuntimeError: FILE.py failed there (its error in the message): a bug, since `predict` read these photos.
    """
    with tempfile.TemporaryDirectory(prefix="reference-") as tmp:
        listing, out = Path(tmp) / "photos.json", Path(tmp) / "inputs.npz"
        listing.write_text(json.dumps([str(p) for p in photos]))
        done = subprocess.run([sys.executable, "-I", "-c", _RUNNER, str(source), str(listing), str(out)],
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"The reference preprocessing {source} failed in a process without helpers and torch "
                               f"(exit code {done.returncode}):\n{done.stderr[-2000:]}")
        with np.load(out) as arrays:
            return {name: arrays[name] for name in arrays.files}


def load(path: str | Path):
    """FILE.py as a module in this process (for `predict_onnx` and `speed`), not registered in sys.modules."""
    from importlib.machinery import SourceFileLoader

    loader = SourceFileLoader(f"_reference_{abs(hash(str(path)))}", str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module
