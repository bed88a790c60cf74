"""Take a trained model elsewhere: export a run (fine-tuned, probe, or several averaged) to one ONNX graph, with
the preprocessing that feeds it written out as plain Python.

    python -m helpers export --model runs/b0 --format onnx --output b0.onnx            # + b0.json, b0.py
    python -m helpers export --model runs/b0 runs/probe-lite0 --output ensemble.onnx

FILE.onnx takes float32 (N, 3, S, S) RGB in [0, 1] (N free) and returns `probabilities` (N, classes): the
normalisation, every member's network (a probe's backbones with their L2-normalised features and head), the
softmax and the ensemble's mean are inside. FILE.py (`helpers.use.reference`) turns a photo file into that input
with numpy, Pillow and OpenCV only, exactly as `predict` reads photos: `preprocess(path)` -> (1, 3, S, S). A model
whose members read photos at different sizes or crops has one input per preprocessing (`images_<S>`), and
`inputs(path)` of FILE.py gives them all. FILE.json holds the class names and labels, the inputs, every
preprocessing step in words, the test top-1 of each run (from its summary.json), where the model came from and
the check's result.

The export checks itself end to end, from photo files: FILE.py runs in a process where neither `helpers` nor
`torch` can be imported, onnxruntime runs the graph on what it returns, and `predict` (PyTorch, the course's own
reading of a photo) must agree on every photo's top-1 with a maximum absolute difference of a probability of at
most 1e-3 (photos: 16 test photos of the dataset or `--check-photos`, at least 8, and always the phone-style
photos of data/my-photos: an EXIF-rotated JPEG, a PNG with transparency, WebP, HEIC). A failed check writes
nothing and is a bug (exit 1). Nothing is written into a run folder or onto a file a run owns (exit 2).
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
from ..training.run_folder import check_output_path

if TYPE_CHECKING:  # the command line imports this module to build its parser: heavy imports wait for a call
    import numpy as np
    import torch
    from torch import nn

    from ..training.trained import Trained


_logger = logging.getLogger(__name__)

TOLERANCE = 1e-3  # max |onnxruntime (through FILE.py) - predict| of a probability

OPSET = 17

CHECK_PHOTOS = 16  # test photos of the dataset the check reads by default

MIN_CHECK_PHOTOS = 8  # readable photos --check-photos must hold

MAX_CHECK_PHOTOS = 64  # of --check-photos, the first ones are read

MY_PHOTOS = Path(__file__).resolve().parents[2] / "data" / "my-photos"  # the phone-style photos every check adds

def add_command(subparsers: argparse._SubParsersAction) -> None:
    """Add the `export` sub-command."""
    p = subparsers.add_parser("export", help="export a run (or several, averaged) to ONNX + its preprocessing in "
                                             "Python, checked end to end against predict")
    p.add_argument("--model", nargs="+", required=True, metavar="RUN",
                   help="a run folder or checkpoint (fine-tuned or probe); several: one graph of their mean")
    p.add_argument("--format", choices=("onnx",), default="onnx")
    p.add_argument("--output", required=True, help="FILE.onnx (FILE.json and FILE.py are written beside it)")
    p.add_argument("--check-photos", nargs="+", metavar="PHOTO",
                   help=f"photos (files, folders, globs) for the check, at least {MIN_CHECK_PHOTOS} readable "
                        f"(default: {CHECK_PHOTOS} test photos of the first run's dataset, else of "
                        "data/food-101-tiny); data/my-photos is always added")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> dict:
    return export_onnx(args.model, args.output, check_photos=args.check_photos)


# ----------------------------------------------------------------------------------------------------------------
# The graph


def member_configs(trained: Trained) -> list[dict]:
    """The data configs a model reads photos with: a probe's, one per backbone; a fine-tuned run's own."""
    if getattr(trained.model, "is_probe", False):
        return [m["data_config"] for m in trained.model.members]
    return [trained.data_config]


def exported_module(models: list[Trained], inputs: list[dict]) -> nn.Module:
    """The graph: one image tensor per input of `inputs` (`helpers.use.reference.input_specs`), each [0, 1]
    (N, 3, S, S) -> probabilities (N, C), the mean of the members' softmax, each member (and each backbone of a
    probe) on the input of its own resize and crop with its own normalisation; classes matched by name to the
    first model's."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from ..training.trained import check_classes
    from .features import embed
    from .reference import resize_of

    keys = [(i["image_size"], i["short_side"], i["interpolation"]) for i in inputs]

    class Branch(nn.Module):
        """One network's input: the graph input of its preprocessing, normalised with its mean and std."""

        def __init__(self, d: dict):
            super().__init__()
            self.index = keys.index(resize_of(d))
            self.register_buffer("mean", torch.tensor(d["mean"], dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(d["std"], dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
            return (images[self.index] - self.mean) / self.std

    class Member(nn.Module):
        def __init__(self, trained: Trained, columns: torch.Tensor | None):
            super().__init__()
            self.model = trained.model
            self.probe = bool(getattr(trained.model, "is_probe", False))
            self.reordered = columns is not None
            self.register_buffer("columns", columns if columns is not None else torch.zeros(0, dtype=torch.long))
            self.branches = nn.ModuleList(Branch(d) for d in member_configs(trained))
            self.views = [m["views"] for m in trained.model.members] if self.probe else [1]

        def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
            if self.probe:  # each backbone on its own input, L2-normalised features, concatenated, the head
                parts = [F.normalize(embed(backbone, branch(images), views), dim=1)
                         for backbone, branch, views in zip(self.model.backbones, self.branches, self.views)]
                logits = self.model.head(torch.cat(parts, dim=1))
            else:
                logits = self.model(self.branches[0](images))
            probs = torch.softmax(logits.float(), dim=1)
            return probs[:, self.columns] if self.reordered else probs

    class Exported(nn.Module):
        def __init__(self):
            super().__init__()
            names = models[0].class_names
            self.members = nn.ModuleList(
                Member(t, check_classes(t, names, models[0].source, use="in an ensemble")) for t in models)

        def forward(self, *images: torch.Tensor) -> torch.Tensor:
            return torch.stack([m(list(images)) for m in self.members]).mean(dim=0)

    return Exported().eval()


def graph_inputs(models: list[Trained]) -> list[dict]:
    """The graph's inputs: one per distinct resize and crop among the members and probe backbones."""
    from .reference import input_specs

    return input_specs([d for t in models for d in member_configs(t)])


# ----------------------------------------------------------------------------------------------------------------
# The check


def check_paths(models: list[Trained], photos: Sequence[str] | None) -> list[str]:
    """The check's photos: the readable ones of `photos` (at least MIN_CHECK_PHOTOS, the first MAX_CHECK_PHOTOS),
    or CHECK_PHOTOS test photos of the first run's dataset (else of data/food-101-tiny); then the readable
    photos of data/my-photos (an EXIF-rotated JPEG, a PNG with transparency, WebP, HEIC), when it is there.

    Raises:
        UserError: fewer than MIN_CHECK_PHOTOS readable photos in `photos` (their count in the message).
    """
    from ..data.splits import load_splits
    from .predict import find_photos, read_error

    if photos:
        found, given = [p for p, e in find_photos(photos) if e is None], f"--check-photos {' '.join(map(str, photos))}"
    else:
        config = models[0].config
        try:
            data_dir = config["data_dir"]
            test = load_splits(config.get("dataset", "food-101"), data_dir).test
        except (UserError, KeyError):
            data_dir = str(MY_PHOTOS.parent / "food-101-tiny")
            test = load_splits("food-101", data_dir).test
        found = [p for p, _ in test[:: max(1, len(test) // CHECK_PHOTOS)][:CHECK_PHOTOS]]
        given = f"the test photos of {data_dir}"
    paths = [p for p in found if read_error(p) is None]
    if len(paths) < MIN_CHECK_PHOTOS:
        raise UserError(f"The export's check needs at least {MIN_CHECK_PHOTOS} readable photos; {given} gives "
                        f"{len(paths)} ({len(found) - len(paths)} other file(s) are not readable photos). Give more "
                        "photos with --check-photos (files, folders or glob patterns).")
    paths = paths[:MAX_CHECK_PHOTOS]
    extra = [p for p, e in find_photos(MY_PHOTOS) if e is None and read_error(p) is None] if MY_PHOTOS.is_dir() else []
    return list(dict.fromkeys([*paths, *extra]))


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise UserError("The ONNX check needs onnxruntime: pip install onnxruntime (pinned in requirements.txt).") \
            from exc
    return onnxruntime


def run_onnx(path: str | Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Probabilities (N, C) from an ONNX file with onnxruntime (CPU) for {input name: (N, 3, S, S) array}."""
    session = _onnxruntime().InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], feeds)[0]


def _compare(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, int]:
    """(max |difference| of a probability, photos whose top-1 is the same)."""
    import numpy as np

    return float(np.abs(ours - theirs).max()), int((ours.argmax(1) == theirs.argmax(1)).sum())


def check_export(models: list[Trained], module: nn.Module, onnx_file: Path, reference_py: Path,
                 inputs: list[dict], paths: list[str], runs: list) -> dict:
    """The end-to-end check: FILE.py (in a process without helpers and torch) -> onnxruntime, against `predict`
    on the same photo files; and the graph against its PyTorch module on the same arrays (which side is wrong).

    Raises:
        RuntimeError: a top-1 differs or a probability differs by more than TOLERANCE (a bug).
    """
    import torch

    from .predict import predict_probs
    from .reference import run_isolated

    arrays = run_isolated(reference_py, paths)
    onnx_probs = run_onnx(onnx_file, arrays)
    with torch.no_grad():
        torch_probs = module(*[torch.from_numpy(arrays[i["name"]]) for i in inputs]).numpy()
    predicted, _ = predict_probs(models, paths, num_workers=0)
    graph_diff, graph_agree = _compare(onnx_probs, torch_probs)
    diff, agree = _compare(onnx_probs, predicted.numpy())
    n = len(paths)
    check = {"photos": n, "top1_agreement": f"{agree}/{n}", "max_abs_diff": diff, "tolerance": TOLERANCE,
             "against": "predict (PyTorch) on the photo files", "through": f"{reference_py.name} in a process "
             "without helpers and torch, then onnxruntime", "graph_max_abs_diff": graph_diff,
             "graph_top1_agreement": f"{graph_agree}/{n}"}
    for name, (d, a) in {"the graph against its PyTorch module on the same arrays": (graph_diff, graph_agree),
                         f"{reference_py.name} + onnxruntime against `predict` on the photo files": (diff, agree)}.items():
        if not math.isfinite(d) or d > TOLERANCE or a < n:
            raise RuntimeError(f"The export of {', '.join(map(str, runs))} fails its check, {name}: top-1 agrees on "
                               f"{a}/{n} photos, max |difference| of a probability {d:.2e} (allowed {TOLERANCE}). "
                               "Nothing was written.")
    return check


# ----------------------------------------------------------------------------------------------------------------
# Export


def export_onnx(model: str | Path | Sequence[str | Path], output: str | Path, *,
                check_photos: Sequence[str] | None = None) -> dict:
    """Export runs to one ONNX graph with its sidecar FILE.json and reference preprocessing FILE.py, checked end
    to end against `predict` on real photo files.

    Returns:
        {"output", "sidecar", "reference", "bytes", "inputs": {name: S}, "classes", "check": {"photos",
        "top1_agreement", "max_abs_diff" (against `predict`), "tolerance", "graph_max_abs_diff", ...}}

    Raises:
        UserError: a bad --output (one that would land in a run folder or on a file a run owns, or replace a file
            export did not write), fewer than 8 readable --check-photos, a missing onnxruntime.
        RuntimeError: the check fails (a bug: nothing is written).
    """
    import tempfile

    import torch

    from ..base.io import atomic_path, atomic_write_text
    from .reference import reference_text
    from .runs import load_trained

    out = Path(output)
    sidecar, reference_py = _check_output(out)
    _onnxruntime()
    runs = [model] if isinstance(model, (str, Path)) else list(model)
    models = [load_trained(r, device="cpu") for r in runs]
    inputs = graph_inputs(models)
    paths = check_paths(models, check_photos)
    module = exported_module(models, inputs)
    text = reference_text(out.name, inputs)
    with atomic_path(out) as tmp, tempfile.TemporaryDirectory(prefix="export-") as folder:
        example = tuple(torch.zeros(2, 3, i["image_size"], i["image_size"]) for i in inputs)
        names = [i["name"] for i in inputs]
        with torch.no_grad():
            torch.onnx.export(module, example, str(tmp), input_names=names, output_names=["probabilities"],
                              dynamic_axes={**{n: {0: "batch"} for n in names}, "probabilities": {0: "batch"}},
                              opset_version=OPSET, dynamo=False)
        draft = Path(folder) / reference_py.name
        draft.write_text(text)
        check = check_export(models, module, tmp, draft, inputs, paths, runs)
        atomic_write_text(reference_py, text)
        atomic_write_text(sidecar, json.dumps(sidecar_info(models, runs, inputs, out, check), indent=1) + "\n")
    info = {"output": str(out), "sidecar": str(sidecar), "reference": str(reference_py), "bytes": out.stat().st_size,
            "inputs": {i["name"]: i["image_size"] for i in inputs}, "classes": len(models[0].class_names),
            "check": check}
    _logger.info("Exported %s to %s (%.1f MB) with %s; onnxruntime through it agrees with `predict` on %s photos "
                 "(top-1), max |diff| %.1e", " + ".join(map(str, runs)), out, info["bytes"] / 1e6, reference_py.name,
                 check["top1_agreement"], check["max_abs_diff"])
    return info


def _check_output(out: Path) -> tuple[Path, Path]:
    """FILE.json and FILE.py beside --output FILE.onnx, after refusing an output whose FILE.onnx, FILE.json or
    FILE.py would land on a file a run owns (`run_folder.check_output_path`), or on a .json or .py export did
    not write.

    Raises:
        UserError: naming the file (or folder) and what to do.
    """
    from .reference import is_reference

    if out.suffix.lower() != ".onnx" or out.is_dir():
        raise UserError(f"--output {out} must be a .onnx file path (FILE.json and FILE.py are written beside it).")
    if not out.parent.is_dir():
        raise UserError(f"--output {out}: the folder {out.parent} does not exist. Create it or give another path.")
    sidecar, reference_py = out.with_suffix(".json"), out.with_suffix(".py")
    for path in (out, sidecar, reference_py):  # export writes all three: none may be a file a run owns
        try:
            check_output_path(path, "--output")
        except UserError as exc:
            if path == out:
                raise
            raise UserError(f"--output {out} writes {path.name} beside it too, and {exc}".replace(
                "--output " + str(path) + " is", "that is", 1)) from None
    if sidecar.exists() and not _is_sidecar(sidecar):
        raise UserError(f"--output {out} would replace {sidecar}, which is not a sidecar written by export. Move it "
                        "or give another --output name.")
    if reference_py.exists() and not is_reference(reference_py):
        raise UserError(f"--output {out} would replace {reference_py}, which export did not write (its first line "
                        "is not export's header). Move it or give another --output name.")
    return sidecar, reference_py


def _is_sidecar(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == "onnx" and "classes" in data


def sidecar_info(models: list[Trained], runs: list, inputs: list[dict], out: Path, check: dict) -> dict:
    """What a user of the ONNX file needs: classes, labels, inputs, each preprocessing step, accuracy, origin."""
    from ..data.splits import pretty
    from .reference import resize_of, steps

    names = {(i["image_size"], i["short_side"], i["interpolation"]): i["name"] for i in inputs}
    users: dict[str, list[str]] = {i["name"]: [] for i in inputs}
    for trained, run in zip(models, runs):
        members = getattr(trained.model, "members", None) or [{"backbone": trained.config.get("backbone"),
                                                                "data_config": trained.data_config}]
        for m in members:
            users[names[resize_of(m["data_config"])]].append(f"{run} ({m['backbone']})")
    return {
        "format": "onnx", "opset": OPSET,
        "classes": list(models[0].class_names), "labels": [pretty(c) for c in models[0].class_names],
        "inputs": [{"name": i["name"], "shape": ["N", 3, i["image_size"], i["image_size"]], "dtype": "float32",
                    "range": [0, 1], "layout": "NCHW, RGB", "image_size": i["image_size"],
                    "short_side": i["short_side"], "crop_pct": i["crop_pct"], "interpolation": i["interpolation"],
                    "read_by": users[i["name"]]} for i in inputs],
        "output": {"name": "probabilities", "shape": ["N", len(models[0].class_names)], "softmax": True},
        "preprocessing": {"reference": out.with_suffix(".py").name,
                          "use": "preprocess(path) -> float32 (1, 3, S, S) of the first input; inputs(path) -> "
                                 "{name: array} of every input, the feed of onnxruntime's session.run",
                          **steps(inputs)},
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


def load_reference(path: str | Path):
    """The FILE.py written beside an exported FILE.onnx, as a module (`preprocess`, `inputs`, `INPUTS`)."""
    from .reference import is_reference, load

    source = Path(path).with_suffix(".py")
    if not is_reference(source):
        raise UserError(f"{source} is missing or not written by export (an export older than FILE.py?): export the "
                        "model again with `python -m helpers export`.")
    return load(source)


def reference_feeds(reference, paths: Sequence[str]) -> dict[str, np.ndarray]:
    """{input name: float32 (N, 3, S, S)} of photos, through FILE.py's `inputs`."""
    import numpy as np

    feeds = [reference.inputs(p) for p in paths]
    return {name: np.concatenate([f[name] for f in feeds]) for name in reference.INPUTS}


def predict_onnx(path: str | Path, photos, *, top_k: int = 5, batch_size: int = 32):
    """`helpers.predict` through an exported ONNX file with onnxruntime (CPU): the same table, from the classes
    of its sidecar and the photos prepared by its FILE.py."""
    import torch

    from .predict import check_photos, make_table, top_row

    info = read_sidecar(path)
    reference = load_reference(path)
    session = _onnxruntime().InferenceSession(str(path), providers=["CPUExecutionProvider"])
    checked = check_photos(photos)
    readable = [p for p, e in checked if e is None]
    rows = {}
    for start in range(0, len(readable), batch_size):
        batch = readable[start:start + batch_size]
        probs = session.run(["probabilities"], reference_feeds(reference, batch))[0]
        rows.update({p: top_row(p, torch.from_numpy(prob), info["classes"], top_k) for p, prob in zip(batch, probs)})
    return make_table(checked, rows)


def speed(model: str | Path | Sequence[str | Path], onnx_file: str | Path, photos, *, batch_size: int = 8,
          repeats: int = 3):
    """Size and images/s of a run in PyTorch and of its ONNX export in onnxruntime, on this machine's CPU, on
    the same photos prepared by FILE.py (best of `repeats` passes, after one warm-up pass).

    Returns:
        A pandas table: engine, file MB, parameters (millions), images/s.
    """
    import pandas as pd
    import torch

    from .predict import check_photos
    from .runs import load_trained

    runs = [model] if isinstance(model, (str, Path)) else list(model)
    models = [load_trained(r, device="cpu") for r in runs]
    inputs = graph_inputs(models)
    module = exported_module(models, inputs)
    paths = [p for p, e in check_photos(photos) if e is None][:batch_size]
    feeds = reference_feeds(load_reference(onnx_file), paths)
    tensors = [torch.from_numpy(feeds[i["name"]]) for i in inputs]
    session = _onnxruntime().InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])

    def best(run) -> float:
        times = []
        for _ in range(repeats + 1):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        return len(paths) / min(times[1:])

    with torch.no_grad():
        torch_speed = best(lambda: module(*tensors))
    onnx_speed = best(lambda: session.run(["probabilities"], feeds))
    params = sum(p.numel() for p in module.parameters()) / 1e6
    weights = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()]) / 1e6
    return pd.DataFrame([
        {"engine": "PyTorch", "MB": weights, "what": "float32 weights in memory", "parameters (M)": params,
         "images/s": torch_speed},
        {"engine": "onnxruntime", "MB": Path(onnx_file).stat().st_size / 1e6, "what": "the .onnx file",
         "parameters (M)": params, "images/s": onnx_speed}])
