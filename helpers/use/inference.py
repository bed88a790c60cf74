"""Using trained models on labelled photos: predict a split (with test-time augmentation), evaluate, ensemble.

    helpers.evaluate("runs/b0", dataset="food-101", data_dir="data/food-101", split="test", tta=2)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from ..base.devices import amp_dtype, get_device
from ..base.errors import UserError
from ..base.io import WriteError, atomic_open, file_status
from ..data import augment
from ..data.loaders import ImageDataset, make_loader
from ..data.splits import Sample, load_splits, read_test_folder
from ..training import checkpoint, test_predictions
from ..training.evaluation import predict_logits
from ..training.metrics import metrics_from_probs, write_predictions
from ..training.run_folder import check_output_path
from ..training.trained import Trained, check_classes
from .probe import probe_tta_probs
from .runs import load_trained

_logger = logging.getLogger(__name__)

TEST_FOLDER = "test-folder"  # the `dataset` of `ensemble --test-dir`: every image of DIR/<class>/ is evaluated


def tta_probs(trained: Trained, samples: list[Sample], *, tta: int = 1, image_size: int | None = None,
              batch_size: int = 32, device: torch.device | None = None, num_workers: int = -1,
              amp: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities averaged over `tta` deterministic views (view 0 is plain evaluation).

    Args:
        image_size: evaluate at another resolution than the model was trained at (None: its own).
    Returns:
        probs (N, C) and labels (N,), in the order of `samples`.
    """
    if getattr(trained.model, "is_probe", False):  # a linear probe: each backbone on its own preprocessing
        return probe_tta_probs(trained, samples, tta=tta, image_size=image_size, batch_size=batch_size,
                               device=device, num_workers=num_workers, amp=amp)
    device = device or next(trained.model.parameters()).device
    d = trained.data_config
    size = image_size or d["image_size"]
    views = augment.tta_transforms(tta, size, d["mean"], d["std"], d["crop_pct"], d["interpolation"], uint8=True)
    normalize = augment.DeviceNormalize(d["mean"], d["std"])
    total = None
    for view in views:
        loader = make_loader(ImageDataset(samples, view), batch_size=batch_size, shuffle=False, seed=0,
                             num_workers=num_workers)
        logits, labels, index = predict_logits(trained.model, loader, device, amp_dtype(device, amp), normalize=normalize)
        probs = torch.softmax(logits, dim=1)[torch.argsort(index)]
        total = probs if total is None else total + probs
    labels = torch.tensor([label for _, label in samples])
    return total / len(views), labels


def _samples(dataset: str, data_dir: str, split: str, config: dict) -> tuple[list[Sample], list[str]]:
    if dataset == TEST_FOLDER:  # every image of a folder of class folders (ensemble --test-dir)
        class_names, samples = read_test_folder(data_dir)
        return samples, class_names
    splits = load_splits(dataset, data_dir, val_fraction=config.get("val_fraction", 0.1),
                         test_fraction=config.get("test_fraction", 0.2), seed=config.get("seed", 42))
    return splits.get(split), splits.class_names


@dataclass
class MemberProbs:
    """One model's softmax on a split, in the dataset's class order (`member_probs`)."""

    probs: torch.Tensor
    labels: torch.Tensor
    samples: list[Sample]
    class_names: list[str]
    backbone: str
    image_size: int


def member_probs(path: str | Path, *, dataset: str, data_dir: str, split: str = "test", tta: int = 1,
                 image_size: int | None = None, batch_size: int = 32, device: torch.device, use_ema: bool = False,
                 num_workers: int = -1, use: str = "evaluated", cache: str | Path | None = None,
                 photos: tuple[list[Sample], list[str]] | None = None) -> MemberProbs:
    """A trained model's softmax on a split (its own preprocessing, `tta` views), its columns in the dataset's
    class order.

    Args:
        cache: a folder of earlier results (a course's: `Course.evaluate` and `Course.ensemble` evaluate the same
            runs in several notebooks). A result is reused only for the same weights file (device, inode, size and
            modification time: a retrained run replaces it), the same split files and every same setting; None: no
            cache.
        photos: (samples, class names) to predict instead of the split as this run rebuilds it (an ensemble's
            later members predict its first member's photos; a run's val split depends on its own seed).
    """
    key = _cache_key(path, dataset, data_dir, split, tta, image_size, batch_size, device, use_ema) if cache else None
    if key is not None:
        try:
            kept = MemberProbs(**torch.load(Path(cache) / f"{key}.pt", weights_only=True))
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, TypeError, KeyError):  # none, or damaged
            kept = None
        if kept is not None and (photos is None or (kept.samples, kept.class_names) == photos):
            return kept
    if tta == 1 and split == "test" and dataset == "food-101":
        own = _own_test(path, data_dir, image_size, device, use_ema, photos)
        if own is not None:
            return own
    trained = load_trained(path, use_ema=use_ema, device=device)
    own = _samples(dataset, data_dir, split, trained.config)
    samples, class_names = photos or own
    columns = check_classes(trained, class_names, data_dir, use=use)
    probs, labels = tta_probs(trained, samples, tta=tta, image_size=image_size, batch_size=batch_size, device=device,
                              num_workers=num_workers)
    if columns is not None:
        probs = probs[:, columns]
    result = MemberProbs(probs, labels, samples, class_names, trained.config["backbone"],
                         trained.data_config["image_size"])
    if key is not None and (samples, class_names) == own:  # the cache holds each run's own split only
        _keep(dataclasses.asdict(result), Path(cache) / f"{key}.pt")
    return result


