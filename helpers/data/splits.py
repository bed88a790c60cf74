"""Datasets as lists of (path, label): Food-101 in its official layout (images/, meta/), class folders with or
without train/ and test/, and the seeded splits.

The validation split is carved from train (seeded, stratified): early stopping and the best checkpoint use it.
The test split is evaluated once at the end and never chooses anything. `pretty` turns a class folder name
into a label ("baby_back_ribs" -> "Baby back ribs")."""

from __future__ import annotations

import hashlib
import logging
import random
import textwrap
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..base.errors import UserError

if TYPE_CHECKING:
    pass
from .images import IMAGE_EXTENSIONS

_logger = logging.getLogger(__name__)

Sample = tuple[str, int]  # (image path, class index)


@dataclass
class Splits:
    """The image lists of one dataset. Paths are absolute strings, labels index `class_names`."""

    class_names: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]

    def fingerprint(self) -> str:
        """A hash of every split's images (class folder and file name, not the root, so a moved dataset keeps it)
        and labels: a resumed run checks that it continues on the data it started on."""
        if "_fingerprint" in self.__dict__:  # computed once: the lists do not change during a run
            return self.__dict__["_fingerprint"]
        digest = hashlib.sha1("\n".join(self.class_names).encode("utf-8", "surrogateescape"))
        for split in (self.train, self.val, self.test):
            for path, label in split:
                digest.update(f"{'/'.join(Path(path).parts[-2:])}\t{label}\n".encode("utf-8", "surrogateescape"))
            digest.update(b"--\n")
        self.__dict__["_fingerprint"] = digest.hexdigest()
        return self.__dict__["_fingerprint"]

    def get(self, split: str) -> list[Sample]:
        if split not in ("train", "val", "test"):
            raise UserError(f"Unknown split {split!r}: use train, val or test.")
        return getattr(self, split)


# ----------------------------------------------------------------------------------------------------------------
# Finding the images


def load_splits(
    dataset: str, data_dir: str | Path, *, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 42,
    download: bool = False,
) -> Splits:
    """Read a dataset's file lists and split them.

    Args:
        dataset: "food-101" (images/<class>/<id>.jpg + meta/{classes,train,test}.txt) or "imagefolder".
        data_dir: the dataset root (for food-101 also its parent, as torchvision extracts it to food-101/).
        val_fraction: share of each class of train held out for validation.
        test_fraction: imagefolder without train/ and test/ sub-folders: share of each class for test.
        seed: seeds the val (and imagefolder test) split, so the same seed gives the same split.
        download: food-101 only: download the full dataset with torchvision when it is missing.
    """
    root = Path(data_dir).expanduser()
    if dataset == "food-101":
        root = _food101_root(root, download)
        class_names, train, test = _read_food101(root)
    elif dataset == "imagefolder":
        class_names, train, test = _read_imagefolder(root, test_fraction, seed)
    else:
        raise UserError(f"Unknown dataset {dataset!r}: use food-101 or imagefolder.")
    if len(class_names) < 2:
        raise UserError(
            f"{root} has {len(class_names)} class ({', '.join(class_names) or 'none'}): a classifier needs at "
            "least two. Check --data-dir (for class folders: one folder per class) and --dataset."
        )
    train, val = stratified_split(train, val_fraction, seed)
    return Splits(class_names, train, val, test)


def _food101_root(root: Path, download: bool) -> Path:
    for candidate in (root, root / "food-101"):
        if (candidate / "meta" / "classes.txt").is_file():
            return candidate
    if download:
        from torchvision.datasets import Food101

        _logger.info("Downloading Food-101 (about 5 GB) into %s", root)
        root.mkdir(parents=True, exist_ok=True)
        Food101(str(root), download=True)
        return root / "food-101"
    if not root.exists():
        raise UserError(
            f"Data folder {root} does not exist. Point --data-dir at a Food-101 folder (with images/ and meta/), "
            "add --download to fetch the full dataset (about 5 GB), or use the tiny set shipped in data/food-101-tiny."
        )
    raise UserError(
        f"{root} is not a Food-101 folder: meta/classes.txt is missing. The official layout is images/<class>/<id>.jpg "
        "with meta/classes.txt, meta/train.txt and meta/test.txt. For plain class folders use --dataset imagefolder; "
        "to fetch Food-101 (about 5 GB) into it, add --download."
    )


