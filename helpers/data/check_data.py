"""`python -m helpers check-data`: list every problem of a dataset before a long run starts.

    python -m helpers check-data --dataset food-101 --data-dir data/food-101
    python -m helpers check-data --dataset imagefolder --data-dir my_photos --strict   # exit 2 on any problem

Every listed image is opened and decoded with the trainer's own reader (`helpers.data.images.read_image`), so what
this command calls unreadable is exactly what training would skip (or stop on with --strict-data). Problems:

- missing: files listed in meta/train.txt or meta/test.txt that do not exist;
- unknown_class_lines: list lines whose class is not in meta/classes.txt (training refuses to start);
- unreadable: empty, truncated or non-image files, with the decoder's reason;
- empty_classes: classes without a single readable image in train or in test;
- train_test_duplicates: byte-identical images in both train (which holds val) and test, which leak the test set;
- list_overlaps: (food-101) image ids listed in both meta/train.txt and meta/test.txt (training refuses to start).

The lists are read by the trainer's own parser (`helpers.data.splits.read_food101_lists`): a UTF-8 BOM, CRLF line
ends, blank lines, trailing spaces and `.jpg` suffixes are accepted; a line listed twice in one file is a note
(the trainer uses the image once); hidden files and folders, `__MACOSX/`, `.DS_Store`, `Thumbs.db` and
`.ipynb_checkpoints/` are not data. A class without train lines or a dataset of one class stops training too.

Notes (not problems, the reader converts them): grayscale, CMYK, alpha, EXIF-rotated and very large images,
duplicates inside one split, (food-101) image files that no list mentions, and photos in formats the loader
skips (`.gif`, `.tiff`, `.heic`...: counted per extension and named, with a warning). An image over the pixel
limit (`helpers.data.images.MAX_PIXELS`) is unreadable, refused from its header without being decoded. The result is one JSON line on
stdout; a readable summary goes to the log.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ..base.errors import UserError

_logger = logging.getLogger(__name__)

PROBLEMS = ("missing", "unknown_class_lines", "unreadable", "empty_classes", "train_test_duplicates", "list_overlaps")

LARGE_PIXELS = 20_000_000  # noted as "large": decodes slowly (a 6000 x 4000 photo is 24 Mpx)


def add_command(subparsers: argparse._SubParsersAction) -> None:
    """Add the `check-data` sub-command."""
    p = subparsers.add_parser("check-data", help="scan a dataset and report every problem; prints a JSON line last")
    p.add_argument("--dataset", choices=("food-101", "imagefolder"), default="food-101")
    p.add_argument("--data-dir", required=True, help="the dataset root (food-101: with images/ and meta/)")
    p.add_argument("--workers", type=int, default=-1, help="decoding processes (-1: one per CPU core, 0: none)")
    p.add_argument("--strict", action="store_true", help="exit with code 2 when any problem is found")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> dict:
    if args.workers < -1:
        raise UserError(f"--workers must be >= 0 (or -1 for one per CPU core), got {args.workers}.")
    report = check_dataset(args.dataset, args.data_dir, workers=args.workers)
    if args.strict and report["problems"]:
        raise UserError(
            f"check-data found {report['problems']} problem(s) in {args.data_dir}: {_counts(report)}. "
            "The log above lists them; run without --strict for the full JSON report."
        )
    return report


def check_dataset(dataset: str, data_dir: str | Path, *, workers: int = -1) -> dict:
    """Scan a dataset's listed images and report what is wrong with them.

    Args:
        dataset: "food-101" (images/ and meta/{classes,train,test}.txt) or "imagefolder" (class folders).
        data_dir: the dataset root.
        workers: processes that decode images (-1: one per CPU core, 0: decode in this process).

    Returns:
        A dict with the counts (classes, train, test, checked, problems), the problem lists (missing,
        unknown_class_lines, unreadable, empty_classes, train_test_duplicates) and `notes` (conversions the
        reader makes, duplicates inside a split, unlisted files). `ok` is True when there is no problem.
    """
    root = Path(data_dir).expanduser()
    if dataset == "food-101":
        class_names, listed, unknown, unlisted, found = _food101_lists(root)
    elif dataset == "imagefolder":
        from .splits import load_splits

        splits = load_splits("imagefolder", root, val_fraction=0.1, test_fraction=0.2)
        class_names, unknown, unlisted = splits.class_names, [], []
        found = {"overlaps": [], "duplicates": []}
        listed = {"train": splits.train + splits.val, "test": splits.test}
    else:
        raise UserError(f"Unknown dataset {dataset!r}: use food-101 or imagefolder.")

    missing = [p for split in ("train", "test") for p, _ in listed[split] if not os.path.isfile(p)]
    present = sorted({p for split in ("train", "test") for p, _ in listed[split] if os.path.isfile(p)})
    _logger.info("check-data: decoding %d images of %s", len(present), root)
    results = dict(zip(present, _map(_inspect, present, workers)))

    unreadable = [{"path": p, "error": r["error"]} for p, r in results.items() if r["error"]]
    usable: dict[str, Counter] = {"train": Counter(), "test": Counter()}
    by_hash: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for split in ("train", "test"):
        for path, label in listed[split]:
            r = results.get(path)
            if r is None:
                continue
            by_hash[r["sha1"]][split].append(path)
            if not r["error"]:
                usable[split][label] += 1
    empty = [
        {"class": name, "train": usable["train"][i], "test": usable["test"][i]}
        for i, name in enumerate(class_names)
        if not usable["train"][i] or not usable["test"][i]
    ]
    leaks = [
        [a, b] for group in by_hash.values() for a in sorted(set(group["train"])) for b in sorted(set(group["test"]))
    ]
    within = sum(len(paths) - 1 for group in by_hash.values() for paths in group.values() if len(paths) > 1)

    notes = Counter(kind for r in results.values() for kind in r["notes"])
    other_formats = _skipped_formats(root / "images" if dataset == "food-101" and (root / "images").is_dir()
                                     else root)
    report = {
        "dataset": dataset,
        "data_dir": str(root),
        "classes": len(class_names),
        "train": len(listed["train"]),
        "test": len(listed["test"]),
        "checked": len(present),
        "missing": missing,
        "unknown_class_lines": unknown,
        "unreadable": unreadable,
        "empty_classes": empty,
        "train_test_duplicates": leaks,
        "list_overlaps": found["overlaps"],
        "notes": {
            "duplicate_lines": len(found["duplicates"]),
            "duplicate_line_examples": found["duplicates"][:5],
            **{k: notes[k] for k in ("grayscale", "cmyk", "alpha", "exif_rotated", "large")},
            "duplicates_within_a_split": within,
            "unlisted_files": len(unlisted),
            "unlisted_examples": unlisted[:5],
            "skipped_formats": dict(Counter(Path(p).suffix.lower() for p in other_formats)),
            "skipped_format_examples": other_formats[:5],
        },
    }
    report["problems"] = len(missing) + len(unknown) + len(unreadable) + len(empty) + len(leaks) + len(found["overlaps"])
    report["ok"] = report["problems"] == 0
    _log_report(report)
    return report


def _food101_lists(root: Path) -> tuple[list[str], dict[str, list[tuple[str, int]]], list[str], list[str], dict]:
    """Class names, the listed (path, label) pairs of train and test, list lines with an unknown class, image
    files that no list mentions, and the lists' other findings (overlaps, duplicate lines), parsed by the
    trainer's own parser (`helpers.data.splits.read_food101_lists`)."""
    from .images import IMAGE_EXTENSIONS
    from .splits import _food101_root, is_junk, read_food101_lists

    root = _food101_root(root, download=False)  # UserError when the folder is not a Food-101 folder
    lists = read_food101_lists(root)
    known = {p for samples in lists.listed.values() for p, _ in samples}
    images = root / "images"
    on_disk = (str(f) for f in images.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS
               and not any(is_junk(part) for part in f.relative_to(images).parts)) if images.is_dir() else ()
    unlisted = sorted(p for p in on_disk if p not in known)
    return lists.class_names, lists.listed, lists.unknown, unlisted, {"overlaps": lists.overlaps,
                                                                       "duplicates": lists.duplicates}


