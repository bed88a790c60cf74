"""Using trained models: load a run, predict a split (with test-time augmentation), evaluate, ensemble.

    helpers.evaluate("runs/b0", dataset="food-101", data_dir="data/food-101", split="test", tta=2)
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import augment, checkpoint
from .config import UserError, config_from_dict
from .data import ImageDataset, Sample, load_splits, make_loader, read_test_folder
from .io import atomic_write_text
from .lock import run_lock
from .metrics import topk_correct
from .models import create_model
from .mps_check import device_code
from .utils import amp_dtype, autocast, get_device, to_device

_logger = logging.getLogger(__name__)

TEST_FOLDER = "test-folder"  # the `dataset` of `ensemble --test-dir`: every image of DIR/<class>/ is evaluated


@dataclass
class Trained:
    """A trained model with what it needs to be used: its classes and its preprocessing."""

    model: nn.Module
    class_names: list[str]
    data_config: dict  # image_size, mean, std, crop_pct, interpolation
    config: dict
    source: str


def load_trained(path: str | Path, *, use_ema: bool = False, device: torch.device | str = "cpu") -> Trained:
    """Rebuild a model from a run folder (its best checkpoint) or a checkpoint file, in eval mode. A probe run
    (`helpers.probe`) gives its frozen backbones with the linear head."""
    state = checkpoint.load(path, prefer=checkpoint.BEST)
    if "probe" in state:
        from .probe import load_probe

        if use_ema:
            raise UserError(f"{path} is a linear probe: it has no EMA weights. Drop --use-ema.")
        return load_probe(state, str(path), device)
    cfg = config_from_dict(state["config"])
    model = create_model(cfg.backbone, len(state["class_names"]), pretrained="none", image_size=cfg.image_size)
    weights = state["model"]
    if use_ema:
        if not state.get("model_ema"):
            raise UserError(f"{path} has no EMA weights: the run was trained without --model-ema.")
        weights = state["model_ema"]
    model.load_state_dict(weights)
    model.to(device).eval()
    return Trained(model, list(state["class_names"]), dict(state["data_config"]), state["config"], str(path))


def init_state(path: str | Path, model: nn.Module, backbone: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The weights `--init-from` starts `model` (a `backbone`) from: a trained run's, or a probe run's backbone
    weights with its head (`helpers.probe.init_state`), and the class names of the head's rows."""
    state = checkpoint.load(path)
    if "probe" in state:
        from .probe import init_state as probe_init_state

        return probe_init_state(state, model, backbone, str(path)), list(state["class_names"])
    if config_from_dict(state["config"]).backbone != backbone:
        raise UserError(f"--init-from {path} is a {state['config']['backbone']} checkpoint, not {backbone}.")
    return state["model"], list(state["class_names"])


def to_model_input(images: torch.Tensor, device: torch.device,
                   normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   memory_format: torch.memory_format = torch.channels_last) -> torch.Tensor:
    """A loader's batch on `device`, normalised (uint8 batches need `normalize`, e.g. `augment.DeviceNormalize`;
    float batches are normalised already) and in `memory_format`."""
    images = to_device(images, device)
    if normalize is not None:
        images = normalize(images)
    if images.dtype == torch.uint8:
        raise ValueError("uint8 images reached the model without `normalize`: pass augment.DeviceNormalize")
    return images.contiguous(memory_format=memory_format)