# Files and folders that archive tools, operating systems and editors leave next to the data: never classes.
JUNK_NAMES = frozenset({"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini", ".ipynb_checkpoints", "@eaDir"})


def is_junk(name: str) -> bool:
    """A file or folder name that is not data: hidden (`.x`, macOS `._x` copies), `__MACOSX`, `Thumbs.db`..."""
    return name in JUNK_NAMES or name.startswith(".")


def _read_lines(path: Path) -> list[str]:
    """The non-blank lines of a list file, as editors leave them: a UTF-8 BOM, CRLF line ends, trailing spaces."""
    if not path.is_file():
        raise UserError(
            f"{path} is missing. A Food-101 folder needs meta/classes.txt, meta/train.txt and meta/test.txt "
            "(ids like apple_pie/1005649, one per line)."
        )
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc}). Save it as UTF-8 (plain text).") from exc
    return [line.strip() for line in text.splitlines() if line.strip()]


def _image_id(line: str) -> str:
    """A list line as an image id: Windows separators and a `.jpg` suffix that some tools add are removed."""
    image_id = line.replace("\\", "/").strip("/")
    return image_id[:-4] if image_id.lower().endswith(".jpg") else image_id


@dataclass
class Food101Lists:
    """What meta/ lists, with every oddity found, for `train` and `check-data` alike."""

    root: Path
    class_names: list[str]
    listed: dict[str, list[Sample]]  # "train", "test": (path, label), each image once per split
    unknown: list[str]  # "meta/test.txt line 3: ghost/1" (a class that classes.txt lacks)
    duplicates: list[str]  # "meta/train.txt line 9: apple_pie/1 (also line 2)": dropped
    overlaps: list[str]  # image ids in both train.txt and test.txt: the test set would be trained on
    no_train: list[str]  # classes without a train line
    no_test: list[str]  # classes without a test line


def read_food101_lists(root: Path) -> Food101Lists:
    """Parse meta/classes.txt, meta/train.txt and meta/test.txt of a Food-101 folder (the one parser)."""
    class_names = _read_lines(root / "meta" / "classes.txt")
    repeated = sorted({c for c in class_names if class_names.count(c) > 1})
    if repeated:
        raise UserError(f"{root / 'meta' / 'classes.txt'} lists {', '.join(repeated[:5])} more than once. List "
                        "each class once.")
    index = {name: i for i, name in enumerate(class_names)}
    lists = Food101Lists(root, class_names, {}, [], [], [], [], [])
    ids: dict[str, set[str]] = {}
    for split in ("train", "test"):
        samples, first_line = [], {}
        for line_no, line in enumerate(_read_lines(root / "meta" / f"{split}.txt"), start=1):
            image_id = _image_id(line)
            label = index.get(image_id.split("/")[0])
            if label is None or "/" not in image_id:
                lists.unknown.append(f"meta/{split}.txt line {line_no}: {line}")
            elif image_id in first_line:
                lists.duplicates.append(f"meta/{split}.txt line {line_no}: {image_id} (also line {first_line[image_id]})")
            else:
                first_line[image_id] = line_no
                samples.append((str(root / "images" / f"{image_id}.jpg"), label))
        lists.listed[split] = samples
        ids[split] = set(first_line)
    lists.overlaps = sorted(ids["train"] & ids["test"])
    for split, missing in (("train", lists.no_train), ("test", lists.no_test)):
        have = {label for _, label in lists.listed[split]}
        missing += [c for i, c in enumerate(class_names) if i not in have]
    return lists


def _read_food101(root: Path) -> tuple[list[str], list[Sample], list[Sample]]:
    lists = read_food101_lists(root)
    meta = root / "meta"
    if lists.unknown:
        raise UserError(
            f"{meta} has {len(lists.unknown)} list line(s) naming a class that is not in meta/classes.txt, the first: "
            f"{lists.unknown[0]}. Fix the lines or add the classes (`python -m helpers check-data` lists them all)."
        )
    if lists.overlaps:
        raise UserError(
            f"{len(lists.overlaps)} image(s) are listed in both meta/train.txt and meta/test.txt (e.g. "
            f"{', '.join(lists.overlaps[:3])}): the test would score photos the model trained on. Remove them from "
            "one of the lists."
        )
    if lists.no_train:
        raise UserError(
            f"{len(lists.no_train)} class(es) of meta/classes.txt have no line in meta/train.txt "
            f"({', '.join(lists.no_train[:5])}): the model could never learn them. Add their images or remove the "
            "classes from classes.txt."
        )
    if lists.duplicates:
        _logger.warning("%d duplicate line(s) in %s, each image is used once: %s", len(lists.duplicates), meta,
                        "; ".join(lists.duplicates[:3]))
    if lists.no_test:
        _logger.warning("%d class(es) have no test image: %s", len(lists.no_test), ", ".join(lists.no_test[:5]))
    return lists.class_names, lists.listed["train"], lists.listed["test"]