# Photo formats people have in their folders that the loader (`helpers.data.images.IMAGE_EXTENSIONS`) does not take.
OTHER_PHOTO_EXTENSIONS = (".gif", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jfif", ".jxl")


def _skipped_formats(root: Path) -> list[str]:
    """Photos under `root` in a format the loader skips (junk folders and hidden files aside), sorted."""
    from .splits import is_junk

    if not root.is_dir():
        return []
    return sorted(str(f) for f in root.rglob("*") if f.suffix.lower() in OTHER_PHOTO_EXTENSIONS and f.is_file()
                  and not any(is_junk(part) for part in f.relative_to(root).parts))


def _inspect(path: str) -> dict:
    """Hash and decode one file: {"sha1", "error" (None when readable), "notes" (conversions the reader makes)}."""
    from PIL import Image

    from .images import BadImageError, read_image

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return {"sha1": "", "error": f"{type(exc).__name__}: {exc.strerror or exc}", "notes": []}
    result = {"sha1": hashlib.sha1(data).hexdigest(), "error": None, "notes": []}
    try:
        image = read_image(path)
    except (BadImageError, OSError) as exc:
        result["error"] = str(exc).removeprefix(f"{path}: ")
        return result
    if image.shape[0] * image.shape[1] >= LARGE_PIXELS:
        result["notes"].append("large")
    try:
        with Image.open(path) as im:
            mode = im.mode
            orientation = im.getexif().get(0x0112, 1)
            transparent = "transparency" in im.info
    except Exception:  # read_image decoded it with OpenCV; PIL's header view is only for the notes
        return result
    result["notes"] += [
        kind
        for kind, hit in (
            ("grayscale", mode in ("L", "LA", "I", "I;16", "1")),
            ("cmyk", mode == "CMYK"),
            ("alpha", mode in ("RGBA", "LA", "PA") or transparent),
            ("exif_rotated", orientation not in (0, 1)),
        )
        if hit
    ]
    return result


def _map(fn, items: list[str], workers: int) -> list:
    from .loaders import default_num_workers

    workers = default_num_workers() if workers < 0 else workers
    if workers == 0 or len(items) < 64:
        return [fn(item) for item in items]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items, chunksize=64))


