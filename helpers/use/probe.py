"""Linear probes: multinomial logistic regression on cached, L2-normalised features (the CLIP protocol).

    python -m helpers probe --features features/siglip features/clip-l --output-dir runs/probe-siglip-clip

Each features folder (`helpers.features`) is one frozen backbone's view of the same photos; each is
L2-normalised on its own (so every backbone weighs the same) and they are concatenated. The L2 strength of the
weights is chosen on the val split by a sweep on a log grid refined around the best value (CLIP sweeps 96 values;
a coarse grid of 8 and 4 refinements do here), and the probe fitted on train with that strength is tested once.
CLIP refits on train + val; this probe does not, to keep val honest: a fine-tune started from the probe's head
(`--init-from`) picks its best epoch on val, and a head fitted on val made that choice meaningless (val 100% after
the head-only epoch on food-101-mini). Every fit is full-batch
L-BFGS with a strong-Wolfe line search in torch, on the device.

The run folder is a model like any other: `best.pt` holds the linear head, the class list and, per backbone,
its name, pretrained source (a file by its absolute path), the SHA-256 of its weights, data config, views and
mean feature norm (plain data, `weights_only` loading), so `evaluate`, `ensemble`, `--teacher` and `--init-from`
rebuild the backbones, check that they have the weights the features were computed with (exit 2 naming the
source otherwise), and run the probe on images. Random backbone weights (`--pretrained none` features) are
stored in `best.pt` itself. One probe at a time writes a folder (the run lock).
It also holds `sweep.csv` (val top-1 and loss per strength), `summary.json` and the test predictions CSV.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..base.config import CHOICES
from ..base.errors import UserError
from ..base.mps_check import device_code
from .features import SPLITS, _write_atomic, embed, read_manifest, read_split
from .runs import load_trained, member_model

_logger = logging.getLogger(__name__)

COARSE_GRID = tuple(10.0 ** k for k in range(-7, 1))  # L2 strengths first tried (mean-loss scale)

PREDICTIONS = "test_predictions.csv"


def add_command(subparsers: argparse._SubParsersAction) -> None:
    """Add the `probe` sub-command."""
    p = subparsers.add_parser("probe", help="fit a linear probe on cached features; prints a JSON line last")
    p.add_argument("--features", nargs="+", required=True, help="features folders of the same photos")
    p.add_argument("--output-dir", required=True, help="the probe's run folder (a model for evaluate/ensemble)")
    p.add_argument("--device", choices=CHOICES["device"], default="auto")
    p.add_argument("--max-iter", type=int, default=1000, help="L-BFGS iterations per fit")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> dict:
    return train_probe(args.features, args.output_dir, device=args.device, max_iter=args.max_iter)


# ----------------------------------------------------------------------------------------------------------------
# Features


def load_probe_data(folders: list[str | Path]) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list[dict], dict]:
    """The concatenated, per-backbone L2-normalised features of every split, checked to be of the same photos.

    Returns:
        ({split: (x (N, sum D) float32, labels (N,))}, one manifest per folder with its "mean_norm" (the mean
        L2 norm of its train features) added, the test split's metadata (class_names, paths)).

    Raises:
        UserError: a folder without a finished split, or folders of other classes or other photos.
    """
    if not folders:
        raise UserError("Give at least one features folder (written by `python -m helpers features`).")
    resolved = [Path(f).expanduser().resolve() for f in folders]
    twice = sorted({str(f) for f in folders if resolved.count(Path(f).expanduser().resolve()) > 1})
    if twice:
        raise UserError(f"--features names {', '.join(twice)} more than once: each backbone's features count once. "
                        "Give each folder once.")
    manifests = [read_manifest(f) for f in folders]
    for folder, manifest in zip(folders, manifests):
        if manifest["pretrained"] == "none":  # random weights: the probe must carry them (see `_write_run`)
            manifest["backbone_weights"] = _checked_random_weights(folder, manifest)
    data, first_meta = {}, {}
    for split in SPLITS:
        parts, labels = [], None
        for folder, manifest in zip(folders, manifests):
            x, y, meta = read_split(folder, split)
            if split == "train":
                manifest["mean_norm"] = float(x.norm(dim=1).mean())
            if split not in first_meta:
                first_meta[split] = {**meta, "folder": str(folder)}
            _check_same_photos(first_meta[split], {**meta, "folder": str(folder)}, split)
            parts.append(F.normalize(x, dim=1))
            labels = y
        data[split] = (torch.cat(parts, dim=1), labels)
    return data, manifests, first_meta["test"]


def _checked_random_weights(folder: str | Path, manifest: dict) -> dict[str, torch.Tensor]:
    """The random backbone weights of a `--pretrained none` features folder, checked against its manifest."""
    from ..training.models import weights_digest
    from .features import read_backbone_weights

    weights = read_backbone_weights(folder)
    model = member_model(manifest, weights, 0, str(folder), check=False)
    if weights_digest(model) != manifest["weights_sha256"]:
        raise UserError(f"{Path(folder) / 'backbone.safetensors'} holds other weights than the features of {folder} "
                        "were computed with. Compute the features again into a new folder.")
    return weights


def _check_same_photos(ref: dict, meta: dict, split: str) -> None:
    if meta["class_names"] != ref["class_names"]:
        raise UserError(
            f"{meta['folder']} holds features of other classes than {ref['folder']} ({len(meta['class_names'])} "
            f"classes: {', '.join(meta['class_names'][:3])}, ... against {len(ref['class_names'])}: "
            f"{', '.join(ref['class_names'][:3])}, ...). Probe features of the same dataset.")
    if meta["paths"] != ref["paths"]:
        differ = next((a, b) for a, b in zip(meta["paths"] + [None], ref["paths"] + [None]) if a != b)
        raise UserError(
            f"The {split} split of {meta['folder']} holds other photos than that of {ref['folder']} "
            f"({len(meta['paths'])} against {len(ref['paths'])} photos; first difference {differ[0]} / {differ[1]}). "
            "Compute every features folder from the same dataset with the same --val-fraction and --seed.")


# ----------------------------------------------------------------------------------------------------------------
# Fitting


@device_code
def fit_logreg(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, *, max_iter: int = 1000,
               init: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression: minimise mean cross-entropy + l2 / 2 * ||W||^2 (bias not penalised),
    full batch, with L-BFGS and a strong-Wolfe line search. scikit-learn's `LogisticRegression(C=...)` solves
    the same problem with C = 1 / (l2 * N).

    Args:
        x: (N, D) float32 features on the device; y: (N,) class indices.
        init: a warm start (W, b), e.g. the fit at the next stronger penalty of a sweep.
    Returns:
        W (C, D) and b (C,), detached.
    """
    w = torch.zeros(num_classes, x.shape[1], device=x.device) if init is None else init[0].clone()
    b = torch.zeros(num_classes, device=x.device) if init is None else init[1].clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-7,
                            tolerance_change=1e-10, line_search_fn="strong_wolfe")
    y = y.to(x.device)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + 0.5 * l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with _threads_for(x):
        opt.step(closure)
    return w.detach(), b.detach()


