"""The evaluation passes: logits of a model over a loader (`predict_logits`, used by evaluate, TTA, ensembles and
probes) and the per-epoch validation of the training loop (`validate_model`: loss, top-1, top-5, summed over
processes). Both run under the MPS check (`device_code`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..base import distributed
from ..base.devices import autocast, to_model_input
from ..base.mps_check import device_code
from .metrics import topk_correct


@device_code
@torch.no_grad()
def validate_model(model: nn.Module, loader, device: torch.device, dtype: torch.dtype | None = None, *,
                   reduce: bool = True, bad: set[int] | None = None, normalize: Callable | None = None,
                   keep: dict | None = None) -> dict:
    """Cross-entropy, top-1 and top-5 on a loader, summed over all processes (`reduce=False`: this process
    only). Dataset indices of unreadable images (replaced by the next readable one) are added to `bad`; the
    logits, labels and dataset indices are put in `keep` (the final test keeps them: `test_predictions`)."""
    logits, labels, index = predict_logits(model, _recording(loader, bad if bad is not None else set()), device, dtype,
                                           normalize=normalize)
    if keep is not None:
        keep.update(logits=logits, labels=labels, index=index)
    loss_sum = float(F.cross_entropy(logits, labels, reduction="sum"))
    top1, top5 = topk_correct(logits, labels)
    if reduce:
        n, loss_sum, top1, top5 = distributed.all_sum([len(labels), loss_sum, top1, top5], device)
    else:
        n = len(labels)
    n = max(n, 1)
    return {"loss": loss_sum / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "n": int(n)}


def _recording(loader, bad: set[int]):
    """Iterate `loader`, adding the dataset indices of unreadable images (the items' last field) to `bad`."""
    for batch in loader:
        bad.update(i for i in batch[3].tolist() if i >= 0)
        yield batch


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