def _list_class_folders(root: Path) -> dict[str, list[str]]:
    """{class: image paths} of the class folders of `root`. Hidden files and folders and what archive tools
    and operating systems leave (`__MACOSX`, `.DS_Store`, `Thumbs.db`, `.ipynb_checkpoints`) are skipped; a
    folder without images is no class (with a warning naming it)."""
    found = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not is_junk(p.name)):
        files = sorted(str(f) for f in folder.rglob("*")
                       if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file()
                       and not any(is_junk(part) for part in f.relative_to(folder).parts))
        if files:
            found[folder.name] = files
        else:
            _logger.warning("Folder %s has no images (%s): it is not made a class", folder,
                            ", ".join(IMAGE_EXTENSIONS))
    return found


def read_test_folder(root: str | Path) -> tuple[list[str], list[Sample]]:
    """Every image of a folder of class folders (<class>/<image>.jpg), to evaluate on: (class names, samples)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"Test folder {root} does not exist. Give a folder of class folders (<class>/<image>.jpg).")
    folders = _list_class_folders(root)
    class_names = sorted(folders)
    samples = [(f, i) for i, c in enumerate(class_names) for f in folders[c]]
    if not samples:
        raise UserError(f"{root} has no images in class folders. The expected layout is <class>/<image>.jpg.")
    return class_names, samples


def _read_imagefolder(root: Path, test_fraction: float, seed: int) -> tuple[list[str], list[Sample], list[Sample]]:
    if not root.is_dir():
        raise UserError(f"Data folder {root} does not exist. Point --data-dir at a folder of class folders.")
    if (root / "train").is_dir():
        train_folders = _list_class_folders(root / "train")
        test_folders = _list_class_folders(root / "test") if (root / "test").is_dir() else {}
        class_names = sorted(train_folders)
        extra = sorted(set(test_folders) - set(class_names))
        if extra:
            raise UserError(f"{root / 'test'} has classes that {root / 'train'} lacks: {', '.join(extra[:5])}.")
        train = [(f, i) for i, c in enumerate(class_names) for f in train_folders[c]]
        test = [(f, i) for i, c in enumerate(class_names) for f in test_folders.get(c, [])]
        if not test:
            train, test = stratified_split(train, test_fraction, seed + 1)
    else:
        folders = _list_class_folders(root)
        class_names = sorted(folders)
        all_samples = [(f, i) for i, c in enumerate(class_names) for f in folders[c]]
        train, test = stratified_split(all_samples, test_fraction, seed + 1)
    if not class_names or not train:
        raise UserError(
            f"{root} has no images in class folders. The expected layout is <class>/<image>.jpg, "
            "optionally under train/ and test/."
        )
    return class_names, train, test


def stratified_split(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split off `fraction` of every class (at least one image of classes with two or more), seeded.

    Returns:
        (kept, held_out), each in the original order.
    """
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, (_, label) in enumerate(samples):
        by_class[label].append(i)
    rng = random.Random(seed)
    held = set()
    for label in sorted(by_class):
        indices = by_class[label]
        n_held = min(len(indices) - 1, max(1, round(len(indices) * fraction))) if len(indices) > 1 else 0
        held.update(rng.sample(indices, n_held))
    kept = [s for i, s in enumerate(samples) if i not in held]
    return kept, [s for i, s in enumerate(samples) if i in held]


def pretty(name: str, width: int | None = None) -> str:
    """A class folder name as a label: "baby_back_ribs" -> "Baby back ribs", wrapped at `width` characters."""
    text = name.replace("_", " ").strip()
    text = text[:1].upper() + text[1:]
    return "\n".join(textwrap.wrap(text, width)) if width else text