@contextlib.contextmanager
def _threads_for(x: torch.Tensor):
    """One CPU thread for small problems (the tiny and mini sets): each L-BFGS step is a few small matmuls, and
    on a busy 2-core machine syncing two threads made a fit 20x slower (27 s against 1.3 s measured)."""
    if x.device.type != "cpu" or x.numel() > 2**24:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@device_code
def _score(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> dict:
    logits = x @ w.T + b
    y = y.to(x.device)
    return {"top1": 100.0 * float((logits.argmax(1) == y).float().mean()),
            "loss": float(F.cross_entropy(logits, y))}


def sweep_l2(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], num_classes: int, *,
             max_iter: int = 1000) -> list[dict]:
    """Val top-1 and loss of probes fitted on train for L2 strengths on a log grid, then at the geometric
    midpoints (and quarter points) around the best: [{"l2", "top1", "loss"}, ...] sorted by strength.

    The grid is walked from the strongest penalty down, each fit warm-started from the previous one.
    """
    results: dict[float, dict] = {}

    def run(strengths) -> None:
        init = None
        for l2 in sorted(strengths, reverse=True):
            if l2 in results:
                continue
            w, b = fit_logreg(*train, num_classes, l2, max_iter=max_iter, init=init)
            init = (w, b)
            results[l2] = {"l2": l2, **_score(w, b, *val)}
            _logger.info("probe l2 %.2e: val top-1 %.2f, loss %.3f", l2, results[l2]["top1"], results[l2]["loss"])

    run(COARSE_GRID)
    for step in (0.5, 0.25):
        best = _best(results.values())["l2"]
        run([best * 10 ** step, best * 10 ** -step])
    return sorted(results.values(), key=lambda r: r["l2"])


def _best(results) -> dict:
    """The highest val top-1; ties go to the lower val loss."""
    return max(results, key=lambda r: (round(r["top1"], 6), -r["loss"]))