@device_code
@torch.no_grad()
def predict_logits(model: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device,
                   dtype: torch.dtype | None = None, *,
                   normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run `model` over a loader of ImageDataset items (normalised float batches, or uint8 ones with the
    `normalize` that turns them into model input on the device, e.g. `augment.DeviceNormalize`).

    Returns:
        logits (N, C) float32 on the CPU, labels (N,), dataset indices (N,).
    """
    model.eval()
    out_logits, out_labels, out_index = [], [], []
    for images, labels, index, _ in loader:
        images = to_model_input(images, device, normalize)
        with autocast(device, dtype):
            logits = model(images)
        out_logits.append(logits.float().cpu())
        out_labels.append(labels)
        out_index.append(index)
    return torch.cat(out_logits), torch.cat(out_labels), torch.cat(out_index)


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
        from .probe import probe_tta_probs

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


def metrics_from_probs(probs: torch.Tensor, labels: torch.Tensor) -> dict:
    """top-1 and top-5 in percent, and n."""
    top1, top5 = topk_correct(probs, labels)
    n = len(labels)
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "n": n}


def _samples(dataset: str, data_dir: str, split: str, config: dict) -> tuple[list[Sample], list[str]]:
    if dataset == TEST_FOLDER:  # every image of a folder of class folders (ensemble --test-dir)
        class_names, samples = read_test_folder(data_dir)
        return samples, class_names
    splits = load_splits(dataset, data_dir, val_fraction=config.get("val_fraction", 0.1),
                         test_fraction=config.get("test_fraction", 0.2), seed=config.get("seed", 42))
    return splits.get(split), splits.class_names


def check_classes(trained: Trained, class_names: list[str], data_dir: str, use: str = "evaluated"
                  ) -> torch.Tensor | None:
    """Match a model's classes to a dataset's by name.

    Returns:
        None when they are the same list; else the model's output column of each dataset class (the same classes
        in another order), to reorder its outputs with `logits[:, columns]`.

    Raises:
        UserError: naming the classes one side has and the other lacks.
    """
    if list(trained.class_names) == list(class_names):
        return None
    own, other = set(trained.class_names), set(class_names)
    if own != other or len(own) != len(trained.class_names):
        only_model = sorted(own - other)
        only_data = sorted(other - own)
        parts = [f"only the model has {', '.join(only_model[:5])}" if only_model else "",
                 f"only the data has {', '.join(only_data[:5])}" if only_data else ""]
        raise UserError(
            f"{trained.source} was trained on {len(trained.class_names)} classes, but {data_dir} has "
            f"{len(class_names)}, and they differ by name ({'; '.join(p for p in parts if p)}). A model "
            f"{use} must have exactly the data's classes: use a model trained on these classes."
        )
    index = {c: i for i, c in enumerate(trained.class_names)}
    _logger.info("%s lists the classes of %s in another order: its outputs are matched by class name",
                 trained.source, data_dir)
    return torch.tensor([index[c] for c in class_names])


def evaluate(checkpoint_path: str | Path, *, dataset: str, data_dir: str, split: str = "test", tta: int = 1,
             image_size: int | None = None, batch_size: int = 32, device: str = "auto", use_ema: bool = False,
             predictions: str | Path | None = None, num_workers: int = -1) -> dict:
    """Evaluate a trained model on a split; optionally write per-image predictions to a CSV file.

    The val split is rebuilt with the run's own seed and fraction, so it is the split the run held out.

    Returns:
        {"top1": %, "top5": %, "n": images}
    """
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


def write_predictions(path: str | Path, samples: list[Sample], probs: torch.Tensor, class_names: list[str]) -> None:
    """One CSV row per image: path, true and predicted class, confidence, and every class probability.

    The file is written atomically under the lock of its folder (a run folder being trained into refuses it).
    """
    path = Path(path)
    if not str(path).strip() or path.is_dir():
        raise UserError(f"--predictions {path!s} must be a file path (a .csv file), not a folder or empty.")
    text = predictions_csv(samples, probs, class_names)
    with run_lock(path.parent, f"the folder of --predictions {path}"):
        atomic_write_text(path, text)


def predictions_csv(samples: list[Sample], probs: torch.Tensor, class_names: list[str]) -> str:
    """The text of `write_predictions`' CSV (for a command that already holds its folder's lock)."""
    pred = probs.argmax(dim=1).numpy()
    probs_np = probs.numpy()
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["path", "true", "pred", "confidence"] + [f"p_{c}" for c in class_names])
    for (image_path, label), p, row in zip(samples, pred, probs_np):
        writer.writerow([image_path, class_names[label], class_names[p], f"{row[p]:.5f}"]
                        + [f"{v:.5f}" for v in row])
    return buffer.getvalue()
