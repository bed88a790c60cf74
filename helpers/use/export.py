"""Take a trained model elsewhere: export a run (fine-tuned, probe, or several averaged) to one ONNX graph.

    python -m helpers export --model runs/b0 --format onnx --output b0.onnx
    python -m helpers export --model runs/b0 runs/probe-lite0 --output ensemble.onnx

The graph takes `images`, float32 (N, 3, S, S) RGB in [0, 1] (N free), prepared with the resize and crop rule
written beside it, and returns `probabilities` (N, classes): normalisation, every member's own crop and size
(a fixed linear resampling, the bicubic antialiased resize of the probe's members), the softmax and the ensemble's
mean are inside. `FILE.json` beside it holds the class names and labels, the input size, the resize/crop rule,
the test top-1 of each run (from its summary.json) and where the model came from.

The export checks itself: onnxruntime and PyTorch predict the same real photos, and a maximum absolute
difference of the probabilities above 1e-3 fails the export (nothing is written then).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..base.errors import UserError

if TYPE_CHECKING:  # the command line imports this module to build its parser: heavy imports wait for a call
    import torch
    from torch import nn

    from ..training.trained import Trained


_logger = logging.getLogger(__name__)

TOLERANCE = 1e-3  # max |onnxruntime - PyTorch| of a probability

OPSET = 17

CHECK_PHOTOS = 16


def add_command(subparsers: argparse._SubParsersAction) -> None:
    """Add the `export` sub-command."""
    p = subparsers.add_parser("export", help="export a run (or several, averaged) to ONNX, checked with onnxruntime")
    p.add_argument("--model", nargs="+", required=True, metavar="RUN",
                   help="a run folder or checkpoint (fine-tuned or probe); several: one graph of their mean")
    p.add_argument("--format", choices=("onnx",), default="onnx")
    p.add_argument("--output", required=True, help="FILE.onnx (FILE.json is written beside it)")
    p.add_argument("--check-photos", nargs="+", metavar="PHOTO",
                   help="photos (files, folders, globs) for the check (default: 16 test photos of the first run's "
                        "dataset, else of data/food-101-tiny)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> dict:
    return export_onnx(args.model, args.output, check_photos=args.check_photos)


# ----------------------------------------------------------------------------------------------------------------
# The graph


def resize_matrix(src_size: int, src_crop: float, size: int, crop: float) -> torch.Tensor | None:
    """The (size, src_size) matrix R with R @ x @ R.T = the centre crop of a (src_size, src_size) image that keeps
    crop / src_crop of it, resized to (size, size) bicubic with antialiasing (as `helpers.use.runs.ProbeModel` does
    with `F.interpolate`); None when that is the identity. Resampling is linear and separable, so resizing the
    identity gives its weights, and a matrix product exports to any runtime."""
    import torch
    import torch.nn.functional as F

    keep = min(1.0, crop / src_crop)
    side = max(1, round(src_size * keep))
    if side == src_size and size == src_size:
        return None
    top = (src_size - side) // 2
    eye = torch.eye(side).view(1, 1, side, side)
    weights = F.interpolate(eye, size=(size, side), mode="bicubic", antialias=True, align_corners=False)[0, 0]
    matrix = torch.zeros(size, src_size)
    matrix[:, top:top + side] = weights
    return matrix


def exported_module(models: list[Trained], canvas: dict, *, exact_resize: bool = False) -> nn.Module:
    """images [0, 1] (N, 3, S, S) at `canvas`'s size -> probabilities (N, C): the mean of the members' softmax,
    each member (and each backbone of a probe) on its own crop, size and normalisation; classes matched by
    name to the first model's. `exact_resize` resizes with `F.interpolate` instead of the graph's matrices (the
    PyTorch reference of the check)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from ..training.trained import check_classes
    from .features import embed

    class Branch(nn.Module):
        """One network's input from the export's: its crop and size, then its mean and std."""

        def __init__(self, d: dict):
            super().__init__()
            self.size, self.crop = d["image_size"], d["crop_pct"]
            matrix = resize_matrix(canvas["image_size"], canvas["crop_pct"], self.size, self.crop)
            self.resized = matrix is not None
            self.register_buffer("matrix", matrix if matrix is not None else torch.zeros(0))
            self.register_buffer("mean", torch.tensor(d["mean"], dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(d["std"], dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.resized and not exact_resize:
                x = self.matrix @ x @ self.matrix.T
            elif self.resized:
                side = max(1, round(x.shape[-1] * min(1.0, self.crop / canvas["crop_pct"])))
                top = (x.shape[-1] - side) // 2
                x = F.interpolate(x[..., top:top + side, top:top + side], size=(self.size, self.size),
                                  mode="bicubic", antialias=True, align_corners=False)
            return (x - self.mean) / self.std

    class Member(nn.Module):
        def __init__(self, trained: Trained, columns: torch.Tensor | None):
            super().__init__()
            self.model = trained.model
            self.probe = bool(getattr(trained.model, "is_probe", False))
            self.reordered = columns is not None
            self.register_buffer("columns", columns if columns is not None else torch.zeros(0, dtype=torch.long))
            members = trained.model.members if self.probe else [{"data_config": trained.data_config, "views": 1}]
            self.branches = nn.ModuleList(Branch(m["data_config"]) for m in members)
            self.views = [m["views"] for m in members]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.probe:  # each backbone on its own input, L2-normalised features, concatenated, the head
                parts = [F.normalize(embed(backbone, branch(x), views), dim=1)
                         for backbone, branch, views in zip(self.model.backbones, self.branches, self.views)]
                logits = self.model.head(torch.cat(parts, dim=1))
            else:
                logits = self.model(self.branches[0](x))
            probs = torch.softmax(logits.float(), dim=1)
            return probs[:, self.columns] if self.reordered else probs

    class Exported(nn.Module):
        def __init__(self):
            super().__init__()
            names = models[0].class_names
            self.members = nn.ModuleList(
                Member(t, check_classes(t, names, models[0].source, use="in an ensemble")) for t in models)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return torch.stack([m(images) for m in self.members]).mean(dim=0)

    return Exported().eval()


def canvas_of(models: list[Trained]) -> dict:
    """The export's input preprocessing: that of the member (or probe backbone) with the largest input size."""
    from .probe import canvas_config

    configs = [m["data_config"] for t in models for m in getattr(t.model, "members", [])] or []
    configs += [t.data_config for t in models if not getattr(t.model, "is_probe", False)]
    return canvas_config(configs)


# ----------------------------------------------------------------------------------------------------------------
# The check


def check_images(models: list[Trained], canvas: dict, photos: Sequence[str] | None) -> tuple[torch.Tensor, list[str]]:
    """Real photos for the check, prepared by the export's resize/crop rule: (N, 3, S, S) float32 in [0, 1]."""
    import torch

    from ..data.augment import eval_transform
    from ..data.images import read_image
    from ..data.splits import load_splits
    from .predict import find_photos, read_error

    if photos:
        paths = [p for p, e in find_photos(photos) if e is None and read_error(p) is None][:CHECK_PHOTOS]
    else:
        config = models[0].config
        try:
            test = load_splits(config.get("dataset", "food-101"), config["data_dir"]).test
        except (UserError, KeyError):
            test = load_splits("food-101", str(Path(__file__).resolve().parents[2] / "data" / "food-101-tiny")).test
        paths = [p for p, _ in test[:: max(1, len(test) // CHECK_PHOTOS)][:CHECK_PHOTOS]]
    if not paths:
        raise UserError(f"No readable photo among {photos} to check the export with: give photos (--check-photos).")
    d = canvas
    transform = eval_transform(d["image_size"], d["mean"], d["std"], d["crop_pct"], d["interpolation"], uint8=True)
    images = torch.stack([transform(image=read_image(p))["image"] for p in paths]).float() / 255
    return images, paths


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise UserError("The ONNX check needs onnxruntime: pip install onnxruntime (pinned in requirements.txt).") \
            from exc
    return onnxruntime


def run_onnx(path: str | Path, images) -> tuple[object, float]:
    """Probabilities from an ONNX file with onnxruntime (CPU), and the seconds it took."""
    ort = _onnxruntime()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    started = time.perf_counter()
    out = session.run(["probabilities"], {"images": images.numpy() if hasattr(images, "numpy") else images})[0]
    return out, time.perf_counter() - started


# ----------------------------------------------------------------------------------------------------------------
# Export


def export_onnx(model: str | Path | Sequence[str | Path], output: str | Path, *,
                check_photos: Sequence[str] | None = None) -> dict:
    """Export runs to one ONNX graph with its sidecar FILE.json, checked against PyTorch on real photos.

    Returns:
        {"output", "sidecar", "bytes", "image_size", "classes", "check": {"photos", "max_abs_diff",
        "top1_agreement" (against the PyTorch model on the same input), "tolerance", "predict_top1_agreement",
        "predict_max_abs_diff" (against `helpers.predict` on the same photos, see `_against_predict`)}}

    Raises:
        UserError: a bad --output, a missing onnxruntime.
        RuntimeError: onnxruntime disagrees with PyTorch by more than TOLERANCE (a bug: nothing is written).
    """
    import numpy as np
    import torch

    from ..base.io import atomic_path, atomic_write_text
    from .runs import load_trained

    out = Path(output)
    if out.suffix.lower() != ".onnx" or out.is_dir():
        raise UserError(f"--output {out} must be a .onnx file path (FILE.json is written beside it).")
    if not out.parent.is_dir():
        raise UserError(f"--output {out}: the folder {out.parent} does not exist. Create it or give another path.")
    _onnxruntime()
    runs = [model] if isinstance(model, (str, Path)) else list(model)
    models = [load_trained(r, device="cpu") for r in runs]
    canvas = canvas_of(models)
    module = exported_module(models, canvas)
    images, paths = check_images(models, canvas, check_photos)
    size = canvas["image_size"]
    with atomic_path(out) as tmp:
        with torch.no_grad():
            torch.onnx.export(module, (images[:2],), str(tmp), input_names=["images"], output_names=["probabilities"],
                              dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}},
                              opset_version=OPSET, dynamo=False)
        onnx_probs, _ = run_onnx(tmp, images)
        with torch.no_grad():
            torch_probs = exported_module(models, canvas, exact_resize=True)(images).numpy()
        diff = float(np.abs(onnx_probs - torch_probs).max())
        agree = int((onnx_probs.argmax(1) == torch_probs.argmax(1)).sum())
        check = {"photos": len(paths), "max_abs_diff": diff, "top1_agreement": f"{agree}/{len(paths)}",
                 "tolerance": TOLERANCE}
        if not math.isfinite(diff) or diff > TOLERANCE:
            raise RuntimeError(f"The ONNX export of {', '.join(map(str, runs))} disagrees with PyTorch on "
                               f"{len(paths)} photos: max |difference| of a probability {diff:.2e} > {TOLERANCE}, "
                               f"top-1 agreement {agree}/{len(paths)}. Nothing was written.")
        check.update(_against_predict(models, paths, onnx_probs))
        sidecar = out.with_suffix(".json")
        atomic_write_text(sidecar, json.dumps(sidecar_info(models, runs, canvas, check), indent=1) + "\n")
    info = {"output": str(out), "sidecar": str(sidecar), "bytes": out.stat().st_size, "image_size": size,
            "classes": len(models[0].class_names), "check": check}
    _logger.info("Exported %s to %s (%.1f MB); onnxruntime agrees with PyTorch on %d photos: max |diff| %.1e, top-1 "
                 "%d/%d", " + ".join(map(str, runs)), out, info["bytes"] / 1e6, len(paths), diff, agree, len(paths))
    return info


def _against_predict(models: list[Trained], paths: list[str], onnx_probs) -> dict:
    """The graph's top-1 against `helpers.predict` on the same photos. They are equal for a model of one input
    size; members (or probe backbones) of other sizes read the photo through their own resize in `predict`, but
    a resized crop of the largest member's input in the graph (and in the PyTorch model called on one batch, as
    a teacher is), a close approximation."""
    import numpy as np

    from .predict import predict_probs

    probs, _ = predict_probs(models, paths, num_workers=0)
    agree = int((probs.numpy().argmax(1) == onnx_probs.argmax(1)).sum())
    diff = float(np.abs(probs.numpy() - onnx_probs).max())
    if agree < len(paths):
        _logger.warning("The graph's top-1 differs from `predict`'s on %d of %d photos (max |diff| %.2g): its members "
                        "of other input sizes read a resized crop of the largest member's input", len(paths) - agree,
                        len(paths), diff)
    return {"predict_top1_agreement": f"{agree}/{len(paths)}", "predict_max_abs_diff": diff}


def sidecar_info(models: list[Trained], runs: list, canvas: dict, check: dict) -> dict:
    """What a user of the ONNX file needs: classes, labels, input, preprocessing, accuracy and origin."""
    from ..data.splits import pretty

    size = canvas["image_size"]
    return {
        "format": "onnx", "opset": OPSET,
        "classes": list(models[0].class_names), "labels": [pretty(c) for c in models[0].class_names],
        "input": {"name": "images", "shape": ["N", 3, size, size], "dtype": "float32", "range": [0, 1],
                  "layout": "NCHW, RGB", "normalisation": "inside the graph"},
        "output": {"name": "probabilities", "shape": ["N", len(models[0].class_names)], "softmax": True},
        "image_size": size,
        "resize": {"rule": f"resize the short side to floor({size} / {canvas['crop_pct']}) = "
                           f"{math.floor(size / canvas['crop_pct'])} px ({canvas['interpolation']}), then centre-crop "
                           f"{size} x {size}", "short_side": math.floor(size / canvas["crop_pct"]),
                   "crop": size, "crop_pct": canvas["crop_pct"], "interpolation": canvas["interpolation"]},
        "members": [_member_info(t, r) for t, r in zip(models, runs)],
        "test_top1": _member_info(models[0], runs[0])["test_top1"] if len(models) == 1 else None,
        "source": [str(Path(r).resolve()) for r in runs],
        "check": check,
    }


def _member_info(trained: Trained, run) -> dict:
    run = Path(run)
    summary = (run if run.is_dir() else run.parent) / "summary.json"
    try:
        data = json.loads(summary.read_text())
    except (OSError, ValueError):
        data = {}
    return {"run": str(run), "backbone": trained.config.get("backbone"),
            "probe": bool(getattr(trained.model, "is_probe", False)), "image_size": trained.data_config["image_size"],
            "test_top1": data.get("test_top1"), "val_top1": data.get("val_top1"),
            "test_top1_from": str(summary) if "test_top1" in data else None}


# ----------------------------------------------------------------------------------------------------------------
# Using the exported file


def read_sidecar(path: str | Path) -> dict:
    """The FILE.json written beside an exported FILE.onnx."""
    sidecar = Path(path).with_suffix(".json")
    try:
        return json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{sidecar} is missing or damaged ({exc}): export the model again with "
                        "`python -m helpers export`.") from exc


def onnx_images(paths: Sequence[str], info: dict):
    """Photos prepared by a sidecar's resize/crop rule: float32 (N, 3, S, S) in [0, 1], as the graph takes them."""
    import torch

    from ..data.augment import eval_transform
    from ..data.images import read_image

    r = info["resize"]
    transform = eval_transform(info["image_size"], (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), r["crop_pct"],
                               r["interpolation"], uint8=True)
    return torch.stack([transform(image=read_image(p))["image"] for p in paths]).float() / 255


def predict_onnx(path: str | Path, photos, *, top_k: int = 5, batch_size: int = 32):
    """`helpers.predict` through an exported ONNX file with onnxruntime (CPU): the same table, from the classes
    and resize rule of its sidecar."""
    import torch

    from .predict import check_photos, make_table, top_row

    info = read_sidecar(path)
    checked = check_photos(photos)
    readable = [p for p, e in checked if e is None]
    rows = {}
    for start in range(0, len(readable), batch_size):
        batch = readable[start:start + batch_size]
        probs, _ = run_onnx(path, onnx_images(batch, info))
        rows.update({p: top_row(p, torch.from_numpy(prob), info["classes"], top_k) for p, prob in zip(batch, probs)})
    return make_table(checked, rows)


def speed(model: str | Path | Sequence[str | Path], onnx_file: str | Path, photos, *, batch_size: int = 8,
          repeats: int = 3):
    """Size and images/s of a run in PyTorch and of its ONNX export in onnxruntime, on this machine's CPU, on
    the same prepared photos (best of `repeats` passes, after one warm-up pass).

    Returns:
        A pandas table: engine, file MB, parameters (millions), images/s.
    """
    import pandas as pd
    import torch

    from .predict import check_photos
    from .runs import load_trained

    runs = [model] if isinstance(model, (str, Path)) else list(model)
    models = [load_trained(r, device="cpu") for r in runs]
    module = exported_module(models, canvas_of(models), exact_resize=True)
    info = read_sidecar(onnx_file)
    images = onnx_images([p for p, e in check_photos(photos) if e is None][:batch_size], info)
    session = _onnxruntime().InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])

    def best(run) -> float:
        times = []
        for _ in range(repeats + 1):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        return len(images) / min(times[1:])

    with torch.no_grad():
        torch_speed = best(lambda: module(images))
    onnx_speed = best(lambda: session.run(["probabilities"], {"images": images.numpy()}))
    params = sum(p.numel() for p in module.parameters()) / 1e6
    weights = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()]) / 1e6
    return pd.DataFrame([
        {"engine": "PyTorch", "MB": weights, "what": "float32 weights in memory", "parameters (M)": params,
         "images/s": torch_speed},
        {"engine": "onnxruntime", "MB": Path(onnx_file).stat().st_size / 1e6, "what": "the .onnx file",
         "parameters (M)": params, "images/s": onnx_speed}])