def train_probe(features: list[str | Path], output_dir: str | Path, *, device: str = "auto",
                max_iter: int = 1000) -> dict:
    """Sweep the L2 strength on val, fit on train at the best one, test once, and write the probe's run folder.

    Returns:
        {"top1", "top5", "n"} on the test split (what `evaluate` prints).

    Raises:
        UserError: the folder is not new, is in use by another command (the run lock) or is owned by another run
            (`run_folder.check_output_path`), or bad features.
    """
    from ..base.lock import run_lock
    from ..training.run_folder import check_output_path

    out = Path(output_dir)
    check_output_path(out, "--output-dir")
    _check_new_folder(out)
    with run_lock(out, f"--output-dir {out}"):
        _check_new_folder(out)  # a probe that finished while this one waited for the lock
        return _train_probe(features, out, device, max_iter)


def _check_new_folder(out: Path) -> None:
    from ..base.lock import LOCK_NAME

    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir {out} is a file: give a new folder.")
    if out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise UserError(f"--output-dir {out} already exists and is not an empty folder: give a new folder.")


def _train_probe(features: list[str | Path], out: Path, device: str, max_iter: int) -> dict:
    from ..base.devices import get_device
    from ..training.metrics import metrics_from_probs, predictions_csv

    data, manifests, test_meta = load_probe_data(features)
    dev = get_device(device)
    class_names = test_meta["class_names"]
    n_classes = len(class_names)
    on = {split: (x.to(dev), y.to(dev)) for split, (x, y) in data.items()}
    sweep = sweep_l2(on["train"], on["val"], n_classes, max_iter=max_iter)
    best = _best(sweep)
    w, b = fit_logreg(*on["train"], n_classes, best["l2"], max_iter=max_iter)
    probs = torch.softmax(on["test"][0] @ w.T + b, dim=1).cpu()
    test = metrics_from_probs(probs, data["test"][1])
    _logger.info("Probe on %s: l2 %.2e (val top-1 %.2f), test top-1 %.2f%%", " + ".join(m["backbone"] for m in manifests),
                 best["l2"], best["top1"], test["top1"])
    root = Path(manifests[0]["data_dir"])
    samples = [(str(root / p), int(label)) for p, label in zip(test_meta["paths"], data["test"][1])]
    _write_run(out, manifests, class_names, w.cpu(), b.cpu(), best, sweep, test)
    _write_atomic(out / PREDICTIONS, predictions_csv(samples, probs, class_names).encode("utf-8", "surrogateescape"))
    return test


def _write_run(out: Path, manifests: list[dict], class_names: list[str], w: torch.Tensor, b: torch.Tensor, best: dict,
               sweep: list[dict], test: dict) -> None:
    from ..training import checkpoint
    from ..training.run_folder import weights_record

    first = manifests[0]
    members = [{"backbone": m["backbone"], "pretrained": m["pretrained"], "weights_sha256": m["weights_sha256"],
                "data_config": m["data_config"], "views": m["views"], "num_features": m["num_features"],
                "mean_norm": m["mean_norm"]} for m in manifests]
    config = {"backbone": "+".join(m["backbone"] for m in manifests), "dataset": first["dataset"],
              "data_dir": first["data_dir"], "val_fraction": first["val_fraction"],
              "test_fraction": first["test_fraction"], "seed": first["seed"]}
    state = {"model": {"weight": w, "bias": b}, "config": config, "class_names": class_names,
             "data_config": canvas_config([m["data_config"] for m in members]),
             "probe": {"members": members, "l2": best["l2"], "val_top1": best["top1"], "fit_on": "train"},
             "version": checkpoint.VERSION}
    # A backbone of random weights (`--pretrained none`) is stored: no source could rebuild it. The others are
    # recorded by source and SHA-256 (checked at every load), not stored: a ViT-L would add 1.2 GB to a run
    # whose head is a few MB, and hub and offline weights (and a weights file, by its absolute path) stay.
    stored = [m.get("backbone_weights") for m in manifests]
    if any(w is not None for w in stored):
        state["probe"]["backbone_weights"] = stored
    buffer = io.BytesIO()
    torch.save(state, buffer)
    _write_atomic(out / checkpoint.BEST, buffer.getvalue())
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["l2", "top1", "loss"])
    writer.writeheader()
    writer.writerows(sweep)
    _write_atomic(out / "sweep.csv", text.getvalue().encode())
    summary = {"test_top1": test["top1"], "test_top5": test["top5"], "test_n": test["n"], "l2": best["l2"],
               "val_top1": best["top1"], "features": [m["backbone"] for m in manifests],
               "weights": weights_record(out / checkpoint.BEST, class_names)}  # loading checks best.pt by it
    _write_atomic(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())