def _counts(report: dict) -> str:
    parts = [
        f"{len(report[k])} {k.replace('_', ' ')}"
        for k in PROBLEMS
        if report[k]
    ]
    return ", ".join(parts) or "none"


def _log_report(report: dict) -> None:
    if report["ok"]:
        _logger.info(
            "check-data: %s is fine: %d classes, %d train and %d test images, all readable",
            report["data_dir"],
            report["classes"],
            report["train"],
            report["test"],
        )
    else:
        _logger.warning("check-data: %d problem(s) in %s: %s", report["problems"], report["data_dir"], _counts(report))
    for key in PROBLEMS:
        for item in report[key][:20]:
            _logger.warning("  %s: %s", key.replace("_", " "), item)
        if len(report[key]) > 20:
            _logger.warning(
                "  %s: ... and %d more (all in the JSON line)", key.replace("_", " "), len(report[key]) - 20
            )
    skipped = report["notes"]["skipped_formats"]
    if skipped:
        _logger.warning("check-data: %d photo(s) in formats the loader skips (%s), e.g. %s. Convert them to JPEG or "
                        "PNG to use them.", sum(skipped.values()),
                        ", ".join(f"{n} {ext}" for ext, n in sorted(skipped.items())),
                        ", ".join(report["notes"]["skipped_format_examples"][:3]))
    notes = {k: v for k, v in report["notes"].items() if v and not k.endswith("_examples")}
    if notes:
        _logger.info("check-data notes (converted or harmless): %s", notes)
