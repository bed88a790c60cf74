"""Using trained models on labelled photos: predict a split (with test-time augmentation), evaluate, ensemble.

    helpers.evaluate("runs/b0", dataset="food-101", data_dir="data/food-101", split="test", tta=2)
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..base.devices import amp_dtype, get_device
from ..base.errors import UserError
from ..data import augment
from ..data.loaders import ImageDataset, make_loader
from ..data.splits import Sample, load_splits, read_test_folder
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


def evaluate(checkpoint_path: str | Path, *, dataset: str, data_dir: str, split: str = "test", tta: int = 1,
             image_size: int | None = None, batch_size: int = 32, device: str = "auto", use_ema: bool = False,
             predictions: str | Path | None = None, num_workers: int = -1) -> dict:
    """Evaluate a trained model on a split; optionally write per-image predictions to a CSV file.

    The val split is rebuilt with the run's own seed and fraction, so it is the split the run held out.

    Returns:
        {"top1": %, "top5": %, "n": images}

    Raises:
        UserError: `predictions` names a file a run owns (`run_folder.check_output_path`), before any work.
    """
    if predictions:
        check_output_path(predictions, "--predictions")
    dev = get_device(device)
    trained = load_trained(checkpoint_path, use_ema=use_ema, device=dev)
    samples, class_names = _samples(dataset, data_dir, split, trained.config)
    columns = check_classes(trained, class_names, data_dir)
    probs, labels = tta_probs(trained, samples, tta=tta, image_size=image_size, batch_size=batch_size, device=dev,
                              num_workers=num_workers)
    if columns is not None:
        probs = probs[:, columns]
    if predictions:
        write_predictions(predictions, samples, probs, class_names)
    return metrics_from_probs(probs, labels)


def ensemble(models: list[str | Path], *, dataset: str, data_dir: str, split: str = "test", tta: int = 1,
             batch_size: int = 32, device: str = "auto", predictions: str | Path | None = None,
             num_workers: int = -1) -> dict:
    """Average the softmax of several trained models, each with its own preprocessing and input size.

    Returns:
        {"top1", "top5", "n", "members": [{"model", "backbone", "image_size", "top1", "top5"}, ...]}
    """
    if not models:
        raise UserError("Give at least one model (a run folder or checkpoint) to ensemble.")
    if predictions:
        check_output_path(predictions, "--predictions")
    dev = get_device(device)
    total, members, labels, samples, class_names = None, [], None, None, None
    for path in models:
        trained = load_trained(path, device=dev)
        if samples is None:
            samples, class_names = _samples(dataset, data_dir, split, trained.config)
        columns = check_classes(trained, class_names, data_dir, use="in an ensemble")
        probs, labels = tta_probs(trained, samples, tta=tta, batch_size=batch_size, device=dev, num_workers=num_workers)
        if columns is not None:
            probs = probs[:, columns]
        member = metrics_from_probs(probs, labels)
        members.append({"model": str(path), "backbone": trained.config["backbone"],
                        "image_size": trained.data_config["image_size"], "top1": member["top1"], "top5": member["top5"]})
        total = probs if total is None else total + probs
        del trained
    mean = total / len(models)
    if predictions:
        write_predictions(predictions, samples, mean, class_names)
    return {**metrics_from_probs(mean, labels), "members": members}