def read_sweep(run: str | Path) -> list[dict]:
    """The L2 sweep of a probe run: [{"l2", "top1", "loss"}, ...]."""
    with open(Path(run) / "sweep.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def read_summary(run: str | Path) -> dict:
    """A probe run's test result as `evaluate` gives it ({"top1", "top5", "n"}), with its val top-1 and chosen L2
    strength: {"top1", "top5", "n", "val_top1", "l2", "features"}."""
    data = json.loads((Path(run) / "summary.json").read_text())
    return {"top1": data["test_top1"], "top5": data["test_top5"], "n": data["test_n"], "val_top1": data["val_top1"],
            "l2": data["l2"], "features": data["features"]}


@torch.no_grad()
def one_batch(run: str | Path, data_dir: str | Path, *, n: int = 8, dataset: str = "food-101") -> dict:
    """`n` test photos (spread over the split) through a probe run, as the course shows it.

    Returns:
        {"features": (n, D) the L2-normalised features the head reads, "weight": (C, D) the fitted weights,
        "logits": (n, C), "labels": (n,), "class_names": [...]}, on the CPU.
    """
    from ..data.augment import eval_transform
    from ..data.loaders import ImageDataset
    from ..data.splits import load_splits

    trained = load_trained(run)
    d = trained.data_config
    test = load_splits(dataset, str(data_dir)).test
    photos = ImageDataset(test[:: max(1, len(test) // n)][:n],
                          eval_transform(d["image_size"], d["mean"], d["std"], d["crop_pct"], d["interpolation"]))
    x = torch.stack([photos[i][0] for i in range(len(photos))])
    features = trained.model.features(x)
    return {"features": features, "weight": trained.model.head.weight.detach().clone(),
            "logits": trained.model.head(features), "labels": torch.tensor([photos[i][1] for i in range(len(photos))]),
            "class_names": trained.class_names}


# ----------------------------------------------------------------------------------------------------------------
# The probe as a model


def canvas_config(configs: list[dict]) -> dict:
    """The preprocessing `evaluate` gives a probe's input: that of its member with the largest input size.
    The other members crop and resize it to their own (`ProbeModel`)."""
    best = max(configs, key=lambda d: (d["image_size"], -d["crop_pct"]))
    return {**best, "mean": tuple(best["mean"]), "std": tuple(best["std"])}


class _Embedder(nn.Module):
    def __init__(self, backbone: nn.Module, views: int):
        super().__init__()
        self.backbone, self.views = backbone, views

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return embed(self.backbone, x, self.views)


@device_code
def probe_tta_probs(trained, samples: list, *, tta: int = 1, image_size: int | None = None, batch_size: int = 32,
                    device: torch.device | None = None, num_workers: int = -1,
                    amp: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """`helpers.use.inference.tta_probs` for a probe: every backbone reads the photos through its own evaluation
    preprocessing (the recipe of its cached features; `image_size` overrides every member's size), its
    features are L2-normalised and concatenated, and the head's softmax is averaged over `tta` views.

    Returns:
        probs (N, C) and labels (N,), in the order of `samples`.
    """
    from ..base.devices import amp_dtype
    from ..data.augment import DeviceNormalize, tta_transforms
    from ..data.loaders import ImageDataset, make_loader
    from ..training.evaluation import predict_logits

    model = trained.model
    device = device or next(model.parameters()).device
    total = None
    for view in range(tta):
        parts = []
        for backbone, member in zip(model.backbones, model.members):
            d = member["data_config"]
            transform = tta_transforms(view + 1, image_size or d["image_size"], d["mean"], d["std"], d["crop_pct"],
                                       d["interpolation"], uint8=True)[view]
            loader = make_loader(ImageDataset(samples, transform), batch_size=batch_size, shuffle=False, seed=0,
                                 num_workers=num_workers)
            feats, _, index = predict_logits(_Embedder(backbone, member["views"]), loader, device,
                                             amp_dtype(device, amp), normalize=DeviceNormalize(d["mean"], d["std"]))
            parts.append(F.normalize(feats[torch.argsort(index)], dim=1))
        with torch.no_grad():
            logits = model.head(torch.cat(parts, dim=1).to(model.head.weight.device)).float().cpu()
        probs = torch.softmax(logits, dim=1)
        total = probs if total is None else total + probs
    return total / tta, torch.tensor([label for _, label in samples])
