"""Accuracy, sample-weighted running sums, the one-row-per-epoch CSV log, and the per-image predictions CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from ..base.errors import UserError
from ..base.io import atomic_write_bytes, atomic_write_text
from ..base.lock import run_lock


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many rows of `logits` (N, C) have `target` (N,) among their top-k, for each k (capped at C)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top.eq(target.unsqueeze(1))
    return [int(hits[:, : min(k, kmax)].any(dim=1).sum()) for k in ks]


class Sums:
    """Sums of loss x n and correct counts, so every metric is weighted by sample count (not batch means)."""

    def __init__(self) -> None:
        self.n, self.loss, self.top1, self.top5 = 0, 0.0, 0, 0

    def update(self, loss_sum: float, n: int, top1: int = 0, top5: int = 0) -> None:
        self.n += n
        self.loss += loss_sum
        self.top1 += top1
        self.top5 += top5

    def state(self) -> list[float]:
        return [self.n, self.loss, self.top1, self.top5]

    def load(self, state: list[float]) -> None:
        self.n, self.loss, self.top1, self.top5 = int(state[0]), float(state[1]), int(state[2]), int(state[3])

    def result(self) -> dict[str, float]:
        n = max(self.n, 1)
        return {"loss": self.loss / n, "top1": 100.0 * self.top1 / n, "top5": 100.0 * self.top5 / n, "n": self.n}


def append_row(path: str | Path, row: dict) -> None:
    """Append `row` to a CSV file, writing the header when the file is new.

    The whole file is rewritten atomically (`helpers.base.io.atomic_path`): a full disk or an interrupt leaves the
    previous rows exactly as they were, never a half row or an empty file. Logs are small (a row per epoch).
    """
    path = Path(path)
    old = path.read_bytes() if path.exists() else b""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(row))
    if not old.strip():
        writer.writeheader()
        old = b""
    elif not old.endswith(b"\n"):
        old += b"\n"
    writer.writerow(row)
    atomic_write_bytes(path, old + text.getvalue().encode("utf-8", errors="surrogateescape"))


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a metrics CSV written by `append_row`.

    Raises:
        UserError: the file is not such a log (no `epoch` column, a row with a non-integer epoch), naming it.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            fields = reader.fieldnames or []
        if rows and "epoch" not in fields:
            raise ValueError("no 'epoch' column in its header")
        for r in rows:
            int(r["epoch"])
    except (ValueError, TypeError, csv.Error) as exc:
        raise UserError(
            f"{path} is damaged ({exc}); it is the run's log of one row per epoch. The checkpoints are not "
            f"affected: move {path.name} away (its rows are lost, later epochs are logged again) and run the "
            "same command again."
        ) from exc
    return rows


def truncate_rows(path: str | Path, max_epoch: int) -> None:
    """Drop rows of epochs after `max_epoch` (a resumed run rewrites the epochs it repeats).

    The kept rows are written to a temporary file that replaces the log in one step, so a kill during the
    rewrite leaves either the old log or the new one, never a half-written file.
    """
    path = Path(path)
    if not path.exists():
        return
    if not path.read_bytes().strip():  # an empty log (a crash of an older version): start it again
        path.unlink()
        return
    rows = read_rows(path)
    keep = [r for r in rows if int(r["epoch"]) <= max_epoch]
    if len(keep) == len(rows):
        return
    if not keep:  # append_row starts the file again, header included
        path.unlink()
        return
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(keep[0]))
    writer.writeheader()
    writer.writerows(keep)
    atomic_write_bytes(path, text.getvalue().encode("utf-8", errors="surrogateescape"))


def metrics_from_probs(probs: torch.Tensor, labels: torch.Tensor) -> dict:
    """top-1 and top-5 in percent, and n."""
    top1, top5 = topk_correct(probs, labels)
    n = len(labels)
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "n": n}


def write_predictions(path: str | Path, samples: list[tuple[str, int]], probs: torch.Tensor, class_names: list[str]) -> None:
    """One CSV row per image: path, true and predicted class, confidence, and every class probability.

    The file is written atomically under the lock of its folder (a run folder being trained into refuses it).
    """
    path = Path(path)
    if not str(path).strip() or path.is_dir():
        raise UserError(f"--predictions {path!s} must be a file path (a .csv file), not a folder or empty.")
    text = predictions_csv(samples, probs, class_names)
    with run_lock(path.parent, f"the folder of --predictions {path}"):
        atomic_write_text(path, text)


def predictions_csv(samples: list[tuple[str, int]], probs: torch.Tensor, class_names: list[str]) -> str:
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