def _own_test(path: str | Path, data_dir: str, image_size: int | None, device: torch.device, use_ema: bool,
              photos: tuple[list[Sample], list[str]] | None) -> MemberProbs | None:
    """The test predictions the run computed at the end of its training (`training.test_predictions`), when they
    are what would be computed now: the same weights file, photos, view, size, device and precision."""
    try:
        weights = checkpoint.resolve(path, checkpoint.BEST)
    except UserError:
        return None
    kept = test_predictions.read(weights, use_ema=use_ema, image_size=image_size, device=device,
                                 dtype=amp_dtype(device, True))
    if kept is None:
        return None
    samples, class_names = _samples("food-101", data_dir, "test", kept["split"])
    if (samples, class_names) != (kept["samples"], kept["class_names"]) or photos not in (None, (samples, class_names)):
        return None
    _logger.info("%s: the test predictions of its final test are used (the same weights, photos and preprocessing)",
                 weights.parent)
    return MemberProbs(kept["probs"], kept["labels"], samples, class_names, kept["backbone"], kept["image_size"])


def _keep(result: dict, file: Path) -> None:
    """Write a cache entry; a cache that cannot be written (a full disk, another process writing the same entry)
    costs only the time of computing it again."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(file, durable=False) as f:
            torch.save(result, f)
    except (OSError, WriteError) as exc:
        _logger.debug("not kept in the cache: %s", exc)


def _cache_key(path: str | Path, dataset: str, data_dir: str, split: str, tta: int, image_size: int | None,
               batch_size: int, device: torch.device, use_ema: bool) -> str | None:
    """What `member_probs`' result depends on, hashed; None when it cannot be told (no weights file, another
    dataset kind)."""
    try:
        weights = checkpoint.resolve(path, checkpoint.BEST)
        meta = Path(data_dir) / "meta"
        files = [weights, *(meta / f"{n}.txt" for n in ("classes", "train", "test"))]
        stats = [file_status(f) for f in files]
    except (OSError, UserError):
        return None
    if dataset != "food-101":
        return None
    settings = [stats, str(Path(data_dir).resolve()), split, tta, image_size, batch_size, str(device), use_ema]
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:32]


def evaluate(checkpoint_path: str | Path, *, dataset: str, data_dir: str, split: str = "test", tta: int = 1,
             image_size: int | None = None, batch_size: int = 32, device: str = "auto", use_ema: bool = False,
             predictions: str | Path | None = None, num_workers: int = -1, cache: str | Path | None = None) -> dict:
    """Evaluate a trained model on a split; optionally write per-image predictions to a CSV file.

    The val split is rebuilt with the run's own seed and fraction, so it is the split the run held out.

    Args:
        cache: a folder where results are kept and reused (`member_probs`); None: none.

    Returns:
        {"top1": %, "top5": %, "n": images}

    Raises:
        UserError: `predictions` names a file a run owns (`run_folder.check_output_path`), before any work.
    """
    if predictions:
        check_output_path(predictions, "--predictions")
    member = member_probs(checkpoint_path, dataset=dataset, data_dir=data_dir, split=split, tta=tta,
                          image_size=image_size, batch_size=batch_size, device=get_device(device), use_ema=use_ema,
                          num_workers=num_workers, cache=cache)
    if predictions:
        write_predictions(predictions, member.samples, member.probs, member.class_names)
    return metrics_from_probs(member.probs, member.labels)


def ensemble(models: list[str | Path], *, dataset: str, data_dir: str, split: str = "test", tta: int = 1,
             batch_size: int = 32, device: str = "auto", predictions: str | Path | None = None,
             num_workers: int = -1, cache: str | Path | None = None) -> dict:
    """Average the softmax of several trained models, each with its own preprocessing and input size.

    Args:
        cache: a folder where each member's result is kept and reused (`member_probs`); None: none.

    Returns:
        {"top1", "top5", "n", "members": [{"model", "backbone", "image_size", "top1", "top5"}, ...]}
    """
    if not models:
        raise UserError("Give at least one model (a run folder or checkpoint) to ensemble.")
    if predictions:
        check_output_path(predictions, "--predictions")
    dev = get_device(device)
    total, members, first = None, [], None
    for path in models:
        member = member_probs(path, dataset=dataset, data_dir=data_dir, split=split, tta=tta, batch_size=batch_size,
                              device=dev, num_workers=num_workers, use="in an ensemble", cache=cache,
                              photos=(first.samples, first.class_names) if first else None)
        first = first or member
        scores = metrics_from_probs(member.probs, member.labels)
        members.append({"model": str(path), "backbone": member.backbone, "image_size": member.image_size,
                        "top1": scores["top1"], "top5": scores["top5"]})
        total = member.probs if total is None else total + member.probs
    labels, samples, class_names = first.labels, first.samples, first.class_names
    mean = total / len(models)
    if predictions:
        write_predictions(predictions, samples, mean, class_names)
    return {**metrics_from_probs(mean, labels), "members": members}
