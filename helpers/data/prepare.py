"""`python -m helpers prepare`: a resized copy of a dataset, in the same layout, for faster decoding.

    python -m helpers prepare --data-dir data/food-101 --out data/food-101-288 --short-side 288
    python -m helpers train --data-dir data/food-101-288 --image-size 224 ...

Food-101's photos are up to 512 px on a side; training at 224-380 px decodes every one of them at full size on
every epoch. A copy whose short side is a little above the training size (about 1.15x: 256 for 224, 352 for
300, 448 for 380-384) decodes several times faster and still gives RandomResizedCrop the pixels it needs.
The copy keeps the folder layout, file names and every non-image file (meta/, licences), so every command that
takes the original takes the copy. Images are decoded with EXIF orientation applied, shrunk with area
interpolation and re-encoded (JPEG quality 90 by default); images already small enough are copied byte for byte.
Unreadable files are copied unchanged, so training reports them exactly as it would for the original.
The work is parallel, and an interrupted run continues where it stopped (every file is written atomically).

`--per-class 75,25` copies only a fixed part of each class of the official lists: the first 75 train and 25 test
ids of each class in the sorted meta/train.txt and meta/test.txt (the same ids for everyone), and writes those
lists as the copy's meta/train.txt and meta/test.txt. That is the `medium` profile's data (10% of Food-101):

    python -m helpers prepare --data-dir data/food-101 --out data/food-101-medium --short-side 288 --per-class 75,25
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import shutil
import time
from pathlib import Path

from ..base.errors import UserError
from ..base.io import atomic_write_bytes, atomic_write_text
from ..base.progress import progress_bar

_logger = logging.getLogger(__name__)

MANIFEST = "prepared.json"  # written last, in the copy's root: the source and settings it was made with


def add_command(subparsers: argparse._SubParsersAction) -> None:
    """Add the `prepare` sub-command."""
    p = subparsers.add_parser("prepare", help="write a resized copy of a dataset (same layout) for faster decoding")
    p.add_argument("--data-dir", required=True, help="the dataset to copy (any layout: Food-101 or class folders)")
    p.add_argument("--out", required=True, help="where to write the copy (created; must be outside --data-dir)")
    p.add_argument("--short-side", type=int, required=True,
                   help="shrink images whose short side is longer to this many pixels (e.g. 256 for 224 px training)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the re-encoded images (1-100)")
    p.add_argument("--workers", type=int, default=-1, help="processes (-1: one per CPU core)")
    p.add_argument("--overwrite", action="store_true", help="redo every file, even when --out holds a finished copy")
    p.add_argument("--per-class", metavar="TRAIN,TEST", type=_per_class, default=None,
                   help="Food-101 layout only: copy the first TRAIN train and TEST test ids of each class of the "
                        "sorted official lists (75,25: the medium profile's fixed 10%%)")
    p.set_defaults(func=_run)


def _per_class(text: str) -> tuple[int, int]:
    try:
        train, test = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--per-class takes two counts, TRAIN,TEST (e.g. 75,25), not {text!r}") from None
    if train < 1 or test < 1:
        raise argparse.ArgumentTypeError(f"--per-class counts must be positive, got {text!r}")
    return train, test


def official_subset(meta: str | Path, train: int, test: int) -> dict[str, list[str]]:
    """The first `train` and `test` ids of each class in the sorted official lists (meta/train.txt, test.txt).

    A deterministic choice, the same for everyone: the ids are Foodspotting numbers, unrelated to the photo, so
    the first ones in sorted order are as good a sample as a seeded draw and need no seed to repeat.

    Returns:
        {"train": [...], "test": [...]}: ids like "apple_pie/1005649", in class order.

    Raises:
        UserError: a list is missing, or a class has fewer ids than asked.
    """
    meta = Path(meta)
    chosen: dict[str, list[str]] = {}
    for split, per_class in (("train", train), ("test", test)):
        path = meta / f"{split}.txt"
        if not path.is_file():
            raise UserError(f"{path} does not exist: --per-class needs the Food-101 layout (meta/train.txt and "
                            "meta/test.txt). Point --data-dir at the extracted food-101 folder.")
        by_class: dict[str, list[str]] = {}
        for line in path.read_text().split():
            by_class.setdefault(line.split("/")[0], []).append(line)
        short = [f"{c} ({len(ids)})" for c, ids in by_class.items() if len(ids) < per_class]
        if short:
            raise UserError(f"{path}: {len(short)} class(es) have fewer than {per_class} {split} ids: "
                            f"{', '.join(short[:5])}. Ask for fewer with --per-class.")
        chosen[split] = [i for c in sorted(by_class) for i in sorted(by_class[c])[:per_class]]
    return chosen


def _run(args: argparse.Namespace) -> dict:
    return prepare_dataset(args.data_dir, args.out, short_side=args.short_side, quality=args.quality,
                           workers=args.workers, overwrite=args.overwrite, per_class=args.per_class)


def prepare_dataset(src: str | Path, dst: str | Path, *, short_side: int, quality: int = 90, workers: int = -1,
                    overwrite: bool = False, per_class: tuple[int, int] | None = None) -> dict:
    """Copy the tree `src` to `dst`, shrinking every image so its short side is at most `short_side` pixels.

    Args:
        src: dataset root (e.g. data/food-101 with images/ and meta/, or a folder of class folders).
        dst: the copy's root; created. It must not overlap `src`.
        short_side: target short side in pixels (at least 32); smaller images are copied unchanged.
        quality: JPEG quality for re-encoded JPEGs (PNG and other formats keep their lossless encoders).
        workers: processes; -1 uses one per CPU core.
        overwrite: rewrite files that already exist in `dst` (by default an interrupted copy is continued).
        per_class: (train, test): copy only those ids of each class (`official_subset`), with their lists.

    Returns:
        A summary: {"out", "short_side", "images", "resized", "copied", "unreadable", "other_files",
        "bytes_before", "bytes_after", "seconds"}, also written to `dst/prepared.json`.

    Raises:
        UserError: missing source, overlapping folders, bad settings, or `dst` prepared with other settings.
        KeyboardInterrupt: Ctrl-C, saying how many images are done and that the same command continues.
    """
    from .images import IMAGE_EXTENSIONS

    src, dst = Path(src).expanduser().resolve(), Path(dst).expanduser().resolve()
    _check_args(src, dst, short_side, quality, overwrite, per_class)
    started = time.perf_counter()
    subset = official_subset(src / "meta", *per_class) if per_class else None
    keep = {f"images/{i}" for ids in subset.values() for i in ids} if subset else None
    images, others = [], []
    for path in sorted(src.rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(src).parts):
            rel = path.relative_to(src)
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                others.append(rel)
            elif keep is None or rel.with_suffix("").as_posix() in keep:
                images.append(rel)
    if not images:
        raise UserError(f"{src} holds no images ({', '.join(IMAGE_EXTENSIONS)}). Point --data-dir at a dataset.")
    for rel in others:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dst / rel)
    for split, ids in (subset or {}).items():  # the copy's lists name only the photos it holds
        atomic_write_text(dst / "meta" / f"{split}.txt", "\n".join(ids) + "\n")
    for folder in sorted({rel.parent for rel in images}):
        (dst / folder).mkdir(parents=True, exist_ok=True)
    jobs = [(str(src / rel), str(dst / rel), short_side, quality, overwrite) for rel in images]
    counts = {"resized": 0, "copied": 0, "unreadable": 0, "kept": 0}
    n_workers = (os.cpu_count() or 1) if workers < 0 else max(1, workers)
    if len(jobs) < 500 * n_workers:  # starting a process (it imports torch) costs more than it saves here
        n_workers = 1
    _logger.info("Preparing %d images from %s into %s (short side %d px, %d processes)", len(jobs), src, dst,
                 short_side, n_workers)
    bytes_before = bytes_after = 0
    try:
        for outcome, size_in, size_out in _map(_prepare_one, jobs, n_workers):
            counts[outcome] += 1
            bytes_before += size_in
            bytes_after += size_out
    except KeyboardInterrupt:  # the command line's hint (--resume auto) is training's; prepare has its own
        done = sum(counts.values())
        raise KeyboardInterrupt(
            f"prepare stopped after {done} of {len(jobs)} images; each image written is complete (written "
            f"atomically) and is kept in {dst}. Continue with the same command (without --overwrite): it keeps "
            "the images already done.") from None
    summary = {"out": str(dst), "source": str(src), "short_side": short_side, "quality": quality,
               "per_class": list(per_class) if per_class else None,
               "images": len(jobs), "resized": counts["resized"], "copied": counts["copied"],
               "unreadable": counts["unreadable"], "already_done": counts["kept"], "other_files": len(others),
               "bytes_before": bytes_before, "bytes_after": bytes_after,
               "seconds": round(time.perf_counter() - started, 2)}
    atomic_write_text(dst / MANIFEST, json.dumps(summary, indent=2) + "\n")
    if counts["unreadable"]:
        _logger.warning("%d unreadable image(s) were copied unchanged", counts["unreadable"])
    _logger.info("Prepared %d images (%d resized) in %.1f s: %.0f MB -> %.0f MB", len(jobs), counts["resized"],
                 summary["seconds"], bytes_before / 2**20, bytes_after / 2**20)
    return summary


def _check_args(src: Path, dst: Path, short_side: int, quality: int, overwrite: bool,
                per_class: tuple[int, int] | None = None) -> None:
    if not src.is_dir():
        raise UserError(f"--data-dir {src} is not a folder. Point it at the dataset to copy.")
    if short_side < 32:
        raise UserError(f"--short-side must be at least 32 pixels, got {short_side}.")
    if not 1 <= quality <= 100:
        raise UserError(f"--quality must be between 1 and 100, got {quality}.")
    if dst == src or dst.is_relative_to(src) or src.is_relative_to(dst):
        raise UserError(f"--out {dst} overlaps --data-dir {src}: write the copy to a folder outside the dataset.")
    manifest = dst / MANIFEST
    if manifest.is_file() and not overwrite:
        previous = json.loads(manifest.read_text())
        wanted = list(per_class) if per_class else None
        if previous.get("short_side") != short_side or previous.get("quality") != quality \
                or previous.get("per_class") != wanted:
            raise UserError(
                f"{dst} was prepared with --short-side {previous.get('short_side')} --quality "
                f"{previous.get('quality')} --per-class {previous.get('per_class')}. Give another --out, the same "
                "settings, or --overwrite to redo it.")


def _map(fn, jobs: list, n_workers: int):
    """fn over jobs, in `n_workers` processes (or inline for one), yielding results as they finish."""
    bar = progress_bar(total=len(jobs), desc="prepare")
    if n_workers == 1:
        results = map(fn, jobs)
        pool = None
    else:
        pool = multiprocessing.get_context("spawn").Pool(n_workers, initializer=_single_threaded)
        results = pool.imap_unordered(fn, jobs, chunksize=16)
    try:
        for result in results:
            bar.update(1)
            yield result
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()


def _single_threaded() -> None:
    import cv2

    cv2.setNumThreads(1)  # the pool already uses every core


def _prepare_one(job: tuple[str, str, int, int, bool]) -> tuple[str, int, int]:
    """Write one image's copy. Returns (outcome, bytes in, bytes out); outcome is resized|copied|unreadable|kept."""
    import cv2

    from .images import BadImageError, read_image

    src, dst, short_side, quality, overwrite = job
    size_in = os.path.getsize(src)
    if not overwrite and os.path.exists(dst):
        return "kept", size_in, os.path.getsize(dst)
    try:
        image = read_image(src)  # RGB, EXIF orientation applied; PNG/GIF alpha composited on white
    except (BadImageError, OSError):
        _copy_atomic(src, dst)
        return "unreadable", size_in, size_in
    h, w = image.shape[:2]
    if min(h, w) <= short_side:
        _copy_atomic(src, dst)
        return "copied", size_in, size_in
    scale = short_side / min(h, w)
    size = (max(short_side, round(w * scale)), max(short_side, round(h * scale)))  # (width, height)
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ext = Path(dst).suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext in (".jpg", ".jpeg") else []
    ok, encoded = cv2.imencode(ext, cv2.cvtColor(small, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {dst}")
    _write_atomic(dst, encoded.tobytes())
    return "resized", size_in, len(encoded)


def _copy_atomic(src: str, dst: str) -> None:
    _write_atomic(dst, Path(src).read_bytes())


def _write_atomic(dst: str, data: bytes) -> None:
    """One image of the copy, atomically (a killed or failed run leaves no half image that a rerun would keep);
    not fsynced one by one (the manifest, written last, is)."""
    atomic_write_bytes(dst, data, durable=False)
