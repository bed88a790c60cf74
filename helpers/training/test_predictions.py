"""A run's own test predictions: the softmax its final test computed (`engine._final_test`), kept in the run folder
as `test_predictions.pt`, so that evaluating the same weights on the same photos in the same way afterwards
(`helpers.use.inference.member_probs`: `evaluate`, a notebook's `c.evaluate`, a member of an ensemble) reads them
instead of predicting the test split a second time. On the full test split (25,250 photos) that second pass is
minutes a notebook on a Mac; every course notebook evaluates the run it has just trained.

They are used only
- for the weights file the run wrote: same file system, inode, size and modification time (a resumed, retrained,
  copied or replaced best.pt is predicted again, and checked against the run's summary.json as before);
- for the same photos: the test split rebuilt from the data folder given equals the one the run tested;
- for one view at the run's own image size, on the same device with the same autocast precision.
The batch size is not compared: in evaluation mode it changes only the rounding of a prediction (the final test
runs batches of 64, `evaluate` of 32 by default).
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch

from ..base.errors import UserError
from ..base.io import WriteError, atomic_open, file_status
from ..data.splits import Splits
from . import checkpoint

_logger = logging.getLogger(__name__)

FILE = "test_predictions.pt"


class Recorder:
    """Collects the final test's logits of each weights ("model", "model_ema") and writes them (`write`)."""

    def __init__(self, out: Path, cfg, splits: Splits, device: torch.device, dtype: torch.dtype | None):
        self.out, self.entries = out, {}
        self.common = {"samples": [list(s) for s in splits.test], "class_names": list(splits.class_names),
                       "split": {"val_fraction": cfg.val_fraction, "test_fraction": cfg.test_fraction,
                                 "seed": cfg.seed},
                       "device": str(device), "dtype": str(dtype)}

    def keep(self, name: str, backbone: str, image_size: int) -> dict:
        """The dict `validate_model(keep=...)` fills with this weights' logits, labels and dataset indices."""
        self.entries[name] = {"backbone": backbone, "image_size": image_size}
        return self.entries[name]

    def write(self) -> None:
        """Write `test_predictions.pt` (after summary.json); a file that cannot be written (a full disk) costs
        only a second test pass in the next evaluation, so it is logged and the run goes on."""
        if not any("logits" in kept for kept in self.entries.values()):  # no test split
            return
        try:
            # the split's labels, not the loader's: for an unreadable photo the loader returns the next readable
            # one with its label, where evaluate scores the prediction against the photo's own (as it does here)
            labels = torch.tensor([label for _, label in self.common["samples"]])
            entries = {}
            for name, kept in self.entries.items():
                probs = torch.softmax(kept["logits"], dim=1)[torch.argsort(kept["index"])]
                entries[name] = {"probs": probs, "labels": labels,
                                 "backbone": kept["backbone"], "image_size": kept["image_size"]}
            weights = file_status(checkpoint.resolve(self.out, checkpoint.BEST))
            record = {**self.common, "weights": weights, "entries": entries}
            with atomic_open(self.out / FILE, durable=False) as f:
                torch.save(record, f)
        except (OSError, WriteError, UserError) as exc:
            _logger.warning("The test predictions were not kept (%s): the next evaluation predicts the test split "
                            "again.", exc)


def read(weights: Path, *, use_ema: bool, image_size: int | None, device: torch.device,
         dtype: torch.dtype | None) -> dict | None:
    """The kept predictions of `weights` (a run's best.pt) if they were made as asked (module docstring), else None:
    {"probs", "labels", "samples", "class_names", "split", "backbone", "image_size"}. The caller compares the
    samples with the split it rebuilds from its data folder (`split` holds the run's split settings)."""
    file = Path(weights).parent / FILE
    try:
        record = torch.load(file, weights_only=True)
        entry = record["entries"]["model_ema" if use_ema else "model"]
        same = (record["weights"] == file_status(Path(weights)) and record["device"] == str(device)
                and record["dtype"] == str(dtype) and image_size in (None, entry["image_size"]))
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as exc:
        if file.exists():
            _logger.debug("%s not used: %s", file, exc)
        return None
    if not same:
        return None
    return {**entry, "samples": [tuple(s) for s in record["samples"]], "class_names": record["class_names"],
            "split": record["split"]}
